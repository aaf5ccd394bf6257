// Calls a generic lambda with the C++ element type matching a runtime DType.
#pragma once

#include <type_traits>

#include "formats/dtype.h"

namespace qc {

template <typename T>
struct TypeTag {
  using type = T;
};

/// Calls `fn(TypeTag<T>{})` for the storage type T of `dtype` and returns true, or returns false
/// if `dtype` is not one of the plain numeric types (float16/bfloat16/int4 are not included:
/// kernels convert those explicitly).
template <typename Fn>
bool DispatchNumeric(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: fn(TypeTag<float>{}); return true;
    case DType::kFloat64: fn(TypeTag<double>{}); return true;
    case DType::kInt8: fn(TypeTag<int8_t>{}); return true;
    case DType::kUInt8: fn(TypeTag<uint8_t>{}); return true;
    case DType::kInt16: fn(TypeTag<int16_t>{}); return true;
    case DType::kUInt16: fn(TypeTag<uint16_t>{}); return true;
    case DType::kInt32: fn(TypeTag<int32_t>{}); return true;
    case DType::kUInt32: fn(TypeTag<uint32_t>{}); return true;
    case DType::kInt64: fn(TypeTag<int64_t>{}); return true;
    case DType::kUInt64: fn(TypeTag<uint64_t>{}); return true;
    case DType::kBool: fn(TypeTag<bool>{}); return true;
    default: return false;
  }
}

/// Like DispatchNumeric but only for float32/float64.
template <typename Fn>
bool DispatchFloat(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: fn(TypeTag<float>{}); return true;
    case DType::kFloat64: fn(TypeTag<double>{}); return true;
    default: return false;
  }
}

}  // namespace qc
