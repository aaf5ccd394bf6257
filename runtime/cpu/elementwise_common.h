// Internal helpers of the elementwise kernels: dtype dispatch over the 16-bit floats too, the math
// type each storage type computes in, and the broadcasting loops of the reference kernels.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "formats/dtype.h"
#include "formats/status.h"
#include "formats/tensor.h"
#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/dispatch.h"
#include "runtime/cpu/kernel.h"

namespace qc::elementwise {

// ---- Type categories and dispatch -------------------------------------------------------------

template <typename T>
inline constexpr bool kIsHalf = std::is_same_v<T, Float16> || std::is_same_v<T, BFloat16>;
/// float, double, float16, bfloat16.
template <typename T>
inline constexpr bool kIsFloat = std::is_floating_point_v<T> || kIsHalf<T>;
template <typename T>
inline constexpr bool kIsBool = std::is_same_v<T, bool>;
/// Integer types excluding bool.
template <typename T>
inline constexpr bool kIsInt = std::is_integral_v<T> && !kIsBool<T>;
template <typename T>
inline constexpr bool kIsSignedInt = kIsInt<T> && std::is_signed_v<T>;

/// Which element types an op accepts.
enum class Types {
  kFloat,         // float32/64, float16, bfloat16
  kSigned,        // kFloat + signed integers
  kNumeric,       // kFloat + all integers
  kNumericBool,   // kNumeric + bool
  kBool,          // bool only
  kUnsignedInt,   // uint8..uint64
};

template <Types C, typename T>
constexpr bool Accepts() {
  switch (C) {
    case Types::kFloat: return kIsFloat<T>;
    case Types::kSigned: return kIsFloat<T> || kIsSignedInt<T>;
    case Types::kNumeric: return kIsFloat<T> || kIsInt<T>;
    case Types::kNumericBool: return true;
    case Types::kBool: return kIsBool<T>;
    case Types::kUnsignedInt: return kIsInt<T> && !std::is_signed_v<T>;
  }
  return false;
}

/// Calls fn(TypeTag<T>{}) for every supported storage type incl. Float16/BFloat16; false otherwise.
template <typename Fn>
bool DispatchAll(DType dtype, Fn&& fn) {
  if (dtype == DType::kFloat16) {
    fn(TypeTag<Float16>{});
    return true;
  }
  if (dtype == DType::kBFloat16) {
    fn(TypeTag<BFloat16>{});
    return true;
  }
  return DispatchNumeric(dtype, fn);
}

/// DispatchAll restricted to the types of category C (fn is only instantiated for those).
template <Types C, typename Fn>
bool Dispatch(DType dtype, Fn&& fn) {
  bool accepted = false;
  DispatchAll(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (Accepts<C, T>()) {
      fn(tag);
      accepted = true;
    }
  });
  return accepted;
}

// ---- Math type: the type a storage type computes in ----------------------------------------------

template <typename T>
struct MathTypeOf {
  using type = T;
};
// The 16-bit floats compute in float32 and round once on store, as ONNX Runtime does.
template <>
struct MathTypeOf<Float16> {
  using type = float;
};
template <>
struct MathTypeOf<BFloat16> {
  using type = float;
};
template <typename T>
using MathT = typename MathTypeOf<T>::type;

template <typename T>
inline MathT<T> Load(T v) {
  if constexpr (std::is_same_v<T, Float16>) {
    return HalfToFloat(v.bits);
  } else if constexpr (std::is_same_v<T, BFloat16>) {
    return BFloat16ToFloat(v.bits);
  } else {
    return v;
  }
}

template <typename T>
inline T Store(MathT<T> v) {
  if constexpr (std::is_same_v<T, Float16>) {
    return Float16{FloatToHalf(v)};
  } else if constexpr (std::is_same_v<T, BFloat16>) {
    return BFloat16{FloatToBFloat16(v)};
  } else {
    return v;
  }
}

template <typename V>
inline bool IsNaNValue(V v) {
  if constexpr (std::is_floating_point_v<V>) {
    return std::isnan(v);
  } else {
    return false;
  }
}

/// Floating -> integer conversion that is defined for every input: truncation toward zero (ONNX),
/// saturating at the integer's range, NaN -> 0. (C++ leaves out-of-range conversion undefined.)
template <typename To, typename From>
inline To SaturateCast(From v) {
  if constexpr (std::is_floating_point_v<From> && std::is_integral_v<To> && !kIsBool<To>) {
    if (std::isnan(v)) return 0;
    // 2^bits bounds are exact in floating point; compare against them rather than To's max,
    // which float cannot represent for 32/64-bit integers.
    constexpr long double kHi = static_cast<long double>(std::numeric_limits<To>::max()) + 1.0L;
    constexpr long double kLo = static_cast<long double>(std::numeric_limits<To>::lowest());
    const long double x = static_cast<long double>(v);
    if (x >= kHi) return std::numeric_limits<To>::max();
    if (x <= kLo) return std::numeric_limits<To>::lowest();
    return static_cast<To>(v);
  } else {
    return static_cast<To>(v);
  }
}

/// Wrapping integer arithmetic (ONNX integer ops wrap; signed overflow is UB in C++).
template <typename T>
inline T WrapAdd(T a, T b) {
  return static_cast<T>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}
template <typename T>
inline T WrapSub(T a, T b) {
  return static_cast<T>(static_cast<uint64_t>(a) - static_cast<uint64_t>(b));
}
template <typename T>
inline T WrapMul(T a, T b) {
  return static_cast<T>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
}
template <typename T>
inline T WrapNeg(T a) {
  return static_cast<T>(uint64_t{0} - static_cast<uint64_t>(a));
}

// ---- Validation ------------------------------------------------------------------------------

/// Exactly `n` inputs, all present, and at least one output.
Status RequireInputs(const KernelContext& ctx, int n);
/// Between `min` and `max` inputs with the first `min` present, and at least one output.
Status RequireInputRange(const KernelContext& ctx, int min, int max);
/// All present inputs in `indices` share input(indices[0])'s dtype.
Status RequireSameDType(const KernelContext& ctx, const std::vector<int>& indices);
/// BroadcastShapes with the node named in the error.
StatusOr<Shape> BroadcastInputs(const KernelContext& ctx, const std::vector<int>& indices);

// ---- Reference loops ---------------------------------------------------------------------------

/// out[i] = f(a[bcast i], b[bcast i]) over out's shape, for storage types A, B, Out.
template <typename A, typename B, typename Out, typename F>
void BinaryLoop(const Tensor& a, const Tensor& b, Tensor& out, F&& f) {
  const A* pa = a.data<A>();
  const B* pb = b.data<B>();
  Out* po = out.mutable_data<Out>();
  const int64_t n = out.numel();
  if (a.shape() == out.shape() && b.shape() == out.shape()) {
    for (int64_t i = 0; i < n; ++i) po[i] = f(pa[i], pb[i]);
    return;
  }
  BroadcastCounter it(out.shape(), {a.shape(), b.shape()});
  for (int64_t i = 0; i < n; ++i, it.Next()) po[i] = f(pa[it.offset(0)], pb[it.offset(1)]);
}

/// out[i] = f(x[i]) for storage types In, Out.
template <typename In, typename Out, typename F>
void UnaryLoop(const Tensor& x, Tensor& out, F&& f) {
  const In* px = x.data<In>();
  Out* po = out.mutable_data<Out>();
  const int64_t n = x.numel();
  for (int64_t i = 0; i < n; ++i) po[i] = f(px[i]);
}

/// Applies a math-type function `f` (generic over float/double/integers) to every element of
/// input 0 for the types of category C; the output has the input's dtype. Input 0 must exist.
template <Types C, typename F>
Status UnaryMathOnInput0(KernelContext& ctx, F&& f) {
  const Tensor& x = ctx.input(0);
  Tensor y(x.dtype(), x.shape());
  const bool ok = Dispatch<C>(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    UnaryLoop<T, T>(x, y, [&](T v) { return Store<T>(static_cast<MathT<T>>(f(Load(v)))); });
  });
  if (!ok) return ctx.UnsupportedDType(x.dtype());
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

/// UnaryMathOnInput0 after checking the node has exactly one input.
template <Types C, typename F>
Status UnaryMathRef(KernelContext& ctx, F&& f) {
  QC_RETURN_IF_ERROR(RequireInputs(ctx, 1));
  return UnaryMathOnInput0<C>(ctx, f);
}

/// Binary op with numpy broadcasting: inputs 0 and 1 of one dtype in category C, output of that
/// dtype; `f` takes and returns math-type values.
template <Types C, typename F>
Status BinaryMathRef(KernelContext& ctx, F&& f) {
  QC_RETURN_IF_ERROR(RequireInputs(ctx, 2));
  QC_RETURN_IF_ERROR(RequireSameDType(ctx, {0, 1}));
  QC_ASSIGN_OR_RETURN(Shape shape, BroadcastInputs(ctx, {0, 1}));
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  Tensor y(a.dtype(), shape);
  const bool ok = Dispatch<C>(a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    BinaryLoop<T, T, T>(a, b, y, [&](T u, T v) { return Store<T>(static_cast<MathT<T>>(f(Load(u), Load(v)))); });
  });
  if (!ok) return ctx.UnsupportedDType(a.dtype());
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

/// Comparison-style binary op: inputs of one dtype in category C, bool output.
template <Types C, typename F>
Status BinaryPredicateRef(KernelContext& ctx, F&& f) {
  QC_RETURN_IF_ERROR(RequireInputs(ctx, 2));
  QC_RETURN_IF_ERROR(RequireSameDType(ctx, {0, 1}));
  QC_ASSIGN_OR_RETURN(Shape shape, BroadcastInputs(ctx, {0, 1}));
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  Tensor y(DType::kBool, shape);
  const bool ok = Dispatch<C>(a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    BinaryLoop<T, T, bool>(a, b, y, [&](T u, T v) { return static_cast<bool>(f(Load(u), Load(v))); });
  });
  if (!ok) return ctx.UnsupportedDType(a.dtype());
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

}  // namespace qc::elementwise
