// MatMulNBits kernels (matmul_nbits.h): a tensor-core kernel that streams the packed weights once
// and dequantises them in registers, for every batch size (GEMV tiles up to 16 rows, 32-row GEMM
// tiles above), and a general CUDA-core kernel for the layouts the first cannot read.
//
// Tensor-core path, two launches:
// 1. PrepareActivationsKernel writes X as fp16 in the order the main kernel's lanes consume it;
//    fp32 rows become hi + lo halves of X * 2^e (e per row and 256 codes), so the products keep
//    ~22 bits of the activations. It starts its dependent at once (programmatic dependent launch).
// 2. NBitsMmaKernel: mma.m16n8k16 with the weights as A (16 output columns x 16 k) and the
//    activations as B (16 k x 8: 4 rows x {hi, lo}, or 8 fp16 rows). Lane (g, t) dequantises columns
//    g and g + 8 of its block's tile from its own 4-16 byte slice of each column's packed row (a
//    warp load: 16 rows x 4 * kLoadBytes contiguous bytes, every byte used). Which physical k an
//    mma "k slot" holds is free as long as A and B agree, so lanes feed codes in the order the bit
//    tricks produce them (pair j = codes j and j + CW/2 of a 32-bit word) and the prologue lays the
//    activations out in that order. The 16 slots of one mma always lie in one quantisation block
//    (4 * kLoadBytes <= blob bytes), so the block's scale multiplies the fp32 mma result once per
//    iteration, as in the reference: codes minus zero point are small integers, exact in fp16, and
//    fp16 x fp16 products are exact in the fp32 accumulator. The kernel issues its first weight
//    loads before waiting for the prologue; 8 warps split each tile's K range and are summed in
//    shared memory in a fixed order (deterministic); split-K across blocks only for narrow N.
#include "runtime/cuda/matmul_nbits.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "runtime/cuda/cuda_check.h"
#include "runtime/cuda/device.h"

namespace qc::cuda {
namespace {

constexpr int kWarps = 8;                  // warps per block, all on the same 16 columns, splitting K
constexpr int kThreads = kWarps * 32;
constexpr int kColsPerTile = 16;           // the m of mma.m16n8k16: output columns per block
constexpr int kActGroup = 256;             // codes per activation scale (>= every iteration's codes, and aligned)
constexpr int kMinItersPerWarp = 2;        // a K slice shorter than 2 iterations per warp costs more than it hides
constexpr int kGenericRows = 16;           // rows per warp of the CUDA-core kernel (accumulators in registers)

struct NBitsParams {
  int k, n, bits, block_size, block_shift, k_blocks, k_padded;
  int64_t row_bytes, zp_row_bytes;
  const uint8_t* b;
  const float* scales;
  const uint8_t* zp;
  const float* zp_float;
  const int32_t* g_idx;
  const float* bias;
};

NBitsParams MakeParams(const NBitsWeightsView& w) {
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

// ---- device helpers ---------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ float ToFloat(T v);
template <>
__device__ __forceinline__ float ToFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ float ToFloat<__half>(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) { return __float2half_rn(v); }

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

// Position in the prepared (permuted) activation order of code j of a 32-bit word: step s = j' / 2
// feeds slots (2t, 2t+1) from pair 2s and (2t+8, 2t+9) from pair 2s+1 (see the file comment).
template <int kBits>
__device__ __forceinline__ int PermutedPos(int j) {
  constexpr int kHalf = 16 / kBits;  // CW / 2
  const int h = j / kHalf, jp = j % kHalf;
  return 4 * (jp / 2) + 2 * (jp % 2) + h;
}

// Programmatic dependent launch (sm_90): the main kernel starts while the activation prologue
// runs, streams in its first weights, and waits here before reading the prepared activations.
__device__ __forceinline__ void WaitForPrologue() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void AllowDependents() { asm volatile("griddepcontrol.launch_dependents;"); }

// ---- activation prologue ----------------------------------------------------------------------

// One warp per (row, group of kActGroup codes): writes the activations as fp16 in the permuted
// order the main kernel's lanes read, xq[row][part][kg] with kg = K rounded up to kActGroup (codes
// at or beyond K are 0), and a row m of zeros. fp32 rows become hi + lo halves of x * 2^e, e chosen per group so the
// group's max |x| lands below 2^15 (no fp16 overflow, lo keeps ~11 more bits); xs[row][group] =
// 2^-e undoes it. fp16 rows are copied (e = 0).
template <int kBits, typename TA>
__global__ void __launch_bounds__(256) PrepareActivationsKernel(const TA* __restrict__ x, int m, int k, int kg,
                                                                __half* __restrict__ xq, float* __restrict__ xs) {
  AllowDependents();  // the main kernel may launch now; it waits for this grid before reading xq
  constexpr int kParts = std::is_same_v<TA, float> ? 2 : 1;
  constexpr int kCodesPerWord = 32 / kBits;
  constexpr int kPerLane = kActGroup / 32;
  const int groups = kg / kActGroup;
  const int task = blockIdx.x * 8 + (threadIdx.x >> 5);
  if (task >= (m + 1) * groups) return;  // row m: zeros, read by the main kernel's idle lanes
  const int row = task / groups, group = task % groups, lane = threadIdx.x & 31;
  const int k0 = group * kActGroup + lane * kPerLane;
  float v[kPerLane];
  float mx = 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    v[j] = row < m && k0 + j < k ? ToFloat(x[static_cast<int64_t>(row) * k + k0 + j]) : 0.0f;
    mx = fmaxf(mx, fabsf(v[j]));
  }
  float scale = 1.0f;
  if constexpr (kParts == 2) {
    // Non-negative floats order like their bit patterns. Inf/NaN groups keep e = 0 (they stay non-finite).
    mx = __uint_as_float(__reduce_max_sync(0xffffffffu, __float_as_uint(mx)));
    int e = 0;
    if (mx > 0.0f && isfinite(mx)) {
      int exp2 = 0;
      frexpf(mx, &exp2);                   // mx < 2^exp2
      e = max(-120, min(120, 15 - exp2));  // a normal float either way
    }
    scale = ldexpf(1.0f, e);
    if (lane == 0) xs[static_cast<int64_t>(row) * groups + group] = ldexpf(1.0f, -e);
  }
  __half* hi = xq + static_cast<int64_t>(row) * kParts * kg;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int c = k0 + j;
    const int pos = (c & ~(kCodesPerWord - 1)) + PermutedPos<kBits>(c & (kCodesPerWord - 1));
    const float s = v[j] * scale;  // times a power of two: exact
    const __half h = __float2half_rn(s);
    hi[pos] = h;
    if constexpr (kParts == 2) hi[kg + pos] = __float2half_rn(s - __half2float(h));
  }
}

// ---- tensor-core kernel -----------------------------------------------------------------------

// Grid: x = 16-column tiles, y = K slices (split-K across blocks, only when the tiles alone cannot
// fill the GPU), z = row tiles. Block: kWarps warps on the same 16 columns, each a contiguous part
// of the block's K range, summed through shared memory at the end in warp order (deterministic).
//
// mma.m16n8k16 with the weights as A (16 output columns x 16 k) and the activations as B (16 k x 8
// "activation columns": 4 rows x {hi, lo} for fp32, 8 rows for fp16). Lane (g, t) dequantises
// columns g and g + 8 of the tile (A rows g, g + 8), so one mma consumes 256 codes and the B
// fragment, one 8-byte load, serves all 16 columns.
//
// kDeep (GEMV tiles of one row group with 16-byte loads): 64 instead of 32 bytes of weights per
// lane in flight, 4 iterations ahead instead of 2. At batch 1 the kernel is bound by memory latency
// (Nsight: 57% of stalls on global loads); the deeper slots fit in 128 registers, so occupancy
// stays at 2 blocks per SM.
template <int kBits, int kLoadBytes, typename TA, int kRowGroups, bool kHasZp, bool kDeep>
__global__ void __launch_bounds__(kThreads) NBitsMmaKernel(NBitsParams p, const __half* __restrict__ xq,
                                                          const float* __restrict__ xs, int kg, TA* __restrict__ y,
                                                          int m, int iters_per_split, float* __restrict__ partials,
                                                          unsigned* counters) {
  constexpr int kParts = std::is_same_v<TA, float> ? 2 : 1;  // fp32: hi and lo fp16 columns of B
  constexpr int kRowsPerGroup = 8 / kParts;                    // activation rows per mma
  constexpr int kTileRows = kRowGroups * kRowsPerGroup;
  constexpr int kAccs = kParts == 2 ? 2 : 4;                   // outputs per lane per row group
  constexpr int kWords = kLoadBytes / 4;
  constexpr int kCodesPerWord = 32 / kBits;
  constexpr int kCodesPerLane = kLoadBytes * 8 / kBits;
  constexpr int kIterCodes = 4 * kCodesPerLane;                // codes of one column per warp iteration
  constexpr int kStepsPerWord = kCodesPerWord / 4;             // an mma takes 4 codes per lane and column
  constexpr int kUnroll = (kDeep ? 64 : 32) / kLoadBytes;      // iterations in flight: 2 x kUnroll loads per lane
  using Deq = Dequant<kBits>;

  __shared__ float red[kWarps][kRowGroups][kAccs][32];
  __shared__ bool is_last;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * kColsPerTile;
  const int col_lo = n0 + g, col_hi = n0 + g + 8;  // this lane's columns (A rows g and g + 8)
  const int64_t cl = min(col_lo, p.n - 1), ch = min(col_hi, p.n - 1);
  const uint8_t* b_lo = p.b + cl * p.row_bytes + t * kLoadBytes;
  const uint8_t* b_hi = p.b + ch * p.row_bytes + t * kLoadBytes;
  const float* sc_lo = p.scales + cl * p.k_blocks;
  const float* sc_hi = p.scales + ch * p.k_blocks;
  const uint8_t* zp_lo = p.zp != nullptr ? p.zp + cl * p.zp_row_bytes : nullptr;
  const uint8_t* zp_hi = p.zp != nullptr ? p.zp + ch * p.zp_row_bytes : nullptr;
  const int row0 = blockIdx.z * kTileRows;
  const int rows = min(kTileRows, m - row0);
  const int groups = kg / kActGroup;
  const int total_iters = p.k_padded / kIterCodes;
  const int s_begin = blockIdx.y * iters_per_split;
  const int s_end = min(total_iters, s_begin + iters_per_split);
  const int per_warp = (s_end - s_begin + kWarps - 1) / kWarps;
  const int w_begin = min(s_end, s_begin + warp * per_warp);
  const int w_end = min(s_end, w_begin + per_warp);
  const int default_zp = 1 << (kBits - 1);

  // B column g of row group rg: activation row rg*R + g/2, part g%2 (fp32) or row rg*R + g (fp16).
  // Lanes of rows past m read row m of xq, which the prologue fills with zeros (the lanes of a warp
  // that read the same address cost one access): no predicates in the loop.
  // B per lane and iteration: kCodesPerLane halves, in 16-byte vectors (8-byte for 4 codes).
  using BVec = std::conditional_t<(kCodesPerLane >= 8), uint4, uint2>;
  constexpr int kStepsPerVec = sizeof(BVec) / 8;            // an mma step takes 8 bytes of B
  constexpr int kBVecs = kCodesPerLane * 2 / static_cast<int>(sizeof(BVec));
  constexpr bool kPipelineB = kBVecs * kStepsPerVec * kRowGroups <= 8;  // next iteration's B in <= 16 regs
  const __half* bx[kRowGroups];
  const float* inv_row[kRowGroups];  // the fold's rows: rg*R + t (fp32)
#pragma unroll
  for (int rg = 0; rg < kRowGroups; ++rg) {
    const int r = rg * kRowsPerGroup + (kParts == 2 ? g / 2 : g);
    const int rb = r < rows ? row0 + r : m;
    bx[rg] = xq + (static_cast<int64_t>(rb) * kParts + (kParts == 2 ? g % 2 : 0)) * kg + t * kCodesPerLane;
    const int rf = rg * kRowsPerGroup + t;
    inv_row[rg] = xs + static_cast<int64_t>(rf < rows ? row0 + rf : m) * groups;
  }

  uint32_t wl[kUnroll][kWords], wh[kUnroll][kWords];
  float sl[kUnroll], sh[kUnroll];
  int zl[kUnroll], zh[kUnroll];  // zero points (kHasZp only)
  // Weights, scales and zero points of iteration `it` into slot u. Columns past N read column
  // N - 1 (b_lo/b_hi are clamped): their mma rows are never stored, so no predicates here either.
  auto load = [&](int u, int it) {
    if (it >= w_end) return;
    const int blk = (it * kIterCodes) >> p.block_shift;
    const int64_t off = static_cast<int64_t>(it) * (4 * kLoadBytes);
    WeightLoad<kLoadBytes>::Run(b_lo + off, wl[u]);
    WeightLoad<kLoadBytes>::Run(b_hi + off, wh[u]);
    sl[u] = __ldg(sc_lo + blk);
    sh[u] = __ldg(sc_hi + blk);
    if constexpr (kHasZp) {
      const int bit = blk * kBits;
      zl[u] = (__ldg(zp_lo + (bit >> 3)) >> (bit & 7)) & ((1 << kBits) - 1);
      zh[u] = (__ldg(zp_hi + (bit >> 3)) >> (bit & 7)) & ((1 << kBits) - 1);
    }
  };
  // Activations (B fragments) and their group scales of iteration `it`, all loads issued at once.
  auto load_b = [&](BVec (&b)[kRowGroups][kBVecs], float (&inv)[kRowGroups], int it) {
    const int kk = it * kIterCodes;
#pragma unroll
    for (int rg = 0; rg < kRowGroups; ++rg) {
#pragma unroll
      for (int q = 0; q < kBVecs; ++q) b[rg][q] = *reinterpret_cast<const BVec*>(bx[rg] + kk + 4 * kStepsPerVec * q);
      inv[rg] = kParts == 2 ? __ldg(inv_row[rg] + kk / kActGroup) : 1.0f;
    }
  };

  float acc[kRowGroups][kAccs];
#pragma unroll
  for (int rg = 0; rg < kRowGroups; ++rg)
#pragma unroll
    for (int j = 0; j < kAccs; ++j) acc[rg][j] = 0.0f;

  // Weights first: they do not depend on the prologue, so their latency overlaps it.
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) load(u, w_begin + u);
  WaitForPrologue();
  Deq deq_lo, deq_hi;  // per-block constants; symmetric weights keep the implied zero point throughout
  deq_lo.SetZeroPoint(default_zp);
  deq_hi.SetZeroPoint(default_zp);

  // B double buffer: iteration base + u uses bb[u % 2] and fills bb[(u + 1) % 2] for the next one
  // (kUnroll is even, so the parity holds across rounds and no copies are needed).
  BVec bb[2][kRowGroups][kBVecs];
  float ib[2][kRowGroups];
  if (kPipelineB && w_begin < w_end) load_b(bb[0], ib[0], w_begin);

  for (int base = w_begin; base < w_end; base += kUnroll) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int it = base + u;
      if (it >= w_end) break;
      const int cur = kPipelineB ? u % 2 : 0;
      if constexpr (kPipelineB) {
        if (it + 1 < w_end) load_b(bb[(u + 1) % 2], ib[(u + 1) % 2], it + 1);
      } else {
        load_b(bb[0], ib[0], it);
      }
      const BVec (&bcur)[kRowGroups][kBVecs] = bb[cur];
      const float (&icur)[kRowGroups] = ib[cur];
      if constexpr (kHasZp) {
        deq_lo.SetZeroPoint(zl[u]);
        deq_hi.SetZeroPoint(zh[u]);
      }
      // Two accumulators per row group, alternating by step: independent mma chains.
      float c[2][kRowGroups][4];
#pragma unroll
      for (int e = 0; e < 2; ++e)
#pragma unroll
        for (int rg = 0; rg < kRowGroups; ++rg)
#pragma unroll
          for (int j = 0; j < 4; ++j) c[e][rg][j] = 0.0f;
#pragma unroll
      for (int wi = 0; wi < kWords; ++wi) {
        uint32_t pl[Deq::kPairs], ph[Deq::kPairs];
        deq_lo.Word(wl[u][wi], pl);
        deq_hi.Word(wh[u][wi], ph);
#pragma unroll
        for (int s = 0; s < kStepsPerWord; ++s) {
          const int st = wi * kStepsPerWord + s;  // 4 codes per lane and column: 8 bytes of B
#pragma unroll
          for (int rg = 0; rg < kRowGroups; ++rg) {
            uint32_t b0, b1;
            if constexpr (kStepsPerVec == 2) {
              const uint4& v = bcur[rg][st / 2];
              b0 = st % 2 ? v.z : v.x;
              b1 = st % 2 ? v.w : v.y;
            } else {
              b0 = bcur[rg][st].x;
              b1 = bcur[rg][st].y;
            }
            Mma16816(c[st % 2][rg], pl[2 * s], ph[2 * s], pl[2 * s + 1], ph[2 * s + 1], b0, b1);
          }
        }
      }
      // Fold this block's sums with its scales (fp32, once per iteration).
#pragma unroll
      for (int rg = 0; rg < kRowGroups; ++rg) {
        float cc[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) cc[j] = c[0][rg][j] + c[1][rg][j];
        if constexpr (kParts == 2) {
          acc[rg][0] = fmaf(cc[0] + cc[1], sl[u] * icur[rg], acc[rg][0]);  // hi + lo, times 1 / 2^e
          acc[rg][1] = fmaf(cc[2] + cc[3], sh[u] * icur[rg], acc[rg][1]);
        } else {
          acc[rg][0] = fmaf(cc[0], sl[u], acc[rg][0]);
          acc[rg][1] = fmaf(cc[1], sl[u], acc[rg][1]);
          acc[rg][2] = fmaf(cc[2], sh[u], acc[rg][2]);
          acc[rg][3] = fmaf(cc[3], sh[u], acc[rg][3]);
        }
      }
      load(u, it + kUnroll);  // refill the slot just consumed
    }
  }

  // Sum the warps' parts in warp order; warp 0 finishes.
#pragma unroll
  for (int rg = 0; rg < kRowGroups; ++rg)
#pragma unroll
    for (int j = 0; j < kAccs; ++j) red[warp][rg][j][lane] = acc[rg][j];
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int rg = 0; rg < kRowGroups; ++rg)
#pragma unroll
      for (int j = 0; j < kAccs; ++j) {
        float v = red[0][rg][j][lane];
#pragma unroll
        for (int w = 1; w < kWarps; ++w) v += red[w][rg][j][lane];
        acc[rg][j] = v;
      }
  }

  // Epilogue, warp 0. fp32: lane (g, t) holds row rg*4 + t x columns g, g + 8. fp16: rows
  // rg*8 + 2t, 2t + 1 x columns g, g + 8.
  const bool split = gridDim.y > 1;
  if (warp == 0) {
#pragma unroll
    for (int rg = 0; rg < kRowGroups; ++rg)
#pragma unroll
      for (int j = 0; j < kAccs; ++j) {
        const int r = kParts == 2 ? rg * kRowsPerGroup + t : rg * kRowsPerGroup + 2 * t + (j & 1);
        const int col = (kParts == 2 ? j : j / 2) == 0 ? col_lo : col_hi;
        if (r >= rows || col >= p.n) continue;
        const int64_t row = row0 + r;
        if (split) {
          partials[(static_cast<int64_t>(blockIdx.y) * m + row) * p.n + col] = acc[rg][j];
        } else {
          const float bias = p.bias != nullptr ? p.bias[col] : 0.0f;
          y[row * p.n + col] = FromFloat<TA>(acc[rg][j] + bias);
        }
      }
  }
  if (!split) return;
  // Split-K: the last block of this tile to finish sums the slices in order (deterministic).
  __threadfence();
  __syncthreads();
  const int tile = blockIdx.z * gridDim.x + blockIdx.x;
  if (threadIdx.x == 0) is_last = atomicAdd(&counters[tile], 1u) == gridDim.y - 1;
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  const int cols = min(kColsPerTile, p.n - n0);
  for (int idx = threadIdx.x; idx < rows * cols; idx += blockDim.x) {
    const int64_t row = row0 + idx / cols;
    const int col = n0 + idx % cols;
    float sum = 0.0f;
    for (int sl_i = 0; sl_i < static_cast<int>(gridDim.y); ++sl_i)
      sum += __ldcg(partials + (static_cast<int64_t>(sl_i) * m + row) * p.n + col);
    if (p.bias != nullptr) sum += p.bias[col];
    y[row * p.n + col] = FromFloat<TA>(sum);
  }
  if (threadIdx.x == 0) counters[tile] = 0;  // ready for the next launch on this stream
}

// ---- CUDA-core kernel ---------------------------------------------------------------------------

// `bits` wide value `i` of a little-endian bit stream (may straddle two bytes for 3/5/6/7 bits).
__device__ __forceinline__ int ReadBits(const uint8_t* p, int64_t i, int bits) {
  const int64_t bit = i * bits;
  unsigned v = p[bit / 8];
  if ((bit % 8) + bits > 8) v |= static_cast<unsigned>(p[bit / 8 + 1]) << 8;
  return static_cast<int>((v >> (bit % 8)) & ((1u << bits) - 1u));
}

// One warp per output column, lanes along K, up to 16 rows per warp (grid.y: row tiles).
template <typename TA>
__global__ void __launch_bounds__(kThreads) NBitsGenericKernel(NBitsParams p, const TA* __restrict__ x,
                                                              TA* __restrict__ y, int m) {
  const int lane = threadIdx.x & 31;
  const int col = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (col >= p.n) return;
  const int row0 = blockIdx.y * kGenericRows;
  const int rows = min(kGenericRows, m - row0);
  const uint8_t* brow = p.b + static_cast<int64_t>(col) * p.row_bytes;
  const int blob = p.block_size * p.bits / 8;
  const int default_zp = 1 << (p.bits - 1);
  float acc[kGenericRows];
#pragma unroll
  for (int r = 0; r < kGenericRows; ++r) acc[r] = 0.0f;
  for (int kk = lane; kk < p.k; kk += 32) {
    const int stored_blk = kk / p.block_size;
    const int blk = p.g_idx != nullptr ? p.g_idx[kk] : stored_blk;
    const int q = ReadBits(brow + static_cast<int64_t>(stored_blk) * blob, kk % p.block_size, p.bits);
    const int64_t pi = static_cast<int64_t>(col) * p.k_blocks + blk;
    float zp = static_cast<float>(default_zp);
    if (p.zp != nullptr) zp = static_cast<float>(ReadBits(p.zp + static_cast<int64_t>(col) * p.zp_row_bytes, blk, p.bits));
    else if (p.zp_float != nullptr) zp = p.zp_float[pi];
    const float w = (static_cast<float>(q) - zp) * p.scales[pi];
#pragma unroll
    for (int r = 0; r < kGenericRows; ++r)
      if (r < rows) acc[r] = fmaf(ToFloat(x[static_cast<int64_t>(row0 + r) * p.k + kk]), w, acc[r]);
  }
#pragma unroll
  for (int r = 0; r < kGenericRows; ++r) {
    float v = acc[r];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0 && r < rows) {
      if (p.bias != nullptr) v += p.bias[col];
      y[static_cast<int64_t>(row0 + r) * p.n + col] = FromFloat<TA>(v);
    }
  }
}

// ---- dispatch ---------------------------------------------------------------------------------

// Bytes per lane load for the tensor-core kernel: the largest of 16/8/4 with 4 lanes x load <=
// one block of one column (so one mma never mixes blocks); 0 when there is none.
int MmaLoadBytes(const NBitsLayout& l) {
  if (l.bits != 2 && l.bits != 4 && l.bits != 8) return 0;
  for (int lb : {16, 8, 4})
    if (4 * lb <= l.blob_bytes()) return lb;
  return 0;
}

template <typename TA>
Status LaunchGeneric(const NBitsParams& p, const TA* x, TA* y, int64_t m, cudaStream_t stream) {
  const dim3 grid((p.n + kWarps - 1) / kWarps, static_cast<unsigned>((m + kGenericRows - 1) / kGenericRows));
  NBitsGenericKernel<TA><<<grid, kThreads, 0, stream>>>(p, x, y, static_cast<int>(m));  // a warp per column
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("NBitsGenericKernel");
  return Status::Ok();
}

// Blocks resident per SM of one kernel instantiation (4 when the query fails).
template <typename Kernel>
int MmaBlocksPerSm(Kernel kernel) {
  int nb = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, kernel, kThreads, 0) != cudaSuccess) {
    (void)cudaGetLastError();
    nb = 0;
  }
  return nb > 0 ? nb : 4;
}

template <int kBits, int kLoadBytes, typename TA, int kRowGroups>
Status LaunchMmaShape(const NBitsParams& p, const TA* x, TA* y, int64_t m, NBitsWorkspace& ws, cudaStream_t stream,
                      int split_k) {
  constexpr int kParts = std::is_same_v<TA, float> ? 2 : 1;
  constexpr int kTileRows = kRowGroups * 8 / kParts;
  constexpr int kIterCodes = 4 * kLoadBytes * 8 / kBits;
  const int row_tiles = static_cast<int>((m + kTileRows - 1) / kTileRows);
  const int col_tiles = (p.n + kColsPerTile - 1) / kColsPerTile;
  const int iters = p.k_padded / kIterCodes;  // k_padded is a multiple of the block, itself of kIterCodes
  int splits = split_k;
  if (splits <= 0) {
    // Split K across blocks only when the tiles cannot fill the GPU with warps of >= 2 iterations.
    QC_ASSIGN_OR_RETURN(DeviceInfo info, CurrentDeviceInfo());
    static const int blocks_per_sm = MmaBlocksPerSm(NBitsMmaKernel<kBits, kLoadBytes, TA, kRowGroups, false, false>);
    const int64_t target = static_cast<int64_t>(info.sm_count) * blocks_per_sm;
    const int64_t base = static_cast<int64_t>(col_tiles) * row_tiles;
    splits = static_cast<int>(std::clamp<int64_t>(target / base, 1,
                                                  std::max(1, iters / (kWarps * kMinItersPerWarp))));
  }
  splits = std::clamp(splits, 1, iters);
  const int iters_per_split = (iters + splits - 1) / splits;
  splits = (iters + iters_per_split - 1) / iters_per_split;  // no empty slices
  const int kg = (p.k_padded + kActGroup - 1) / kActGroup * kActGroup;
  const int groups = kg / kActGroup;
  QC_RETURN_IF_ERROR(ws.Reserve(splits > 1 ? static_cast<int64_t>(splits) * m * p.n : 0,
                                splits > 1 ? static_cast<int64_t>(col_tiles) * row_tiles : 0, (m + 1) * kParts * kg,
                                (m + 1) * groups, stream));
  if (row_tiles > 65535) return InvalidArgument("MatMulNBits: too many rows (" + std::to_string(m) + ")");

  const int64_t tasks = (m + 1) * groups;  // one warp each, 8 per block
  PrepareActivationsKernel<kBits, TA><<<static_cast<unsigned>((tasks + 7) / 8), 256, 0, stream>>>(
      x, static_cast<int>(m), p.k, kg, ws.activations(), ws.activation_scales());
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("PrepareActivationsKernel");

  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(col_tiles, splits, row_tiles);
  config.blockDim = dim3(kThreads);
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;  // overlap with the prologue
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = 1;
  auto kernel = p.zp != nullptr ? NBitsMmaKernel<kBits, kLoadBytes, TA, kRowGroups, true, false>
                                : NBitsMmaKernel<kBits, kLoadBytes, TA, kRowGroups, false, false>;
  if constexpr (kRowGroups == 1 && kLoadBytes == 16) {
    // The deep slots when the grid is at most 2 waves: measured on the H200 at batch 1, they gain
    // 1-15% at 256 and 512 tiles (4096 or 8192 columns; most with fp16 activations and W8) and
    // lose up to 10% at 688 (11008 columns, 2.6 waves), where the shallow slots do better.
    QC_ASSIGN_OR_RETURN(DeviceInfo info, CurrentDeviceInfo());
    static const int deep_blocks_per_sm =
        MmaBlocksPerSm(NBitsMmaKernel<kBits, kLoadBytes, TA, kRowGroups, false, true>);
    const int64_t blocks = static_cast<int64_t>(col_tiles) * splits * row_tiles;
    if (blocks <= 2 * static_cast<int64_t>(info.sm_count) * deep_blocks_per_sm)
      kernel = p.zp != nullptr ? NBitsMmaKernel<kBits, kLoadBytes, TA, kRowGroups, true, true>
                               : NBitsMmaKernel<kBits, kLoadBytes, TA, kRowGroups, false, true>;
  }
  QC_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&config, kernel, p,
                                             static_cast<const __half*>(ws.activations()),
                                             static_cast<const float*>(ws.activation_scales()), kg, y,
                                             static_cast<int>(m), iters_per_split, ws.partials(), ws.counters()));
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("NBitsMmaKernel");
  return Status::Ok();
}

template <int kBits, int kLoadBytes, typename TA>
Status LaunchMmaRows(const NBitsParams& p, const TA* x, TA* y, int64_t m, NBitsWorkspace& ws, cudaStream_t stream,
                     int split_k) {
  // One mma covers 4 fp32 rows (hi, lo) or 8 fp16 rows. GEMV tiles: 1, 2 or 4 row groups (up to
  // 4, 8 or 16 rows); GEMM tiles of 32 rows above that.
  if constexpr (std::is_same_v<TA, float>) {
    if (m <= 4) return LaunchMmaShape<kBits, kLoadBytes, TA, 1>(p, x, y, m, ws, stream, split_k);
    if (m <= 16) return LaunchMmaShape<kBits, kLoadBytes, TA, 4>(p, x, y, m, ws, stream, split_k);
    return LaunchMmaShape<kBits, kLoadBytes, TA, 8>(p, x, y, m, ws, stream, split_k);
  } else {
    if (m <= 8) return LaunchMmaShape<kBits, kLoadBytes, TA, 1>(p, x, y, m, ws, stream, split_k);
    if (m <= 16) return LaunchMmaShape<kBits, kLoadBytes, TA, 2>(p, x, y, m, ws, stream, split_k);
    return LaunchMmaShape<kBits, kLoadBytes, TA, 4>(p, x, y, m, ws, stream, split_k);
  }
}

template <int kBits, typename TA>
Status LaunchMmaLoad(int load_bytes, const NBitsParams& p, const TA* x, TA* y, int64_t m, NBitsWorkspace& ws,
                     cudaStream_t stream, int split_k) {
  switch (load_bytes) {
    case 16: return LaunchMmaRows<kBits, 16, TA>(p, x, y, m, ws, stream, split_k);
    case 8: return LaunchMmaRows<kBits, 8, TA>(p, x, y, m, ws, stream, split_k);
    case 4: return LaunchMmaRows<kBits, 4, TA>(p, x, y, m, ws, stream, split_k);
    default: return Internal("MatMulNBits: bad load width");
  }
}

Status CheckWeights(const NBitsWeightsView& w) {
  QC_RETURN_IF_ERROR(w.layout.Validate());
  if (w.b == nullptr || w.scales == nullptr) return InvalidArgument("MatMulNBits: B and scales are required");
  if (w.zero_points != nullptr && w.zero_points_float != nullptr)
    return InvalidArgument("MatMulNBits: give packed or float zero points, not both");
  return Status::Ok();
}

template <typename TA>
Status Dispatch(const NBitsWeightsView& w, const TA* x, TA* y, int64_t m, NBitsWorkspace& ws, cudaStream_t stream,
                const NBitsOptions& options) {
  QC_RETURN_IF_ERROR(CheckWeights(w));
  if (m < 0) return InvalidArgument("MatMulNBits: negative row count");
  if (m == 0) return Status::Ok();
  if (m > (int64_t{1} << 31) / w.layout.k || m > (int64_t{1} << 31) / w.layout.n)
    return InvalidArgument("MatMulNBits: m * k or m * n exceeds 2^31");
  const NBitsKernel auto_kernel = SelectNBitsKernel(w);
  NBitsKernel kernel = options.kernel == NBitsKernel::kAuto ? auto_kernel : options.kernel;
  if (kernel == NBitsKernel::kMma && auto_kernel != NBitsKernel::kMma)
    return Unimplemented("MatMulNBits: the tensor-core kernel cannot run this layout (bits " +
                         std::to_string(w.layout.bits) + ", block_size " + std::to_string(w.layout.block_size) +
                         (w.g_idx ? ", g_idx" : "") + (w.zero_points_float ? ", float zero points" : "") + ")");
  const NBitsParams p = MakeParams(w);
  if (kernel == NBitsKernel::kGeneric) return LaunchGeneric<TA>(p, x, y, m, stream);
  const int lb = MmaLoadBytes(w.layout);
  switch (w.layout.bits) {
    case 2: return LaunchMmaLoad<2, TA>(lb, p, x, y, m, ws, stream, options.split_k);
    case 4: return LaunchMmaLoad<4, TA>(lb, p, x, y, m, ws, stream, options.split_k);
    case 8: return LaunchMmaLoad<8, TA>(lb, p, x, y, m, ws, stream, options.split_k);
    default: return Internal("MatMulNBits: bad bit width for the tensor-core kernel");
  }
}

}  // namespace

Status NBitsLayout::Validate() const {
  if (bits < 2 || bits > 8) return InvalidArgument("MatMulNBits: bits must be in 2..8, got " + std::to_string(bits));
  if (block_size < 16 || (block_size & (block_size - 1)) != 0)
    return InvalidArgument("MatMulNBits: block_size must be a power of two >= 16, got " + std::to_string(block_size));
  if (k <= 0 || n <= 0 || k >= (int64_t{1} << 31) || n >= (int64_t{1} << 31) ||
      k_blocks() * block_size >= (int64_t{1} << 31))
    return InvalidArgument("MatMulNBits: K and N must be in [1, 2^31), got K=" + std::to_string(k) +
                           " N=" + std::to_string(n));
  return Status::Ok();
}

const char* NBitsKernelName(NBitsKernel kernel) {
  switch (kernel) {
    case NBitsKernel::kAuto: return "auto";
    case NBitsKernel::kMma: return "mma";
    case NBitsKernel::kGeneric: return "generic";
  }
  return "?";
}

NBitsKernel SelectNBitsKernel(const NBitsWeightsView& w) {
  if (w.g_idx != nullptr || w.zero_points_float != nullptr) return NBitsKernel::kGeneric;
  const int lb = MmaLoadBytes(w.layout);
  // Vector loads need B aligned to their width (cudaMalloc gives 256 bytes; a view may not).
  if (lb == 0 || reinterpret_cast<uintptr_t>(w.b) % lb != 0) return NBitsKernel::kGeneric;
  return NBitsKernel::kMma;
}

Status NBitsWorkspace::Reserve(int64_t partial_floats, int64_t counters, int64_t activation_halves,
                               int64_t activation_scales, cudaStream_t stream) {
  auto grow = [&](DeviceBuffer& buf, int64_t& capacity, int64_t count, size_t elem) -> Status {
    if (count <= capacity) return Status::Ok();
    buf.Reset();
    QC_ASSIGN_OR_RETURN(buf, allocator_->Allocate(static_cast<size_t>(count) * elem));
    capacity = count;
    return Status::Ok();
  };
  const int64_t old_counters = counter_capacity_;
  QC_RETURN_IF_ERROR(grow(partials_, partial_capacity_, partial_floats, sizeof(float)));
  QC_RETURN_IF_ERROR(grow(counters_, counter_capacity_, counters, sizeof(unsigned)));
  if (counter_capacity_ != old_counters)
    QC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(counters_.data(), 0, counter_capacity_ * sizeof(unsigned), stream));
  QC_RETURN_IF_ERROR(grow(activations_, activation_capacity_, activation_halves, sizeof(__half)));
  QC_RETURN_IF_ERROR(grow(activation_scales_, activation_scale_capacity_, activation_scales, sizeof(float)));
  return Status::Ok();
}

Status MatMulNBits(const NBitsWeightsView& w, const float* x, float* y, int64_t m, NBitsWorkspace& workspace,
                   cudaStream_t stream, const NBitsOptions& options) {
  return Dispatch<float>(w, x, y, m, workspace, stream, options);
}

Status MatMulNBits(const NBitsWeightsView& w, const __half* x, __half* y, int64_t m, NBitsWorkspace& workspace,
                   cudaStream_t stream, const NBitsOptions& options) {
  return Dispatch<__half>(w, x, y, m, workspace, stream, options);
}

}  // namespace qc::cuda
