// DType helpers and the 16-bit float conversions.
#include "formats/dtype.h"

#include <cmath>

namespace qc {

int DTypeBits(DType t) {
  switch (t) {
    case DType::kFloat32: case DType::kInt32: case DType::kUInt32: return 32;
    case DType::kFloat64: case DType::kInt64: case DType::kUInt64: return 64;
    case DType::kFloat16: case DType::kBFloat16: case DType::kInt16: case DType::kUInt16: return 16;
    case DType::kInt8: case DType::kUInt8: case DType::kBool: return 8;
    case DType::kInt4: case DType::kUInt4: return 4;
    default: return 0;
  }
}

int64_t DTypeStorageBytes(DType t, int64_t count) { return (count * DTypeBits(t) + 7) / 8; }

std::string DTypeName(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kInt8: return "int8";
    case DType::kUInt8: return "uint8";
    case DType::kInt16: return "int16";
    case DType::kUInt16: return "uint16";
    case DType::kInt32: return "int32";
    case DType::kUInt32: return "uint32";
    case DType::kInt64: return "int64";
    case DType::kUInt64: return "uint64";
    case DType::kBool: return "bool";
    case DType::kInt4: return "int4";
    case DType::kUInt4: return "uint4";
    case DType::kString: return "string";
    default: return "undefined";
  }
}

bool IsSupportedDType(int32_t onnx_type) {
  DType t = static_cast<DType>(onnx_type);
  return t != DType::kString && DTypeBits(t) > 0;
}

bool IsFloatingPoint(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat64 || t == DType::kFloat16 || t == DType::kBFloat16;
}

bool IsComputeFloat(DType t) { return t == DType::kFloat32 || IsHalfFloat(t); }

bool IsHalfFloat(DType t) { return t == DType::kFloat16 || t == DType::kBFloat16; }

bool IsInteger(DType t) {
  switch (t) {
    case DType::kInt8: case DType::kUInt8: case DType::kInt16: case DType::kUInt16: case DType::kInt32:
    case DType::kUInt32: case DType::kInt64: case DType::kUInt64: case DType::kInt4: case DType::kUInt4:
      return true;
    default:
      return false;
  }
}

float HalfToFloat(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do {
        e++;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0));
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {  // result is subnormal or zero: exact rounding via float arithmetic
    float a;
    std::memcpy(&a, &abs, 4);
    // 2^-24 is the smallest half subnormal; adding 0.5 forces round-to-nearest-even in the mantissa.
    float scaled = a * 16777216.0f;  // a / 2^-24
    uint32_t q = static_cast<uint32_t>(std::nearbyint(scaled));
    return static_cast<uint16_t>(sign | q);
  }
  uint32_t mant_odd = (abs >> 13) & 1u;
  abs += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
  return static_cast<uint16_t>(sign | (abs >> 13));
}

uint16_t FloatToBFloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float RoundedToDType(float v, DType t) {
  if (t == DType::kFloat16) return HalfToFloat(FloatToHalf(v));
  if (t == DType::kBFloat16) return BFloat16ToFloat(FloatToBFloat16(v));
  return v;
}

}  // namespace qc
