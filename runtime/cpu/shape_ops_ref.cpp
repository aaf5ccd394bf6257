// Reference data-movement kernels (Transpose, Concat, Split, Slice, Expand, Tile, Pad, Trilu, CumSum): plain N-d index loops.
#include <algorithm>
#include <cstring>
#include <string>

#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/dispatch.h"
#include "runtime/cpu/kernel.h"
#include "runtime/cpu/shape_ops_internal.h"

namespace qc {

using shape_ops::CheckOutputShape;
using shape_ops::InputElementBytes;
using shape_ops::kMaxOutputElements;
using shape_ops::NormalizeAxis;
using shape_ops::ReadInts;
using shape_ops::ReadIntScalar;
using shape_ops::RowMajorStrides;

namespace {

// Advances a row-major multi-index over `shape`; returns false after the last element.
bool NextIndex(std::vector<int64_t>& idx, const Shape& shape) {
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    if (++idx[d] < shape[d]) return true;
    idx[d] = 0;
  }
  return false;
}

// dst[o] = src[base + sum_d idx_d * strides[d]] for every output multi-index idx, element by element.
void StridedCopyRef(const Shape& out_shape, const char* src, int64_t base, const std::vector<int64_t>& strides,
                    char* dst, int elem_bytes) {
  const int64_t n = NumElements(out_shape);
  std::vector<int64_t> idx(out_shape.size(), 0);
  for (int64_t o = 0; o < n; ++o, NextIndex(idx, out_shape)) {
    int64_t off = base;
    for (size_t d = 0; d < idx.size(); ++d) off += idx[d] * strides[d];
    std::memcpy(dst + o * elem_bytes, src + off * elem_bytes, elem_bytes);
  }
}

}  // namespace

namespace shape_ops {

StatusOr<TransposePlan> PlanTranspose(const KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 1));
  TransposePlan plan;
  QC_ASSIGN_OR_RETURN(plan.elem_bytes, InputElementBytes(ctx, 0));
  const Tensor& x = ctx.input(0);
  const int r = x.rank();
  std::vector<int64_t> perm;
  if (ctx.node.HasAttr("perm")) {
    perm = ctx.node.GetInts("perm");
  } else {
    for (int i = r - 1; i >= 0; --i) perm.push_back(i);
  }
  if (static_cast<int>(perm.size()) != r)
    return ctx.Error("perm " + ShapeToString(perm) + " has " + std::to_string(perm.size()) +
                     " entries but the input has rank " + std::to_string(r));
  std::vector<bool> seen(r, false);
  for (int64_t p : perm) {
    if (p < 0 || p >= r || seen[p]) return ctx.Error("perm " + ShapeToString(perm) + " is not a permutation of 0.." +
                                                     std::to_string(r - 1));
    seen[p] = true;
    plan.perm.push_back(static_cast<int>(p));
    plan.out_shape.push_back(x.shape()[p]);
  }
  return plan;
}

StatusOr<ConcatPlan> PlanConcat(const KernelContext& ctx) {
  if (ctx.num_inputs() < 1) return ctx.Error("expected at least one input");
  for (int i = 0; i < ctx.num_inputs(); ++i)
    if (!ctx.has_input(i)) return ctx.Error("input " + std::to_string(i) + " is missing");
  if (!ctx.node.HasAttr("axis")) return ctx.Error("attribute 'axis' is required");
  ConcatPlan plan;
  QC_ASSIGN_OR_RETURN(plan.elem_bytes, InputElementBytes(ctx, 0));
  const Tensor& first = ctx.input(0);
  const int r = first.rank();
  if (r == 0) return ctx.Error("cannot concatenate scalars");
  QC_ASSIGN_OR_RETURN(plan.axis, NormalizeAxis(ctx, ctx.node.GetInt("axis", 0), r, "axis"));
  plan.out_shape = first.shape();
  plan.out_shape[plan.axis] = 0;
  for (int i = 0; i < ctx.num_inputs(); ++i) {
    const Tensor& t = ctx.input(i);
    if (t.dtype() != first.dtype())
      return ctx.Error("input " + std::to_string(i) + " has dtype " + DTypeName(t.dtype()) + ", input 0 has " +
                       DTypeName(first.dtype()));
    bool ok = t.rank() == r;
    for (int d = 0; ok && d < r; ++d) ok = d == plan.axis || t.shape()[d] == first.shape()[d];
    if (!ok)
      return ctx.Error("input " + std::to_string(i) + " has shape " + ShapeToString(t.shape()) +
                       ", incompatible with input 0 " + ShapeToString(first.shape()) + " on axis " +
                       std::to_string(plan.axis));
    plan.out_shape[plan.axis] += t.shape()[plan.axis];
    plan.parts.push_back(&t);
  }
  QC_RETURN_IF_ERROR(CheckOutputShape(ctx, plan.out_shape, "output"));
  return plan;
}

StatusOr<SlicePlan> PlanSlice(const KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 5));
  SlicePlan plan;
  QC_ASSIGN_OR_RETURN(plan.elem_bytes, InputElementBytes(ctx, 0));
  const Tensor& x = ctx.input(0);
  const int r = x.rank();
  std::vector<int64_t> starts, ends, axes, steps;
  if (ctx.num_inputs() == 1) {
    // Opset < 10 carried starts/ends/axes as attributes.
    if (!ctx.node.HasAttr("starts") || !ctx.node.HasAttr("ends"))
      return ctx.Error("starts and ends are required (inputs 1 and 2)");
    starts = ctx.node.GetInts("starts");
    ends = ctx.node.GetInts("ends");
    axes = ctx.node.GetInts("axes");
  } else {
    QC_ASSIGN_OR_RETURN(starts, ReadInts(ctx, 1, "starts"));
    QC_ASSIGN_OR_RETURN(ends, ReadInts(ctx, 2, "ends"));
    if (ctx.has_input(3)) {
      QC_ASSIGN_OR_RETURN(axes, ReadInts(ctx, 3, "axes"));
    }
    if (ctx.has_input(4)) {
      QC_ASSIGN_OR_RETURN(steps, ReadInts(ctx, 4, "steps"));
    }
  }
  const size_t n = starts.size();
  if (axes.empty() && !(ctx.has_input(3) || ctx.node.HasAttr("axes")))
    for (size_t i = 0; i < n; ++i) axes.push_back(static_cast<int64_t>(i));
  if (steps.empty() && !ctx.has_input(4)) steps.assign(n, 1);
  if (ends.size() != n || axes.size() != n || steps.size() != n)
    return ctx.Error("starts, ends, axes and steps must have equal lengths, got " + std::to_string(starts.size()) +
                     ", " + std::to_string(ends.size()) + ", " + std::to_string(axes.size()) + ", " +
                     std::to_string(steps.size()));
  plan.out_shape = x.shape();
  plan.starts.assign(r, 0);
  plan.steps.assign(r, 1);
  std::vector<bool> seen(r, false);
  for (size_t i = 0; i < n; ++i) {
    QC_ASSIGN_OR_RETURN(int axis, NormalizeAxis(ctx, axes[i], r, "axis"));
    if (seen[axis]) return ctx.Error("axis " + std::to_string(axes[i]) + " is sliced twice");
    seen[axis] = true;
    const int64_t step = steps[i];
    if (step == 0) return ctx.Error("step for axis " + std::to_string(axes[i]) + " is 0");
    const int64_t dim = x.shape()[axis];
    // Adding dim to a negative value cannot overflow (dim >= 0); clamping follows the spec.
    int64_t s = starts[i] < 0 ? starts[i] + dim : starts[i];
    int64_t e = ends[i] < 0 ? ends[i] + dim : ends[i];
    int64_t len = 0;
    if (dim == 0) {
      s = 0;
    } else if (step > 0) {
      s = std::clamp<int64_t>(s, 0, dim);
      e = std::clamp<int64_t>(e, 0, dim);
      len = e > s ? (e - s - 1) / step + 1 : 0;
    } else {
      s = std::clamp<int64_t>(s, 0, dim - 1);
      e = std::clamp<int64_t>(e, -1, dim - 1);
      // -(step + 1) + 1 is |step| without overflowing for INT64_MIN.
      const uint64_t mag = static_cast<uint64_t>(-(step + 1)) + 1;
      len = s > e ? static_cast<int64_t>(static_cast<uint64_t>(s - e - 1) / mag) + 1 : 0;
    }
    plan.starts[axis] = len > 0 ? s : 0;
    plan.steps[axis] = len > 1 ? step : 1;  // a step that is never taken cannot overflow offsets
    plan.out_shape[axis] = len;
  }
  return plan;
}

StatusOr<ExpandPlan> PlanExpand(const KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(2, 2));
  ExpandPlan plan;
  QC_ASSIGN_OR_RETURN(plan.elem_bytes, InputElementBytes(ctx, 0));
  QC_ASSIGN_OR_RETURN(std::vector<int64_t> dims, ReadInts(ctx, 1, "shape"));
  Shape target(dims.begin(), dims.end());
  for (int64_t d : target)
    if (d < 0) return ctx.Error("shape " + ShapeToString(target) + " has a negative dimension");
  StatusOr<Shape> out = BroadcastShapes({ctx.input(0).shape(), target});
  if (!out.ok()) return ctx.Error(out.status().message());
  plan.out_shape = *out;
  QC_RETURN_IF_ERROR(CheckOutputShape(ctx, plan.out_shape, "output"));
  return plan;
}

StatusOr<SplitPlan> PlanSplit(const KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 2));
  SplitPlan plan;
  QC_ASSIGN_OR_RETURN(plan.elem_bytes, InputElementBytes(ctx, 0));
  const Tensor& x = ctx.input(0);
  if (x.rank() == 0) return ctx.Error("cannot split a scalar");
  QC_ASSIGN_OR_RETURN(plan.axis, NormalizeAxis(ctx, ctx.node.GetInt("axis", 0), x.rank(), "axis"));
  const int axis = plan.axis;
  const int64_t dim = x.shape()[axis];
  const int n_out = ctx.num_outputs();
  if (n_out < 1) return ctx.Error("expected at least one output");
  std::vector<int64_t>& sizes = plan.sizes;
  if (ctx.has_input(1)) {
    QC_ASSIGN_OR_RETURN(sizes, ReadInts(ctx, 1, "split"));
  } else {
    sizes = ctx.node.GetInts("split");  // opset < 13
  }
  // An empty split list counts as not given (ONNX Runtime's reading): equal parts.
  if (!sizes.empty()) {
    if (static_cast<int>(sizes.size()) != n_out)
      return ctx.Error("split " + ShapeToString(sizes) + " has " + std::to_string(sizes.size()) + " entries for " +
                       std::to_string(n_out) + " outputs");
    int64_t sum = 0;
    for (int64_t s : sizes) {
      if (s < 0 || s > dim) return ctx.Error("split " + ShapeToString(sizes) + " has an invalid size");
      sum += s;
    }
    if (sum != dim)
      return ctx.Error("split " + ShapeToString(sizes) + " sums to " + std::to_string(sum) + " but axis " +
                       std::to_string(axis) + " has size " + std::to_string(dim));
  } else {
    int64_t parts = n_out;
    if (ctx.node.HasAttr("num_outputs")) {
      parts = ctx.node.GetInt("num_outputs", 0);
      if (parts != n_out)
        return ctx.Error("num_outputs is " + std::to_string(parts) + " but the node has " + std::to_string(n_out) +
                         " outputs");
    }
    if (dim % parts == 0) {
      sizes.assign(parts, dim / parts);
    } else if (ctx.node.HasAttr("num_outputs") || ctx.opset >= 18) {
      // Opset 18: chunks of ceil(dim / parts), the last one smaller.
      const int64_t chunk = dim / parts + 1;
      sizes.assign(parts, chunk);
      sizes.back() = dim - chunk * (parts - 1);
      if (sizes.back() < 0)
        return ctx.Error("cannot split axis of size " + std::to_string(dim) + " into " + std::to_string(parts) +
                         " chunks of " + std::to_string(chunk));
    } else {
      return ctx.Error("axis of size " + std::to_string(dim) + " does not split evenly into " +
                       std::to_string(parts) + " outputs");
    }
  }
  return plan;
}

}  // namespace shape_ops

Status TransposeRef(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(shape_ops::TransposePlan plan, shape_ops::PlanTranspose(ctx));
  const Tensor& x = ctx.input(0);
  const std::vector<int64_t> in_strides = RowMajorStrides(x.shape());
  std::vector<int64_t> strides;
  for (int p : plan.perm) strides.push_back(in_strides[p]);
  Tensor out(x.dtype(), plan.out_shape);
  StridedCopyRef(plan.out_shape, static_cast<const char*>(x.raw()), 0, strides, static_cast<char*>(out.mutable_raw()),
                 plan.elem_bytes);
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

Status ConcatRef(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(shape_ops::ConcatPlan plan, shape_ops::PlanConcat(ctx));
  Tensor out(plan.parts[0]->dtype(), plan.out_shape);
  char* dst = static_cast<char*>(out.mutable_raw());
  const int es = plan.elem_bytes;
  const int64_t n = out.numel();
  std::vector<std::vector<int64_t>> part_strides;
  for (const Tensor* part : plan.parts) part_strides.push_back(RowMajorStrides(part->shape()));
  std::vector<int64_t> idx(plan.out_shape.size(), 0);
  for (int64_t o = 0; o < n; ++o, NextIndex(idx, plan.out_shape)) {
    // Find the input holding this position along the axis.
    int64_t along = idx[plan.axis];
    size_t p = 0;
    while (along >= plan.parts[p]->shape()[plan.axis]) along -= plan.parts[p++]->shape()[plan.axis];
    const Tensor& part = *plan.parts[p];
    const std::vector<int64_t>& strides = part_strides[p];
    int64_t off = 0;
    for (size_t d = 0; d < idx.size(); ++d) off += (static_cast<int>(d) == plan.axis ? along : idx[d]) * strides[d];
    std::memcpy(dst + o * es, static_cast<const char*>(part.raw()) + off * es, es);
  }
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

Status SplitRef(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(shape_ops::SplitPlan plan, shape_ops::PlanSplit(ctx));
  const Tensor& x = ctx.input(0);
  const int axis = plan.axis;
  const int es = plan.elem_bytes;
  const int64_t dim = x.shape()[axis];
  const std::vector<int64_t>& sizes = plan.sizes;
  const int n_out = static_cast<int>(sizes.size());
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; ++d) outer *= x.shape()[d];
  for (int d = axis + 1; d < x.rank(); ++d) inner *= x.shape()[d];
  const char* src = static_cast<const char*>(x.raw());
  int64_t begin = 0;
  for (int i = 0; i < n_out; ++i) {
    Shape shape = x.shape();
    shape[axis] = sizes[i];
    Tensor out(x.dtype(), shape);
    char* dst = static_cast<char*>(out.mutable_raw());
    const int64_t row = sizes[i] * inner * es;
    for (int64_t o = 0; o < outer && row > 0; ++o)
      std::memcpy(dst + o * row, src + (o * dim + begin) * inner * es, row);
    begin += sizes[i];
    ctx.outputs[i] = std::move(out);
  }
  return Status::Ok();
}

Status SliceRef(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(shape_ops::SlicePlan plan, shape_ops::PlanSlice(ctx));
  const Tensor& x = ctx.input(0);
  const std::vector<int64_t> in_strides = RowMajorStrides(x.shape());
  int64_t base = 0;
  std::vector<int64_t> strides(x.rank());
  for (int d = 0; d < x.rank(); ++d) {
    base += plan.starts[d] * in_strides[d];
    strides[d] = plan.steps[d] * in_strides[d];
  }
  Tensor out(x.dtype(), plan.out_shape);
  if (out.numel() > 0)
    StridedCopyRef(plan.out_shape, static_cast<const char*>(x.raw()), base, strides,
                   static_cast<char*>(out.mutable_raw()), plan.elem_bytes);
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

Status ExpandRef(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(shape_ops::ExpandPlan plan, shape_ops::PlanExpand(ctx));
  const Tensor& x = ctx.input(0);
  Tensor out(x.dtype(), plan.out_shape);
  StridedCopyRef(plan.out_shape, static_cast<const char*>(x.raw()), 0, BroadcastStrides(x.shape(), plan.out_shape),
                 static_cast<char*>(out.mutable_raw()), plan.elem_bytes);
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

Status TileRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(2, 2));
  QC_ASSIGN_OR_RETURN(int es, InputElementBytes(ctx, 0));
  const Tensor& x = ctx.input(0);
  QC_ASSIGN_OR_RETURN(std::vector<int64_t> repeats, ReadInts(ctx, 1, "repeats"));
  if (static_cast<int>(repeats.size()) != x.rank())
    return ctx.Error("repeats has " + std::to_string(repeats.size()) + " entries but the input has rank " +
                     std::to_string(x.rank()));
  Shape shape = x.shape();
  for (int d = 0; d < x.rank(); ++d) {
    if (repeats[d] < 0) return ctx.Error("repeats " + ShapeToString(repeats) + " has a negative entry");
    if (shape[d] > 0 && repeats[d] > kMaxOutputElements / shape[d])
      return ctx.Error("repeats " + ShapeToString(repeats) + " make the output larger than 2^34 elements");
    shape[d] *= repeats[d];
  }
  QC_RETURN_IF_ERROR(CheckOutputShape(ctx, shape, "output"));
  Tensor out(x.dtype(), shape);
  const char* src = static_cast<const char*>(x.raw());
  char* dst = static_cast<char*>(out.mutable_raw());
  const std::vector<int64_t> in_strides = RowMajorStrides(x.shape());
  std::vector<int64_t> idx(shape.size(), 0);
  for (int64_t o = 0; o < out.numel(); ++o, NextIndex(idx, shape)) {
    int64_t off = 0;
    for (int d = 0; d < x.rank(); ++d) off += (idx[d] % x.shape()[d]) * in_strides[d];
    std::memcpy(dst + o * es, src + off * es, es);
  }
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

Status PadRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 4));
  QC_ASSIGN_OR_RETURN(int es, InputElementBytes(ctx, 0));
  const Tensor& x = ctx.input(0);
  const int r = x.rank();
  const std::string mode = ctx.node.GetString("mode", "constant");
  if (mode != "constant" && mode != "reflect" && mode != "edge" && mode != "wrap")
    return ctx.Error("unknown mode '" + mode + "' (expected constant, reflect, edge or wrap)");
  std::vector<int64_t> pads;
  if (ctx.has_input(1)) {
    QC_ASSIGN_OR_RETURN(pads, ReadInts(ctx, 1, "pads"));
  } else if (ctx.node.HasAttr("pads")) {
    pads = ctx.node.GetInts("pads");  // opset < 11
  } else {
    return ctx.Error("pads are required (input 1)");
  }
  std::vector<int> axes;
  if (ctx.has_input(3)) {
    QC_ASSIGN_OR_RETURN(std::vector<int64_t> raw_axes, ReadInts(ctx, 3, "axes"));
    std::vector<bool> seen(r, false);
    for (int64_t a : raw_axes) {
      QC_ASSIGN_OR_RETURN(int axis, NormalizeAxis(ctx, a, r, "axis"));
      if (seen[axis]) return ctx.Error("axis " + std::to_string(a) + " is listed twice");
      seen[axis] = true;
      axes.push_back(axis);
    }
  } else {
    for (int d = 0; d < r; ++d) axes.push_back(d);
  }
  if (pads.size() != 2 * axes.size())
    return ctx.Error("pads has " + std::to_string(pads.size()) + " entries, expected " +
                     std::to_string(2 * axes.size()) + " (begin and end for each padded axis)");
  std::vector<int64_t> pad_begin(r, 0), pad_end(r, 0);
  for (size_t i = 0; i < axes.size(); ++i) {
    pad_begin[axes[i]] = pads[i];
    pad_end[axes[i]] = pads[i + axes.size()];
  }
  Shape shape(r);
  for (int d = 0; d < r; ++d) {
    const int64_t dim = x.shape()[d];
    // Negative pads crop; cropping more than the axis, or padding past the size limit, is invalid.
    if (pad_begin[d] < -dim || pad_end[d] < -dim || pad_begin[d] > kMaxOutputElements ||
        pad_end[d] > kMaxOutputElements)
      return ctx.Error("pads " + ShapeToString(pads) + " are out of range for input " + ShapeToString(x.shape()));
    shape[d] = dim + pad_begin[d] + pad_end[d];
    if (shape[d] < 0)
      return ctx.Error("pads " + ShapeToString(pads) + " crop axis " + std::to_string(d) + " below size 0");
  }
  QC_RETURN_IF_ERROR(CheckOutputShape(ctx, shape, "output"));

  std::vector<char> value(es, 0);
  if (ctx.has_input(2)) {
    const Tensor& v = ctx.input(2);
    if (v.dtype() != x.dtype()) return ctx.Error("constant_value dtype must match the input's");
    if (v.numel() > 1) return ctx.Error("constant_value must be a scalar");
    if (v.numel() == 1) std::memcpy(value.data(), v.raw(), es);
  } else if (ctx.node.HasAttr("value")) {
    const float f = ctx.node.GetFloat("value", 0.0f);  // opset < 11
    if (x.dtype() == DType::kFloat16 || x.dtype() == DType::kBFloat16) {
      const uint16_t bits = x.dtype() == DType::kFloat16 ? FloatToHalf(f) : FloatToBFloat16(f);
      std::memcpy(value.data(), &bits, 2);
    } else {
      DispatchNumeric(x.dtype(), [&](auto tag) {
        using T = typename decltype(tag)::type;
        const T t = static_cast<T>(f);
        std::memcpy(value.data(), &t, sizeof(T));
      });
    }
  }

  // Per axis, the input coordinate each output coordinate reads, or -1 for the constant.
  std::vector<std::vector<int64_t>> source(r);
  for (int d = 0; d < r; ++d) {
    const int64_t dim = x.shape()[d];
    const int64_t lo = std::max<int64_t>(0, -pad_begin[d]);
    const int64_t hi = dim - std::max<int64_t>(0, -pad_end[d]);
    const int64_t kept = hi - lo;
    if (mode != "constant" && kept <= 0 && shape[d] > 0)
      return ctx.Error("cannot " + mode + "-pad axis " + std::to_string(d) + ", which has no elements");
    source[d].resize(shape[d]);
    for (int64_t o = 0; o < shape[d]; ++o) {
      const int64_t c = o - pad_begin[d];
      int64_t src = c;
      if (c < 0 || c >= dim) {
        const int64_t y = c - lo;  // position relative to the kept range
        if (mode == "constant") {
          src = -1;
        } else if (mode == "edge") {
          src = std::clamp<int64_t>(c, lo, hi - 1);
        } else if (mode == "wrap") {
          src = lo + ((y % kept) + kept) % kept;
        } else if (kept == 1) {
          src = lo;
        } else {
          // Reflection without repeating the edge is periodic with period 2 * (kept - 1).
          const int64_t period = 2 * (kept - 1);
          int64_t m = ((y % period) + period) % period;
          if (m >= kept) m = period - m;
          src = lo + m;
        }
      }
      source[d][o] = src;
    }
  }
  Tensor out(x.dtype(), shape);
  const char* in = static_cast<const char*>(x.raw());
  char* dst = static_cast<char*>(out.mutable_raw());
  const std::vector<int64_t> in_strides = RowMajorStrides(x.shape());
  std::vector<int64_t> idx(r, 0);
  for (int64_t o = 0; o < out.numel(); ++o, NextIndex(idx, shape)) {
    int64_t off = 0;
    bool constant = false;
    for (int d = 0; d < r && !constant; ++d) {
      const int64_t s = source[d][idx[d]];
      constant = s < 0;
      off += s * in_strides[d];
    }
    std::memcpy(dst + o * es, constant ? value.data() : in + off * es, es);
  }
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

Status TriluRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 2));
  QC_ASSIGN_OR_RETURN(int es, InputElementBytes(ctx, 0));
  const Tensor& x = ctx.input(0);
  if (x.rank() < 2) return ctx.Error("input must have rank >= 2, got shape " + ShapeToString(x.shape()));
  int64_t k = 0;
  if (ctx.has_input(1)) {
    QC_ASSIGN_OR_RETURN(k, ReadIntScalar(ctx, 1, "k"));
  }
  const bool upper = ctx.node.GetInt("upper", 1) != 0;
  const int64_t rows = x.dim(-2), cols = x.dim(-1);
  // Clamping k just past the matrix keeps j - i comparisons exact and overflow-free.
  k = std::clamp<int64_t>(k, -rows - 1, cols + 1);
  Tensor out(x.dtype(), x.shape());
  const char* src = static_cast<const char*>(x.raw());
  char* dst = static_cast<char*>(out.mutable_raw());
  const int64_t batches = rows * cols == 0 ? 0 : x.numel() / (rows * cols);
  for (int64_t b = 0; b < batches; ++b)
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) {
        const bool keep = upper ? j - i >= k : j - i <= k;
        const int64_t off = (b * rows + i) * cols + j;
        if (keep) std::memcpy(dst + off * es, src + off * es, es);
      }
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

Status CumSumRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(2, 2));
  const Tensor& x = ctx.input(0);
  QC_ASSIGN_OR_RETURN(int64_t raw_axis, ReadIntScalar(ctx, 1, "axis"));
  QC_ASSIGN_OR_RETURN(int axis, NormalizeAxis(ctx, raw_axis, x.rank(), "axis"));
  const bool exclusive = ctx.node.GetInt("exclusive", 0) != 0;
  const bool reverse = ctx.node.GetInt("reverse", 0) != 0;
  int64_t outer = 1, len = x.shape()[axis], inner = 1;
  for (int d = 0; d < axis; ++d) outer *= x.shape()[d];
  for (int d = axis + 1; d < x.rank(); ++d) inner *= x.shape()[d];
  if (x.dtype() == DType::kBool) return ctx.UnsupportedDType(x.dtype());
  Tensor out(x.dtype(), x.shape());
  if (!DispatchNumeric(x.dtype(), [&](auto tag) {
        using T = typename decltype(tag)::type;
        const T* in = x.data<T>();
        T* y = out.mutable_data<T>();
        for (int64_t o = 0; o < outer; ++o)
          for (int64_t i = 0; i < inner; ++i) {
            T sum = T(0);
            for (int64_t s = 0; s < len; ++s) {
              const int64_t a = reverse ? len - 1 - s : s;
              const int64_t off = (o * len + a) * inner + i;
              if (exclusive) {
                y[off] = sum;
                sum = shape_ops::WrapAdd(sum, in[off]);
              } else {
                sum = shape_ops::WrapAdd(sum, in[off]);
                y[off] = sum;
              }
            }
          }
      })) {
    return ctx.UnsupportedDType(x.dtype());
  }
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

}  // namespace qc
