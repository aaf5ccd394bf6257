// Test helper: seeded float32 tensors of uniform values.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "formats/tensor.h"

namespace qc {

/// A float32 tensor of `shape` holding values uniform in [lo, hi), the same for the same seed.
inline Tensor Random(const Shape& shape, uint32_t seed, float lo = -2.0f, float hi = 2.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(NumElements(shape));
  for (float& x : v) x = u(rng);
  return Tensor::FromVector<float>(v, shape);
}

}  // namespace qc
