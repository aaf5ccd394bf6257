// numpy-style matmul shape rules shared by MatMul, MatMulInteger and the fast batched kernels.
#pragma once

#include <cstdint>
#include <vector>

#include "formats/status.h"
#include "formats/tensor.h"
#include "runtime/cpu/kernel.h"

namespace qc {

/// How a (batched, broadcast) matmul maps onto plain [m,k]x[k,n] products.
struct MatMulPlan {
  Shape out_shape;
  int64_t m = 0, k = 0, n = 0;
  /// Element offsets of each output matrix's A and B operand, one entry per output matrix.
  std::vector<int64_t> a_offsets, b_offsets;
  /// True when every product uses the same B matrix, so A's batch folds into m (one big GEMM).
  bool b_shared = false;
  int64_t batch() const { return static_cast<int64_t>(a_offsets.size()); }
};

/// Validates the operand shapes (1-D operands promoted per the ONNX/numpy rules) and plans the
/// products. Errors name the node through `ctx`.
StatusOr<MatMulPlan> PlanMatMul(const KernelContext& ctx, const Shape& a, const Shape& b);

/// Largest element count a kernel agrees to allocate for one output (guards against models whose
/// broadcast shapes would multiply to absurd sizes).
inline constexpr int64_t kMaxOutputElements = int64_t{1} << 34;

}  // namespace qc
