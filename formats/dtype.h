// Element types of the IR; the enum values equal ONNX's TensorProto.DataType numbers.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace qc {

/// Element type of a tensor. Values match onnx::TensorProto_DataType so conversion is a cast.
enum class DType : int32_t {
  kUndefined = 0,
  kFloat32 = 1,
  kUInt8 = 2,
  kInt8 = 3,
  kUInt16 = 4,
  kInt16 = 5,
  kInt32 = 6,
  kInt64 = 7,
  kString = 8,
  kBool = 9,
  kFloat16 = 10,
  kFloat64 = 11,
  kUInt32 = 12,
  kUInt64 = 13,
  kBFloat16 = 16,
  kUInt4 = 21,  // two values per byte, low nibble first (ONNX packing)
  kInt4 = 22,
};

/// Bits per element (4 for the packed int4 types, 0 for undefined/string).
int DTypeBits(DType t);
/// Bytes needed to store `count` elements (packed types round up).
int64_t DTypeStorageBytes(DType t, int64_t count);
/// ONNX-style lowercase name ("float32", "int64", ...).
std::string DTypeName(DType t);
/// True if `onnx_type` is a data type our IR represents.
bool IsSupportedDType(int32_t onnx_type);
bool IsFloatingPoint(DType t);
/// float32, float16 or bfloat16: the float types models compute in (the 16-bit ones widen to
/// float32 exactly).
bool IsComputeFloat(DType t);
/// float16 or bfloat16.
bool IsHalfFloat(DType t);
bool IsInteger(DType t);

/// IEEE half <-> float, round-to-nearest-even.
float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
/// bfloat16 <-> float, round-to-nearest-even (NaN preserved).
inline float BFloat16ToFloat(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t FloatToBFloat16(float f);
/// `v` rounded to the float type `t` (float16 or bfloat16; other types leave it as is), as a float.
float RoundedToDType(float v, DType t);

/// Storage types for the 16-bit floats so templates can tell them apart from uint16_t.
struct Float16 {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

/// Compile-time map from C++ storage type to DType.
template <typename T>
struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::kFloat32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::kFloat64; };
template <> struct DTypeOf<int8_t> { static constexpr DType value = DType::kInt8; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::kUInt8; };
template <> struct DTypeOf<int16_t> { static constexpr DType value = DType::kInt16; };
template <> struct DTypeOf<uint16_t> { static constexpr DType value = DType::kUInt16; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::kInt32; };
template <> struct DTypeOf<uint32_t> { static constexpr DType value = DType::kUInt32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::kInt64; };
template <> struct DTypeOf<uint64_t> { static constexpr DType value = DType::kUInt64; };
template <> struct DTypeOf<bool> { static constexpr DType value = DType::kBool; };
template <> struct DTypeOf<Float16> { static constexpr DType value = DType::kFloat16; };
template <> struct DTypeOf<BFloat16> { static constexpr DType value = DType::kBFloat16; };

}  // namespace qc
