// Shared validation helpers of the shape and data-movement kernels.
#include "runtime/cpu/shape_ops_internal.h"

namespace qc::shape_ops {

int ElementBytes(DType t) {
  int bits = DTypeBits(t);
  if (bits != 8 && bits != 16 && bits != 32 && bits != 64) return 0;
  return bits / 8;
}

StatusOr<int> InputElementBytes(const KernelContext& ctx, int i) {
  int bytes = ElementBytes(ctx.input(i).dtype());
  if (bytes == 0) return ctx.UnsupportedDType(ctx.input(i).dtype());
  return bytes;
}

Status CheckOutputShape(const KernelContext& ctx, const Shape& shape, const std::string& what) {
  int64_t count = 1;
  bool empty = false;
  for (int64_t d : shape) {
    if (d < 0) return ctx.Error(what + " shape " + ShapeToString(shape) + " has a negative dimension");
    if (d == 0) empty = true;
  }
  if (empty) return Status::Ok();
  for (int64_t d : shape) {
    // count * d > limit, tested without overflowing.
    if (d > kMaxOutputElements / count)
      return ctx.Error(what + " shape " + ShapeToString(shape) + " has more than 2^34 elements");
    count *= d;
  }
  return Status::Ok();
}

StatusOr<int> NormalizeAxis(const KernelContext& ctx, int64_t axis, int rank, const std::string& what,
                            bool allow_end) {
  int64_t hi = allow_end ? rank : rank - 1;
  if (axis < -rank || axis > hi)
    return ctx.Error(what + " " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank) +
                     " (expected [" + std::to_string(-rank) + ", " + std::to_string(hi) + "])");
  return static_cast<int>(axis < 0 ? axis + rank : axis);
}

StatusOr<std::vector<int64_t>> ReadInts(const KernelContext& ctx, int i, const std::string& what) {
  if (!ctx.has_input(i)) return ctx.Error("missing input '" + what + "'");
  const Tensor& t = ctx.input(i);
  if (t.dtype() != DType::kInt64 && t.dtype() != DType::kInt32)
    return ctx.Error("input '" + what + "' must be int64 or int32, got " + DTypeName(t.dtype()));
  if (t.rank() > 1)
    return ctx.Error("input '" + what + "' must be 1-D, got shape " + ShapeToString(t.shape()));
  return t.ToInt64s();
}

StatusOr<int64_t> ReadIntScalar(const KernelContext& ctx, int i, const std::string& what) {
  QC_ASSIGN_OR_RETURN(std::vector<int64_t> v, ReadInts(ctx, i, what));
  if (v.size() != 1)
    return ctx.Error("input '" + what + "' must hold exactly one value, got shape " +
                     ShapeToString(ctx.input(i).shape()));
  return v[0];
}

std::vector<int64_t> RowMajorStrides(const Shape& shape) {
  std::vector<int64_t> strides(shape.size(), 1);
  for (int i = static_cast<int>(shape.size()) - 2; i >= 0; --i) strides[i] = strides[i + 1] * shape[i + 1];
  return strides;
}

}  // namespace qc::shape_ops
