// Per-element math shared by the reference and fast elementwise kernels, so both round alike.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "runtime/cpu/elementwise_common.h"

namespace qc::elementwise {

// Integer arithmetic wraps (two's complement) as in ONNX Runtime; floats are plain IEEE.
template <typename V>
inline V ArithAdd(V a, V b) {
  if constexpr (kIsInt<V>) return WrapAdd(a, b);
  else return a + b;
}
template <typename V>
inline V ArithSub(V a, V b) {
  if constexpr (kIsInt<V>) return WrapSub(a, b);
  else return a - b;
}
template <typename V>
inline V ArithMul(V a, V b) {
  if constexpr (kIsInt<V>) return WrapMul(a, b);
  else return a * b;
}
template <typename V>
inline V ArithNeg(V a) {
  if constexpr (kIsInt<V>) return WrapNeg(a);
  else return -a;
}

/// Division; integers truncate toward zero. Callers reject integer zero divisors beforehand
/// (the guard here only keeps the function total); INT_MIN / -1 wraps instead of trapping.
template <typename V>
inline V ArithDiv(V a, V b) {
  if constexpr (kIsInt<V>) {
    if (b == V(0)) return V(0);
    if constexpr (std::is_signed_v<V>) {
      if (b == V(-1)) return WrapNeg(a);
    }
    return static_cast<V>(a / b);
  } else {
    return a / b;
  }
}

/// Remainder with the dividend's sign (C fmod, Mod with fmod=1).
template <typename V>
inline V TruncMod(V a, V b) {
  if constexpr (kIsInt<V>) {
    if (b == V(0)) return V(0);
    if constexpr (std::is_signed_v<V>) {
      if (b == V(-1)) return V(0);  // INT_MIN % -1 traps on x86
    }
    return static_cast<V>(a % b);
  } else {
    return std::fmod(a, b);
  }
}

/// Remainder with the divisor's sign (Python %, Mod with fmod=0).
template <typename V>
inline V FloorMod(V a, V b) {
  V r = TruncMod(a, b);
  if constexpr (std::is_signed_v<V> || std::is_floating_point_v<V>) {
    if (r != V(0) && ((r < V(0)) != (b < V(0)))) r = static_cast<V>(r + b);
  }
  return r;
}

/// Pow for base math type V and exponent math type E. float^float is std::pow(float, float)
/// (powf); every other pairing computes in double, as std::pow's promotion rules do, and
/// converts to V (integers truncate and saturate).
template <typename V, typename E>
inline V PowValue(V a, E b) {
  if constexpr (std::is_same_v<V, float> && std::is_same_v<E, float>) {
    return std::pow(a, b);
  } else {
    const double r = std::pow(static_cast<double>(a), static_cast<double>(b));
    if constexpr (std::is_floating_point_v<V>) return static_cast<V>(r);
    else return SaturateCast<V>(r);
  }
}

/// NaN-propagating max/min (numpy maximum/minimum).
template <typename V>
inline V MaxValue(V a, V b) {
  if (IsNaNValue(a)) return a;
  if (IsNaNValue(b)) return b;
  return a < b ? b : a;
}
template <typename V>
inline V MinValue(V a, V b) {
  if (IsNaNValue(a)) return a;
  if (IsNaNValue(b)) return b;
  return b < a ? b : a;
}

template <typename V>
inline V ReluValue(V x) {
  return x < V(0) ? V(0) : x;
}

/// 1 / (1 + e^-x), as 1 / (1 + e^-|x|) or e^x / (1 + e^x) so exp never overflows; both sides
/// are computed and selected (no data-dependent branch to mispredict).
template <typename V>
inline V SigmoidValue(V x) {
  const V e = std::exp(-std::fabs(x));
  const V d = V(1) + e;
  const V positive = V(1) / d;
  const V negative = e / d;
  return x >= V(0) ? positive : negative;
}

/// 0.5 x (1 + erf(x / sqrt 2)): exact GELU.
template <typename V>
inline V GeluErf(V x) {
  constexpr V kRsqrt2 = static_cast<V>(0.70710678118654752440);
  return V(0.5) * x * (V(1) + std::erf(x * kRsqrt2));
}

/// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): the tanh approximation (FastGelu,
/// Gelu approximate="tanh").
template <typename V>
inline V GeluTanh(V x) {
  constexpr V kSqrt2OverPi = static_cast<V>(0.79788456080286535588);
  constexpr V kCoeff = static_cast<V>(0.044715);
  return V(0.5) * x * (V(1) + std::tanh(kSqrt2OverPi * (x + kCoeff * x * x * x)));
}

/// x * sigmoid(alpha x).
template <typename V>
inline V QuickGeluValue(V x, V alpha) {
  return x * SigmoidValue(alpha * x);
}

}  // namespace qc::elementwise
