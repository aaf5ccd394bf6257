// Helpers shared by the CUDA op kernels: launch sizing, broadcast indexing, dtype checks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "formats/tensor.h"
#include "runtime/cuda/cuda_check.h"
#include "runtime/cuda/float_values.cuh"
#include "runtime/cuda/ops/op_kernel.h"

namespace qc {

// The device element types of the 16-bit floats, so Tensor::device_data<__half>() is checked too.
template <> struct DTypeOf<__half> { static constexpr DType value = DType::kFloat16; };
template <> struct DTypeOf<__nv_bfloat16> { static constexpr DType value = DType::kBFloat16; };

}  // namespace qc

namespace qc::cuda {

// 256 threads: a multiple of the warp size that keeps 8 blocks per SM resident on Hopper.
constexpr int kThreads = 256;
// Grid-stride loops cap the grid: enough blocks to fill 132 SMs many times over.
constexpr int64_t kMaxBlocks = 65535;
// Broadcast indexers handle up to this many (coalesced) dims; more is declined.
constexpr int kMaxDims = 8;

inline int BlocksFor(int64_t n, int threads = kThreads) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, kMaxBlocks)));
}

/// Row-major output dims with, per input, the element stride of each dim (0 where broadcast).
/// Adjacent dims that are contiguous for every input are merged, so the common cases (same
/// shape, a scalar, a row vector) index with one or two divisions per element.
template <int kInputs>
struct Indexer {
  int rank = 0;
  int64_t dims[kMaxDims];
  int64_t strides[kInputs][kMaxDims];

  __device__ __forceinline__ void Offsets(int64_t i, int64_t* off) const {
#pragma unroll
    for (int k = 0; k < kInputs; ++k) off[k] = 0;
    for (int d = rank - 1; d >= 0; --d) {
      const int64_t q = i / dims[d];
      const int64_t idx = i - q * dims[d];
      i = q;
#pragma unroll
      for (int k = 0; k < kInputs; ++k) off[k] += idx * strides[k][d];
    }
  }
};

/// Builds an Indexer for `inputs` broadcast to `out`; false when more than kMaxDims dims remain.
template <int kInputs>
bool MakeIndexer(const Shape& out, const std::vector<Shape>& inputs, Indexer<kInputs>* ix) {
  const int rank = static_cast<int>(out.size());
  std::vector<std::vector<int64_t>> strides(kInputs, std::vector<int64_t>(rank, 0));
  for (int k = 0; k < kInputs; ++k) {
    const Shape& s = inputs[k];
    const int lead = rank - static_cast<int>(s.size());
    int64_t stride = 1;
    for (int d = static_cast<int>(s.size()) - 1; d >= 0; --d) {
      strides[k][lead + d] = s[d] == 1 ? 0 : stride;
      stride *= s[d];
    }
  }
  // Merge dim d into d+1 (inner) when, for every input, stride[d] == stride[d+1] * dims[d+1].
  std::vector<int64_t> dims;
  std::vector<std::vector<int64_t>> merged(kInputs);
  for (int d = 0; d < rank; ++d) {
    if (out[d] == 1) continue;  // size-1 dims contribute nothing to any offset
    if (!dims.empty()) {
      bool mergeable = true;
      for (int k = 0; k < kInputs; ++k)
        mergeable &= merged[k].back() == strides[k][d] * out[d];
      if (mergeable) {
        dims.back() *= out[d];
        for (int k = 0; k < kInputs; ++k) merged[k].back() = strides[k][d];
        continue;
      }
    }
    dims.push_back(out[d]);
    for (int k = 0; k < kInputs; ++k) merged[k].push_back(strides[k][d]);
  }
  if (static_cast<int>(dims.size()) > kMaxDims) return false;
  ix->rank = static_cast<int>(dims.size());
  for (int d = 0; d < ix->rank; ++d) {
    ix->dims[d] = dims[d];
    for (int k = 0; k < kInputs; ++k) ix->strides[k][d] = merged[k][d];
  }
  return true;
}

/// Element size of the plain (non-packed) dtypes, 0 otherwise.
inline int ElementSize(DType t) {
  const int bits = DTypeBits(t);
  return bits >= 8 ? bits / 8 : 0;
}

/// Normalises an axis attribute against `rank` (negative counts from the end); false if out of range.
inline bool NormalizeAxis(int64_t axis, int64_t rank, int64_t* out) {
  if (axis < -rank || axis >= rank) return false;
  *out = axis < 0 ? axis + rank : axis;
  return true;
}

/// Reads a small host integer tensor (int32/int64) as int64 values.
inline std::vector<int64_t> HostInts(const Tensor& t) { return t.ToInt64s(); }

/// Calls fn(T{}) with the device type of a float dtype (float, __half, __nv_bfloat16); false for
/// other dtypes (fn is not called).
template <typename Fn>
bool DispatchFloat(DType t, Fn&& fn) {
  switch (t) {
    case DType::kFloat32: fn(float{}); return true;
    case DType::kFloat16: fn(__half{}); return true;
    case DType::kBFloat16: fn(__nv_bfloat16{}); return true;
    default: return false;
  }
}

/// Calls fn(T{}) with the unsigned integer type of `size` bytes (1, 2, 4 or 8): kernels that only
/// move elements (copies, gathers, Where) dispatch on the element size, not the dtype. False for
/// other sizes (fn is not called).
template <typename Fn>
bool DispatchBytes(int size, Fn&& fn) {
  switch (size) {
    case 1: fn(uint8_t{}); return true;
    case 2: fn(uint16_t{}); return true;
    case 4: fn(uint32_t{}); return true;
    case 8: fn(uint64_t{}); return true;
    default: return false;
  }
}

/// Whether `t` is a dtype the float kernels take.
inline bool IsKernelFloat(DType t) { return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16; }

}  // namespace qc::cuda

namespace qc::cuda {

/// Sum of `v` over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
/// `scratch` holds 32 values of shared memory; the block must call it uniformly. T: float or double.
template <typename T>
__device__ __forceinline__ T BlockSum(T v, T* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : T(0);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/// Index idx[j] of an axis of `len` (negative ones count from the end), or -1 when outside [-len,
/// len), recorded as kIndexOutOfRange in `errors` (the kernels then write zeros; the run fails after it).
template <typename I>
__device__ __forceinline__ int64_t AxisIndex(const I* idx, int64_t j, int64_t len, unsigned* errors) {
  int64_t k = static_cast<int64_t>(idx[j]);
  if (k < 0) k += len;
  if (k >= 0 && k < len) return k;
  atomicOr(errors, kIndexOutOfRange);
  return -1;
}

/// Maximum of `v` over the block, as BlockSum.
__device__ __forceinline__ float BlockMax(float v, float* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

}  // namespace qc::cuda
