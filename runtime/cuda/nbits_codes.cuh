// Device helpers of the MatMulNBits kernels (matmul_nbits.cu, nbits_dequantize.cu): the layout as
// the kernels read it, reading codes and zero points (docs/FORMAT.md), and the activation types to
// and from float.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "runtime/cuda/float_values.cuh"
#include "runtime/cuda/matmul_nbits.h"

namespace qc::cuda {

// `bits` wide value `i` of a little-endian bit stream (may straddle two bytes for 3/5/6/7 bits).
__device__ __forceinline__ int ReadBits(const uint8_t* p, int64_t i, int bits) {
  const int64_t bit = i * bits;
  unsigned v = p[bit / 8];
  if ((bit % 8) + bits > 8) v |= static_cast<unsigned>(p[bit / 8 + 1]) << 8;
  return static_cast<int>((v >> (bit % 8)) & ((1u << bits) - 1u));
}

// A MatMulNBits weight as the kernels read it (NBitsLayout's helpers are host functions).
struct NBitsParams {
  int k, n, bits, block_size, block_shift, k_blocks, k_padded;
  int64_t row_bytes, zp_row_bytes;
  const uint8_t* b;
  const float* scales;
  const uint8_t* zp;
  const float* zp_float;
  const int32_t* g_idx;
  const float* bias;

  // Packed bytes of one quantisation block (NBitsLayout::blob_bytes).
  __host__ __device__ int blob_bytes() const { return block_size * bits / 8; }
  // The zero point of quantisation block `blk` of column `col`: packed, float, or the implied
  // 2^(bits - 1) of symmetric weights.
  __device__ __forceinline__ float ZeroPoint(int64_t col, int blk) const {
    if (zp != nullptr) return static_cast<float>(ReadBits(zp + col * zp_row_bytes, blk, bits));
    if (zp_float != nullptr) return zp_float[col * k_blocks + blk];
    return static_cast<float>(1 << (bits - 1));
  }
  // dequant(B)[col, kk] = (code - zero point) * scale, one code at a time (every layout, g_idx too).
  __device__ __forceinline__ float Weight(int64_t col, int kk) const {
    const int stored_blk = kk / block_size;
    const int blk = g_idx != nullptr ? g_idx[kk] : stored_blk;
    const int q = ReadBits(b + col * row_bytes + static_cast<int64_t>(stored_blk) * blob_bytes(), kk % block_size, bits);
    return (static_cast<float>(q) - ZeroPoint(col, blk)) * scales[col * k_blocks + blk];
  }
};

inline NBitsParams MakeParams(const NBitsWeightsView& w) {
  const NBitsLayout& l = w.layout;
  NBitsParams p;
  p.k = static_cast<int>(l.k);
  p.n = static_cast<int>(l.n);
  p.bits = static_cast<int>(l.bits);
  p.block_size = static_cast<int>(l.block_size);
  p.block_shift = 0;
  while ((1 << p.block_shift) < p.block_size) ++p.block_shift;
  p.k_blocks = static_cast<int>(l.k_blocks());
  p.k_padded = p.k_blocks * p.block_size;
  p.row_bytes = l.row_bytes();
  p.zp_row_bytes = l.zp_row_bytes();
  p.b = w.b;
  p.scales = w.scales;
  p.zp = w.zero_points;
  p.zp_float = w.zero_points_float;
  p.g_idx = w.g_idx;
  p.bias = w.bias;
  return p;
}

}  // namespace qc::cuda
