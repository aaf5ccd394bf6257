// Device helpers shared by the tensor-core MatMulNBits kernels (matmul_nbits.cu,
// matmul_nbits_stream.cu): LOP3/HFMA2 dequantisation of packed codes into fp16 pairs, the
// mma.m16n8k16 they feed, streaming weight loads and fp16 packing.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace qc::cuda {

__device__ __forceinline__ uint32_t Lop3AndOr(uint32_t a, uint32_t mask, uint32_t magic) {
  uint32_t d;  // (a & mask) | magic in one LOP3
  asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(d) : "r"(a), "r"(mask), "r"(magic));
  return d;
}

__device__ __forceinline__ uint32_t Hfma2(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

__device__ __forceinline__ void Mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Streaming weight loads: read once, so they skip L1 and ask L2 for the whole 128-byte line (the
// next lanes' and iterations' bytes of the same column).
template <int kBytes>
struct WeightLoad;
template <>
struct WeightLoad<16> {
  static __device__ __forceinline__ void Run(const uint8_t* p, uint32_t (&w)[4]) {
    asm volatile("ld.global.nc.L1::no_allocate.L2::128B.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
                 : "l"(p));
  }
};
template <>
struct WeightLoad<8> {
  static __device__ __forceinline__ void Run(const uint8_t* p, uint32_t (&w)[2]) {
    asm volatile("ld.global.nc.L1::no_allocate.L2::128B.v2.u32 {%0, %1}, [%2];" : "=r"(w[0]), "=r"(w[1]) : "l"(p));
  }
};
template <>
struct WeightLoad<4> {
  static __device__ __forceinline__ void Run(const uint8_t* p, uint32_t (&w)[1]) {
    asm volatile("ld.global.nc.L1::no_allocate.L2::128B.u32 %0, [%1];" : "=r"(w[0]) : "l"(p));
  }
};

// fp16 bits of -(2^e + zp) for 0 <= zp < 2^e <= 1024: exponent e, mantissa zp in units of 2^(e-10).
__device__ __forceinline__ uint32_t NegMagic(int e, int zp) {
  const uint32_t h = 0x8000u | (static_cast<uint32_t>(e + 15) << 10) | (static_cast<uint32_t>(zp) << (10 - e));
  return h | (h << 16);
}

// One 32-bit word of kBits codes -> CW/2 half2 "pairs" of (code - zp), pair j = codes (j, j + CW/2).
// 4/2 bits: (w & mask) | 0x6400 is the fp16 1024 + code * 2^(kBits*jj); one fma by 2^-(kBits*jj)
// minus (1024 * 2^-(kBits*jj) + zp) leaves code - zp exactly. 8 bits: a byte permute builds
// 1024 + code. Per 8 W4 codes: 1 shift, 4 LOP3, 4 HFMA2.
template <int kBits>
struct Dequant {
  static constexpr int kCodesPerWord = 32 / kBits;
  static constexpr int kPairs = kCodesPerWord / 2;
  static constexpr int kGroups = 8 / kBits;  // codes per byte: pairs sharing one source shift
  uint32_t neg[kGroups];                     // per-block constants -(1024 / 2^(kBits*jj) + zp)

  __device__ __forceinline__ void SetZeroPoint(int zp) {
#pragma unroll
    for (int jj = 0; jj < kGroups; ++jj) neg[jj] = NegMagic(10 - kBits * jj, zp);
  }
  __device__ __forceinline__ void Word(uint32_t w, uint32_t (&pairs)[kPairs]) const {
    if constexpr (kBits == 8) {
      pairs[0] = Hfma2(__byte_perm(w, 0x64u, 0x4240), 0x3C003C00u, neg[0]);  // bytes 0, 2
      pairs[1] = Hfma2(__byte_perm(w, 0x64u, 0x4341), 0x3C003C00u, neg[0]);  // bytes 1, 3
    } else {
#pragma unroll
      for (int j = 0; j < kPairs; ++j) {
        const int jj = j % kGroups;
        const uint32_t src = (j / kGroups) ? (w >> 8) : w;
        const uint32_t mask = ((1u << kBits) - 1u) << (kBits * jj);
        const uint32_t mult = static_cast<uint32_t>(15 - kBits * jj) << 10;  // fp16 2^-(kBits*jj)
        pairs[j] = Hfma2(Lop3AndOr(src, mask | (mask << 16), 0x64006400u), mult | (mult << 16), neg[jj]);
      }
    }
  }
};

// The power-of-two exponent e that puts a group of fp32 activations into fp16 before the hi + lo
// split, from the bits of the group's largest |x| (non-negative floats order like their bits): e
// brings it below 2^15 (no fp16 overflow; lo keeps ~11 more bits), clamped to [-120, 120] so 2^e
// and 2^-e stay normal floats (subnormal maxima clamp to 120); zero and Inf/NaN groups keep e = 0.
__device__ __forceinline__ int ActivationExponent(uint32_t max_abs_bits) {
  const int biased = static_cast<int>(max_abs_bits >> 23);
  return max_abs_bits != 0 && biased != 255 ? max(-120, min(120, 15 - (biased - 126))) : 0;
}

// 2^e as a float, for |e| <= 126 (exact).
__device__ __forceinline__ float Pow2(int e) { return __uint_as_float(static_cast<uint32_t>(127 + e) << 23); }

__device__ __forceinline__ uint32_t PackHalves(float lo, float hi) {
  uint32_t d;  // {hi, lo} -> fp16x2 with lo in the low half, round to nearest
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  return d;
}

// The lo half of the hi + lo split of s (x * 2^e) once hi is s in fp16: s - hi, or 0 where hi is
// infinite. ActivationExponent leaves a group with an infinite x at e = 0, so such an x gives Inf,
// as the reference does, not Inf - Inf = NaN. (A finite |x| > 65504 in that same group also
// becomes Inf there; the output is Inf or NaN either way, but where the reference has +-Inf it
// can then have NaN.)
__device__ __forceinline__ float SplitRemainder(float s, float hi) { return isinf(hi) ? 0.0f : s - hi; }

// The hi + lo split of two scaled activations (a in the low half of each word).
__device__ __forceinline__ void SplitHalves(float a, float c, uint32_t& hi, uint32_t& lo) {
  hi = PackHalves(a, c);
  const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&hi));
  lo = PackHalves(SplitRemainder(a, f.x), SplitRemainder(c, f.y));
}

}  // namespace qc::cuda
