// Loading and storing the float types the CUDA kernels take, in one place for the op kernels
// (runtime/cuda/ops) and the MatMulNBits kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

namespace qc::cuda {

/// The float kernels compute in float32 whatever they store: float32 (float), float16 (__half)
/// and bfloat16 (__nv_bfloat16) are loaded to float, and stored from it rounded to nearest even
/// (as the CPU's conversions). Other types (integers, bool) pass through as they are.
template <typename T>
__device__ __forceinline__ auto LoadValue(T v) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  else return v;
}
template <typename T, typename V>
__device__ __forceinline__ T StoreValue(V v) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
  else return static_cast<T>(v);
}

}  // namespace qc::cuda
