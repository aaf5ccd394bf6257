// Device helpers of the MatMulNBits kernels (matmul_nbits.cu, nbits_dequantize.cu): reading codes
// (docs/FORMAT.md) and the activation types to and from float.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace qc::cuda {

// `bits` wide value `i` of a little-endian bit stream (may straddle two bytes for 3/5/6/7 bits).
__device__ __forceinline__ int ReadBits(const uint8_t* p, int64_t i, int bits) {
  const int64_t bit = i * bits;
  unsigned v = p[bit / 8];
  if ((bit % 8) + bits > 8) v |= static_cast<unsigned>(p[bit / 8 + 1]) << 8;
  return static_cast<int>((v >> (bit % 8)) & ((1u << bits) - 1u));
}

template <typename T>
__device__ __forceinline__ float ToFloat(T v);
template <>
__device__ __forceinline__ float ToFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ float ToFloat<__half>(__half v) { return __half2float(v); }

// Round to nearest even, as the CPU's conversions do.
template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

}  // namespace qc::cuda
