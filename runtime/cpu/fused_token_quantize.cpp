// qconvert.fused.QuantizeTokensUint8(x[, columns]; epsilon) -> (q, s): the W8A8 layers' per-token
// activation quantization (docs/FORMAT.md, "W8A8"; runtime/graph_fusion.cpp) in one pass over x:
//   x'  = x, or x's `columns` along the last axis (outlier-split's rest channels; negative ones wrap)
//   s   = max(max_k |x'_k|, epsilon) / 127                          float32 [..., 1]
//   q_k = uint8(round_half_even(x'_k / s) + 128)                    uint8   [..., |x'|]
// Each step rounds as the unfused graph's op does (Abs, ReduceMax, Max, Div, Div, Round, Add,
// Cast), so fusing changes no bit.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "runtime/cpu/elementwise_math.h"
#include "runtime/cpu/kernel.h"

namespace qc {
namespace {

struct TokenQuantizePlan {
  int64_t rows = 0, len = 0, width = 0;  // rows of x, x's last dim, q's last dim
  std::vector<int64_t> columns;           // empty: every column
  float epsilon = 0;
};

StatusOr<TokenQuantizePlan> PlanTokenQuantize(const KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 2));
  if (ctx.num_outputs() < 2) return ctx.Error("expected 2 outputs (q, s)");
  const Tensor& x = ctx.input(0);
  if (x.dtype() != DType::kFloat32) return ctx.UnsupportedDType(x.dtype());
  if (x.rank() < 1) return ctx.Error("x must have rank >= 1");
  TokenQuantizePlan p;
  p.len = x.dim(-1);
  p.rows = p.len == 0 ? 0 : x.numel() / p.len;
  p.width = p.len;
  p.epsilon = ctx.node.GetFloat("epsilon", 1e-30f);
  if (ctx.has_input(1)) {
    const Tensor& c = ctx.input(1);
    if (c.dtype() != DType::kInt64 || c.rank() != 1) return ctx.Error("columns must be a 1-D int64 tensor");
    p.columns = c.ToInt64s();
    for (int64_t& k : p.columns) {
      if (k < -p.len || k >= p.len)
        return ctx.Error("column " + std::to_string(k) + " is outside [" + std::to_string(-p.len) + ", " + std::to_string(p.len) + ")");
      if (k < 0) k += p.len;
    }
    p.width = static_cast<int64_t>(p.columns.size());
  }
  return p;
}

void QuantizeRow(const TokenQuantizePlan& p, const float* x, int64_t r, uint8_t* q, float* s) {
  const float* xr = x + r * p.len;
  auto at = [&](int64_t j) { return p.columns.empty() ? xr[j] : xr[p.columns[j]]; };
  float mx = -std::numeric_limits<float>::infinity();  // ReduceMax's identity
  for (int64_t j = 0; j < p.width; ++j) mx = elementwise::MaxValue(mx, std::fabs(at(j)));
  const float scale = elementwise::MaxValue(mx, p.epsilon) / 127.0f;
  s[r] = scale;
  for (int64_t j = 0; j < p.width; ++j) q[r * p.width + j] = static_cast<uint8_t>(std::nearbyint(at(j) / scale) + 128.0f);
}

template <bool kParallel>
Status QuantizeTokens(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(TokenQuantizePlan p, PlanTokenQuantize(ctx));
  const Tensor& x = ctx.input(0);
  Shape q_shape = x.shape(), s_shape = x.shape();
  q_shape.back() = p.width;
  s_shape.back() = 1;
  Tensor q = Tensor::Uninitialized(DType::kUInt8, q_shape);
  Tensor s = Tensor::Uninitialized(DType::kFloat32, s_shape);
  const float* xp = x.data<float>();
  uint8_t* qp = q.mutable_data<uint8_t>();
  float* sp = s.mutable_data<float>();
  if constexpr (kParallel) {
#pragma omp parallel for schedule(static) if (p.rows * p.width > 32768)
    for (int64_t r = 0; r < p.rows; ++r) QuantizeRow(p, xp, r, qp, sp);
  } else {
    for (int64_t r = 0; r < p.rows; ++r) QuantizeRow(p, xp, r, qp, sp);
  }
  ctx.outputs[0] = std::move(q);
  ctx.outputs[1] = std::move(s);
  return Status::Ok();
}

}  // namespace

Status QuantizeTokensUint8Ref(KernelContext& ctx) { return QuantizeTokens<false>(ctx); }
Status QuantizeTokensUint8Fast(KernelContext& ctx) { return QuantizeTokens<true>(ctx); }

}  // namespace qc
