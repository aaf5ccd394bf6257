#include "runtime/cuda/nbits_dequantize.h"

#include <cstdint>
#include <string>

#include "runtime/cuda/cuda_check.h"
#include "runtime/cuda/nbits_codes.cuh"

namespace qc::cuda {
namespace {

constexpr int kThreads = 256;

// Grid: x = runs of kThreads inputs along K, y = output columns of the chunk. Neighbouring threads
// read neighbouring codes of one column (the same bytes, from L1) and write a contiguous row.
// NBitsParams::Weight, as the CUDA-core kernel of matmul_nbits.cu reads every layout. Indices fit
// 32 bits (NBitsLayout::Validate: k_blocks * block < 2^31).
template <typename T>
__global__ void __launch_bounds__(kThreads) DequantizeKernel(NBitsParams p, int64_t col0, T* __restrict__ out) {
  const int kk = static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x);
  if (kk >= p.k) return;
  out[static_cast<int64_t>(blockIdx.y) * p.k + kk] = StoreValue<T>(p.Weight(col0 + blockIdx.y, kk));
}

// Eight codes per thread, for K a multiple of 8 without g_idx (qconvert's artifacts): the eight lie
// in one quantisation block (blocks are powers of two >= 16) and in `bits` whole bytes of its blob,
// so a thread reads those bytes, one scale and zero point, and writes its eight outputs with 16- or
// 32-byte stores (rows of K % 8 == 0 elements keep them aligned). Same values as DequantizeKernel.
template <typename T>
__global__ void __launch_bounds__(kThreads) Dequantize8Kernel(NBitsParams p, int64_t col0, T* __restrict__ out) {
  const int kk = 8 * (static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x));
  if (kk >= p.k) return;
  const int64_t col = col0 + blockIdx.y;
  const int blk = kk >> p.block_shift, in_blk = kk & (p.block_size - 1);
  const uint8_t* src = p.b + col * p.row_bytes + static_cast<int64_t>(blk) * p.blob_bytes() + in_blk / 8 * p.bits;
  uint64_t codes = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j)
    if (j < p.bits) codes |= static_cast<uint64_t>(src[j]) << (8 * j);
  const float zp = p.ZeroPoint(col, blk);
  const float scale = p.scales[col * p.k_blocks + blk];
  const uint64_t mask = (uint64_t{1} << p.bits) - 1;
  union {
    T v[8];
    uint4 u[sizeof(T) * 8 / 16];
  } r;
#pragma unroll
  for (int j = 0; j < 8; ++j) r.v[j] = StoreValue<T>((static_cast<float>((codes >> (j * p.bits)) & mask) - zp) * scale);
  uint4* dst = reinterpret_cast<uint4*>(out + static_cast<int64_t>(blockIdx.y) * p.k + kk);
#pragma unroll
  for (int j = 0; j < static_cast<int>(sizeof(r.u) / sizeof(uint4)); ++j) dst[j] = r.u[j];
}

template <typename T>
Status Dequantize(const NBitsWeightsView& w, int64_t col0, int64_t cols, T* out, cudaStream_t stream) {
  QC_RETURN_IF_ERROR(w.layout.Validate());
  if (w.b == nullptr || w.scales == nullptr) return InvalidArgument("DequantizeNBits: B and scales are required");
  if (col0 < 0 || cols < 0 || col0 + cols > w.layout.n || cols > 65535)
    return InvalidArgument("DequantizeNBits: columns [" + std::to_string(col0) + ", " + std::to_string(col0 + cols) +
                           ") outside [0, " + std::to_string(w.layout.n) + ") or more than 65535 at once");
  if (cols == 0) return Status::Ok();
  const NBitsLayout& l = w.layout;
  const NBitsParams p = MakeParams(w);
  if (l.k % 8 == 0 && w.g_idx == nullptr && reinterpret_cast<uintptr_t>(out) % 16 == 0) {
    const dim3 grid(static_cast<unsigned>((l.k / 8 + kThreads - 1) / kThreads), static_cast<unsigned>(cols));
    Dequantize8Kernel<T><<<grid, kThreads, 0, stream>>>(p, col0, out);
    QC_CUDA_RETURN_IF_LAUNCH_ERROR("Dequantize8Kernel");
    return Status::Ok();
  }
  const dim3 grid(static_cast<unsigned>((l.k + kThreads - 1) / kThreads), static_cast<unsigned>(cols));
  DequantizeKernel<T><<<grid, kThreads, 0, stream>>>(p, col0, out);
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("DequantizeKernel");
  return Status::Ok();
}

}  // namespace

Status DequantizeNBits(const NBitsWeightsView& w, int64_t col0, int64_t cols, float* out, cudaStream_t stream) {
  return Dequantize(w, col0, cols, out, stream);
}
Status DequantizeNBits(const NBitsWeightsView& w, int64_t col0, int64_t cols, __half* out, cudaStream_t stream) {
  return Dequantize(w, col0, cols, out, stream);
}
Status DequantizeNBits(const NBitsWeightsView& w, int64_t col0, int64_t cols, __nv_bfloat16* out, cudaStream_t stream) {
  return Dequantize(w, col0, cols, out, stream);
}

}  // namespace qc::cuda
