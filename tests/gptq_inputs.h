// Test helpers shared by the GPTQ solver tests (CPU, per-block kernels, GPU): seeded weights,
// correlated calibration inputs and their Hessian, an indefinite Hessian, specs.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "formats/model_builder.h"
#include "passes/gptq_solver.h"

namespace qc {

/// `count` N(0, stddev) values, the same for the same seed.
inline std::vector<float> RandomNormal(int64_t count, uint32_t seed, float stddev = 0.05f) {
  std::mt19937 rng(seed);
  return RandomNormalTensor({count}, 0.0f, stddev, rng).ToFloats();
}

/// Rows of X [rows, k] with a strongly non-diagonal covariance: a few shared factors plus a little
/// private noise, and channel magnitudes spread over an order of magnitude (so act-order matters).
inline std::vector<float> CorrelatedInputs(int64_t rows, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  constexpr int64_t kFactors = 4;
  std::vector<float> a(kFactors * k), magnitude(k), x(rows * k);
  for (float& v : a) v = normal(rng);
  for (float& m : magnitude) m = std::exp(0.7f * normal(rng));
  for (int64_t t = 0; t < rows; ++t) {
    float f[kFactors];
    for (float& v : f) v = normal(rng);
    for (int64_t i = 0; i < k; ++i) {
      float v = 0.3f * normal(rng);
      for (int64_t c = 0; c < kFactors; ++c) v += f[c] * a[c * k + i];
      x[t * k + i] = magnitude[i] * v;
    }
  }
  return x;
}

/// H = 2 XᵀX / rows, as the calibrator computes it.
inline std::vector<double> HessianOf(const std::vector<float>& x, int64_t rows, int64_t k) {
  std::vector<double> h(k * k, 0.0);
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) h[i * k + j] += 2.0 * x[t * k + i] * x[t * k + j] / static_cast<double>(rows);
  return h;
}

/// H = B Bᵀ for a seeded B [k, 4] (rank 4), then shifted down by 5% of its mean diagonal:
/// eigenvalues of -0.05 mean(diag H), so damping 0.01 fails and 0.1 succeeds.
inline std::vector<double> IndefiniteHessian(int64_t k, uint32_t seed) {
  const std::vector<float> b = RandomNormal(k * 4, seed, 1.0f);
  std::vector<double> h(k * k, 0.0);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j)
      for (int64_t c = 0; c < 4; ++c) h[i * k + j] += static_cast<double>(b[i * 4 + c]) * b[j * 4 + c];
  double mean = 0;
  for (int64_t i = 0; i < k; ++i) mean += h[i * k + i] / k;
  for (int64_t i = 0; i < k; ++i) h[i * k + i] -= 0.05 * mean;
  return h;
}

/// A GPTQ spec of these bits, group size and mode.
inline GptqSpec SolverSpec(int bits, int64_t group_size, bool sym, bool act_order = false, bool static_groups = true) {
  GptqSpec s;
  s.quant.bits = bits;
  s.quant.group_size = group_size;
  s.quant.sym = sym;
  s.act_order = act_order;
  s.static_groups = static_groups;
  return s;
}

}  // namespace qc
