// Softmax and LogSoftmax (opset 13 single-axis semantics; opsets < 13 flatten to 2-D at axis).
#include <cmath>
#include <limits>
#include <string>

#include <Eigen/Dense>

#include "runtime/cpu/dispatch.h"
#include "runtime/cpu/kernel.h"

namespace qc {
namespace {

// The tensor seen as [outer, len, inner] with the softmax running along `len`.
struct SoftmaxShape {
  int64_t outer = 1, len = 1, inner = 1;
};

StatusOr<SoftmaxShape> ParseSoftmax(const KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 1));
  if (ctx.num_outputs() < 1) return ctx.Error("expected 1 output");
  const Tensor& x = ctx.input(0);
  if (x.dtype() != DType::kFloat32 && x.dtype() != DType::kFloat64) return ctx.UnsupportedDType(x.dtype());
  const bool legacy = ctx.opset > 0 && ctx.opset < 13;
  const int64_t rank = x.rank();
  int64_t axis = ctx.node.GetInt("axis", legacy ? 1 : -1);
  // A scalar has no axis; treat it as one element so the result is 1 (0 for LogSoftmax).
  const int64_t eff_rank = std::max<int64_t>(rank, 1);
  if (axis < -eff_rank || axis >= eff_rank)
    return ctx.Error("axis " + std::to_string(axis) + " out of range for rank " + std::to_string(rank));
  if (axis < 0) axis += eff_rank;
  SoftmaxShape s;
  if (rank == 0) return s;
  for (int64_t i = 0; i < axis; ++i) s.outer *= x.dim(i);
  if (legacy) {
    for (int64_t i = axis; i < rank; ++i) s.len *= x.dim(i);
  } else {
    s.len = x.dim(axis);
    for (int64_t i = axis + 1; i < rank; ++i) s.inner *= x.dim(i);
  }
  return s;
}

// Reference: max-subtracted, exponentials summed in double.
template <typename T>
void SoftmaxRefImpl(const SoftmaxShape& s, const T* x, T* y, bool log) {
  for (int64_t o = 0; o < s.outer; ++o)
    for (int64_t i = 0; i < s.inner; ++i) {
      const T* xr = x + o * s.len * s.inner + i;
      T* yr = y + o * s.len * s.inner + i;
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < s.len; ++j) mx = std::max(mx, static_cast<double>(xr[j * s.inner]));
      double sum = 0;
      for (int64_t j = 0; j < s.len; ++j) sum += std::exp(static_cast<double>(xr[j * s.inner]) - mx);
      for (int64_t j = 0; j < s.len; ++j) {
        const double v = static_cast<double>(xr[j * s.inner]) - mx;
        yr[j * s.inner] = static_cast<T>(log ? v - std::log(sum) : std::exp(v) / sum);
      }
    }
}

Status SoftmaxRefCommon(KernelContext& ctx, bool log) {
  QC_ASSIGN_OR_RETURN(SoftmaxShape s, ParseSoftmax(ctx));
  const Tensor& x = ctx.input(0);
  Tensor y(x.dtype(), x.shape());
  DispatchFloat(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    SoftmaxRefImpl<T>(s, x.data<T>(), y.mutable_data<T>(), log);
  });
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

// Fast path for contiguous rows (inner == 1): Eigen's vectorised exp, float accumulation,
// OpenMP across rows.
template <typename T>
void SoftmaxRowsFast(const SoftmaxShape& s, const T* x, T* y, bool log) {
  using Row = Eigen::Array<T, Eigen::Dynamic, 1>;
  const int64_t len = s.len;
  // Below ~32K elements a thread team costs more than it saves.
#pragma omp parallel for schedule(static) if (s.outer * len > 32768)
  for (int64_t o = 0; o < s.outer; ++o) {
    Eigen::Map<const Row> xr(x + o * len, len);
    Eigen::Map<Row> yr(y + o * len, len);
    const T mx = xr.maxCoeff();
    if (log) {
      const T lse = std::log((xr - mx).exp().sum());
      yr = xr - (mx + lse);
    } else {
      yr = (xr - mx).exp();
      yr *= T(1) / yr.sum();
    }
  }
}

Status SoftmaxFastCommon(KernelContext& ctx, bool log) {
  QC_ASSIGN_OR_RETURN(SoftmaxShape s, ParseSoftmax(ctx));
  if (s.inner != 1 || s.len == 0) return SoftmaxRefCommon(ctx, log);
  const Tensor& x = ctx.input(0);
  Tensor y = Tensor::Uninitialized(x.dtype(), x.shape());
  DispatchFloat(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    SoftmaxRowsFast<T>(s, x.data<T>(), y.mutable_data<T>(), log);
  });
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

}  // namespace

Status SoftmaxRef(KernelContext& ctx) { return SoftmaxRefCommon(ctx, false); }
Status SoftmaxFast(KernelContext& ctx) { return SoftmaxFastCommon(ctx, false); }
Status LogSoftmaxRef(KernelContext& ctx) { return SoftmaxRefCommon(ctx, true); }
Status LogSoftmaxFast(KernelContext& ctx) { return SoftmaxFastCommon(ctx, true); }

}  // namespace qc
