// The numeric core of GPTQ (Frantar et al. 2022, Algorithm 1): quantizes one [K, N] weight
// against the Hessian H = 2 XᵀX / rows of its input, input row by input row, pushing each row's
// rounding error onto the rows not yet quantized through the Cholesky factor of H^-1.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "formats/status.h"
#include "passes/weight_quant.h"

namespace qc {

/// What GptqQuantize does besides the group quantization of `quant`.
struct GptqSpec {
  WeightQuantSpec quant;
  /// Quantize input rows in decreasing diag(H) order ("act-order"), so the rows with the most
  /// input energy are rounded first while many rows are left to absorb their error.
  bool act_order = false;
  /// With act_order and groups: true keeps the groups in input order ("static groups": no g_idx,
  /// any bit width runs in ONNX Runtime); false forms groups of consecutive rows in act-order and
  /// records them in QuantizedWeight::g_idx (ONNX Runtime runs g_idx only with 4-bit storage).
  bool static_groups = false;
  /// percdamp: the fraction of mean(diag(H)) added to diag(H) before the Cholesky factorisation;
  /// raised tenfold (up to kMaxPercdamp) while the factorisation fails.
  double percdamp = 0.01;
  /// Lazy-batch width B (Section 3, "Lazy Batch-Updates"): each quantized row updates the rest of
  /// its block at once; the rows after the block are updated once per block, through one GEMM.
  int64_t block_size = 128;
};

/// The largest percdamp the escalation tries (H + 10 mean(diag H) I is positive definite unless H
/// has a negative eigenvalue below -10 mean(diag H), i.e. is not a Gram matrix at all).
inline constexpr double kMaxPercdamp = 10.0;

/// One quantized weight and what the solver did to get it.
struct GptqResult {
  QuantizedWeight weight;
  /// [K, N] row-major: the dequantized values the solver measured its errors against; equals
  /// weight.Dequantize() bit for bit.
  std::vector<float> w_hat;
  double percdamp = 0;       // the dampening finally used (relative to mean diag(H))
  int64_t dead_inputs = 0;   // input rows with diag(H) == 0 (never active): set to 0
  bool reordered_groups = false;  // weight.g_idx holds act-order groups
  std::vector<std::string> notes;  // damping escalations, dead inputs
};

/// The upper-triangular U with Uᵀ U = H^-1 (the reference code's
/// cholesky(cholesky_inverse(cholesky(H)), upper=True)), for a symmetric positive definite
/// row-major [k, k] H; false when H is not numerically positive definite. Takes `h` by value and
/// works in it (move a temporary in to avoid a copy).
bool UpperCholeskyOfInverse(std::vector<double> h, int64_t k, std::vector<double>* u);

/// GPTQ of the row-major logical [k, n] weight `w` (k input rows, n output columns) with the
/// row-major [k, k] Hessian `hessian` of its input. Group scales and zero points follow
/// ComputeGroupParams / QuantizeValue; each group's parameters are computed when the solver
/// reaches the group's first row, from the weights as updated by then. With an identity H the
/// result equals QuantizeRtn. Fails with InvalidArgument when H holds non-finite values or stays
/// indefinite up to kMaxPercdamp.
StatusOr<GptqResult> GptqQuantize(const std::vector<float>& w, int64_t k, int64_t n, const std::vector<double>& hessian,
                                  const GptqSpec& spec);

/// GptqQuantize up to its column loop, shared by the CPU solver and the CUDA one
/// (passes/gptq_solver_cuda.h): validation, dead inputs, the act-order permutation, the damping
/// escalation around `factor`, and the groups. `result` holds the weight's layout (bits, k, n,
/// block size, g_idx), the notes, the dead inputs and the final percdamp; q, scales, zero points
/// and w_hat are left to the column loop.
struct GptqPlan {
  int64_t k = 0, n = 0;
  int64_t rows_per_group = 0;                       // group_size, or k per channel
  std::vector<float> w0;                            // [k, n], dead input rows zeroed
  std::vector<int64_t> perm;                        // position (processing order) -> input row
  std::vector<int64_t> group_of;                    // position -> group
  std::vector<std::vector<int64_t>> members;        // group -> its positions, ascending
  std::vector<std::pair<int64_t, int64_t>> blocks;  // group -> [first, last] block of the encoding
  GptqResult result;
};
/// Computes U (Uᵀ U = H^-1, as UpperCholeskyOfInverse) of the damped row-major [k, k] H in
/// processing order and keeps it for the column loop; false when H is not numerically positive
/// definite (PrepareGptq then raises the damping), an error when the computation itself failed.
using CholeskyOfInverse = std::function<StatusOr<bool>(std::vector<double> h)>;
StatusOr<GptqPlan> PrepareGptq(const std::vector<float>& w, int64_t k, int64_t n, const std::vector<double>& hessian,
                               const GptqSpec& spec, const CholeskyOfInverse& factor);

}  // namespace qc
