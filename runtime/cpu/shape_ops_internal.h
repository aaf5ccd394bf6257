// Helpers and validated "plans" shared by the reference and fast shape/data-movement kernels.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "formats/status.h"
#include "formats/tensor.h"
#include "runtime/cpu/kernel.h"

namespace qc::shape_ops {

/// Outputs above this many elements (2^34, 64 GiB of float32) are refused before allocating:
/// such a size only comes from a corrupt or hostile shape value in a model file.
inline constexpr int64_t kMaxOutputElements = int64_t{1} << 34;

/// Bytes per element for dtypes data movement can copy whole (1, 2, 4 or 8); 0 for the packed
/// 4-bit types, strings and undefined.
int ElementBytes(DType t);
/// ElementBytes of input `i`, or an Unimplemented error naming the node for uncopyable dtypes.
StatusOr<int> InputElementBytes(const KernelContext& ctx, int i);

/// Checks every dim is >= 0 and the element count stays <= kMaxOutputElements (overflow-safe).
/// `what` names the tensor in the message ("output", "repeats result").
Status CheckOutputShape(const KernelContext& ctx, const Shape& shape, const std::string& what);

/// Maps `axis` in [-rank, rank) (or [-rank, rank] when `allow_end`) to [0, rank).
StatusOr<int> NormalizeAxis(const KernelContext& ctx, int64_t axis, int rank, const std::string& what,
                            bool allow_end = false);

/// Reads input `i` (int32 or int64, scalar or 1-D) as int64 values.
StatusOr<std::vector<int64_t>> ReadInts(const KernelContext& ctx, int i, const std::string& what);
/// Reads input `i` as a single integer (a scalar or a 1-element tensor, int32 or int64).
StatusOr<int64_t> ReadIntScalar(const KernelContext& ctx, int i, const std::string& what);

/// Row-major element strides of `shape`.
std::vector<int64_t> RowMajorStrides(const Shape& shape);

/// a + b and a * b with two's-complement wrap-around for integers (signed overflow is undefined
/// behaviour in C++, and a model's int64 cumulative sums may overflow); logical or/and for bool.
template <typename T>
T WrapAdd(T a, T b) {
  if constexpr (std::is_same_v<T, bool>) {
    return a || b;
  } else if constexpr (std::is_integral_v<T>) {
    return static_cast<T>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
  } else {
    return a + b;
  }
}
template <typename T>
T WrapMul(T a, T b) {
  if constexpr (std::is_same_v<T, bool>) {
    return a && b;
  } else if constexpr (std::is_integral_v<T>) {
    return static_cast<T>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
  } else {
    return a * b;
  }
}

/// Fast kernels go parallel only above this many elements: below ~256K the OpenMP fork/join
/// costs more than the copy itself.
inline constexpr int64_t kParallelMinElements = int64_t{1} << 18;

/// Number of Range elements, max(ceil((limit - start) / delta), 0), or an error.
template <typename T>
StatusOr<int64_t> RangeCount(const KernelContext& ctx, T start, T limit, T delta) {
  if (delta == T(0)) return ctx.Error("delta must not be zero");
  if constexpr (std::is_floating_point_v<T>) {
    const double n = std::ceil((static_cast<double>(limit) - static_cast<double>(start)) / static_cast<double>(delta));
    if (std::isnan(n)) return ctx.Error("start, limit and delta give an undefined element count");
    if (n <= 0) return int64_t{0};
    if (n > static_cast<double>(kMaxOutputElements))
      return ctx.Error("Range would produce more than 2^34 elements");
    return static_cast<int64_t>(n);
  } else {
    const __int128 num = static_cast<__int128>(limit) - static_cast<__int128>(start);
    __int128 q = num / delta;
    if (num % delta != 0 && ((num > 0) == (delta > 0))) q += 1;
    if (q <= 0) return int64_t{0};
    if (q > kMaxOutputElements) return ctx.Error("Range would produce more than 2^34 elements");
    return static_cast<int64_t>(q);
  }
}

// ---- Plans: everything validated once, then executed by the reference or the fast kernel. ----

struct TransposePlan {
  Shape out_shape;
  std::vector<int> perm;  // out dim j reads input dim perm[j]
  int elem_bytes = 0;
};
StatusOr<TransposePlan> PlanTranspose(const KernelContext& ctx);

struct ConcatPlan {
  Shape out_shape;
  int axis = 0;
  int elem_bytes = 0;
  std::vector<const Tensor*> parts;  // inputs in order (all present)
};
StatusOr<ConcatPlan> PlanConcat(const KernelContext& ctx);

struct SlicePlan {
  Shape out_shape;
  std::vector<int64_t> starts;  // per input dim, already clamped
  std::vector<int64_t> steps;   // per input dim (1 for unsliced dims)
  int elem_bytes = 0;
};
StatusOr<SlicePlan> PlanSlice(const KernelContext& ctx);

struct GatherPlan {
  Shape out_shape;
  int axis = 0;
  int elem_bytes = 0;
  std::vector<int64_t> indices;  // normalised to [0, dim(axis))
};
StatusOr<GatherPlan> PlanGather(const KernelContext& ctx);

struct ExpandPlan {
  Shape out_shape;
  int elem_bytes = 0;
};
StatusOr<ExpandPlan> PlanExpand(const KernelContext& ctx);

struct SplitPlan {
  int axis = 0;
  int elem_bytes = 0;
  std::vector<int64_t> sizes;  // one per output, summing to dim(axis)
};
StatusOr<SplitPlan> PlanSplit(const KernelContext& ctx);

}  // namespace qc::shape_ops
