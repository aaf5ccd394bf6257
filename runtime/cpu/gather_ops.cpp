// Gather, GatherND, GatherElements, ScatterND, ScatterElements: every data-supplied index is range-checked.
#include <algorithm>
#include <cstring>
#include <string>

#include "runtime/cpu/dispatch.h"
#include "runtime/cpu/kernel.h"
#include "runtime/cpu/shape_ops_internal.h"

namespace qc {

using shape_ops::CheckOutputShape;
using shape_ops::InputElementBytes;
using shape_ops::NormalizeAxis;
using shape_ops::RowMajorStrides;

namespace {

Status CheckIndexDType(const KernelContext& ctx, int i) {
  const DType t = ctx.input(i).dtype();
  if (t != DType::kInt64 && t != DType::kInt32)
    return ctx.Error("indices must be int64 or int32, got " + DTypeName(t));
  return Status::Ok();
}

// Maps an index in [-dim, dim) to [0, dim), or returns an error naming the node.
Status NormalizeIndex(const KernelContext& ctx, int64_t& v, int64_t dim, int axis) {
  if (v < -dim || v >= dim)
    return ctx.Error("index " + std::to_string(v) + " is out of range for axis " + std::to_string(axis) +
                     " of size " + std::to_string(dim) + " (expected [" + std::to_string(-dim) + ", " +
                     std::to_string(dim - 1) + "])");
  if (v < 0) v += dim;
  return Status::Ok();
}

bool NextIndex(std::vector<int64_t>& idx, const Shape& shape) {
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    if (++idx[d] < shape[d]) return true;
    idx[d] = 0;
  }
  return false;
}

enum class Reduction { kNone, kAdd, kMul, kMax, kMin };

StatusOr<Reduction> ParseReduction(const KernelContext& ctx) {
  const std::string r = ctx.node.GetString("reduction", "none");
  if (r == "none") return Reduction::kNone;
  if (r == "add") return Reduction::kAdd;
  if (r == "mul") return Reduction::kMul;
  if (r == "max") return Reduction::kMax;
  if (r == "min") return Reduction::kMin;
  return ctx.Error("unknown reduction '" + r + "' (expected none, add, mul, max or min)");
}

template <typename T>
T Combine(T dst, T src, Reduction r) {
  switch (r) {
    case Reduction::kAdd: return shape_ops::WrapAdd(dst, src);
    case Reduction::kMul: return shape_ops::WrapMul(dst, src);
    case Reduction::kMax: return std::max(dst, src);
    case Reduction::kMin: return std::min(dst, src);
    case Reduction::kNone: break;
  }
  return src;
}

// Starts `out` as a copy of `data` and runs `loop(apply)`, where loop calls apply(dst, src) with
// element offsets into out and `updates` in spec order (later updates win for "none").
template <typename Loop>
Status RunScatter(KernelContext& ctx, Reduction red, const Tensor& data, const Tensor& updates, Loop&& loop) {
  if (updates.dtype() != data.dtype())
    return ctx.Error("updates dtype " + DTypeName(updates.dtype()) + " differs from data dtype " +
                     DTypeName(data.dtype()));
  QC_ASSIGN_OR_RETURN(int es, InputElementBytes(ctx, 0));
  Tensor out = data.Clone();
  Status status = Status::Ok();
  if (red == Reduction::kNone) {
    char* dst = static_cast<char*>(out.mutable_raw());
    const char* src = static_cast<const char*>(updates.raw());
    status = loop([&](int64_t d, int64_t s) { std::memcpy(dst + d * es, src + s * es, es); });
  } else if (!DispatchNumeric(data.dtype(), [&](auto tag) {
               using T = typename decltype(tag)::type;
               T* dst = out.mutable_data<T>();
               const T* src = updates.data<T>();
               status = loop([&](int64_t d, int64_t s) { dst[d] = Combine(dst[d], src[s], red); });
             })) {
    return ctx.UnsupportedDType(data.dtype());
  }
  if (!status.ok()) return status;
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

}  // namespace

namespace shape_ops {

StatusOr<GatherPlan> PlanGather(const KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(2, 2));
  GatherPlan plan;
  QC_ASSIGN_OR_RETURN(plan.elem_bytes, InputElementBytes(ctx, 0));
  QC_RETURN_IF_ERROR(CheckIndexDType(ctx, 1));
  const Tensor& data = ctx.input(0);
  const Tensor& indices = ctx.input(1);
  if (data.rank() == 0) return ctx.Error("data must have rank >= 1");
  QC_ASSIGN_OR_RETURN(plan.axis, NormalizeAxis(ctx, ctx.node.GetInt("axis", 0), data.rank(), "axis"));
  const int64_t dim = data.shape()[plan.axis];
  plan.indices = indices.ToInt64s();
  for (int64_t& v : plan.indices) QC_RETURN_IF_ERROR(NormalizeIndex(ctx, v, dim, plan.axis));
  plan.out_shape.assign(data.shape().begin(), data.shape().begin() + plan.axis);
  plan.out_shape.insert(plan.out_shape.end(), indices.shape().begin(), indices.shape().end());
  plan.out_shape.insert(plan.out_shape.end(), data.shape().begin() + plan.axis + 1, data.shape().end());
  QC_RETURN_IF_ERROR(CheckOutputShape(ctx, plan.out_shape, "output"));
  return plan;
}

}  // namespace shape_ops

Status GatherRef(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(shape_ops::GatherPlan plan, shape_ops::PlanGather(ctx));
  const Tensor& data = ctx.input(0);
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < plan.axis; ++d) outer *= data.shape()[d];
  for (int d = plan.axis + 1; d < data.rank(); ++d) inner *= data.shape()[d];
  const int64_t dim = data.shape()[plan.axis];
  const int64_t n = static_cast<int64_t>(plan.indices.size());
  const int es = plan.elem_bytes;
  Tensor out(data.dtype(), plan.out_shape);
  const char* src = static_cast<const char*>(data.raw());
  char* dst = static_cast<char*>(out.mutable_raw());
  // out[o, j, i] = data[o, indices[j], i]
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < inner; ++i)
        std::memcpy(dst + ((o * n + j) * inner + i) * es, src + ((o * dim + plan.indices[j]) * inner + i) * es, es);
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

Status GatherNDRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(2, 2));
  QC_ASSIGN_OR_RETURN(int es, InputElementBytes(ctx, 0));
  QC_RETURN_IF_ERROR(CheckIndexDType(ctx, 1));
  const Tensor& data = ctx.input(0);
  const Tensor& indices = ctx.input(1);
  const int r = data.rank(), q = indices.rank();
  const int64_t b = ctx.node.GetInt("batch_dims", 0);
  if (r < 1 || q < 1) return ctx.Error("data and indices must have rank >= 1");
  if (b < 0 || b >= std::min(r, q))
    return ctx.Error("batch_dims " + std::to_string(b) + " must be in [0, min(rank(data), rank(indices)))");
  for (int d = 0; d < b; ++d)
    if (data.shape()[d] != indices.shape()[d])
      return ctx.Error("batch dimension " + std::to_string(d) + " differs: data " + ShapeToString(data.shape()) +
                       ", indices " + ShapeToString(indices.shape()));
  const int64_t k = indices.shape()[q - 1];
  if (k < 1 || k > r - b)
    return ctx.Error("indices.shape[-1] = " + std::to_string(k) + " must be in [1, " + std::to_string(r - b) + "]");
  Shape shape(indices.shape().begin(), indices.shape().end() - 1);
  shape.insert(shape.end(), data.shape().begin() + b + k, data.shape().end());
  QC_RETURN_IF_ERROR(CheckOutputShape(ctx, shape, "output"));
  int64_t batches = 1, tuples = 1, slice = 1;
  for (int d = 0; d < b; ++d) batches *= data.shape()[d];
  for (int d = static_cast<int>(b); d < q - 1; ++d) tuples *= indices.shape()[d];
  for (int d = static_cast<int>(b + k); d < r; ++d) slice *= data.shape()[d];
  const std::vector<int64_t> strides = RowMajorStrides(data.shape());
  const int64_t batch_stride = b > 0 ? strides[b - 1] : 0;
  const std::vector<int64_t> idx = indices.ToInt64s();
  Tensor out(data.dtype(), shape);
  const char* src = static_cast<const char*>(data.raw());
  char* dst = static_cast<char*>(out.mutable_raw());
  for (int64_t bi = 0; bi < batches; ++bi)
    for (int64_t t = 0; t < tuples; ++t) {
      const int64_t row = bi * tuples + t;
      int64_t off = bi * batch_stride;
      for (int64_t j = 0; j < k; ++j) {
        int64_t v = idx[row * k + j];
        const int axis = static_cast<int>(b + j);
        QC_RETURN_IF_ERROR(NormalizeIndex(ctx, v, data.shape()[axis], axis));
        off += v * strides[axis];
      }
      for (int64_t i = 0; i < slice; ++i) std::memcpy(dst + (row * slice + i) * es, src + (off + i) * es, es);
    }
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

namespace {
// Shared checks of GatherElements/ScatterElements: equal ranks and indices within data on the
// non-axis dims (the spec's out[i][j] = data[indices[i][j]][j] reads those positions directly).
StatusOr<int> CheckElementsShapes(const KernelContext& ctx, const Tensor& data, const Tensor& indices) {
  if (data.rank() < 1) return ctx.Error("data must have rank >= 1");
  if (indices.rank() != data.rank())
    return ctx.Error("indices rank " + std::to_string(indices.rank()) + " differs from data rank " +
                     std::to_string(data.rank()));
  QC_ASSIGN_OR_RETURN(int axis, NormalizeAxis(ctx, ctx.node.GetInt("axis", 0), data.rank(), "axis"));
  for (int d = 0; d < data.rank(); ++d)
    if (d != axis && indices.shape()[d] > data.shape()[d])
      return ctx.Error("indices shape " + ShapeToString(indices.shape()) + " exceeds data shape " +
                       ShapeToString(data.shape()) + " on dimension " + std::to_string(d));
  return axis;
}
}  // namespace

Status GatherElementsRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(2, 2));
  QC_ASSIGN_OR_RETURN(int es, InputElementBytes(ctx, 0));
  QC_RETURN_IF_ERROR(CheckIndexDType(ctx, 1));
  const Tensor& data = ctx.input(0);
  const Tensor& indices = ctx.input(1);
  QC_ASSIGN_OR_RETURN(int axis, CheckElementsShapes(ctx, data, indices));
  const std::vector<int64_t> strides = RowMajorStrides(data.shape());
  const std::vector<int64_t> idx_values = indices.ToInt64s();
  Tensor out(data.dtype(), indices.shape());
  const char* src = static_cast<const char*>(data.raw());
  char* dst = static_cast<char*>(out.mutable_raw());
  std::vector<int64_t> idx(indices.rank(), 0);
  for (int64_t o = 0; o < out.numel(); ++o, NextIndex(idx, indices.shape())) {
    int64_t v = idx_values[o];
    QC_RETURN_IF_ERROR(NormalizeIndex(ctx, v, data.shape()[axis], axis));
    int64_t off = 0;
    for (int d = 0; d < data.rank(); ++d) off += (d == axis ? v : idx[d]) * strides[d];
    std::memcpy(dst + o * es, src + off * es, es);
  }
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

Status ScatterNDRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(3, 3));
  QC_RETURN_IF_ERROR(CheckIndexDType(ctx, 1));
  QC_ASSIGN_OR_RETURN(Reduction red, ParseReduction(ctx));
  const Tensor& data = ctx.input(0);
  const Tensor& indices = ctx.input(1);
  const Tensor& updates = ctx.input(2);
  const int r = data.rank(), q = indices.rank();
  if (q < 1) return ctx.Error("indices must have rank >= 1");
  const int64_t k = indices.shape()[q - 1];
  if (k > r) return ctx.Error("indices.shape[-1] = " + std::to_string(k) + " exceeds the data rank " + std::to_string(r));
  Shape expected(indices.shape().begin(), indices.shape().end() - 1);
  expected.insert(expected.end(), data.shape().begin() + k, data.shape().end());
  if (updates.shape() != expected)
    return ctx.Error("updates shape " + ShapeToString(updates.shape()) + " must be " + ShapeToString(expected) +
                     " (indices.shape[:-1] + data.shape[k:])");
  int64_t tuples = 1, slice = 1;
  for (int d = 0; d < q - 1; ++d) tuples *= indices.shape()[d];
  for (int d = static_cast<int>(k); d < r; ++d) slice *= data.shape()[d];
  const std::vector<int64_t> strides = RowMajorStrides(data.shape());
  const std::vector<int64_t> idx = indices.ToInt64s();
  return RunScatter(ctx, red, data, updates, [&](auto apply) -> Status {
    for (int64_t t = 0; t < tuples; ++t) {
      int64_t off = 0;
      for (int64_t j = 0; j < k; ++j) {
        int64_t v = idx[t * k + j];
        QC_RETURN_IF_ERROR(NormalizeIndex(ctx, v, data.shape()[j], static_cast<int>(j)));
        off += v * strides[j];
      }
      for (int64_t i = 0; i < slice; ++i) apply(off + i, t * slice + i);
    }
    return Status::Ok();
  });
}

Status ScatterElementsRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(3, 3));
  QC_RETURN_IF_ERROR(CheckIndexDType(ctx, 1));
  QC_ASSIGN_OR_RETURN(Reduction red, ParseReduction(ctx));
  const Tensor& data = ctx.input(0);
  const Tensor& indices = ctx.input(1);
  const Tensor& updates = ctx.input(2);
  QC_ASSIGN_OR_RETURN(int axis, CheckElementsShapes(ctx, data, indices));
  if (updates.shape() != indices.shape())
    return ctx.Error("updates shape " + ShapeToString(updates.shape()) + " differs from indices shape " +
                     ShapeToString(indices.shape()));
  const std::vector<int64_t> strides = RowMajorStrides(data.shape());
  const std::vector<int64_t> idx_values = indices.ToInt64s();
  return RunScatter(ctx, red, data, updates, [&](auto apply) -> Status {
    std::vector<int64_t> idx(indices.rank(), 0);
    for (int64_t u = 0; u < indices.numel(); ++u, NextIndex(idx, indices.shape())) {
      int64_t v = idx_values[u];
      QC_RETURN_IF_ERROR(NormalizeIndex(ctx, v, data.shape()[axis], axis));
      int64_t off = 0;
      for (int d = 0; d < data.rank(); ++d) off += (d == axis ? v : idx[d]) * strides[d];
      apply(off, u);
    }
    return Status::Ok();
  });
}

}  // namespace qc
