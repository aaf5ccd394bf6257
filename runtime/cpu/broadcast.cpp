// Numpy-style broadcasting helpers shared by the elementwise and shape kernels.
#include "runtime/cpu/broadcast.h"

#include <algorithm>
#include <string>

namespace qc {

namespace {
std::string ListShapes(const std::vector<Shape>& shapes) {
  std::string s;
  for (size_t i = 0; i < shapes.size(); ++i) {
    if (i > 0) s += (i + 1 == shapes.size()) ? " and " : ", ";
    s += ShapeToString(shapes[i]);
  }
  return s;
}
}  // namespace

StatusOr<Shape> BroadcastShapes(const std::vector<Shape>& shapes) {
  size_t rank = 0;
  for (const Shape& s : shapes) rank = std::max(rank, s.size());
  Shape out(rank, 1);
  for (const Shape& s : shapes) {
    for (size_t i = 0; i < s.size(); ++i) {
      int64_t d = s[i];
      if (d < 0) return InvalidArgument("negative dimension in shape " + ShapeToString(s));
      int64_t& o = out[rank - s.size() + i];
      // Dims start at 1; a first non-1 dim sets the size (0 included), others must agree.
      if (d == 1 || d == o) continue;
      if (o == 1) {
        o = d;
      } else {
        return InvalidArgument("cannot broadcast shapes " + ListShapes(shapes) + " (dimension " +
                               std::to_string(static_cast<int64_t>(i) - static_cast<int64_t>(s.size())) +
                               ": " + std::to_string(o) + " vs " + std::to_string(d) + ")");
      }
    }
  }
  // Dims from different inputs multiply: [2^40, 1] and [1, 2^40] are small inputs whose broadcast
  // overflows int64 (reject it rather than let NumElements wrap).
  int64_t count = 1;
  bool empty = false, overflow = false;
  for (int64_t d : out) {
    if (d == 0) empty = true;
    else if (!overflow) overflow = __builtin_mul_overflow(count, d, &count);
  }
  if (overflow && !empty)
    return InvalidArgument("broadcast of shapes " + ListShapes(shapes) + " has too many elements");
  return out;
}

std::vector<int64_t> BroadcastStrides(const Shape& input_shape, const Shape& output_shape) {
  QC_CHECK(input_shape.size() <= output_shape.size());
  const size_t rank = output_shape.size();
  const size_t lead = rank - input_shape.size();
  std::vector<int64_t> strides(rank, 0);
  int64_t stride = 1;
  for (size_t i = input_shape.size(); i-- > 0;) {
    QC_CHECK(input_shape[i] == output_shape[lead + i] || input_shape[i] == 1);
    strides[lead + i] = input_shape[i] == 1 ? 0 : stride;
    stride *= input_shape[i];
  }
  return strides;
}

BroadcastCounter::BroadcastCounter(const Shape& output_shape, const std::vector<Shape>& input_shapes)
    : shape_(output_shape), index_(output_shape.size(), 0), offsets_(input_shapes.size(), 0) {
  strides_.reserve(input_shapes.size());
  for (const Shape& s : input_shapes) strides_.push_back(BroadcastStrides(s, output_shape));
}

void BroadcastCounter::Next() {
  // Odometer increment: bump the innermost dim; on wrap, rewind it and carry outward.
  for (size_t d = shape_.size(); d-- > 0;) {
    if (++index_[d] < shape_[d]) {
      for (size_t k = 0; k < offsets_.size(); ++k) offsets_[k] += strides_[k][d];
      return;
    }
    for (size_t k = 0; k < offsets_.size(); ++k) offsets_[k] -= strides_[k][d] * (shape_[d] - 1);
    index_[d] = 0;
  }
}

std::vector<int64_t> BroadcastOffsets(const Shape& input_shape, const Shape& output_shape) {
  const int64_t n = NumElements(output_shape);
  std::vector<int64_t> offsets(static_cast<size_t>(n));
  BroadcastCounter it(output_shape, {input_shape});
  for (int64_t i = 0; i < n; ++i, it.Next()) offsets[i] = it.offset(0);
  return offsets;
}

}  // namespace qc
