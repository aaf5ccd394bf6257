// Numpy-style multidirectional broadcasting: the output shape and per-input strides to walk it.
#pragma once

#include <cstdint>
#include <vector>

#include "formats/status.h"
#include "formats/tensor.h"

namespace qc {

/// The shape all of `shapes` broadcast to under numpy rules (right-aligned; each dim equal or 1).
/// The error message lists every shape, e.g. "cannot broadcast shapes [2, 3] and [4]".
StatusOr<Shape> BroadcastShapes(const std::vector<Shape>& shapes);

/// Element strides for reading a row-major tensor of `input_shape` as if it had `output_shape`:
/// one entry per output dim, 0 where the input is broadcast (missing leading dim or size 1).
/// `input_shape` must broadcast to `output_shape` (checked: callers validate with BroadcastShapes).
std::vector<int64_t> BroadcastStrides(const Shape& input_shape, const Shape& output_shape);

/// Walks an N-d output in row-major order, keeping the element offset into each input. Usage:
///   BroadcastCounter it(out_shape, {a.shape(), b.shape()});
///   for (int64_t i = 0; i < n; ++i, it.Next()) out[i] = f(pa[it.offset(0)], pb[it.offset(1)]);
class BroadcastCounter {
 public:
  BroadcastCounter(const Shape& output_shape, const std::vector<Shape>& input_shapes);

  int64_t offset(int input) const { return offsets_[input]; }
  /// Advances to the next output element (wraps to all zeros after the last one).
  void Next();

 private:
  Shape shape_;
  std::vector<std::vector<int64_t>> strides_;  // [input][dim]
  std::vector<int64_t> index_;                 // current output index per dim
  std::vector<int64_t> offsets_;               // current offset per input
};

/// For each output element (row-major), the element offset into a tensor of `input_shape`
/// broadcast to `output_shape`. Convenient for gather-style reference kernels (Expand, Where).
std::vector<int64_t> BroadcastOffsets(const Shape& input_shape, const Shape& output_shape);

}  // namespace qc
