// qconvert.fused.QuantizeTokensUint8(x[, columns]; epsilon) -> (q, s): the W8A8 layers' per-token
// activation quantization (docs/FORMAT.md, "W8A8"; runtime/graph_fusion.cpp) in one pass over x:
//   x'  = x, or x's `columns` along the last axis (outlier-split's rest channels; negative ones wrap)
//   s   = max(max_k |x'_k|, epsilon) / 127                          x's type, [..., 1]
//   q_k = uint8(round_half_even(x'_k / s) + 128)                    uint8     [..., |x'|]
// Each step rounds as the unfused graph's op does in x's type (Abs, ReduceMax, Max, Div, Div,
// Round, Add, Cast; float16/bfloat16 ops compute in float32 and round once), so fusing changes no
// bit, in a float32 graph and in one rewritten to 16 bits (--dtype) alike.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "runtime/cpu/elementwise_math.h"
#include "runtime/cpu/kernel.h"

namespace qc {
namespace {

struct TokenQuantizePlan {
  int64_t rows = 0, len = 0, width = 0;  // rows of x, x's last dim, q's last dim
  std::vector<int64_t> columns;           // empty: every column
  float epsilon = 0;  // rounded to x's type, as the unfused graph's constant is
  DType dtype = DType::kFloat32;
};

StatusOr<TokenQuantizePlan> PlanTokenQuantize(const KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 2));
  if (ctx.num_outputs() < 2) return ctx.Error("expected 2 outputs (q, s)");
  const Tensor& x = ctx.input(0);
  if (!IsComputeFloat(x.dtype())) return ctx.UnsupportedDType(x.dtype());
  if (x.rank() < 1) return ctx.Error("x must have rank >= 1");
  TokenQuantizePlan p;
  p.len = x.dim(-1);
  p.rows = p.len == 0 ? 0 : x.numel() / p.len;
  p.width = p.len;
  p.dtype = x.dtype();
  p.epsilon = RoundedToDType(ctx.node.GetFloat("epsilon", 1e-30f), p.dtype);
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

// Row r of x (float32 widened from x's type) into q and s (s's value rounded to x's type). The
// codes convert as Cast does (NaN -> 0, saturating): a float16 token whose max is tiny or zero has
// s = 0 there (eps underflows), and x / s is then NaN or infinite.
void QuantizeRow(const TokenQuantizePlan& p, const float* xr, int64_t r, uint8_t* q, float* s) {
  auto at = [&](int64_t j) { return p.columns.empty() ? xr[j] : xr[p.columns[j]]; };
  float mx = -std::numeric_limits<float>::infinity();  // ReduceMax's identity
  for (int64_t j = 0; j < p.width; ++j) mx = elementwise::MaxValue(mx, std::fabs(at(j)));
  const float scale = RoundedToDType(elementwise::MaxValue(mx, p.epsilon) / 127.0f, p.dtype);
  s[r] = scale;
  for (int64_t j = 0; j < p.width; ++j)
    q[r * p.width + j] = elementwise::SaturateCast<uint8_t>(std::nearbyint(RoundedToDType(at(j) / scale, p.dtype)) + 128.0f);
}

template <bool kParallel>
Status QuantizeTokens(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(TokenQuantizePlan p, PlanTokenQuantize(ctx));
  const Tensor& x = ctx.input(0);
  Shape q_shape = x.shape(), s_shape = x.shape();
  q_shape.back() = p.width;
  s_shape.back() = 1;
  Tensor q = Tensor::Uninitialized(DType::kUInt8, q_shape);
  std::vector<float> s(static_cast<size_t>(p.rows));
  uint8_t* qp = q.mutable_data<uint8_t>();
  const bool half = p.dtype != DType::kFloat32;
  auto row = [&](int64_t r, std::vector<float>& widened) {
    const float* xr = nullptr;
    if (half) {  // 16-bit rows widen to float32 exactly
      const uint16_t* h = static_cast<const uint16_t*>(x.raw()) + r * p.len;
      widened.resize(static_cast<size_t>(p.len));
      for (int64_t j = 0; j < p.len; ++j) widened[j] = p.dtype == DType::kFloat16 ? HalfToFloat(h[j]) : BFloat16ToFloat(h[j]);
      xr = widened.data();
    } else {
      xr = x.data<float>() + r * p.len;
    }
    QuantizeRow(p, xr, r, qp, s.data());
  };
  if constexpr (kParallel) {
#pragma omp parallel if (p.rows * p.width > 32768)
    {
      std::vector<float> widened;
#pragma omp for schedule(static)
      for (int64_t r = 0; r < p.rows; ++r) row(r, widened);
    }
  } else {
    std::vector<float> widened;
    for (int64_t r = 0; r < p.rows; ++r) row(r, widened);
  }
  ctx.outputs[0] = std::move(q);
  Tensor scales = Tensor::Uninitialized(p.dtype, s_shape);  // exact: each is a value of the type
  for (int64_t r = 0; r < p.rows; ++r) {
    if (p.dtype == DType::kFloat32) scales.mutable_data<float>()[r] = s[r];
    else static_cast<uint16_t*>(scales.mutable_raw())[r] = p.dtype == DType::kFloat16 ? FloatToHalf(s[r]) : FloatToBFloat16(s[r]);
  }
  ctx.outputs[1] = std::move(scales);
  return Status::Ok();
}

}  // namespace

Status QuantizeTokensUint8Ref(KernelContext& ctx) { return QuantizeTokens<false>(ctx); }
Status QuantizeTokensUint8Fast(KernelContext& ctx) { return QuantizeTokens<true>(ctx); }

}  // namespace qc
