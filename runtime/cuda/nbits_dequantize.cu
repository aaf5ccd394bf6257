#include "runtime/cuda/nbits_dequantize.h"

#include <cstdint>
#include <string>

#include "runtime/cuda/cuda_check.h"
#include "runtime/cuda/nbits_codes.cuh"

namespace qc::cuda {
namespace {

constexpr int kThreads = 256;

// The layout as the kernel reads it (NBitsLayout's helpers are host functions).
struct DequantParams {
  int64_t k, k_blocks, block, row_bytes, blob_bytes, zp_row_bytes;
  int bits;
  const uint8_t* b;
  const float* scales;
  const uint8_t* zp;
  const float* zp_float;
  const int32_t* g_idx;
};

// Grid: x = runs of kThreads inputs along K, y = output columns of the chunk. Neighbouring threads
// read neighbouring codes of one column (the same bytes, from L1) and write a contiguous row.
// The CUDA-core kernel's per-element dequantisation (matmul_nbits.cu, NBitsGenericKernel); every
// layout. Indices fit 32 bits (NBitsLayout::Validate: k_blocks * block < 2^31).
template <typename T>
__global__ void __launch_bounds__(kThreads) DequantizeKernel(DequantParams p, int64_t col0, T* __restrict__ out) {
  const int kk = static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x);
  if (kk >= p.k) return;
  const int64_t col = col0 + blockIdx.y;
  const int stored_blk = kk / static_cast<int>(p.block);
  const int blk = p.g_idx != nullptr ? p.g_idx[kk] : stored_blk;
  const int q = ReadBits(p.b + col * p.row_bytes + stored_blk * p.blob_bytes, kk % static_cast<int>(p.block), p.bits);
  const int64_t pi = col * p.k_blocks + blk;
  float zp = static_cast<float>(1 << (p.bits - 1));
  if (p.zp != nullptr) zp = static_cast<float>(ReadBits(p.zp + col * p.zp_row_bytes, blk, p.bits));
  else if (p.zp_float != nullptr) zp = p.zp_float[pi];
  out[static_cast<int64_t>(blockIdx.y) * p.k + kk] = FromFloat<T>((static_cast<float>(q) - zp) * p.scales[pi]);
}

// Eight codes per thread, for K a multiple of 8 without g_idx (qconvert's artifacts): the eight lie
// in one quantisation block (blocks are powers of two >= 16) and in `bits` whole bytes of its blob,
// so a thread reads those bytes, one scale and zero point, and writes its eight outputs with 16- or
// 32-byte stores (rows of K % 8 == 0 elements keep them aligned). Same values as DequantizeKernel.
template <typename T>
__global__ void __launch_bounds__(kThreads) Dequantize8Kernel(DequantParams p, int block_shift, int64_t col0,
                                                             T* __restrict__ out) {
  const int kk = 8 * (static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x));
  if (kk >= p.k) return;
  const int64_t col = col0 + blockIdx.y;
  const int blk = kk >> block_shift, in_blk = kk & ((1 << block_shift) - 1);
  const uint8_t* src = p.b + col * p.row_bytes + static_cast<int64_t>(blk) * p.blob_bytes + in_blk / 8 * p.bits;
  uint64_t codes = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j)
    if (j < p.bits) codes |= static_cast<uint64_t>(src[j]) << (8 * j);
  const int64_t pi = col * p.k_blocks + blk;
  float zp = static_cast<float>(1 << (p.bits - 1));
  if (p.zp != nullptr) zp = static_cast<float>(ReadBits(p.zp + col * p.zp_row_bytes, blk, p.bits));
  else if (p.zp_float != nullptr) zp = p.zp_float[pi];
  const float scale = p.scales[pi];
  const uint64_t mask = (uint64_t{1} << p.bits) - 1;
  union {
    T v[8];
    uint4 u[sizeof(T) * 8 / 16];
  } r;
#pragma unroll
  for (int j = 0; j < 8; ++j) r.v[j] = FromFloat<T>((static_cast<float>((codes >> (j * p.bits)) & mask) - zp) * scale);
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
  const DequantParams p{l.k, l.k_blocks(), l.block_size, l.row_bytes(), l.blob_bytes(), l.zp_row_bytes(),
                        static_cast<int>(l.bits), w.b, w.scales, w.zero_points, w.zero_points_float, w.g_idx};
  if (l.k % 8 == 0 && w.g_idx == nullptr && reinterpret_cast<uintptr_t>(out) % 16 == 0) {
    int block_shift = 0;
    while ((int64_t{1} << block_shift) < l.block_size) ++block_shift;
    const dim3 grid(static_cast<unsigned>((l.k / 8 + kThreads - 1) / kThreads), static_cast<unsigned>(cols));
    Dequantize8Kernel<T><<<grid, kThreads, 0, stream>>>(p, block_shift, col0, out);
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
