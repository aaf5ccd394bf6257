// Reading MatMulNBits codes on the device (docs/FORMAT.md): shared by the kernels that dequantise
// element by element (kGeneric, the prefill dequantisation).
#pragma once

#include <cstdint>

namespace qc::cuda {

// `bits` wide value `i` of a little-endian bit stream (may straddle two bytes for 3/5/6/7 bits).
__device__ __forceinline__ int ReadBits(const uint8_t* p, int64_t i, int bits) {
  const int64_t bit = i * bits;
  unsigned v = p[bit / 8];
  if ((bit % 8) + bits > 8) v |= static_cast<unsigned>(p[bit / 8 + 1]) << 8;
  return static_cast<int>((v >> (bit % 8)) & ((1u << bits) - 1u));
}

}  // namespace qc::cuda
