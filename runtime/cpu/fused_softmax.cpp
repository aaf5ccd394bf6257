// qconvert.fused.ScaledMaskedSoftmax(x[, mask]; scale): softmax(x * scale + mask) along the last
// axis, the attention-score chain Mul(scale) -> Add(mask) -> Softmax that torch.onnx exports
// (runtime/graph_fusion.cpp). One pass over the [B, H, S, S] scores instead of three.
//
// Rounding is the unfused graph's: t = x * scale and u = t + mask are float operations in that
// order, then the softmax of u exactly as the Softmax kernels compute it (reference: double
// sums; fast: the Eigen row code of softmax.cpp), so fusing changes no bit.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <Eigen/Dense>

#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/kernel.h"

namespace qc {
namespace {

// Rows of the output (every dim but the last) and where each row starts in x and in the mask.
struct FusedSoftmaxPlan {
  Shape out_shape;
  int64_t rows = 0, len = 0;
  std::vector<int64_t> x_row, m_row;  // element offset of each row's start
  int64_t x_step = 1, m_step = 1;     // element stride along the last axis (0: broadcast)
  float scale = 1;
};

StatusOr<FusedSoftmaxPlan> PlanFusedSoftmax(const KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 2));
  if (ctx.num_outputs() < 1) return ctx.Error("expected 1 output");
  const Tensor& x = ctx.input(0);
  const bool has_mask = ctx.has_input(1);
  if (x.dtype() != DType::kFloat32) return ctx.UnsupportedDType(x.dtype());
  if (has_mask && ctx.input(1).dtype() != DType::kFloat32) return ctx.UnsupportedDType(ctx.input(1).dtype());
  FusedSoftmaxPlan p;
  p.scale = ctx.node.GetFloat("scale", 1.0f);
  const Shape x_shape = x.shape(), m_shape = has_mask ? ctx.input(1).shape() : Shape{};
  QC_ASSIGN_OR_RETURN(p.out_shape, BroadcastShapes({x_shape, m_shape}));
  if (p.out_shape.empty()) return ctx.Error("softmax of a scalar");
  p.len = p.out_shape.back();
  Shape row_shape(p.out_shape.begin(), p.out_shape.end() - 1);
  p.rows = 1;
  for (int64_t d : row_shape) p.rows *= d;
  const std::vector<int64_t> xs = BroadcastStrides(x_shape, p.out_shape), ms = BroadcastStrides(m_shape, p.out_shape);
  p.x_step = xs.back();
  p.m_step = ms.back();
  p.x_row.resize(p.rows);
  p.m_row.resize(p.rows);
  std::vector<int64_t> index(row_shape.size(), 0);
  for (int64_t r = 0; r < p.rows; ++r) {
    int64_t xo = 0, mo = 0;
    for (size_t d = 0; d < index.size(); ++d) {
      xo += index[d] * xs[d];
      mo += index[d] * ms[d];
    }
    p.x_row[r] = xo;
    p.m_row[r] = mo;
    for (size_t d = index.size(); d-- > 0;) {
      if (++index[d] < row_shape[d]) break;
      index[d] = 0;
    }
  }
  return p;
}

// u = x * scale + mask for one row, in the unfused graph's float rounding.
void ScaledMaskedRow(const FusedSoftmaxPlan& p, const float* x, const float* m, int64_t r, float* u) {
  const float* xr = x + p.x_row[r];
  if (m == nullptr) {
    for (int64_t j = 0; j < p.len; ++j) u[j] = xr[j * p.x_step] * p.scale;
    return;
  }
  const float* mr = m + p.m_row[r];
  for (int64_t j = 0; j < p.len; ++j) {
    const float t = xr[j * p.x_step] * p.scale;
    u[j] = t + mr[j * p.m_step];
  }
}

}  // namespace

Status ScaledMaskedSoftmaxRef(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(FusedSoftmaxPlan p, PlanFusedSoftmax(ctx));
  const float* m = ctx.has_input(1) ? ctx.input(1).data<float>() : nullptr;
  Tensor y(DType::kFloat32, p.out_shape);
  float* out = y.mutable_data<float>();
  for (int64_t r = 0; r < p.rows; ++r) {
    float* u = out + r * p.len;
    ScaledMaskedRow(p, ctx.input(0).data<float>(), m, r, u);
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < p.len; ++j) mx = std::max(mx, static_cast<double>(u[j]));
    double sum = 0;
    for (int64_t j = 0; j < p.len; ++j) sum += std::exp(static_cast<double>(u[j]) - mx);
    for (int64_t j = 0; j < p.len; ++j) u[j] = static_cast<float>(std::exp(static_cast<double>(u[j]) - mx) / sum);
  }
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

Status ScaledMaskedSoftmaxFast(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(FusedSoftmaxPlan p, PlanFusedSoftmax(ctx));
  const float* x = ctx.input(0).data<float>();
  const float* m = ctx.has_input(1) ? ctx.input(1).data<float>() : nullptr;
  Tensor y = Tensor::Uninitialized(DType::kFloat32, p.out_shape);
  if (p.rows * p.len == 0) {
    ctx.outputs[0] = std::move(y);
    return Status::Ok();
  }
  float* out = y.mutable_data<float>();
  using Row = Eigen::Array<float, Eigen::Dynamic, 1>;
  // Below ~32K elements a thread team costs more than it saves (as in softmax.cpp).
#pragma omp parallel for schedule(static) if (p.rows * p.len > 32768)
  for (int64_t r = 0; r < p.rows; ++r) {
    float* u = out + r * p.len;
    ScaledMaskedRow(p, x, m, r, u);
    Eigen::Map<Row> yr(u, p.len);
    const float mx = yr.maxCoeff();
    yr = (yr - mx).exp();
    yr *= 1.0f / yr.sum();
  }
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

}  // namespace qc
