// kStream (matmul_nbits.h): MatMulNBits at batch 1 for 4-bit weights, every packed byte streamed
// from DRAM into registers once, with the least work per byte (matmul_nbits_stream.h).
//
// Work: 16-column tiles (the m of mma.m16n8k16) over a grid of blocks that each take a contiguous,
// balanced range of tiles. Within a tile the block's 8 warps split K into steps of 128 codes
// (64 packed bytes per column): lane (g, t) loads 16 bytes of columns g and g + 8, the four lanes
// t of a column 64 contiguous bytes. A warp runs through its steps of all its block's tiles with a
// ring of kDepth steps in registers (weights, scales, zero points): the first kDepth loads are
// issued before the kernel waits for the previous one (programmatic dependent launch), and each
// later load right after the step it replaces.
//
// Activations: after the wait X is staged in shared memory once (each warp's steps, at least),
// already in the order of the mma B fragments (no per-step shuffling). Which physical k an mma "k
// slot" holds is free as long as A and B agree: lane t's 32 codes of a step feed its own slots,
// word by word, in the pair order the LOP3 tricks produce (codes j, j + 4). fp32 rows become hi +
// lo fp16 halves of x * 2^e (e per step, so the step's largest |x| lands below 2^15) in B columns 0
// and 1; fp16 rows are copied into column 0. Lanes of the other B columns read the same data: their
// D columns are never read, and no lane needs a predicate. How the staging is shared out (the
// block's threads, each warp its own steps, or a pair of blocks of a cluster) is picked per layer
// (Staging).
//
// Per step: 8 words per lane -> 32 fp16 pairs of (code - zero point), exact small integers; 8 mma
// (products exact in the fp32 accumulators) on two independent chains; the step's fp32 scale (and
// 2^-e) folded once into a running sum. A tile ends with the 8 warps' sums added in warp order
// (deterministic: no atomics, no split-K across blocks).
#include "runtime/cuda/matmul_nbits_stream.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <type_traits>

#include "runtime/cuda/async_copy.cuh"
#include "runtime/cuda/cuda_check.h"
#include "runtime/cuda/device.h"
#include "runtime/cuda/kernel_attributes.h"
#include "runtime/cuda/nbits_codes.cuh"
#include "runtime/cuda/nbits_mma.cuh"

namespace qc::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kCols = 16;           // columns per tile
constexpr int kStepCodes = 128;     // codes of one column per step: 4 lanes x 16 bytes of 4-bit codes
constexpr int kStepBytes = 64;
constexpr int kMinSteps = kWarps;   // every warp gets at least one step of every tile: K >= 1024
constexpr int kDefaultDepth = 4;    // steps in flight per warp
constexpr int kDefaultBlocksPerSm = 2;     // above kSmallLayerSteps (LaunchBlocks)

// Dynamic shared memory: staged X [step][word][lane part][16 bytes], then (fp32) 2^-e per step,
// then the tiles' warp sums [2][kWarps][kCols] (double-buffered: one barrier per tile).
template <typename TA>
struct StreamSmem {
  static constexpr int kParts = std::is_same_v<TA, float> ? 2 : 1;
  static constexpr int kXLanes = 4 * kParts;              // B sources: lanes t (hi) and 4 + t (lo)
  static constexpr int kStepXBytes = 4 * kXLanes * 16;    // one step: 4 words x kXLanes x 16 bytes
  __host__ __device__ static int64_t inv_off(int64_t steps) { return steps * kStepXBytes; }
  __host__ __device__ static int64_t red_off(int64_t steps) { return inv_off(steps) + (kParts == 2 ? steps * 4 : 0); }
  __host__ __device__ static int64_t bytes(int64_t steps) { return red_off(steps) + 2 * kWarps * kCols * 4; }
};

// A block-wide barrier that warps may reach from different places in the code (the non-aligned
// form: each warp ends its tiles at its own step of the unrolled ring). Id 1: not __syncthreads'.
// Measured on the H200: the tile barriers keep the warps of a block on neighbouring bytes of the
// same columns; without them (every tile's sums kept to the end) the kernel was 5-10% slower.
__device__ __forceinline__ void TileBarrier() { asm volatile("barrier.sync 1;" ::: "memory"); }

// Staging X (steps * 128 values, zeros past K) in the B-fragment order: unit u = (step, word, t)
// holds the 8 consecutive codes 32t + 8word .. of its step, as the 4 pairs (0, 4), (1, 5), (2, 6),
// (3, 7). A thread loads kStageBatch units before converting any (X comes from L2: one round trip
// per batch, not per unit).
constexpr int kStageBatch = 4;

template <typename TA>
__device__ __forceinline__ void LoadUnit(const TA* __restrict__ x, int k, int k0, bool valid, bool vec,
                                         uint32_t (&r)[8]) {
  if constexpr (std::is_same_v<TA, float>) {
    if (valid && vec && k0 + 8 <= k) {
      const uint4 a = __ldg(reinterpret_cast<const uint4*>(x + k0));
      const uint4 b = __ldg(reinterpret_cast<const uint4*>(x + k0) + 1);
      r[0] = a.x, r[1] = a.y, r[2] = a.z, r[3] = a.w, r[4] = b.x, r[5] = b.y, r[6] = b.z, r[7] = b.w;
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) r[j] = valid && k0 + j < k ? __float_as_uint(x[k0 + j]) : 0u;
    }
  } else {  // 8 halves in r[0..3]: (x0, x1), (x2, x3), (x4, x5), (x6, x7)
    if (valid && vec && k0 + 8 <= k) {
      const uint4 a = __ldg(reinterpret_cast<const uint4*>(x + k0));
      r[0] = a.x, r[1] = a.y, r[2] = a.z, r[3] = a.w;
    } else {
      uint32_t h[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) h[j] = valid && k0 + j < k ? __half_as_ushort(x[k0 + j]) : 0u;
#pragma unroll
      for (int j = 0; j < 4; ++j) r[j] = h[2 * j] | (h[2 * j + 1] << 16);
    }
  }
}

// Stores v at `local` in this block's shared memory and, when `peer` >= 0, at the same offset in
// the shared memory of block `peer` of the cluster.
template <typename V>
__device__ __forceinline__ void StoreStaged(void* local, V v, int peer) {
  *reinterpret_cast<V*>(local) = v;
  if (peer >= 0) StorePeer(PeerSmemAddr(local, peer), v);
}

// Stages units up to u_end (whole steps of 16), this warp's first at u_first, then every `stride`
// units; `peer` >= 0 also stores each into that cluster block's shared memory.
template <typename TA>
__device__ void StageActivations(const TA* __restrict__ x, int k, int steps, uint8_t* smem, int u_first, int u_end,
                                 int stride, int peer) {
  using S = StreamSmem<TA>;
  const int lane = threadIdx.x & 31;
  const bool vec = reinterpret_cast<uintptr_t>(x) % 16 == 0;
  float* inv = reinterpret_cast<float*>(smem + S::inv_off(steps));
  // Whole warps run every iteration (the fp32 exponent is a 16-lane shuffle reduction).
  for (int u0 = u_first; u0 < u_end; u0 += stride * kStageBatch) {
    uint32_t r[kStageBatch][8];
#pragma unroll
    for (int b = 0; b < kStageBatch; ++b) {
      const int u = u0 + b * stride + lane;
      const int st = u >> 4, wi = (u >> 2) & 3, t = u & 3;
      LoadUnit<TA>(x, k, st * kStepCodes + 32 * t + 8 * wi, u < u_end, vec, r[b]);
    }
#pragma unroll
    for (int b = 0; b < kStageBatch; ++b) {
      const int u = u0 + b * stride + lane;
      if (u0 + b * stride >= u_end) break;  // warp-uniform
      const bool valid = u < u_end;
      const int st = u >> 4, wi = (u >> 2) & 3, t = u & 3;
      uint8_t* dst = smem + ((st * 4 + wi) * S::kXLanes + t) * 16;
      if constexpr (std::is_same_v<TA, float>) {
        // The step's exponent, from the bits of its largest |x| over its 16 units (lanes).
        uint32_t mb = 0;
#pragma unroll
        for (int j = 0; j < 8; ++j) mb = max(mb, r[b][j] & 0x7fffffffu);
#pragma unroll
        for (int off = 1; off < 16; off <<= 1) mb = max(mb, __shfl_xor_sync(0xffffffffu, mb, off));
        const int e = ActivationExponent(mb);
        const float scale = Pow2(e);  // exact products
        uint32_t hi[4], lo[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float a = __uint_as_float(r[b][j]) * scale, c = __uint_as_float(r[b][j + 4]) * scale;
          SplitHalves(a, c, hi[j], lo[j]);
        }
        if (valid) {
          StoreStaged(dst, make_uint4(hi[0], hi[1], hi[2], hi[3]), peer);
          StoreStaged(dst + 4 * 16, make_uint4(lo[0], lo[1], lo[2], lo[3]), peer);
          if ((u & 15) == 0) StoreStaged(&inv[st], Pow2(-e), peer);
        }
      } else if (valid) {
        const uint32_t* h = r[b];
        StoreStaged(dst,
                    make_uint4(__byte_perm(h[0], h[2], 0x5410), __byte_perm(h[0], h[2], 0x7632),
                               __byte_perm(h[1], h[3], 0x5410), __byte_perm(h[1], h[3], 0x7632)),
                    peer);
      }
    }
  }
}

// Steps of 128 codes covering K: the codes past K in the last step are padding of their block
// (finite 0..15, times a staged zero); blocks past that step are never read (a per-channel block
// may be much longer than K).
__host__ __device__ constexpr int StepsOf(int64_t k) { return static_cast<int>((k + kStepCodes - 1) / kStepCodes); }

// One step's loads for lanes (g, t): 16 bytes of each of columns g and g + 8, their scales and
// (packed 4-bit) zero points.
struct StepSlot {
  uint32_t lo[4], hi[4];
  float s_lo, s_hi;
  int z_lo, z_hi;
};

template <bool kHasZp>
struct StepLoader {
  const NBitsParams* p;
  int g, t, sb, se;  // this warp's steps of every tile: [sb, se)
  int tile, step;    // the next step to load
  const uint8_t *b_lo, *b_hi, *z_lo, *z_hi;
  const float *s_lo, *s_hi;

  __device__ __forceinline__ void Point() {
    // Columns past N (in the last tile) read column N - 1: valid memory, results never stored.
    // After a block's last tile this points past its range; nothing is loaded there.
    const int64_t c_lo = min(tile * kCols + g, p->n - 1), c_hi = min(tile * kCols + g + 8, p->n - 1);
    b_lo = p->b + c_lo * p->row_bytes + t * 16;
    b_hi = p->b + c_hi * p->row_bytes + t * 16;
    s_lo = p->scales + c_lo * p->k_blocks;
    s_hi = p->scales + c_hi * p->k_blocks;
    if constexpr (kHasZp) {
      z_lo = p->zp + c_lo * p->zp_row_bytes;
      z_hi = p->zp + c_hi * p->zp_row_bytes;
    }
  }
  __device__ __forceinline__ void Load(StepSlot& s) {
    WeightLoad<16>::Run(b_lo + step * kStepBytes, s.lo);
    WeightLoad<16>::Run(b_hi + step * kStepBytes, s.hi);
    const int blk = (step * kStepCodes) >> p->block_shift;
    s.s_lo = __ldg(s_lo + blk);
    s.s_hi = __ldg(s_hi + blk);
    if constexpr (kHasZp) {
      s.z_lo = (__ldg(z_lo + (blk >> 1)) >> ((blk & 1) * 4)) & 15;
      s.z_hi = (__ldg(z_hi + (blk >> 1)) >> ((blk & 1) * 4)) & 15;
    }
    if (++step == se) {
      step = sb;
      ++tile;
      Point();
    }
  }
};

template <typename TA, bool kHasZp, int kDepth>
__global__ void __launch_bounds__(kThreads, kDepth <= 4 ? 2 : 1)
    NBitsStreamKernel(NBitsParams p, const TA* __restrict__ x, TA* __restrict__ y, int n_tiles, StreamStaging staging) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using S = StreamSmem<TA>;
  extern __shared__ __align__(16) uint8_t smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int steps = StepsOf(p.k);
  const int tb = static_cast<int>(static_cast<int64_t>(blockIdx.x) * n_tiles / gridDim.x);
  const int te = static_cast<int>(static_cast<int64_t>(blockIdx.x + 1) * n_tiles / gridDim.x);
  const int sb = warp * steps / kWarps, se = (warp + 1) * steps / kWarps;  // se > sb: steps >= kWarps
  const int total = (te - tb) * (se - sb);

  AllowDependents();  // the next kernel may launch once every block of this one has started
  // A cluster pair writes into each other's shared memory: only once both blocks are known to run
  // (the wait, before the staging, is after the ring's first loads and the programmatic wait).
  if (staging == StreamStaging::kClusterPair) ClusterArrive();

  // 1. The first kDepth steps: the weights do not depend on the previous kernel.
  StepLoader<kHasZp> loader{&p, g, t, sb, se, tb, sb};
  loader.Point();
  StepSlot ring[kDepth];
#pragma unroll
  for (int s = 0; s < kDepth; ++s)
    if (s < total) loader.Load(ring[s]);

  // 2. X, the previous kernel's output. A cluster's blocks write into each other's shared memory
  // only between the two cluster barriers: none exits while the other may still write to it.
  WaitForPrologue();
  if (staging == StreamStaging::kWarp) {
    StageActivations<TA>(x, p.k, steps, smem, sb * 16, se * 16, 32, -1);
    __syncwarp();
  } else if (staging == StreamStaging::kClusterPair) {
    ClusterWait();
    const int rank = ClusterRank();
    StageActivations<TA>(x, p.k, steps, smem, rank * steps / 2 * 16 + warp * 32, (rank + 1) * steps / 2 * 16, kThreads,
                         rank ^ 1);
    ClusterSync();
  } else {
    StageActivations<TA>(x, p.k, steps, smem, warp * 32, steps * 16, kThreads, -1);
    __syncthreads();
  }

  // 3. The ring.
  const uint8_t* xq = smem + (std::is_same_v<TA, float> ? (lane & 7) : (lane & 3)) * 16;
  const float* inv = reinterpret_cast<const float*>(smem + S::inv_off(steps));
  float* red = reinterpret_cast<float*>(smem + S::red_off(steps));
  Dequant<4> d_lo, d_hi;
  d_lo.SetZeroPoint(8);
  d_hi.SetZeroPoint(8);
  float acc_lo = 0.0f, acc_hi = 0.0f;
  int step = sb, tile = tb, buf = 0;
  for (int base = 0; base < total; base += kDepth) {
#pragma unroll
    for (int s = 0; s < kDepth; ++s) {
      if (base + s >= total) break;
      StepSlot& r = ring[s];
      if constexpr (kHasZp) {
        d_lo.SetZeroPoint(r.z_lo);
        d_hi.SetZeroPoint(r.z_hi);
      }
      const uint8_t* xs = xq + step * S::kStepXBytes;
      float ca[4] = {0.0f, 0.0f, 0.0f, 0.0f}, cb[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int wi = 0; wi < 4; ++wi) {
        uint32_t pl[4], ph[4];
        d_lo.Word(r.lo[wi], pl);
        d_hi.Word(r.hi[wi], ph);
        const uint4 b = *reinterpret_cast<const uint4*>(xs + wi * S::kXLanes * 16);
        Mma16816(ca, pl[0], ph[0], pl[1], ph[1], b.x, b.y);
        Mma16816(cb, pl[2], ph[2], pl[3], ph[3], b.z, b.w);
      }
      // Lane (g, 0) holds D rows g and g + 8 in columns 0 (hi) and 1 (lo, fp32 only).
      if constexpr (S::kParts == 2) {
        const float iv = inv[step];
        // (sum * 2^-e) * scale: the same bits as sum * (scale * 2^-e) where that product is a
        // normal float, and no underflow or overflow of the product where it is not.
        acc_lo = fmaf(((ca[0] + cb[0]) + (ca[1] + cb[1])) * iv, r.s_lo, acc_lo);
        acc_hi = fmaf(((ca[2] + cb[2]) + (ca[3] + cb[3])) * iv, r.s_hi, acc_hi);
      } else {
        acc_lo = fmaf(ca[0] + cb[0], r.s_lo, acc_lo);
        acc_hi = fmaf(ca[2] + cb[2], r.s_hi, acc_hi);
      }
      if (base + s + kDepth < total) loader.Load(r);
      if (++step == se) {
        // The tile's 8 warp sums, added in warp order by warp 0 (deterministic).
        float* sums = red + buf * kWarps * kCols;
        if (t == 0) {
          sums[warp * kCols + g] = acc_lo;
          sums[warp * kCols + g + 8] = acc_hi;
        }
        TileBarrier();
        if (warp == 0 && lane < kCols) {
          const int col = tile * kCols + lane;
          if (col < p.n) {
            float v = 0.0f;
#pragma unroll
            for (int w = 0; w < kWarps; ++w) v += sums[w * kCols + lane];
            y[col] = StoreValue<TA>(p.bias != nullptr ? v + p.bias[col] : v);
          }
        }
        buf ^= 1;
        acc_lo = acc_hi = 0.0f;
        step = sb;
        ++tile;
      }
    }
  }
#endif
}

// Blocks of one launch (options.gemv_blocks when given): one per SM for layers of at most
// kSmallLayerSteps steps (16 columns x 128 codes) per SM, where the next call's block fits beside
// this one's and programmatic launch overlaps them; else two (more loads in flight). Measured on
// the H200 (docs/BENCHMARKS.md): 4096 x 4096 (62 steps per SM) 7% faster on one block per SM, the
// 7B MLP and 8192 x 8192 layers (167-248) 5-25% faster on two.
constexpr int kSmallLayerSteps = 96;

int LaunchBlocks(int n_tiles, int steps, int fit_per_sm, const NBitsOptions& options, const DeviceInfo& info) {
  if (options.gemv_blocks > 0) return std::min(n_tiles, options.gemv_blocks);
  const int64_t per_sm = static_cast<int64_t>(n_tiles) * steps / info.sm_count;
  const int wanted = per_sm <= kSmallLayerSteps ? 1 : kDefaultBlocksPerSm;
  return std::min(n_tiles, std::max(1, std::min(wanted, fit_per_sm)) * info.sm_count);
}

// options.stream_staging, or what kAuto measured fastest on the H200 (docs/BENCHMARKS.md, "Where
// kStream's time goes"): each warp staging its own steps, 1-5% faster than the block-wide staging
// on 7 of the 8 layer and row types. But for fp32 rows (each value converted to hi + lo halves)
// where no block has more than one tile, cluster pairs: 6% faster on 4096 x 11008 (the one such
// shape of the four; at two tiles a block or more they are 2-5% slower than per-warp staging).
template <typename TA>
StreamStaging Staging(int n_tiles, int blocks, const NBitsOptions& options) {
  StreamStaging s = options.stream_staging;
  if (s == StreamStaging::kAuto)
    s = std::is_same_v<TA, float> && n_tiles <= blocks ? StreamStaging::kClusterPair : StreamStaging::kWarp;
  return s == StreamStaging::kClusterPair && blocks < 2 ? StreamStaging::kBlock : s;
}

template <typename TA, bool kHasZp, int kDepth>
Status Launch(const NBitsParams& p, const TA* x, TA* y, cudaStream_t stream, const NBitsOptions& options,
              const DeviceInfo& info) {
  auto kernel = NBitsStreamKernel<TA, kHasZp, kDepth>;
  const int steps = StepsOf(p.k);
  const int n_tiles = (p.n + kCols - 1) / kCols;
  const size_t smem = static_cast<size_t>(StreamSmem<TA>::bytes(steps));
  QC_CUDA_RETURN_IF_ERROR(AllowLargeSharedMemory(reinterpret_cast<const void*>(kernel), info, /*prefer_shared=*/false));
  // A failed query gives 0: LaunchBlocks then takes one block per SM.
  const int fit_per_sm = BlocksPerSm(reinterpret_cast<const void*>(kernel), kThreads, smem, info);
  int blocks = LaunchBlocks(n_tiles, steps, fit_per_sm, options, info);
  const StreamStaging staging = Staging<TA>(n_tiles, blocks, options);
  const unsigned cluster = staging == StreamStaging::kClusterPair ? 2 : 1;
  // Whole clusters, rounded up: a block without tiles still stages its half of X for its peer
  // (rounding down would give some block two tiles, the pairs' slow case).
  blocks += blocks % cluster;
  QC_CUDA_RETURN_IF_ERROR(LaunchProgrammaticClusters(kernel, dim3(blocks), dim3(kThreads), smem, stream,
                                                     options.programmatic_launch, cluster, p, x, y, n_tiles, staging));
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("NBitsStreamKernel");
  return Status::Ok();
}

template <typename TA>
Status Run(const NBitsWeightsView& w, const TA* x, TA* y, cudaStream_t stream, const NBitsOptions& options) {
  QC_ASSIGN_OR_RETURN(DeviceInfo info, CurrentDeviceInfo());
  const NBitsParams p = MakeParams(w);
  // Fewer steps than warps would leave a warp out of the tile barriers: StreamSupported refuses it.
  if (StepsOf(p.k) < kMinSteps) return Internal("MatMulNBits: the stream kernel needs K >= 1024");
  const bool zp = p.zp != nullptr;
  switch (options.stream_staging) {
    case StreamStaging::kAuto:
    case StreamStaging::kBlock:
    case StreamStaging::kWarp:
    case StreamStaging::kClusterPair: break;
    default:
      return Unimplemented("MatMulNBits: unknown staging mode " +
                           std::to_string(static_cast<int>(options.stream_staging)) + " for the stream kernel");
  }
  static_assert(kDefaultDepth == 4, "ring_stages 0 below");
  // Each ring depth is its own instantiation, with and without zero points.
  auto launch = [&](auto depth) {
    constexpr int kDepth = decltype(depth)::value;
    return zp ? Launch<TA, true, kDepth>(p, x, y, stream, options, info)
              : Launch<TA, false, kDepth>(p, x, y, stream, options, info);
  };
  switch (options.ring_stages) {
    case 2: return launch(std::integral_constant<int, 2>{});
    case 0:
    case 4: return launch(std::integral_constant<int, 4>{});
    case 8: return launch(std::integral_constant<int, 8>{});
    default:
      return Unimplemented("MatMulNBits: the stream kernel's ring holds 2, 4 or 8 steps, not " +
                           std::to_string(options.ring_stages));
  }
}

}  // namespace

Status StreamSupported(const NBitsWeightsView& w, int64_t m, bool half_activations) {
  const NBitsLayout& l = w.layout;
  if (m != 1) return Unimplemented("MatMulNBits: the stream kernel takes one row (m = " + std::to_string(m) + ")");
  if (l.bits != 4 || l.block_size % kStepCodes != 0 || w.g_idx != nullptr || w.zero_points_float != nullptr)
    return Unimplemented("MatMulNBits: the stream kernel takes 4-bit weights in blocks of a multiple of 128 with "
                         "integer or no zero points and no g_idx");
  if (reinterpret_cast<uintptr_t>(w.b) % 16 != 0)
    return Unimplemented("MatMulNBits: the stream kernel needs B aligned to 16 bytes");
  const int64_t steps = StepsOf(l.k);
  if (l.k < int64_t{kMinSteps} * kStepCodes) return Unimplemented("MatMulNBits: the stream kernel needs K >= 1024");
  QC_ASSIGN_OR_RETURN(DeviceInfo info, CurrentDeviceInfo());
  if (info.major < 9) return Unimplemented("MatMulNBits: the stream kernel needs an sm_90 device");
  const int64_t smem = half_activations ? StreamSmem<__half>::bytes(steps) : StreamSmem<float>::bytes(steps);
  if (smem > info.max_shared_per_block_optin)
    return Unimplemented("MatMulNBits: the stream kernel's activations do not fit in shared memory (K = " +
                         std::to_string(l.k) + ")");
  return Status::Ok();
}

Status MatMulNBitsStream(const NBitsWeightsView& w, const float* x, float* y, cudaStream_t stream,
                         const NBitsOptions& options) {
  return Run<float>(w, x, y, stream, options);
}
Status MatMulNBitsStream(const NBitsWeightsView& w, const __half* x, __half* y, cudaStream_t stream,
                         const NBitsOptions& options) {
  return Run<__half>(w, x, y, stream, options);
}

}  // namespace qc::cuda
