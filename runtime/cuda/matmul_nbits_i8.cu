// MatMulNBits GEMV on integer tensor cores (kGemvInt8, matmul_nbits.h), up to 16 rows.
//
// Why integers: at batch 1 the fp16 tensor-core kernels (kMma, kGemv) are bound by instruction
// issue, mostly dequantisation (9 instructions per 8 W4 codes for fp16 code - zp) and the hi + lo
// fp16 halves that keep fp32 activations exact. Here the weights stay integers: one LOP3 turns 4
// W4 codes into int8 16 * (code - 8) (the high nibbles; the low ones take a shift first), one LOP3
// turns 4 W8 codes into code - 128. Each row's activations become a fixed-point integer per 256
// inputs, X = round(x * 2^e) with the group's largest |X| in [2^29, 2^30], split into four signed
// int8 digits (X + 0x80808080 bytewise minus 128), which are four of the eight columns of the mma's
// B: two rows per mma.sync m16n8k32 s8. The int32 sums are exact; per unit (16 columns x 128
// codes) digits 0+1 and 2+3 are joined in int32, converted once and folded in fp32 with the block
// scale times 2^-e, so every output keeps ~24 bits relative to sum |x w| (like fp32 accumulation)
// and is bitwise deterministic.
//
// Work: units of 16 columns x 128 codes, tile-major (a tile: 16 columns x all of K). Persistent
// block b takes units [b U / B, (b+1) U / B) of all U (stream-K); a tile cut between blocks is
// summed through global memory by the last of its blocks to finish, in block order. A producer warp
// streams the block's units through a ring of shared-memory stages (up to 8 units of one tile per
// stage: one cp.async.bulk per column, the scales by cp.async, all completing on the stage's
// mbarrier), from the kernel's start: with programmatic dependent launch the ring fills while the
// previous kernel still runs. Eight consumer warps wait for it, convert X once for all of K into
// shared memory, then each takes one unit of every stage.
#include "runtime/cuda/matmul_nbits_i8.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "runtime/cuda/async_copy.cuh"
#include "runtime/cuda/cuda_check.h"
#include "runtime/cuda/device.h"
#include "runtime/cuda/float_values.cuh"
#include "runtime/cuda/kernel_attributes.h"

namespace qc::cuda {
namespace {

constexpr int kI8Warps = 8;                      // consumer warps: one unit of each stage apiece
constexpr int kI8Threads = (kI8Warps + 1) * 32;  // plus the producer warp
constexpr int kStageUnits = kI8Warps;            // units per ring stage (fewer where a tile ends)
constexpr int kTileCols = 16;                    // the mma's m: output columns per unit
constexpr int kUnitCodes = 128;                  // codes per unit: 4 chained m16n8k32 per column
constexpr int kRowXBytes = 512;                  // one row's activations per unit: 4 digits x 128
constexpr int kMaxRows = 16;                     // 8 mma row groups of 2 rows
constexpr int kMaxStages = 16;
constexpr int kBarBytes = 2 * kMaxStages * 8;    // the full and empty mbarriers
// Shared memory per block that the default ring depth fills up to: two blocks (this call's and the
// next call's, launched early by programmatic dependent launch) fit in an H100/H200 SM's 228 KB.
constexpr int kSmemTarget = 112 << 10;

struct I8Params {
  int n = 0, k = 0, block_shift = 0, k_blocks = 0;
  int upt = 0;  // units per tile: K padded to the block, / 128
  int64_t row_bytes = 0, zp_row_bytes = 0;
  const uint8_t* b = nullptr;
  const float* scales = nullptr;
  const uint8_t* zp = nullptr;
  const float* bias = nullptr;
};

// Host-computed geometry and shared-memory layout (byte offsets) of one launch.
struct I8Plan {
  int rows = 0;        // m
  int blocks = 0;      // persistent blocks (grid.x)
  int stages = 0;      // ring stages
  int units_x = 0;     // activation units staged: the tile's units rounded up to 256 codes
  int max_tiles = 0;   // tiles one block's unit range can touch
  int col_stride = 0;  // bytes per staged column (64 mod 128: conflict-free 16-byte reads)
  int slot_bytes = 0;  // bytes of one stage's weights
  int64_t total_units = 0;
  int full_off = 0, empty_off = 0, w_off = 0, sc_off = 0, x_off = 0, zero_off = 0, xe_off = 0, sx_off = 0,
      red_off = 0, smem = 0;
};


__device__ __forceinline__ void Imma16832(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void NamedBarrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// W4 byte (hi << 4 | lo) -> int8 16 * (hi - 8): the high nibble in place, bit 7 flipped. One LOP3.
__device__ __forceinline__ uint32_t HighNibbles(uint32_t w) { return (w & 0xF0F0F0F0u) ^ 0x80808080u; }
__device__ __forceinline__ uint32_t LowNibbles(uint32_t w) { return HighNibbles(w << 4); }

// out[i] = byte i of a, b, c, d (a 4 x 4 byte transpose, 8 PRMT).
__device__ __forceinline__ void ByteTranspose(uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t (&out)[4]) {
  const uint32_t ab_lo = __byte_perm(a, b, 0x5140), ab_hi = __byte_perm(a, b, 0x7362);  // a0 b0 a1 b1, a2 b2 a3 b3
  const uint32_t cd_lo = __byte_perm(c, d, 0x5140), cd_hi = __byte_perm(c, d, 0x7362);
  out[0] = __byte_perm(ab_lo, cd_lo, 0x5410);
  out[1] = __byte_perm(ab_lo, cd_lo, 0x7632);
  out[2] = __byte_perm(ab_hi, cd_hi, 0x5410);
  out[3] = __byte_perm(ab_hi, cd_hi, 0x7632);
}

// 8 activations of one row from input kk0 on (zeros past K), as loaded: read through L2 only (X
// is the previous kernel's output: no stale L1 line may serve it), converted after all of a
// batch's loads are in flight.
template <typename TA>
struct X8 {
  uint4 raw[sizeof(TA) / 2];  // 8 floats or 8 halves
  __device__ __forceinline__ void Load(const TA* xr, int kk0, int k, bool vec) {
    if (vec && kk0 + 8 <= k) {
#pragma unroll
      for (int i = 0; i < static_cast<int>(sizeof(TA)) / 2; ++i) raw[i] = __ldcg(reinterpret_cast<const uint4*>(xr + kk0) + i);
    } else {
      TA* e = reinterpret_cast<TA*>(raw);
#pragma unroll
      for (int j = 0; j < 8; ++j) e[j] = kk0 + j < k ? __ldcg(xr + kk0 + j) : TA(0.0f);
    }
  }
  __device__ __forceinline__ void ToFloats(float (&v)[8]) const {
    if constexpr (std::is_same_v<TA, float>) {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = reinterpret_cast<const float*>(raw)[j];
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 f = __half22float2(reinterpret_cast<const __half2*>(raw)[j]);
        v[2 * j] = f.x, v[2 * j + 1] = f.y;
      }
    }
  }
};

// Which k slot of an mma holds which code (A and B agree; any order works): lane t of a column
// reads 16-byte pieces p at byte p * 64 + t * 16 of the unit. W4: word j of the piece feeds mma j,
// its low nibbles (codes 32t + 8j + {0, 2, 4, 6}) as A register 0/1, the high ones as 2/3. W8:
// words 2(j%2) and 2(j%2) + 1 of piece j/2 (codes 64(j/2) + 16t + 8(j%2) + 0..3 and 4..7).
// B of row r per unit: [h][digit][t][16 bytes] holding (b0, b1) of mmas 2h and 2h + 1, so one lane
// reads its whole unit with two 16-byte loads (conflict-free: 4 digits x 4 lanes x 16 bytes).
template <int kBits, typename TA, int kRowGroups>
__global__ void __launch_bounds__(kI8Threads, 2)
    NBitsGemvInt8Kernel(I8Params p, I8Plan plan, const TA* __restrict__ x, TA* __restrict__ y,
                        float* __restrict__ partials, unsigned* __restrict__ counters) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int kUB = kUnitCodes * kBits / 8;   // bytes of one column per unit
  constexpr int kZp = 1 << (kBits - 1);         // the implied zero point
  constexpr int kAScale = kBits == 4 ? 16 : 1;  // A = kAScale * (code - kZp)
  constexpr int kRows = 2 * kRowGroups;
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ int last_of[2];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int m = plan.rows, upt = p.upt;
  const int64_t total = plan.total_units, nb = gridDim.x;
  const int64_t u0 = total * blockIdx.x / nb, u1 = total * (blockIdx.x + 1) / nb;
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + plan.full_off);
  uint64_t* empty = reinterpret_cast<uint64_t*>(smem + plan.empty_off);
  float* scs = reinterpret_cast<float*>(smem + plan.sc_off);  // [stage][unit][g][lo/hi column]

  AllowDependents();  // the next call may start once every block has started
  if (threadIdx.x == 0) {
    for (int i = 0; i < plan.stages; ++i) {
      MbarInit(full + i, 33);  // the producer lanes' cp.async arrivals + lane 0's expect_tx
      MbarInit(empty + i, kI8Warps);
    }
    FenceMbarInit();
  }
  __syncthreads();

  if (warp == kI8Warps) {
    // Producer: nothing here depends on the previous kernel.
    int tile = static_cast<int>(u0 / upt), b = static_cast<int>(u0 - int64_t{tile} * upt), slot = 0;
    uint32_t parity = 0;
    for (int64_t u = u0, s = 0; u < u1; ++s) {
      const int len = static_cast<int>(min(int64_t{min(kStageUnits, upt - b)}, u1 - u));
      if (s >= plan.stages) MbarWait(empty + slot, parity ^ 1);  // consumers are done with round - 1
      const int col0 = tile * kTileCols;
      float* sc = scs + slot * kStageUnits * kTileCols;
      for (int i = lane; i < kTileCols * len; i += 32) {
        const int c = i & (kTileCols - 1), uu = i >> 4;
        const int64_t col = min(col0 + c, p.n - 1);  // columns past N: any finite scale
        const int blk = ((b + uu) * kUnitCodes) >> p.block_shift;
        CpAsync4(sc + uu * kTileCols + (c & 7) * 2 + (c >> 3), p.scales + col * p.k_blocks + blk);
      }
      CpAsyncMbarArrive(full + slot);
      if (lane == 0) {
        const int cols = min(kTileCols, p.n - col0);
        const uint32_t bytes = static_cast<uint32_t>(len * kUB);
        MbarArriveExpectTx(full + slot, cols * bytes);
        uint8_t* dst = smem + plan.w_off + slot * plan.slot_bytes;
        const uint8_t* src = p.b + int64_t{col0} * p.row_bytes + int64_t{b} * kUB;
        for (int c = 0; c < cols; ++c) BulkCopy(dst + c * plan.col_stride, src + c * p.row_bytes, bytes, full + slot);
      }
      u += len;
      b += len;
      if (b == upt) ++tile, b = 0;
      if (++slot == plan.stages) slot = 0, parity ^= 1;
    }
    CpAsyncWaitAll();  // no cp.async outlives its thread
    return;
  }

  // Consumers. 1. Activations (the previous kernel's output), once for all of K.
  WaitForPrologue();
  const int tid = threadIdx.x;
  uint8_t* xs = smem + plan.x_off;
  float* xe_tab = reinterpret_cast<float*>(smem + plan.xe_off);  // [row][unit] 2^-e / kAScale
  float* sx_tab = reinterpret_cast<float*>(smem + plan.sx_off);  // [row][unit] sum of X (zero points)
  const bool has_zp = p.zp != nullptr;
  if (tid < kRowXBytes / 4) reinterpret_cast<uint32_t*>(smem + plan.zero_off)[tid] = 0;  // B of rows past m
  {
    // A warp per (row, 256 codes); kXBatch tasks' loads in flight at once (32 registers).
    constexpr int kXBatch = std::is_same_v<TA, float> ? 4 : 8;
    const int groups = plan.units_x / 2, tasks = m * groups;
    const bool vec = p.k % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
    for (int base = warp; base < tasks; base += kI8Warps * kXBatch) {
      X8<TA> xv[kXBatch];
#pragma unroll
      for (int i = 0; i < kXBatch; ++i) {
        const int task = base + i * kI8Warps;
        if (task < tasks) {
          const int r = task / groups, grp = task - r * groups;
          xv[i].Load(x + int64_t{r} * p.k, grp * 2 * kUnitCodes + lane * 8, p.k, vec);
        }
      }
#pragma unroll
      for (int i = 0; i < kXBatch; ++i) {
        const int task = base + i * kI8Warps;
        if (task >= tasks) break;
        const int r = task / groups, grp = task - r * groups;
        float v[8];
        xv[i].ToFloats(v);
        uint32_t mb = 0;  // largest |x| of the group by bit pattern (NaN above Inf above finite)
#pragma unroll
        for (int j = 0; j < 8; ++j) mb = max(mb, __float_as_uint(v[j]) & 0x7fffffffu);
        mb = __reduce_max_sync(0xffffffffu, mb);
        // 2^e takes the largest |x| in [2^(E-127), 2^(E-126)) to [2^29, 2^30): |X| <= 2^30 after
        // rounding, so X + 0x80808080 neither wraps nor borrows. e stays within +-120 (2^e and 2^-e
        // normal floats): subnormal groups clamp, zero groups take 0.
        const int E = static_cast<int>(mb >> 23);
        const int e = E == 0 ? (mb == 0 ? 0 : 120) : max(-120, min(120, 156 - E));
        const float scale = __uint_as_float(static_cast<uint32_t>(127 + e) << 23);
        int xi[8];
        uint32_t d[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          xi[j] = __float2int_rn(v[j] * scale);  // times a power of two: one rounding
          d[j] = (static_cast<uint32_t>(xi[j]) + 0x80808080u) ^ 0x80808080u;  // 4 signed digits, byte 3 on top
        }
        uint32_t b0[4], b1[4];  // per byte position: the b0 and b1 words of this lane's 8 codes
        if constexpr (kBits == 4) {
          ByteTranspose(d[0], d[2], d[4], d[6], b0);
          ByteTranspose(d[1], d[3], d[5], d[7], b1);
        } else {
          ByteTranspose(d[0], d[1], d[2], d[3], b0);
          ByteTranspose(d[4], d[5], d[6], d[7], b1);
        }
        const int unit = grp * 2 + (lane >> 4), within = (lane & 15) * 8;  // code offset in the unit
        const int t = kBits == 4 ? within / 32 : (within % 64) / 16;
        const int h = kBits == 4 ? (within % 32) / 16 : within / 64;
        uint8_t* dst = xs + (int64_t{unit} * m + r) * kRowXBytes + h * 256 + t * 16 + ((within / 8) & 1) * 8;
#pragma unroll
        for (int n = 0; n < 4; ++n)  // B column n: digit n, byte 3 - n
          *reinterpret_cast<uint2*>(dst + n * 64) = make_uint2(b0[3 - n], b1[3 - n]);
        if ((lane & 15) == 0)  // non-finite groups: NaN, so every output of the row is NaN
          xe_tab[r * plan.units_x + unit] = E == 255 ? __uint_as_float(0x7fc00000u)
                                                     : __uint_as_float(static_cast<uint32_t>(127 - e) << 23) *
                                                           (1.0f / kAScale);
        if (has_zp) {  // sum of X over the unit, for (kZp - zp) * sum X
          float sx = 0.0f;
#pragma unroll
          for (int j = 0; j < 8; ++j) sx += static_cast<float>(xi[j]);
#pragma unroll
          for (int o = 8; o > 0; o >>= 1) sx += __shfl_xor_sync(0xffffffffu, sx, o);
          if ((lane & 15) == 0) sx_tab[r * plan.units_x + unit] = sx;
        }
      }
    }
  }
  NamedBarrier(1, kI8Warps * 32);

  // 2. Units. Lane (g, t): A rows g and g + 8 (columns), B column g (row rg*2 + g/4, digit g%4);
  // C (g, 2t..2t+1) and (g + 8, 2t..2t+1): row rg*2 + t/2, digits 0-1 (t even: 2^16 units) or 2-3.
  const int g = lane >> 2, t = lane & 3;
  const uint8_t* xb[kRowGroups];
  int xstep[kRowGroups], frow[kRowGroups];
#pragma unroll
  for (int rg = 0; rg < kRowGroups; ++rg) {
    const int row = rg * 2 + (g >> 2);
    xb[rg] = (row < m ? xs + row * kRowXBytes : smem + plan.zero_off) + (g & 3) * 64 + t * 16;
    xstep[rg] = row < m ? m * kRowXBytes : 0;
    frow[rg] = min(rg * 2 + (t >> 1), m - 1) * plan.units_x;
  }
  float acc[kRowGroups][2];
#pragma unroll
  for (int rg = 0; rg < kRowGroups; ++rg) acc[rg][0] = acc[rg][1] = 0.0f;
  float* red = reinterpret_cast<float*>(smem + plan.red_off);  // [tile][warp][row][column]
  // This warp's sums of one tile into `red`: digits 0-1 times 2^16 plus digits 2-3.
  auto flush = [&](int lt) {
#pragma unroll
    for (int rg = 0; rg < kRowGroups; ++rg) {
      const float lo1 = __shfl_down_sync(0xffffffffu, acc[rg][0], 1);
      const float hi1 = __shfl_down_sync(0xffffffffu, acc[rg][1], 1);
      if ((t & 1) == 0) {
        float* dst = red + ((lt * kI8Warps + warp) * kRows + rg * 2 + (t >> 1)) * kTileCols;
        dst[g] = fmaf(acc[rg][0], 65536.0f, lo1);
        dst[g + 8] = fmaf(acc[rg][1], 65536.0f, hi1);
      }
      acc[rg][0] = acc[rg][1] = 0.0f;
    }
  };

  int tile = static_cast<int>(u0 / upt), b = static_cast<int>(u0 - int64_t{tile} * upt), slot = 0;
  int cur = tile, lt = 0;
  uint32_t parity = 0;
  for (int64_t u = u0; u < u1;) {
    const int len = static_cast<int>(min(int64_t{min(kStageUnits, upt - b)}, u1 - u));
    if (tile != cur) flush(lt++), cur = tile;
    const bool mine = warp < len;
    const int ub = b + warp;  // this warp's unit of the tile
    int zl = kZp, zh = kZp;
    if (has_zp && mine) {  // before the wait, so the load overlaps it
      const int bit = ((ub * kUnitCodes) >> p.block_shift) * kBits;
      const int64_t cl = min(tile * kTileCols + g, p.n - 1), ch = min(tile * kTileCols + g + 8, p.n - 1);
      zl = (__ldg(p.zp + cl * p.zp_row_bytes + (bit >> 3)) >> (bit & 7)) & ((1 << kBits) - 1);
      zh = (__ldg(p.zp + ch * p.zp_row_bytes + (bit >> 3)) >> (bit & 7)) & ((1 << kBits) - 1);
    }
    MbarWait(full + slot, parity);
    if (mine) {
      const uint8_t* wsl = smem + plan.w_off + slot * plan.slot_bytes + warp * kUB + t * 16;
      uint32_t a[4][4];  // per mma: rows g and g + 8 at k slots 4t.., then at 16 + 4t..
      if constexpr (kBits == 4) {
        const uint4 pl = *reinterpret_cast<const uint4*>(wsl + g * plan.col_stride);
        const uint4 ph = *reinterpret_cast<const uint4*>(wsl + (g + 8) * plan.col_stride);
        const uint32_t wl[4] = {pl.x, pl.y, pl.z, pl.w}, wh[4] = {ph.x, ph.y, ph.z, ph.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          a[j][0] = LowNibbles(wl[j]);
          a[j][1] = LowNibbles(wh[j]);
          a[j][2] = HighNibbles(wl[j]);
          a[j][3] = HighNibbles(wh[j]);
        }
      } else {
#pragma unroll
        for (int pc = 0; pc < 2; ++pc) {
          const uint4 pl = *reinterpret_cast<const uint4*>(wsl + g * plan.col_stride + pc * 64);
          const uint4 ph = *reinterpret_cast<const uint4*>(wsl + (g + 8) * plan.col_stride + pc * 64);
          const uint32_t wl[4] = {pl.x, pl.y, pl.z, pl.w}, wh[4] = {ph.x, ph.y, ph.z, ph.w};
#pragma unroll
          for (int i = 0; i < 2; ++i) {  // code - 128 as int8: flip bit 7
            a[2 * pc + i][0] = wl[2 * i] ^ 0x80808080u;
            a[2 * pc + i][1] = wh[2 * i] ^ 0x80808080u;
            a[2 * pc + i][2] = wl[2 * i + 1] ^ 0x80808080u;
            a[2 * pc + i][3] = wh[2 * i + 1] ^ 0x80808080u;
          }
        }
      }
      const float2 s2 = *reinterpret_cast<const float2*>(scs + (slot * kStageUnits + warp) * kTileCols + g * 2);
#pragma unroll
      for (int rg = 0; rg < kRowGroups; ++rg) {
        const uint8_t* bp = xb[rg] + ub * xstep[rg];
        const uint4 b01 = *reinterpret_cast<const uint4*>(bp);
        const uint4 b23 = *reinterpret_cast<const uint4*>(bp + 256);
        int c[4] = {0, 0, 0, 0};
        Imma16832(c, a[0], b01.x, b01.y);
        Imma16832(c, a[1], b01.z, b01.w);
        Imma16832(c, a[2], b23.x, b23.y);
        Imma16832(c, a[3], b23.z, b23.w);
        // |c| <= 128 * 128 * 128 = 2^21: two digits joined stay below 2^30.
        float vlo = __int2float_rn(c[0] * 256 + c[1]), vhi = __int2float_rn(c[2] * 256 + c[3]);
        if (has_zp && (t & 1)) {  // in digit-3 units: kAScale * (kZp - zp) * sum X
          const float sx = sx_tab[frow[rg] + ub];
          vlo = fmaf(static_cast<float>(kAScale * (kZp - zl)), sx, vlo);
          vhi = fmaf(static_cast<float>(kAScale * (kZp - zh)), sx, vhi);
        }
        const float xe = xe_tab[frow[rg] + ub];
        acc[rg][0] = fmaf(vlo, s2.x * xe, acc[rg][0]);
        acc[rg][1] = fmaf(vhi, s2.y * xe, acc[rg][1]);
      }
    }
    __syncwarp();
    if (lane == 0) MbarArrive(empty + slot);
    u += len;
    b += len;
    if (b == upt) ++tile, b = 0;
    if (++slot == plan.stages) slot = 0, parity ^= 1;
  }
  flush(lt);
  NamedBarrier(1, kI8Warps * 32);

  // 3. Tiles: the warps' sums in warp order; whole tiles are written, cut ones go to `partials`.
  const int t_first = static_cast<int>(u0 / upt), n_lt = lt + 1, t_last = t_first + lt;
  auto whole = [&](int T) { return int64_t{T} * upt >= u0 && int64_t{T + 1} * upt <= u1; };
  const int cells = m * kTileCols;
  for (int i = tid; i < n_lt * cells; i += kI8Warps * 32) {
    const int l = i / cells, r = (i - l * cells) / kTileCols, c = i % kTileCols;
    float s = 0.0f;
#pragma unroll
    for (int w = 0; w < kI8Warps; ++w) s += red[((l * kI8Warps + w) * kRows + r) * kTileCols + c];
    const int T = t_first + l;
    if (whole(T)) {
      const int col = T * kTileCols + c;
      if (col < p.n) y[int64_t{r} * p.n + col] = StoreValue<TA>(s + (p.bias != nullptr ? p.bias[col] : 0.0f));
    } else {
      partials[((int64_t{blockIdx.x} * 2 + (l == 0 ? 0 : 1)) * m + r) * kTileCols + c] = s;
    }
  }
  const bool cut_first = !whole(t_first), cut_last = n_lt > 1 && !whole(t_last);
  if (!cut_first && !cut_last) return;
  // The block holding unit u, and the first tile of block c (the partition above, inverted).
  auto block_of = [&](int64_t uu) { return static_cast<int>(((uu + 1) * nb - 1) / total); };
  auto first_tile = [&](int cb) { return static_cast<int>(total * cb / nb / upt); };
  __threadfence();
  NamedBarrier(1, kI8Warps * 32);
  if (tid == 0) {
    for (int j = 0; j < 2; ++j) {
      const int T = j == 0 ? t_first : t_last;
      last_of[j] = 0;
      if (j == 0 ? cut_first : cut_last) {
        const int parts = block_of(int64_t{T + 1} * upt - 1) - block_of(int64_t{T} * upt) + 1;
        last_of[j] = atomicAdd(&counters[T], 1u) == static_cast<unsigned>(parts - 1);
      }
    }
  }
  NamedBarrier(1, kI8Warps * 32);
  for (int j = 0; j < 2; ++j) {
    if (!last_of[j]) continue;
    __threadfence();
    const int T = j == 0 ? t_first : t_last;
    const int c_first = block_of(int64_t{T} * upt), c_last = block_of(int64_t{T + 1} * upt - 1);
    for (int i = tid; i < cells; i += kI8Warps * 32) {
      const int r = i / kTileCols, c = i % kTileCols, col = T * kTileCols + c;
      float s = 0.0f;
      for (int cb = c_first; cb <= c_last; ++cb)  // block order: deterministic
        s += __ldcg(partials + ((int64_t{cb} * 2 + (first_tile(cb) == T ? 0 : 1)) * m + r) * kTileCols + c);
      if (col < p.n) y[int64_t{r} * p.n + col] = StoreValue<TA>(s + (p.bias != nullptr ? p.bias[col] : 0.0f));
    }
    if (tid == 0) counters[T] = 0;  // ready for the next launch on this stream
  }
#endif
}

int RowGroupsFor(int64_t m) { return m <= 2 ? 1 : m <= 4 ? 2 : m <= 8 ? 4 : 8; }

StatusOr<I8Plan> MakePlan(const NBitsLayout& l, int64_t m, const NBitsOptions& options, const DeviceInfo& info) {
  auto round_up = [](int64_t v, int64_t a) { return (v + a - 1) / a * a; };
  I8Plan plan;
  const int64_t upt = l.k_blocks() * l.block_size / kUnitCodes;
  const int64_t tiles = (l.n + kTileCols - 1) / kTileCols;
  plan.rows = static_cast<int>(m);
  plan.total_units = tiles * upt;
  plan.blocks = static_cast<int>(std::min<int64_t>(options.gemv_blocks > 0 ? options.gemv_blocks : info.sm_count,
                                                   plan.total_units));  // every block gets >= 1 unit
  plan.units_x = static_cast<int>(round_up(upt, 2));
  const int unit_bytes = kUnitCodes * static_cast<int>(l.bits) / 8;
  plan.col_stride = kStageUnits * unit_bytes + 64;
  plan.slot_bytes = kTileCols * plan.col_stride;
  const int64_t per_block = (plan.total_units + plan.blocks - 1) / plan.blocks;
  plan.max_tiles = static_cast<int>((per_block + upt - 1) / upt + 1);
  const int rows_slot = 2 * RowGroupsFor(m);
  // Everything but the ring, after the barriers.
  int64_t off = kBarBytes;
  plan.full_off = 0;
  plan.empty_off = kMaxStages * 8;
  plan.x_off = static_cast<int>(off);
  off += int64_t{plan.units_x} * m * kRowXBytes;
  plan.zero_off = static_cast<int>(off);
  off += kRowXBytes;
  plan.xe_off = static_cast<int>(off);
  off += round_up(m * plan.units_x * 4, 16);
  plan.sx_off = static_cast<int>(off);
  off += round_up(m * plan.units_x * 4, 16);
  plan.red_off = static_cast<int>(off);
  off += int64_t{plan.max_tiles} * kI8Warps * rows_slot * kTileCols * 4;
  off = round_up(off, 128);
  const int64_t stage_bytes = plan.slot_bytes + kStageUnits * kTileCols * 4;
  const int64_t limit = info.max_shared_per_block_optin - 1024;  // the kernel's static shared memory
  int64_t stages = options.ring_stages > 0 ? options.ring_stages : (kSmemTarget - off) / stage_bytes;
  stages = std::clamp<int64_t>(stages, 2, kMaxStages);
  if (options.ring_stages <= 0)
    while (stages > 2 && off + stages * stage_bytes > limit) --stages;
  if (off + stages * stage_bytes > limit)
    return Unimplemented("MatMulNBits: the int8 GEMV kernel's activations and ring do not fit in shared memory (" +
                         std::to_string(off + stages * stage_bytes) + " bytes for m = " + std::to_string(m) +
                         ", K = " + std::to_string(l.k) + ")");
  plan.stages = static_cast<int>(stages);
  plan.w_off = static_cast<int>(off);
  plan.sc_off = static_cast<int>(off + stages * plan.slot_bytes);
  plan.smem = static_cast<int>(off + stages * stage_bytes);
  return plan;
}

template <int kBits, typename TA, int kRowGroups>
Status LaunchShape(const I8Params& p, const I8Plan& plan, const TA* x, TA* y, NBitsWorkspace& ws,
                   cudaStream_t stream, const NBitsOptions& options) {
  auto kernel = NBitsGemvInt8Kernel<kBits, TA, kRowGroups>;
  // The largest dynamic shared memory, and shared memory over L1.
  QC_ASSIGN_OR_RETURN(DeviceInfo info, CurrentDeviceInfo());
  QC_CUDA_RETURN_IF_ERROR(AllowLargeSharedMemory(reinterpret_cast<const void*>(kernel), info, /*prefer_shared=*/true));
  // Overlaps with the previous kernel.
  QC_CUDA_RETURN_IF_ERROR(LaunchProgrammatic(kernel, dim3(static_cast<unsigned>(plan.blocks)), dim3(kI8Threads),
                                             static_cast<size_t>(plan.smem), stream, options.programmatic_launch, p, plan,
                                             x, y, ws.partials(), ws.counters()));
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("NBitsGemvInt8Kernel");
  return Status::Ok();
}

template <int kBits, typename TA>
Status LaunchRows(const I8Params& p, const I8Plan& plan, const TA* x, TA* y, NBitsWorkspace& ws, cudaStream_t stream,
                  const NBitsOptions& options) {
  switch (RowGroupsFor(plan.rows)) {
    case 1: return LaunchShape<kBits, TA, 1>(p, plan, x, y, ws, stream, options);
    case 2: return LaunchShape<kBits, TA, 2>(p, plan, x, y, ws, stream, options);
    case 4: return LaunchShape<kBits, TA, 4>(p, plan, x, y, ws, stream, options);
    default: return LaunchShape<kBits, TA, 8>(p, plan, x, y, ws, stream, options);
  }
}

template <typename TA>
Status Launch(const NBitsWeightsView& w, const TA* x, TA* y, int64_t m, NBitsWorkspace& ws, cudaStream_t stream,
              const NBitsOptions& options) {
  QC_RETURN_IF_ERROR(GemvInt8Supported(w, m, options));
  QC_ASSIGN_OR_RETURN(DeviceInfo info, CurrentDeviceInfo());
  QC_ASSIGN_OR_RETURN(I8Plan plan, MakePlan(w.layout, m, options, info));
  const NBitsLayout& l = w.layout;
  I8Params p;
  p.n = static_cast<int>(l.n);
  p.k = static_cast<int>(l.k);
  while ((1 << p.block_shift) < l.block_size) ++p.block_shift;
  p.k_blocks = static_cast<int>(l.k_blocks());
  p.upt = static_cast<int>(l.k_blocks() * l.block_size / kUnitCodes);
  p.row_bytes = l.row_bytes();
  p.zp_row_bytes = l.zp_row_bytes();
  p.b = w.b;
  p.scales = w.scales;
  p.zp = w.zero_points;
  p.bias = w.bias;
  const int64_t tiles = (l.n + kTileCols - 1) / kTileCols;
  QC_RETURN_IF_ERROR(ws.Reserve(int64_t{plan.blocks} * 2 * m * kTileCols, tiles, 0, 0, stream));
  return l.bits == 4 ? LaunchRows<4, TA>(p, plan, x, y, ws, stream, options)
                     : LaunchRows<8, TA>(p, plan, x, y, ws, stream, options);
}

}  // namespace

Status GemvInt8Supported(const NBitsWeightsView& w, int64_t m, const NBitsOptions& options) {
  const NBitsLayout& l = w.layout;
  if (l.bits != 4 && l.bits != 8)
    return Unimplemented("MatMulNBits: the int8 GEMV kernel takes 4- and 8-bit weights, not " + std::to_string(l.bits));
  if (l.block_size < kUnitCodes)
    return Unimplemented("MatMulNBits: the int8 GEMV kernel needs blocks of >= 128, not " +
                         std::to_string(l.block_size));
  if (w.g_idx != nullptr || w.zero_points_float != nullptr)
    return Unimplemented("MatMulNBits: the int8 GEMV kernel takes no g_idx and no float zero points");
  if (m < 1 || m > kMaxRows)
    return Unimplemented("MatMulNBits: the int8 GEMV kernel takes 1.." + std::to_string(kMaxRows) + " rows, not " +
                         std::to_string(m));
  if (reinterpret_cast<uintptr_t>(w.b) % 16 != 0)
    return Unimplemented("MatMulNBits: the int8 GEMV kernel needs B aligned to 16 bytes (bulk copies)");
  QC_ASSIGN_OR_RETURN(DeviceInfo info, CurrentDeviceInfo());
  if (info.major < 9) return Unimplemented("MatMulNBits: the int8 GEMV kernel needs an sm_90 device");
  return MakePlan(l, m, options, info).status();
}

Status MatMulNBitsGemvInt8(const NBitsWeightsView& w, const float* x, float* y, int64_t m, NBitsWorkspace& workspace,
                           cudaStream_t stream, const NBitsOptions& options) {
  return Launch<float>(w, x, y, m, workspace, stream, options);
}

Status MatMulNBitsGemvInt8(const NBitsWeightsView& w, const __half* x, __half* y, int64_t m,
                           NBitsWorkspace& workspace, cudaStream_t stream, const NBitsOptions& options) {
  return Launch<__half>(w, x, y, m, workspace, stream, options);
}

}  // namespace qc::cuda
