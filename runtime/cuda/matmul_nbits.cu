// MatMulNBits kernels (matmul_nbits.h): a tensor-core kernel that streams the packed weights once
// and dequantises them in registers, for every batch size (GEMV tiles up to 16 rows, 32-row GEMM
// tiles above); a one-launch GEMV kernel for up to 16 rows whose weights the copy engine stages in
// shared memory (NBitsGemvKernel, below: the default for one fp32 row of 4-bit weights that the
// stream kernel cannot take); and a general CUDA-core kernel for the layouts the first two cannot
// read. The batch-1 stream kernel (kStream, the default for one row of 4-bit weights) lives in
// matmul_nbits_stream.cu.
//
// Tensor-core path (kMma), two launches:
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

#include "runtime/cuda/async_copy.cuh"
#include "runtime/cuda/cuda_check.h"
#include "runtime/cuda/device.h"
#include "runtime/cuda/kernel_attributes.h"
#include "runtime/cuda/matmul_nbits_stream.h"
#include "runtime/cuda/nbits_codes.cuh"
#include "runtime/cuda/nbits_mma.cuh"

namespace qc::cuda {
namespace {

constexpr int kWarps = 8;                  // warps per block, all on the same 16 columns, splitting K
constexpr int kThreads = kWarps * 32;
constexpr int kColsPerTile = 16;           // the m of mma.m16n8k16: output columns per block
constexpr int kActGroup = 256;             // codes per activation scale (>= every iteration's codes, and aligned)
constexpr int kMinItersPerWarp = 2;        // a K slice shorter than 2 iterations per warp costs more than it hides
constexpr int kGenericRows = 16;           // rows per warp of the CUDA-core kernel (accumulators in registers)


// Position in the prepared (permuted) activation order of code j of a 32-bit word: step s = j' / 2
// feeds slots (2t, 2t+1) from pair 2s and (2t+8, 2t+9) from pair 2s+1 (see the file comment).
template <int kBits>
__device__ __forceinline__ int PermutedPos(int j) {
  constexpr int kHalf = 16 / kBits;  // CW / 2
  const int h = j / kHalf, jp = j % kHalf;
  return 4 * (jp / 2) + 2 * (jp % 2) + h;
}

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
    v[j] = row < m && k0 + j < k ? LoadValue(x[static_cast<int64_t>(row) * k + k0 + j]) : 0.0f;
    mx = fmaxf(mx, fabsf(v[j]));
  }
  float scale = 1.0f;
  if constexpr (kParts == 2) {
    // Non-negative floats order like their bit patterns. Inf/NaN groups keep e = 0 (they stay non-finite).
    const int e = ActivationExponent(__reduce_max_sync(0xffffffffu, __float_as_uint(mx)));
    scale = Pow2(e);
    if (lane == 0) xs[static_cast<int64_t>(row) * groups + group] = Pow2(-e);
  }
  __half* hi = xq + static_cast<int64_t>(row) * kParts * kg;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int c = k0 + j;
    const int pos = (c & ~(kCodesPerWord - 1)) + PermutedPos<kBits>(c & (kCodesPerWord - 1));
    const float s = v[j] * scale;  // times a power of two: exact
    const __half h = __float2half_rn(s);
    hi[pos] = h;
    if constexpr (kParts == 2) hi[kg + pos] = __float2half_rn(SplitRemainder(s, __half2float(h)));
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
          y[row * p.n + col] = StoreValue<TA>(acc[rg][j] + bias);
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
    y[row * p.n + col] = StoreValue<TA>(sum);
  }
  if (threadIdx.x == 0) counters[tile] = 0;  // ready for the next launch on this stream
}

// ---- CUDA-core kernel ---------------------------------------------------------------------------

// One warp per output column, lanes along K, up to 16 rows per warp (grid.y: row tiles).
template <typename TA>
__global__ void __launch_bounds__(kThreads) NBitsGenericKernel(NBitsParams p, const TA* __restrict__ x,
                                                              TA* __restrict__ y, int m) {
  const int lane = threadIdx.x & 31;
  const int col = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (col >= p.n) return;
  const int row0 = blockIdx.y * kGenericRows;
  const int rows = min(kGenericRows, m - row0);
  float acc[kGenericRows];
#pragma unroll
  for (int r = 0; r < kGenericRows; ++r) acc[r] = 0.0f;
  for (int kk = lane; kk < p.k; kk += 32) {
    const float w = p.Weight(col, kk);
#pragma unroll
    for (int r = 0; r < kGenericRows; ++r)
      if (r < rows) acc[r] = fmaf(LoadValue(x[static_cast<int64_t>(row0 + r) * p.k + kk]), w, acc[r]);
  }
#pragma unroll
  for (int r = 0; r < kGenericRows; ++r) {
    float v = acc[r];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0 && r < rows) {
      if (p.bias != nullptr) v += p.bias[col];
      y[static_cast<int64_t>(row0 + r) * p.n + col] = StoreValue<TA>(v);
    }
  }
}

// ---- GEMV kernel (m <= 16): weights staged in shared memory by the copy engine ------------------

// A block: kGemvWarps warps on `tiles_per_block` 16-column tiles and one K slice (grid.x: tile
// groups, grid.y: K slices). Before waiting for the previous kernel, warp 0 queues one bulk copy
// (cp.async.bulk, global -> shared) per column and chunk of the slice (each chunk of a tile
// completes on its own mbarrier) and every thread queues 4-byte cp.async copies of the scales: the
// whole slice is in flight at once at no register cost, and with programmatic dependent launch the
// next layer's copies overlap this layer's tail. After griddepcontrol.wait the block converts its
// slice of X into shared memory (fp32: hi + lo fp16 halves of x * 2^e per row and 256 codes, as the
// prologue of the kMma path does), then each warp takes every wpt-th iteration of its tile
// (wpt = warps per tile): dequantise from shared memory into A fragments, mma with the
// activations as B, fold the block's scale. Warps of a tile are summed in warp order
// (deterministic); split-K slices by the last block of each tile group, in slice order.
constexpr int kGemvWarps = 8;               // 8 warps: up to 8 tiles per block, or 8 K-interleaved warps on one
constexpr int kGemvThreads = kGemvWarps * 32;
constexpr int kGemvMaxRows = 16;            // one row tile: 4 fp32 row groups of 4, or 2 fp16 groups of 8
constexpr int kGemvChunkBytes = 1024;       // per column and copy: the unit a warp waits for
constexpr int kGemvTargetBytes = 32 << 10;  // packed weight bytes per block when the kernel picks split-K
constexpr int kGemvWholeKBytes = 64 << 10;  // ... unless all of K fits in this with at most a block per SM

// Host-computed geometry and shared-memory layout (byte offsets) of one GEMV launch.
struct GemvPlan {
  int tiles_per_block = 1;  // 16-column tiles per block (1, 2, 4 or 8)
  int tiles_shift = 0;      // log2(tiles_per_block)
  int slice_iters = 0;      // iterations (kIterCodes codes of one column) per K slice
  int chunk_iters = 0;      // GemvChunkIters: iterations per bulk copy (one mbarrier per tile and chunk)
  int chunks = 0;           // chunks of a full slice
  int splits = 1;           // K slices (grid.y)
  int slice_blocks = 0;     // scale slots per column: quantisation blocks a slice can touch
  int x_groups = 0;         // 256-code activation groups per slice
  int w_stride = 0;         // bytes per staged column (padded: conflict-free 16-byte reads)
  int x_stride = 0;         // bytes per activation row part (likewise)
  int bar_off = 0, w_off = 0, x_off = 0, inv_off = 0, sc_off = 0, zp_off = 0, smem = 0;
};

// Position (in halves) of slice code `kl` in a staged activation row part: iteration, then the
// lane chunk's 16-byte (or 8-byte) vectors vector-major, so that the 4 lanes t of one read touch
// consecutive vectors (conflict-free with the row stride at 64 mod 128 bytes).
template <int kBits, int kLoadBytes>
__device__ __forceinline__ int GemvXPos(int kl) {
  constexpr int kCodesPerWord = 32 / kBits;
  constexpr int kCodesPerLane = kLoadBytes * 8 / kBits;
  constexpr int kIterCodes = 4 * kCodesPerLane;
  constexpr int kVecHalves = kCodesPerLane >= 8 ? 8 : 4;
  const int it = kl / kIterCodes, within = kl % kIterCodes;
  const int t = within / kCodesPerLane, ci = within % kCodesPerLane;
  const int i = (ci & ~(kCodesPerWord - 1)) + PermutedPos<kBits>(ci & (kCodesPerWord - 1));
  return it * kIterCodes + (i / kVecHalves) * (4 * kVecHalves) + t * kVecHalves + i % kVecHalves;
}

// Iterations per bulk copy: kGemvChunkBytes per column, a power of two >= kGemvWarps (so the warps
// of a tile split every chunk evenly).
__host__ __device__ constexpr int GemvChunkIters(int iter_bytes) {
  return kGemvChunkBytes / iter_bytes > kGemvWarps ? kGemvChunkBytes / iter_bytes : kGemvWarps;
}

// Code order within one 16-byte vector of a staged activation row part (kCodesPerLane >= 8 and
// at most 8 codes per word): slot i holds code GemvVecOrder(codes_per_word, i) of 8 consecutive
// codes, the order Dequant pairs them in (PermutedPos).
__device__ __forceinline__ constexpr int GemvVecOrder(int codes_per_word, int i) {
  return codes_per_word == 8 ? (i % 2) * 4 + i / 2                     // pairs (j, j + 4): 0 4 1 5 2 6 3 7
                             : (i / 4) * 4 + (i % 2) * 2 + (i % 4) / 2;  // per word (j, j + 2): 0 2 1 3 4 6 5 7
}

template <int kBits, int kLoadBytes, typename TA, int kRowGroups, bool kHasZp>
__global__ void __launch_bounds__(kGemvThreads) NBitsGemvKernel(NBitsParams p, const TA* __restrict__ x,
                                                               TA* __restrict__ y, int m, GemvPlan plan,
                                                               float* __restrict__ partials, unsigned* counters) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int kParts = std::is_same_v<TA, float> ? 2 : 1;
  constexpr int kRowsPerGroup = 8 / kParts;
  constexpr int kAccs = kParts == 2 ? 2 : 4;
  constexpr int kWords = kLoadBytes / 4;
  constexpr int kCodesPerWord = 32 / kBits;
  constexpr int kCodesPerLane = kLoadBytes * 8 / kBits;
  constexpr int kIterCodes = 4 * kCodesPerLane;
  constexpr int kIterBytes = 4 * kLoadBytes;
  constexpr int kStepsPerWord = kCodesPerWord / 4;
  constexpr int kVecHalves = kCodesPerLane >= 8 ? 8 : 4;
  using BVec = std::conditional_t<kVecHalves == 8, uint4, uint2>;
  constexpr int kStepsPerVec = kVecHalves / 4;
  constexpr int kBVecs = kCodesPerLane / kVecHalves;
  constexpr int kChunkIters = GemvChunkIters(kIterBytes);
  constexpr bool kVecX = kCodesPerLane >= 8 && kCodesPerWord <= 8;  // 8 consecutive codes fill one vector
  using Deq = Dequant<kBits>;
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ bool is_last;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int tiles = plan.tiles_per_block, tc_shift = plan.tiles_shift + 4;  // 16 columns per tile
  const int col0 = blockIdx.x * tiles * kColsPerTile;
  const int total_iters = p.k_padded / kIterCodes;
  const int it0 = blockIdx.y * plan.slice_iters;
  const int n_it = min(total_iters, it0 + plan.slice_iters) - it0;  // >= 1: the host makes no empty slice
  const int chunks = (n_it + kChunkIters - 1) / kChunkIters;
  const int k0 = it0 * kIterCodes;
  const int blk0 = k0 >> p.block_shift;
  const int nblk = ((k0 + n_it * kIterCodes - 1) >> p.block_shift) - blk0 + 1;
  const int rows = m;

  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + plan.bar_off);
  uint8_t* wsm = smem + plan.w_off;
  __half* xsm = reinterpret_cast<__half*>(smem + plan.x_off);
  float* inv = reinterpret_cast<float*>(smem + plan.inv_off);
  float* scs = reinterpret_cast<float*>(smem + plan.sc_off);
  uint8_t* zps = smem + plan.zp_off;
  const int x_halves = plan.x_stride / 2;

  AllowDependents();  // the next kernel may launch once every block of this one has started

  // 1. Weights: nothing here depends on the previous kernel.
  if (warp == 0) {
    if (lane == 0) {
      for (int i = 0; i < tiles * chunks; ++i) MbarInit(bars + i, 1);
      FenceMbarInit();
      for (int tile = 0; tile < tiles; ++tile) {
        const int cols = max(0, min(kColsPerTile, p.n - col0 - tile * kColsPerTile));
        for (int c = 0; c < chunks; ++c) {
          const int iters = min(kChunkIters, n_it - c * kChunkIters);
          MbarArriveExpectTx(bars + tile * chunks + c, static_cast<uint32_t>(cols * iters * kIterBytes));
        }
      }
    }
    __syncwarp();
    // Chunk-major order: every column's first chunk is queued before any second chunk.
    for (int i = lane; i < tiles * kColsPerTile * chunks; i += 32) {
      const int tc = i & ((1 << tc_shift) - 1), c = i >> tc_shift;
      const int col = col0 + tc;
      if (col < p.n) {
        const int iters = min(kChunkIters, n_it - c * kChunkIters);
        BulkCopy(wsm + tc * plan.w_stride + c * kChunkIters * kIterBytes,
                 p.b + col * p.row_bytes + static_cast<int64_t>(it0 + c * kChunkIters) * kIterBytes,
                 static_cast<uint32_t>(iters * kIterBytes), bars + (tc / kColsPerTile) * chunks + c);
      }
    }
  }
  // Scales (and zero points) of the slice's blocks, [tile][block][g][lo/hi column] so that a lane
  // reads its two columns' scales with one 8-byte load; columns past N get 0.
  // A warp per column, lanes along its blocks (coalesced reads of the column's scales).
  for (int tc = warp; tc < tiles * kColsPerTile; tc += kGemvWarps) {
    const int col = col0 + tc, c = tc & (kColsPerTile - 1);
    const int slot0 = (tc >> 4) * plan.slice_blocks * kColsPerTile + (c & 7) * 2 + (c >> 3);
    for (int b = lane; b < nblk; b += 32) {
      const int slot = slot0 + b * kColsPerTile;
      if (col < p.n) {
        CpAsync4(scs + slot, p.scales + static_cast<int64_t>(col) * p.k_blocks + blk0 + b);
      } else {
        scs[slot] = 0.0f;
      }
      if constexpr (kHasZp) {
        int z = 0;
        if (col < p.n) {
          const uint8_t* zr = p.zp + static_cast<int64_t>(col) * p.zp_row_bytes;
          const int bit = (blk0 + b) * kBits;
          z = (__ldg(zr + (bit >> 3)) >> (bit & 7)) & ((1 << kBits) - 1);  // 2/4/8 bits never straddle a byte
        }
        zps[slot] = static_cast<uint8_t>(z);
      }
    }
  }

  // 2. Activations: X is the previous kernel's output.
  WaitForPrologue();
  const int groups = (n_it * kIterCodes + kActGroup - 1) / kActGroup;
  const bool x_vec = p.k % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;  // 8 values in 16 or 32 bytes
  for (int task = warp; task < rows * groups; task += kGemvWarps) {
    const int r = task / groups, grp = task - r * groups;
    const int kl0 = grp * kActGroup + lane * 8;
    const int kk0 = k0 + kl0;
    const TA* xr = x + static_cast<int64_t>(r) * p.k + kk0;
    float v[8];
    if (x_vec && kk0 + 8 <= p.k) {
      if constexpr (std::is_same_v<TA, float>) {
        const float4 a = __ldg(reinterpret_cast<const float4*>(xr)), b = __ldg(reinterpret_cast<const float4*>(xr) + 1);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
      } else {
        const uint4 a = __ldg(reinterpret_cast<const uint4*>(xr));
        const uint32_t w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[j]));
          v[2 * j] = f.x, v[2 * j + 1] = f.y;
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = kk0 + j < p.k ? LoadValue(xr[j]) : 0.0f;
    }
    float scale = 1.0f;
    if constexpr (kParts == 2) {
      float mx = 0.0f;
#pragma unroll
      for (int j = 0; j < 8; ++j) mx = fmaxf(mx, fabsf(v[j]));
      const int e = ActivationExponent(__reduce_max_sync(0xffffffffu, __float_as_uint(mx)));
      scale = Pow2(e);
      if (lane == 0) inv[r * plan.x_groups + grp] = Pow2(-e);
    }
    __half* hi = xsm + r * kParts * x_halves;
    if constexpr (kVecX) {
      // One 16-byte vector per row part: the 8 values in the order the lanes consume them.
      float sv[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) sv[i] = v[GemvVecOrder(kCodesPerWord, i)] * scale;  // a power of two: exact
      uint32_t h[4], l[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        SplitHalves(sv[2 * j], sv[2 * j + 1], h[j], l[j]);
      }
      const int pos = GemvXPos<kBits, kLoadBytes>(kl0);  // slot 0 holds code 0: the vector's start
      *reinterpret_cast<uint4*>(hi + pos) = make_uint4(h[0], h[1], h[2], h[3]);
      if constexpr (kParts == 2) *reinterpret_cast<uint4*>(hi + x_halves + pos) = make_uint4(l[0], l[1], l[2], l[3]);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int pos = GemvXPos<kBits, kLoadBytes>(kl0 + j);
        const float sj = v[j] * scale;
        const __half h = __float2half_rn(sj);
        hi[pos] = h;
        if constexpr (kParts == 2) hi[x_halves + pos] = __float2half_rn(SplitRemainder(sj, __half2float(h)));
      }
    }
  }
  CpAsyncWaitAll();
  __syncthreads();

  // 3. Main loop: warp `warp` works on tile warp % tiles, iterations kw, kw + wpt, ...
  const int tile = warp & (tiles - 1), kw = warp >> plan.tiles_shift, wpt = kGemvWarps >> plan.tiles_shift;
  const uint8_t* w_lo = wsm + (tile * kColsPerTile + g) * plan.w_stride + t * kLoadBytes;
  const uint8_t* w_hi = w_lo + 8 * plan.w_stride;
  const float* sc = scs + tile * plan.slice_blocks * kColsPerTile + g * 2;
  const uint8_t* zq = zps + tile * plan.slice_blocks * kColsPerTile + g * 2;
  // B column g of row group rg is row part rg * 8 + g (fp32: row rg*4 + g/2, hi or lo; fp16: row
  // rg*8 + g); lanes past the rows use zeros.
  const __half* bx[kRowGroups];
  bool b_ok[kRowGroups];
  const float* inv_row[kRowGroups];  // the fold's row rg*R + t (fp32)
#pragma unroll
  for (int rg = 0; rg < kRowGroups; ++rg) {
    const int rp = rg * 8 + g;
    b_ok[rg] = rp < rows * kParts;
    bx[rg] = xsm + (b_ok[rg] ? rp : 0) * x_halves + t * kVecHalves;
    inv_row[rg] = inv + min(rg * kRowsPerGroup + t, rows - 1) * plan.x_groups;
  }
  const int default_zp = 1 << (kBits - 1);
  Deq deq_lo, deq_hi;
  deq_lo.SetZeroPoint(default_zp);
  deq_hi.SetZeroPoint(default_zp);

  float acc[kRowGroups][kAccs];
#pragma unroll
  for (int rg = 0; rg < kRowGroups; ++rg)
#pragma unroll
    for (int j = 0; j < kAccs; ++j) acc[rg][j] = 0.0f;

  // Chunk by chunk (each warp of the tile waits for each chunk; kChunkIters is a multiple of wpt).
  for (int c = 0; c < chunks; ++c) {
   MbarWait(bars + tile * chunks + c, 0);
   const int c_end = min(n_it, (c + 1) * kChunkIters);
#pragma unroll 2
   for (int il = c * kChunkIters + kw; il < c_end; il += wpt) {
    uint32_t wl[kWords], wh[kWords];
    if constexpr (kWords == 4) {
      const uint4 a = *reinterpret_cast<const uint4*>(w_lo + il * kIterBytes);
      const uint4 b = *reinterpret_cast<const uint4*>(w_hi + il * kIterBytes);
      wl[0] = a.x, wl[1] = a.y, wl[2] = a.z, wl[3] = a.w;
      wh[0] = b.x, wh[1] = b.y, wh[2] = b.z, wh[3] = b.w;
    } else if constexpr (kWords == 2) {
      const uint2 a = *reinterpret_cast<const uint2*>(w_lo + il * kIterBytes);
      const uint2 b = *reinterpret_cast<const uint2*>(w_hi + il * kIterBytes);
      wl[0] = a.x, wl[1] = a.y;
      wh[0] = b.x, wh[1] = b.y;
    } else {
      wl[0] = *reinterpret_cast<const uint32_t*>(w_lo + il * kIterBytes);
      wh[0] = *reinterpret_cast<const uint32_t*>(w_hi + il * kIterBytes);
    }
    const int blk = ((k0 + il * kIterCodes) >> p.block_shift) - blk0;
    const float2 s2 = *reinterpret_cast<const float2*>(sc + blk * kColsPerTile);
    if constexpr (kHasZp) {
      deq_lo.SetZeroPoint(zq[blk * kColsPerTile]);
      deq_hi.SetZeroPoint(zq[blk * kColsPerTile + 1]);
    }
    BVec bcur[kRowGroups][kBVecs];
    float icur[kRowGroups];
#pragma unroll
    for (int rg = 0; rg < kRowGroups; ++rg) {
#pragma unroll
      for (int q = 0; q < kBVecs; ++q) {
        bcur[rg][q] = BVec{};
        if (b_ok[rg]) bcur[rg][q] = *reinterpret_cast<const BVec*>(bx[rg] + il * kIterCodes + q * 4 * kVecHalves);
      }
      icur[rg] = kParts == 2 ? inv_row[rg][il * kIterCodes / kActGroup] : 1.0f;
    }
    float cacc[2][kRowGroups][4];
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int rg = 0; rg < kRowGroups; ++rg)
#pragma unroll
        for (int j = 0; j < 4; ++j) cacc[e][rg][j] = 0.0f;
#pragma unroll
    for (int wi = 0; wi < kWords; ++wi) {
      uint32_t pl[Deq::kPairs], ph[Deq::kPairs];
      deq_lo.Word(wl[wi], pl);
      deq_hi.Word(wh[wi], ph);
#pragma unroll
      for (int s = 0; s < kStepsPerWord; ++s) {
        const int st = wi * kStepsPerWord + s;
#pragma unroll
        for (int rg = 0; rg < kRowGroups; ++rg) {
          uint32_t b0, b1;
          if constexpr (kStepsPerVec == 2) {
            const uint4& v = reinterpret_cast<const uint4&>(bcur[rg][st / 2]);
            b0 = st % 2 ? v.z : v.x;
            b1 = st % 2 ? v.w : v.y;
          } else {
            const uint2& v = reinterpret_cast<const uint2&>(bcur[rg][st]);
            b0 = v.x;
            b1 = v.y;
          }
          Mma16816(cacc[st % 2][rg], pl[2 * s], ph[2 * s], pl[2 * s + 1], ph[2 * s + 1], b0, b1);
        }
      }
    }
#pragma unroll
    for (int rg = 0; rg < kRowGroups; ++rg) {
      float cc[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) cc[j] = cacc[0][rg][j] + cacc[1][rg][j];
      if constexpr (kParts == 2) {
        acc[rg][0] = fmaf(cc[0] + cc[1], s2.x * icur[rg], acc[rg][0]);  // hi + lo, times 1 / 2^e
        acc[rg][1] = fmaf(cc[2] + cc[3], s2.y * icur[rg], acc[rg][1]);
      } else {
        acc[rg][0] = fmaf(cc[0], s2.x, acc[rg][0]);
        acc[rg][1] = fmaf(cc[1], s2.x, acc[rg][1]);
        acc[rg][2] = fmaf(cc[2], s2.y, acc[rg][2]);
        acc[rg][3] = fmaf(cc[3], s2.y, acc[rg][3]);
      }
    }
   }
  }

  // 4. Sum the warps of each tile in warp order (the staged weights' space is free now).
  __syncthreads();
  float* red = reinterpret_cast<float*>(wsm);  // [warp][rg][j][lane]
#pragma unroll
  for (int rg = 0; rg < kRowGroups; ++rg)
#pragma unroll
    for (int j = 0; j < kAccs; ++j) red[((warp * kRowGroups + rg) * kAccs + j) * 32 + lane] = acc[rg][j];
  __syncthreads();
  const bool split = gridDim.y > 1;
  if (kw == 0) {
    const int n0 = col0 + tile * kColsPerTile;
#pragma unroll
    for (int rg = 0; rg < kRowGroups; ++rg)
#pragma unroll
      for (int j = 0; j < kAccs; ++j) {
        float v = acc[rg][j];
        for (int w = 1; w < wpt; ++w) v += red[(((warp + w * tiles) * kRowGroups + rg) * kAccs + j) * 32 + lane];
        // fp32: lane (g, t) holds row rg*4 + t x columns g, g + 8. fp16: rows rg*8 + 2t, 2t + 1.
        const int r = kParts == 2 ? rg * kRowsPerGroup + t : rg * kRowsPerGroup + 2 * t + (j & 1);
        const int col = n0 + g + ((kParts == 2 ? j : j / 2) == 0 ? 0 : 8);
        if (r >= rows || col >= p.n) continue;
        if (split) {
          partials[(static_cast<int64_t>(blockIdx.y) * m + r) * p.n + col] = v;
        } else {
          const float bias = p.bias != nullptr ? p.bias[col] : 0.0f;
          y[static_cast<int64_t>(r) * p.n + col] = StoreValue<TA>(v + bias);
        }
      }
  }
  if (!split) return;
  // Split-K: the last block of this tile group to finish sums the slices in order.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last = atomicAdd(&counters[blockIdx.x], 1u) == gridDim.y - 1;
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  const int cols = min(tiles * kColsPerTile, p.n - col0);
  for (int idx = threadIdx.x; idx < rows * cols; idx += kGemvThreads) {
    const int r = idx / cols, col = col0 + idx % cols;
    float sum = 0.0f;
    for (int s = 0; s < static_cast<int>(gridDim.y); ++s)
      sum += __ldcg(partials + (static_cast<int64_t>(s) * m + r) * p.n + col);
    if (p.bias != nullptr) sum += p.bias[col];
    y[static_cast<int64_t>(r) * p.n + col] = StoreValue<TA>(sum);
  }
  if (threadIdx.x == 0) counters[blockIdx.x] = 0;  // ready for the next launch on this stream
#endif
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

// Blocks resident per SM of one kernel instantiation on `info`'s device (4 when the query fails).
template <typename Kernel>
int MmaBlocksPerSm(Kernel kernel, const DeviceInfo& info) {
  const int nb = BlocksPerSm(reinterpret_cast<const void*>(kernel), kThreads, 0, info);
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
    const int blocks_per_sm = MmaBlocksPerSm(NBitsMmaKernel<kBits, kLoadBytes, TA, kRowGroups, false, false>, info);
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

  auto kernel = p.zp != nullptr ? NBitsMmaKernel<kBits, kLoadBytes, TA, kRowGroups, true, false>
                                : NBitsMmaKernel<kBits, kLoadBytes, TA, kRowGroups, false, false>;
  if constexpr (kRowGroups == 1 && kLoadBytes == 16) {
    // The deep slots when the grid is at most 2 waves: measured on the H200 at batch 1, they gain
    // 1-15% at 256 and 512 tiles (4096 or 8192 columns; most with fp16 activations and W8) and
    // lose up to 10% at 688 (11008 columns, 2.6 waves), where the shallow slots do better.
    QC_ASSIGN_OR_RETURN(DeviceInfo info, CurrentDeviceInfo());
    const int deep_blocks_per_sm = MmaBlocksPerSm(NBitsMmaKernel<kBits, kLoadBytes, TA, kRowGroups, false, true>, info);
    const int64_t blocks = static_cast<int64_t>(col_tiles) * splits * row_tiles;
    if (blocks <= 2 * static_cast<int64_t>(info.sm_count) * deep_blocks_per_sm)
      kernel = p.zp != nullptr ? NBitsMmaKernel<kBits, kLoadBytes, TA, kRowGroups, true, true>
                               : NBitsMmaKernel<kBits, kLoadBytes, TA, kRowGroups, false, true>;
  }
  // Overlaps with the prologue above.
  QC_CUDA_RETURN_IF_ERROR(LaunchProgrammatic(kernel, dim3(col_tiles, splits, row_tiles), dim3(kThreads), 0, stream,
                                             /*programmatic=*/true, p, static_cast<const __half*>(ws.activations()),
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

// Whether the GEMV kernel can run `w` at `m` rows on this device (sm_90: bulk copies).
bool GemvSupported(const NBitsWeightsView& w, int64_t m) {
  if (m < 1 || m > kGemvMaxRows || MmaLoadBytes(w.layout) == 0) return false;
  if (reinterpret_cast<uintptr_t>(w.b) % 16 != 0) return false;  // bulk copies: 16-byte aligned sources
  const StatusOr<DeviceInfo> info = CurrentDeviceInfo();
  return info.ok() && info->major >= 9;
}

// Geometry and shared-memory layout of one GEMV launch; `tiles` and `split_k` as in NBitsOptions.
template <int kBits, int kLoadBytes, typename TA, int kRowGroups>
StatusOr<GemvPlan> MakeGemvPlan(const NBitsParams& p, int64_t m, int tiles, int split_k, const DeviceInfo& info) {
  constexpr int kParts = std::is_same_v<TA, float> ? 2 : 1;
  constexpr int kAccs = kParts == 2 ? 2 : 4;
  constexpr int kIterCodes = 4 * (kLoadBytes * 8 / kBits);
  constexpr int kIterBytes = 4 * kLoadBytes;
  constexpr int kAlign = kActGroup / kIterCodes;  // slices start on activation groups
  const int col_tiles = (p.n + kColsPerTile - 1) / kColsPerTile;
  const int iters = p.k_padded / kIterCodes;
  GemvPlan plan;
  // Tiles per block: a power of two <= kGemvWarps, so that every tile gets the same number of
  // warps. Default: 2 (the block's activation conversion serves 32 columns), 1 where there are
  // enough tiles for 4 blocks per SM (measured on the H200, W4 batch 1: see docs/BENCHMARKS.md).
  int tpb = tiles > 0 ? std::min(tiles, kGemvWarps) : (col_tiles >= 4 * info.sm_count ? 1 : 2);
  while (tpb & (tpb - 1)) tpb &= tpb - 1;
  plan.tiles_per_block = tpb;
  while ((1 << plan.tiles_shift) < tpb) ++plan.tiles_shift;
  const int64_t tile_bytes = int64_t{plan.tiles_per_block} * kColsPerTile * kIterBytes;  // one iteration
  auto round_up = [](int64_t v, int64_t a) { return (v + a - 1) / a * a; };
  int64_t slice;
  const int64_t groups = (col_tiles + plan.tiles_per_block - 1) / plan.tiles_per_block;
  if (split_k > 0) {
    slice = round_up((iters + split_k - 1) / split_k, kAlign);
  } else if (groups <= info.sm_count && tile_bytes * iters <= kGemvWholeKBytes) {
    slice = iters;  // at most a block per SM and a small one: splitting K would only add work
  } else {
    slice = std::max<int64_t>(kAlign, kGemvTargetBytes / tile_bytes / kAlign * kAlign);
  }
  for (;;) {
    slice = std::clamp<int64_t>(slice, 1, iters);
    const int64_t splits = (iters + slice - 1) / slice;
    slice = std::min<int64_t>(iters, round_up((iters + splits - 1) / splits, kAlign));  // balance, aligned
    plan.slice_iters = static_cast<int>(slice);
    plan.splits = static_cast<int>((iters + slice - 1) / slice);
    plan.chunk_iters = GemvChunkIters(kIterBytes);
    plan.chunks = (plan.slice_iters + plan.chunk_iters - 1) / plan.chunk_iters;
    const int64_t slice_codes = slice * kIterCodes;
    plan.slice_blocks = static_cast<int>(std::min<int64_t>(p.k_blocks, slice_codes / p.block_size + 2));
    plan.x_groups = static_cast<int>(round_up(slice_codes, kActGroup) / kActGroup);
    const int64_t w_bytes = slice * kIterBytes;
    plan.w_stride = static_cast<int>(w_bytes + (kIterBytes - w_bytes % 128 + 128) % 128);
    plan.x_stride = static_cast<int>(plan.x_groups * kActGroup * 2 + 64);  // 64 mod 128
    const int cols = plan.tiles_per_block * kColsPerTile;
    int64_t off = round_up(int64_t{8} * plan.tiles_per_block * plan.chunks, 128);
    plan.bar_off = 0;
    plan.w_off = static_cast<int>(off);
    off += round_up(std::max<int64_t>(int64_t{cols} * plan.w_stride, int64_t{kGemvWarps} * kRowGroups * kAccs * 32 * 4), 128);
    plan.x_off = static_cast<int>(off);
    off += round_up(m * kParts * plan.x_stride, 128);
    plan.inv_off = static_cast<int>(off);
    off += round_up(kParts == 2 ? m * plan.x_groups * 4 : 0, 128);
    plan.sc_off = static_cast<int>(off);
    off += round_up(int64_t{cols} * plan.slice_blocks * 4, 128);
    plan.zp_off = static_cast<int>(off);
    off += round_up(int64_t{cols} * plan.slice_blocks, 128);
    if (off <= info.max_shared_per_block_optin - 1024) {  // 1 KB: the kernel's static shared memory
      plan.smem = static_cast<int>(off);
      return plan;
    }
    if (slice <= kAlign)
      return Unimplemented("MatMulNBits: the GEMV kernel's slice does not fit in shared memory (" +
                           std::to_string(off) + " bytes)");
    slice = std::max<int64_t>(kAlign, slice / 2 / kAlign * kAlign);
  }
}

template <int kBits, int kLoadBytes, typename TA, int kRowGroups>
Status LaunchGemvShape(const NBitsParams& p, const TA* x, TA* y, int64_t m, NBitsWorkspace& ws, cudaStream_t stream,
                       const NBitsOptions& options) {
  QC_ASSIGN_OR_RETURN(DeviceInfo info, CurrentDeviceInfo());
  QC_ASSIGN_OR_RETURN(GemvPlan plan,
                      (MakeGemvPlan<kBits, kLoadBytes, TA, kRowGroups>(p, m, options.gemv_tiles, options.split_k, info)));
  const int col_tiles = (p.n + kColsPerTile - 1) / kColsPerTile;
  const int groups = (col_tiles + plan.tiles_per_block - 1) / plan.tiles_per_block;
  QC_RETURN_IF_ERROR(ws.Reserve(plan.splits > 1 ? int64_t{plan.splits} * m * p.n : 0, plan.splits > 1 ? groups : 0, 0, 0,
                                stream));
  auto kernel = p.zp != nullptr ? NBitsGemvKernel<kBits, kLoadBytes, TA, kRowGroups, true>
                                : NBitsGemvKernel<kBits, kLoadBytes, TA, kRowGroups, false>;
  // The largest dynamic shared memory, and shared memory over L1 (the kernel reads its weights and
  // activations from shared memory).
  QC_CUDA_RETURN_IF_ERROR(AllowLargeSharedMemory(reinterpret_cast<const void*>(kernel), info, /*prefer_shared=*/true));
  if (plan.smem > info.max_shared_per_block_optin - 1024)  // the kernel's own static shared memory
    return Unimplemented("MatMulNBits: the GEMV kernel's slice does not fit in shared memory");

  // Overlaps with the previous kernel.
  QC_CUDA_RETURN_IF_ERROR(LaunchProgrammatic(kernel, dim3(groups, plan.splits, 1), dim3(kGemvThreads),
                                             static_cast<size_t>(plan.smem), stream, options.programmatic_launch, p, x,
                                             y, static_cast<int>(m), plan, ws.partials(), ws.counters()));
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("NBitsGemvKernel");
  return Status::Ok();
}

template <int kBits, int kLoadBytes, typename TA>
Status LaunchGemvRows(const NBitsParams& p, const TA* x, TA* y, int64_t m, NBitsWorkspace& ws, cudaStream_t stream,
                      const NBitsOptions& options) {
  // One mma covers 4 fp32 rows (hi, lo) or 8 fp16 rows: 1, 2 or 4 row groups up to 16 rows.
  constexpr int kRowsPerGroup = std::is_same_v<TA, float> ? 4 : 8;
  if (m <= kRowsPerGroup) return LaunchGemvShape<kBits, kLoadBytes, TA, 1>(p, x, y, m, ws, stream, options);
  if (m <= 2 * kRowsPerGroup) return LaunchGemvShape<kBits, kLoadBytes, TA, 2>(p, x, y, m, ws, stream, options);
  if constexpr (kRowsPerGroup == 4) return LaunchGemvShape<kBits, kLoadBytes, TA, 4>(p, x, y, m, ws, stream, options);
  return Internal("MatMulNBits: too many rows for the GEMV kernel");
}

template <int kBits, typename TA>
Status LaunchGemvLoad(int load_bytes, const NBitsParams& p, const TA* x, TA* y, int64_t m, NBitsWorkspace& ws,
                      cudaStream_t stream, const NBitsOptions& options) {
  switch (load_bytes) {
    case 16: return LaunchGemvRows<kBits, 16, TA>(p, x, y, m, ws, stream, options);
    case 8: return LaunchGemvRows<kBits, 8, TA>(p, x, y, m, ws, stream, options);
    case 4: return LaunchGemvRows<kBits, 4, TA>(p, x, y, m, ws, stream, options);
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
  const NBitsKernel auto_kernel = SelectNBitsKernel(w, m, std::is_same_v<TA, __half>);
  NBitsKernel kernel = options.kernel == NBitsKernel::kAuto ? auto_kernel : options.kernel;
  if ((kernel == NBitsKernel::kMma || kernel == NBitsKernel::kGemv) && auto_kernel == NBitsKernel::kGeneric)
    return Unimplemented("MatMulNBits: the tensor-core kernels cannot run this layout (bits " +
                         std::to_string(w.layout.bits) + ", block_size " + std::to_string(w.layout.block_size) +
                         (w.g_idx ? ", g_idx" : "") + (w.zero_points_float ? ", float zero points" : "") + ")");
  if (kernel == NBitsKernel::kGemv && !GemvSupported(w, m))
    return Unimplemented("MatMulNBits: the GEMV kernel needs 1.." + std::to_string(kGemvMaxRows) +
                         " rows, B aligned to 16 bytes and an sm_90 device (m = " + std::to_string(m) + ")");
  if (kernel == NBitsKernel::kStream) {
    QC_RETURN_IF_ERROR(StreamSupported(w, m, std::is_same_v<TA, __half>));
    return MatMulNBitsStream(w, x, y, stream, options);
  }
  const NBitsParams p = MakeParams(w);
  if (kernel == NBitsKernel::kGeneric) return LaunchGeneric<TA>(p, x, y, m, stream);
  const int lb = MmaLoadBytes(w.layout);
  if (kernel == NBitsKernel::kGemv) {
    switch (w.layout.bits) {
      case 2: return LaunchGemvLoad<2, TA>(lb, p, x, y, m, ws, stream, options);
      case 4: return LaunchGemvLoad<4, TA>(lb, p, x, y, m, ws, stream, options);
      case 8: return LaunchGemvLoad<8, TA>(lb, p, x, y, m, ws, stream, options);
      default: return Internal("MatMulNBits: bad bit width for the GEMV kernel");
    }
  }
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
    case NBitsKernel::kGemv: return "gemv";
    case NBitsKernel::kStream: return "stream";
    case NBitsKernel::kMma: return "mma";
    case NBitsKernel::kGeneric: return "generic";
  }
  return "?";
}

NBitsKernel SelectNBitsKernel(const NBitsWeightsView& w, int64_t m, bool half_activations) {
  if (w.g_idx != nullptr || w.zero_points_float != nullptr) return NBitsKernel::kGeneric;
  const int lb = MmaLoadBytes(w.layout);
  // Vector loads need B aligned to their width (cudaMalloc gives 256 bytes; a view may not).
  if (lb == 0 || reinterpret_cast<uintptr_t>(w.b) % lb != 0) return NBitsKernel::kGeneric;
  // One row of 4-bit weights: the stream kernel, 1.1-1.9x faster than kGemv and kMma on the four
  // Llama shapes of the H200 benchmark, fp32 and fp16 activations (docs/BENCHMARKS.md); kGemv where
  // it cannot run (K < 1024, blocks not a multiple of 128): it measured faster than kMma there for
  // fp32 rows. With more rows the GEMV kernels' per-block activation conversion costs more than it
  // saves, and W8 was faster with kMma on three of the four shapes.
  if (m == 1 && w.layout.bits == 4 && StreamSupported(w, m, half_activations).ok()) return NBitsKernel::kStream;
  if (m == 1 && w.layout.bits == 4 && !half_activations && GemvSupported(w, m)) return NBitsKernel::kGemv;
  return NBitsKernel::kMma;
}

Status NBitsWorkspace::Reserve(int64_t partial_floats, int64_t counters, int64_t activation_halves,
                               int64_t activation_scales, cudaStream_t stream) {
  auto grow = [&](DeviceBuffer& buf, int64_t& capacity, int64_t count, size_t elem) -> Status {
    if (count <= capacity) return Status::Ok();
    if (keep_outgrown_) outgrown_.push_back(std::move(buf));
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

void NBitsWorkspace::Release() {
  outgrown_.clear();
  for (DeviceBuffer* buf : {&partials_, &counters_, &activations_, &activation_scales_}) buf->Reset();
  partial_capacity_ = counter_capacity_ = activation_capacity_ = activation_scale_capacity_ = 0;
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
