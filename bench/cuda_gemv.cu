// Quantized GEMV benchmark (bench/cuda_gemv.sh): MatMulNBits W4/W8 g128 at batch 1 on Llama-7B/70B
// layer shapes, as achieved bandwidth against a device-to-device copy measured in the same run, and
// as time against cuBLAS fp16 GEMV on the same shape. Each timed launch reads a different copy of
// the weights (copies totalling > 256 MiB, several times the L2), so weights come from HBM; launches
// are captured in a CUDA graph so host launch overhead is not what is measured. Every kernel's output
// is first checked against a host dequantise-and-multiply of sampled columns.
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "runtime/cuda/allocator.h"
#include "runtime/cuda/device.h"
#include "runtime/cuda/matmul_nbits.h"
#include "runtime/cuda/nbits_dequantize.h"

namespace {

using qc::cuda::NBitsWeightsView;

#define CHECK_CUDA(expr)                                                                       \
  do {                                                                                         \
    const cudaError_t e_ = (expr);                                                             \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(2);                                                                            \
    }                                                                                          \
  } while (0)
#define CHECK_CUBLAS(expr)                                                                     \
  do {                                                                                         \
    const cublasStatus_t s_ = (expr);                                                          \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                         \
      std::fprintf(stderr, "%s:%d: %s: cuBLAS status %d\n", __FILE__, __LINE__, #expr, int(s_)); \
      std::exit(2);                                                                            \
    }                                                                                          \
  } while (0)
#define CHECK_OK(expr)                                                                         \
  do {                                                                                         \
    const qc::Status s_ = (expr);                                                              \
    if (!s_.ok()) {                                                                            \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, s_.message().c_str());           \
      std::exit(2);                                                                            \
    }                                                                                          \
  } while (0)

bool g_profile_one = false;  // --profile-one: 5 plain launches of 8192 x 8192 W4 (for ncu)
bool g_pattern = false;      // --pattern: also time the weight access pattern alone

constexpr size_t kRotateBytes = size_t{256} << 20;  // weights cycled per timing: > 4x the 50-60 MB L2
constexpr int kGraphLaunches = 400;                  // launches per captured graph (one timed replay)
constexpr int kReplays = 7;                          // timed replays; the median is reported
constexpr int kCheckColumns = 96;                    // columns checked on the host per configuration

// Deterministic pseudo-random bits of (seed, i): device-side fill, no host generation of GBs.
__host__ __device__ inline uint32_t Hash(uint64_t seed, uint64_t i) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + i + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<uint32_t>(z ^ (z >> 31));
}
__host__ __device__ inline float Uniform(uint64_t seed, uint64_t i, float lo, float hi) {
  return lo + (hi - lo) * (Hash(seed, i) >> 8) * (1.0f / 16777216.0f);
}

__global__ void FillBytes(uint8_t* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = static_cast<uint8_t>(Hash(seed, i));
}
__global__ void FillFloats(float* p, size_t n, uint64_t seed, float lo, float hi) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = Uniform(seed, i, lo, hi);
}
__global__ void FillHalves(__half* p, size_t n, uint64_t seed, float lo, float hi) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = __float2half(Uniform(seed, i, lo, hi));
}
__global__ void ToHalves(const float* x, __half* y, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    y[i] = __float2half(x[i]);
}

// Streams `n` 16-byte words once (a read-only ceiling to compare the copy with).
__global__ void ReadKernel(const uint4* __restrict__ p, size_t n, uint32_t* out) {
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) *out = acc;  // keeps the loads alive
}

// A weight access pattern like the tensor-core kernel's, with no arithmetic (diagnoses the memory
// side): 4 warps per 8-column tile splitting K, lane (g, t) streaming 16-byte pieces of column g
// (the kernel now reads 16 columns per tile, lane (g, t) columns g and g + 8, with 8 warps).
__global__ void PatternReadKernel(const uint8_t* __restrict__ b, int64_t row_bytes, int n, uint32_t* out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int col = min(static_cast<int>(blockIdx.x) * 8 + g, n - 1);
  const int iters = static_cast<int>(row_bytes / 64), per_warp = (iters + 3) / 4;
  const int begin = warp * per_warp, end = min(iters, begin + per_warp);
  const uint8_t* p = b + col * row_bytes + t * 16;
  uint32_t acc = 0;
  for (int it = begin; it < end; it += 4) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (it + u < end) v[u] = __ldcs(reinterpret_cast<const uint4*>(p + (it + u) * 64));
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (it + u < end) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  if (acc == 0x12345678u) *out = acc;
}

// Median of kReplays replays of a graph of kGraphLaunches calls of `launch(i)`, in microseconds
// per call.
template <typename F>
double TimeGraph(cudaStream_t stream, F launch) {
  for (int i = 0; i < 3; ++i) launch(i);  // warm-up: module load, workspace, cuBLAS heuristics
  CHECK_CUDA(cudaStreamSynchronize(stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < kGraphLaunches; ++i) launch(i);
  CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  CHECK_CUDA(cudaGraphLaunch(exec, stream));  // warm replay
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::vector<double> us;
  for (int r = 0; r < kReplays; ++r) {
    CHECK_CUDA(cudaEventRecord(start, stream));
    CHECK_CUDA(cudaGraphLaunch(exec, stream));
    CHECK_CUDA(cudaEventRecord(stop, stream));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    us.push_back(1000.0 * ms / kGraphLaunches);
  }
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  CHECK_CUDA(cudaGraphExecDestroy(exec));
  CHECK_CUDA(cudaGraphDestroy(graph));
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

// Device-to-device cudaMemcpy of 1 GiB; bandwidth counts bytes read plus bytes written.
double CopyBandwidth(cudaStream_t stream) {
  const size_t bytes = size_t{1} << 30;
  void *a, *b;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  CHECK_CUDA(cudaMemsetAsync(a, 1, bytes, stream));
  for (int i = 0; i < 3; ++i) CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream));
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::vector<double> gbs;
  for (int r = 0; r < 9; ++r) {
    CHECK_CUDA(cudaEventRecord(start, stream));
    CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream));
    CHECK_CUDA(cudaEventRecord(stop, stream));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    gbs.push_back(2.0 * bytes / (ms * 1e-3) / 1e9);
  }
  CHECK_CUDA(cudaFree(a));
  CHECK_CUDA(cudaFree(b));
  std::sort(gbs.begin(), gbs.end());
  return gbs[gbs.size() / 2];
}

// A read-only streaming kernel over 1 GiB (132 x 8 blocks of 512 threads, 16-byte loads).
double ReadBandwidth(cudaStream_t stream, int sm_count) {
  const size_t bytes = size_t{1} << 30;
  void* a;
  uint32_t* out;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&out, sizeof(uint32_t)));
  CHECK_CUDA(cudaMemsetAsync(a, 1, bytes, stream));
  const size_t n = bytes / 16;
  for (int i = 0; i < 3; ++i) ReadKernel<<<sm_count * 8, 512, 0, stream>>>(static_cast<const uint4*>(a), n, out);
  CHECK_CUDA(cudaGetLastError());
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::vector<double> gbs;
  for (int r = 0; r < 9; ++r) {
    CHECK_CUDA(cudaEventRecord(start, stream));
    ReadKernel<<<sm_count * 8, 512, 0, stream>>>(static_cast<const uint4*>(a), n, out);
    CHECK_CUDA(cudaEventRecord(stop, stream));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    gbs.push_back(bytes / (ms * 1e-3) / 1e9);
  }
  CHECK_CUDA(cudaFree(a));
  CHECK_CUDA(cudaFree(out));
  std::sort(gbs.begin(), gbs.end());
  return gbs[gbs.size() / 2];
}

// --floor: the least time one launch per call can take to read `bytes` (a W4 g128 layer's packed
// weights and fp32 scales, nothing else, no arithmetic), copies rotated over > 256 MiB as the GEMV
// timings are: the best of a few grids of ReadKernel. Launch, ramp-up and tail included, which at
// batch-1 sizes (9-36 MB) are a large part of the call: the physical floor of any GEMV kernel there.
double ReadFloorUs(size_t bytes, cudaStream_t stream, int sm_count) {
  bytes = (bytes + 15) / 16 * 16;
  const int copies = static_cast<int>(std::max<size_t>(2, (kRotateBytes + bytes - 1) / bytes));
  std::vector<void*> bufs(copies);
  for (void*& b : bufs) {
    CHECK_CUDA(cudaMalloc(&b, bytes));
    CHECK_CUDA(cudaMemsetAsync(b, 1, bytes, stream));
  }
  uint32_t* out;
  CHECK_CUDA(cudaMalloc(&out, sizeof(uint32_t)));
  double best = 1e30;
  for (int per_sm : {1, 2, 4, 8})
    for (int threads : {256, 512}) {
      const double us = TimeGraph(stream, [&](int i) {
        ReadKernel<<<sm_count * per_sm, threads, 0, stream>>>(static_cast<const uint4*>(bufs[i % copies]), bytes / 16, out);
      });
      best = std::min(best, us);
    }
  for (void* b : bufs) CHECK_CUDA(cudaFree(b));
  CHECK_CUDA(cudaFree(out));
  return best;
}

struct Result {
  double us = 0, gbs = 0, max_err = 0;
  bool ok = true;
};

// One MatMulNBits problem: N x K weights, W`bits` g128 symmetric (ONNX Runtime's and absmax's
// default), `m` activation rows.
struct Problem {
  int64_t n = 0, k = 0;
  int bits = 4;
  int64_t m = 1;
};

// R rotated copies of the weights, each variant (options) checked against a host reference and
// timed on them; one Result per variant.
template <typename TA>
std::vector<Result> RunNBits(const Problem& pr, cudaStream_t stream, qc::cuda::NBitsWorkspace& ws,
                             const std::vector<qc::cuda::NBitsOptions>& variants) {
  const int64_t n = pr.n, k = pr.k, m = pr.m;
  const int bits = pr.bits;
  qc::cuda::NBitsLayout layout{k, n, bits, 128};
  const size_t b_bytes = static_cast<size_t>(n * layout.row_bytes());
  const size_t s_count = static_cast<size_t>(n * layout.k_blocks());
  const size_t copy_bytes = b_bytes + s_count * sizeof(float);
  const int copies = static_cast<int>(std::max<size_t>(2, (kRotateBytes + copy_bytes - 1) / copy_bytes));
  std::vector<void*> bufs;
  std::vector<NBitsWeightsView> views;
  for (int c = 0; c < copies; ++c) {
    void *b, *s;
    CHECK_CUDA(cudaMalloc(&b, b_bytes));
    CHECK_CUDA(cudaMalloc(&s, s_count * sizeof(float)));
    FillBytes<<<1024, 256, 0, stream>>>(static_cast<uint8_t*>(b), b_bytes, 100 + c);
    FillFloats<<<1024, 256, 0, stream>>>(static_cast<float*>(s), s_count, 200 + c, -0.02f, 0.02f);
    CHECK_CUDA(cudaGetLastError());
    bufs.push_back(b);
    bufs.push_back(s);
    NBitsWeightsView v;
    v.layout = layout;
    v.b = static_cast<const uint8_t*>(b);
    v.scales = static_cast<const float*>(s);
    views.push_back(v);
  }
  float* x32;
  TA* x;
  TA* y;
  CHECK_CUDA(cudaMalloc(&x32, m * k * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&x, m * k * sizeof(TA)));
  CHECK_CUDA(cudaMalloc(&y, m * n * sizeof(TA)));
  FillFloats<<<64, 256, 0, stream>>>(x32, m * k, 7, -1.0f, 1.0f);
  if constexpr (std::is_same_v<TA, float>) {
    CHECK_CUDA(cudaMemcpyAsync(x, x32, m * k * sizeof(float), cudaMemcpyDeviceToDevice, stream));
  } else {
    ToHalves<<<64, 256, 0, stream>>>(x32, x, m * k);
  }
  CHECK_CUDA(cudaGetLastError());
  std::vector<TA> xh(m * k);
  CHECK_CUDA(cudaStreamSynchronize(stream));
  CHECK_CUDA(cudaMemcpy(xh.data(), x, m * k * sizeof(TA), cudaMemcpyDeviceToHost));
  // Host reference of sampled columns of copy 0 (double), every row.
  const int64_t row_bytes = layout.row_bytes(), kb = layout.k_blocks();
  std::vector<int64_t> cols;
  std::vector<double> want, abs_want;  // [col][row]
  {
    std::vector<uint8_t> brow(row_bytes);
    std::vector<float> srow(kb);
    for (int i = 0; i < kCheckColumns; ++i) {
      const int64_t col = (i * 2654435761ull) % n;
      cols.push_back(col);
      CHECK_CUDA(cudaMemcpy(brow.data(), views[0].b + col * row_bytes, row_bytes, cudaMemcpyDeviceToHost));
      CHECK_CUDA(cudaMemcpy(srow.data(), views[0].scales + col * kb, kb * sizeof(float), cudaMemcpyDeviceToHost));
      for (int64_t r = 0; r < m; ++r) {
        double sum = 0, abs_sum = 0;
        for (int64_t kk = 0; kk < k; ++kk) {
          const int64_t bit = kk * bits;
          const int q = (brow[bit / 8] >> (bit % 8)) & ((1 << bits) - 1);
          const double w = (q - (1 << (bits - 1))) * double(srow[kk / 128]);
          double xv;
          if constexpr (std::is_same_v<TA, float>) xv = xh[r * k + kk];
          else xv = __half2float(xh[r * k + kk]);
          sum += xv * w;
          abs_sum += std::fabs(xv * w);
        }
        want.push_back(sum);
        abs_want.push_back(abs_sum);
      }
    }
  }
  std::vector<Result> results;
  for (const qc::cuda::NBitsOptions& options : variants) {
    Result res;
    CHECK_CUDA(cudaMemsetAsync(y, 0xff, m * n * sizeof(TA), stream));  // NaN: an unwritten output fails
    if (const qc::Status st = qc::cuda::MatMulNBits(views[0], x, y, m, ws, stream, options); !st.ok()) {
      std::printf("(variant skipped: %s)\n", st.message().c_str());  // e.g. a forced configuration that cannot run
      res.us = res.gbs = std::nan("");
      results.push_back(res);
      continue;
    }
    CHECK_CUDA(cudaStreamSynchronize(stream));
    std::vector<TA> yh(m * n);
    CHECK_CUDA(cudaMemcpy(yh.data(), y, m * n * sizeof(TA), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < cols.size(); ++i)
      for (int64_t r = 0; r < m; ++r) {
        const double sum = want[i * m + r], abs_sum = abs_want[i * m + r];
        double got;
        if constexpr (std::is_same_v<TA, float>) got = yh[r * n + cols[i]];
        else got = __half2float(yh[r * n + cols[i]]);
        const double tol = std::is_same_v<TA, float> ? 4e-6 * abs_sum : 4e-6 * abs_sum + 1e-3 * std::fabs(sum);
        const double err = std::fabs(got - sum);
        res.max_err = std::max(res.max_err, err / std::max(abs_sum, 1e-30));
        if (!(err <= tol)) res.ok = false;
      }
    if (g_profile_one) {  // plain launches for a profiler (no graph), then stop
      for (int i = 0; i < 5; ++i) CHECK_OK(qc::cuda::MatMulNBits(views[i % copies], x, y, m, ws, stream, options));
      CHECK_CUDA(cudaStreamSynchronize(stream));
      std::exit(0);
    }
    res.us = TimeGraph(stream, [&](int i) {
      CHECK_OK(qc::cuda::MatMulNBits(views[i % copies], x, y, m, ws, stream, options));
    });
    const double bytes = double(b_bytes) + s_count * sizeof(float) + m * k * sizeof(TA);
    res.gbs = bytes / (res.us * 1e-6) / 1e9;
    results.push_back(res);
  }
  if (g_pattern && bits == 4 && std::is_same_v<TA, float>) {
    uint32_t* out;
    CHECK_CUDA(cudaMalloc(&out, sizeof(uint32_t)));
    const double us = TimeGraph(stream, [&](int i) {
      PatternReadKernel<<<static_cast<unsigned>((n + 7) / 8), 128, 0, stream>>>(views[i % copies].b, layout.row_bytes(),
                                                                             static_cast<int>(n), out);
    });
    std::printf("(pattern read, no arithmetic, %lld x %lld W4: %.2f us, %.0f GB/s)\n", static_cast<long long>(n),
                static_cast<long long>(k), us, b_bytes / (us * 1e-6) / 1e9);
    CHECK_CUDA(cudaFree(out));
  }
  for (void* p : bufs) CHECK_CUDA(cudaFree(p));
  CHECK_CUDA(cudaFree(x32));
  CHECK_CUDA(cudaFree(x));
  CHECK_CUDA(cudaFree(y));
  return results;
}

// cuBLAS fp16 GEMV (cublasGemmEx, m = 1, fp32 accumulation), weights [n, k] fp16 rotated likewise.
Result RunCublas(int64_t n, int64_t k, cudaStream_t stream, cublasHandle_t handle) {
  const size_t w_bytes = static_cast<size_t>(n * k) * sizeof(__half);
  const int copies = static_cast<int>(std::max<size_t>(2, (kRotateBytes + w_bytes - 1) / w_bytes));
  std::vector<__half*> ws;
  for (int c = 0; c < copies; ++c) {
    __half* w;
    CHECK_CUDA(cudaMalloc(&w, w_bytes));
    FillHalves<<<1024, 256, 0, stream>>>(w, n * k, 300 + c, -0.1f, 0.1f);
    ws.push_back(w);
  }
  __half *x, *y;
  CHECK_CUDA(cudaMalloc(&x, k * sizeof(__half)));
  CHECK_CUDA(cudaMalloc(&y, n * sizeof(__half)));
  FillHalves<<<64, 256, 0, stream>>>(x, k, 9, -1.0f, 1.0f);
  CHECK_CUDA(cudaGetLastError());
  const float alpha = 1.0f, beta = 0.0f;
  Result res;
  // Row-major W [n, k] is column-major [k, n]: y = W^T-op * x.
  res.us = TimeGraph(stream, [&](int i) {
    CHECK_CUBLAS(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), 1, static_cast<int>(k), &alpha,
                              ws[i % copies], CUDA_R_16F, static_cast<int>(k), x, CUDA_R_16F, static_cast<int>(k), &beta,
                              y, CUDA_R_16F, static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  });
  res.gbs = (double(w_bytes) + k * sizeof(__half)) / (res.us * 1e-6) / 1e9;
  for (__half* w : ws) CHECK_CUDA(cudaFree(w));
  CHECK_CUDA(cudaFree(x));
  CHECK_CUDA(cudaFree(y));
  return res;
}

// Prefill-sized products (--prefill), activations of type T (fp16: the first table; float32: the
// second): kMma on the packed W4 g128 weights (float32 activations as two fp16 halves), the
// executor's prefill path (DequantizeNBits into a dense [n, k] matrix of T, then cuBLAS: GemmEx on
// tensor cores for fp16, SGEMM without TF32 for float32) and the same cuBLAS call on dense weights
// (the unquantized layer), us per call. One weight copy: at these row counts the GEMM is bound by
// arithmetic, not by reading the weights.
struct PrefillTimes {
  double mma = 0, dequant_gemm = 0, dense = 0;
};
template <typename T>
PrefillTimes RunPrefill(int64_t n, int64_t k, int64_t m, cudaStream_t stream, cublasHandle_t handle,
                        qc::cuda::NBitsWorkspace& ws, uint64_t seed) {
  constexpr bool kFloat32 = std::is_same_v<T, float>;
  auto fill = [&](T* p, int64_t count, uint64_t sd, float lo, float hi) {
    if constexpr (kFloat32) FillFloats<<<1024, 256, 0, stream>>>(p, count, sd, lo, hi);
    else FillHalves<<<1024, 256, 0, stream>>>(p, count, sd, lo, hi);
  };
  qc::cuda::NBitsLayout layout{k, n, 4, 128};
  uint8_t* b;
  float* s;
  T *x, *y, *dense, *w_dense;
  CHECK_CUDA(cudaMalloc(&b, n * layout.row_bytes()));
  CHECK_CUDA(cudaMalloc(&s, n * layout.k_blocks() * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&x, m * k * sizeof(T)));
  CHECK_CUDA(cudaMalloc(&y, m * n * sizeof(T)));
  CHECK_CUDA(cudaMalloc(&dense, n * k * sizeof(T)));
  CHECK_CUDA(cudaMalloc(&w_dense, n * k * sizeof(T)));
  FillBytes<<<1024, 256, 0, stream>>>(b, n * layout.row_bytes(), seed);
  FillFloats<<<1024, 256, 0, stream>>>(s, n * layout.k_blocks(), seed + 1, -0.02f, 0.02f);
  fill(x, m * k, seed + 2, -1.0f, 1.0f);
  fill(w_dense, n * k, seed + 3, -0.1f, 0.1f);
  CHECK_CUDA(cudaGetLastError());
  NBitsWeightsView w;
  w.layout = layout;
  w.b = b;
  w.scales = s;
  const float alpha = 1.0f, beta = 0.0f;
  const int in = static_cast<int>(n), im = static_cast<int>(m), ik = static_cast<int>(k);
  auto gemm = [&](const T* weights) {  // row-major y[m, n] = x[m, k] . weights[n, k]^T
    if constexpr (kFloat32) {
      CHECK_CUBLAS(cublasSgemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, in, im, ik, &alpha, weights, ik, x, ik, &beta, y, in));
    } else {
      CHECK_CUBLAS(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, in, im, ik, &alpha, weights, CUDA_R_16F, ik, x, CUDA_R_16F,
                                ik, &beta, y, CUDA_R_16F, in, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
  };
  PrefillTimes t;
  t.mma = TimeGraph(stream, [&](int) {
    CHECK_OK(qc::cuda::MatMulNBits(w, x, y, m, ws, stream, qc::cuda::NBitsOptions{qc::cuda::NBitsKernel::kMma, 0}));
  });
  t.dequant_gemm = TimeGraph(stream, [&](int) {
    CHECK_OK(qc::cuda::DequantizeNBits(w, 0, n, dense, stream));
    gemm(dense);
  });
  t.dense = TimeGraph(stream, [&](int) { gemm(w_dense); });
  for (void* p : {static_cast<void*>(b), static_cast<void*>(s), static_cast<void*>(x), static_cast<void*>(y),
                  static_cast<void*>(dense), static_cast<void*>(w_dense)})
    CHECK_CUDA(cudaFree(p));
  return t;
}

// The variants a row of the table runs: the default call (kAuto), the stream kernel kStream with its
// default geometry, the same without programmatic dependent launch (one call timed in isolation),
// the GEMV kernel kGemv and the tensor-core kernel kMma (the defaults before), all in the same
// session.
std::vector<qc::cuda::NBitsOptions> TableVariants() {
  qc::cuda::NBitsOptions stream, isolated, gemv;
  stream.kernel = isolated.kernel = qc::cuda::NBitsKernel::kStream;
  isolated.programmatic_launch = false;
  gemv.kernel = qc::cuda::NBitsKernel::kGemv;
  return {qc::cuda::NBitsOptions{}, stream, isolated, gemv, qc::cuda::NBitsOptions{qc::cuda::NBitsKernel::kMma, 0}};
}

}  // namespace

int main(int argc, char** argv) {
  // --sweep: also time the GEMV kernel (W4/W8, fp32/fp16 activations) over tiles per block and
  // split-K factors, to tune the defaults; --sweep-stream: the stream kernel over blocks per SM x
  // steps in flight, and staging mode x blocks per SM; --floor: the read floor of each shape
  // (ReadFloorUs). --rows M: batch M instead of 1.
  bool sweep = false, sweep_stream = false, prefill = false, floor = false;
  int64_t rows = 1;
  for (int i = 1; i < argc; ++i) {
    sweep = sweep || std::strcmp(argv[i], "--sweep") == 0;
    sweep_stream = sweep_stream || std::strcmp(argv[i], "--sweep-stream") == 0;
    prefill = prefill || std::strcmp(argv[i], "--prefill") == 0;
    floor = floor || std::strcmp(argv[i], "--floor") == 0;
    g_profile_one = g_profile_one || std::strcmp(argv[i], "--profile-one") == 0;
    g_pattern = g_pattern || std::strcmp(argv[i], "--pattern") == 0;
    if (std::strcmp(argv[i], "--rows") == 0 && i + 1 < argc) rows = std::atoll(argv[++i]);
  }
  if (qc::cuda::DeviceCount() == 0) {
    std::fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  auto info = qc::cuda::CurrentDeviceInfo();
  CHECK_OK(info.status());
  int runtime = 0, driver = 0;
  CHECK_CUDA(cudaRuntimeGetVersion(&runtime));
  CHECK_CUDA(cudaDriverGetVersion(&driver));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cublasHandle_t handle;
  CHECK_CUBLAS(cublasCreate(&handle));
  CHECK_CUBLAS(cublasSetStream(handle, stream));
  qc::cuda::NBitsWorkspace ws;

  if (g_profile_one) (void)RunNBits<float>(Problem{8192, 8192, 4, rows}, stream, ws, {qc::cuda::NBitsOptions{}});
  const double copy = CopyBandwidth(stream);
  std::printf("device: %s, sm_%d%d, %d SMs, L2 %.0f MB, %.0f GiB; CUDA runtime %d, driver %d\n", info->name.c_str(),
              info->major, info->minor, info->sm_count, info->l2_bytes / 1e6, info->global_memory_bytes / 1073741824.0,
              runtime, driver);
  std::printf("copy bandwidth (cudaMemcpy device to device, 1 GiB, read + write): %.0f GB/s\n", copy);
  std::printf("read bandwidth (streaming 16-byte loads, 1 GiB; for context): %.0f GB/s\n",
              ReadBandwidth(stream, info->sm_count));
  std::printf("batch m = %lld; W = MatMulNBits g128 symmetric, fp32 scales; bandwidth = (packed weights + scales + x) "
              "bytes / time; weights rotated over > 256 MiB; median of %d graph replays of %d launches; "
              "'kernel': what kAuto runs; 'stream': the kStream kernel forced (W4 only), 'stream isolated' the same "
              "without programmatic dependent launch (no overlap with the call before); 'gemv', 'mma': the kGemv "
              "and kMma kernels forced\n\n",
              static_cast<long long>(rows), kReplays, kGraphLaunches);
  std::printf("| N (out) | K (in) | layer | weights | kernel | us | GB/s | %% of copy | cuBLAS fp16 us | speed-up | "
              "check | stream us | stream %% of copy | stream isolated us | gemv us | gemv %% of copy | mma us | mma %% of copy |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
              "|\n");
  struct Shape {
    int64_t n, k;
    const char* name;
  };
  const Shape shapes[] = {{4096, 4096, "7B q/k/v/o"}, {4096, 11008, "7B down"}, {11008, 4096, "7B gate/up"},
                          {8192, 8192, "70B q/o"}};
  struct Variant {
    const char* name;
    int bits;
    bool half;
  };
  const Variant kinds[] = {{"W4 fp32 act", 4, false}, {"W4 fp16 act", 4, true}, {"W8 fp32 act", 8, false},
                           {"W8 fp16 act", 8, true}};
  bool all_ok = true;
  auto run = [&](const Variant& v, const Shape& s, const std::vector<qc::cuda::NBitsOptions>& variants) {
    const Problem pr{s.n, s.k, v.bits, rows};
    std::vector<Result> r = v.half ? RunNBits<__half>(pr, stream, ws, variants) : RunNBits<float>(pr, stream, ws, variants);
    for (const Result& x : r) all_ok = all_ok && x.ok;
    return r;
  };
  for (const Shape& s : shapes) {
    const Result cub = RunCublas(s.n, s.k, stream, handle);
    for (const Variant& v : kinds) {
      const std::vector<Result> r = run(v, s, TableVariants());
      const bool ok = r[0].ok && r[1].ok && r[2].ok && r[3].ok && r[4].ok;
      qc::cuda::NBitsWeightsView probe;  // what kAuto picks (B from cudaMalloc: aligned)
      probe.layout = qc::cuda::NBitsLayout{s.k, s.n, v.bits, 128};
      probe.b = reinterpret_cast<const uint8_t*>(uintptr_t{256});
      const char* chosen = qc::cuda::NBitsKernelName(qc::cuda::SelectNBitsKernel(probe, rows, v.half));
      std::printf("| %lld | %lld | %s | %s | %s | %.2f | %.0f | %.1f%% | %.2f | %.2fx | %s (%.1e) | %.2f | %.1f%% | %.2f | "
                  "%.2f | %.1f%% | %.2f | %.1f%% |\n",
                  static_cast<long long>(s.n), static_cast<long long>(s.k), s.name, v.name, chosen, r[0].us, r[0].gbs,
                  100.0 * r[0].gbs / copy, cub.us, cub.us / r[0].us, ok ? "ok" : "FAIL",
                  std::max({r[0].max_err, r[1].max_err, r[2].max_err, r[3].max_err, r[4].max_err}), r[1].us,
                  100.0 * r[1].gbs / copy, r[2].us, r[3].us, 100.0 * r[3].gbs / copy, r[4].us, 100.0 * r[4].gbs / copy);
      std::fflush(stdout);
    }
    std::printf("| %lld | %lld | %s | fp16 | cuBLAS | %.2f | %.0f | %.1f%% | | | | | | | | | | |\n", static_cast<long long>(s.n),
                static_cast<long long>(s.k), s.name, cub.us, cub.gbs, 100.0 * cub.gbs / copy);
  }
  // One sweep table per (activation kind, shape): us per call of the options make(row, col) for
  // every row and column value, as markdown with `corner` naming the two axes.
  auto sweep_table = [&](const Variant& v, const Shape& s, const char* corner, const std::vector<int>& rows,
                         const std::vector<int>& cols, auto make) {
    std::vector<qc::cuda::NBitsOptions> variants;
    for (int r : rows)
      for (int c : cols) variants.push_back(make(r, c));
    const std::vector<Result> r = run(v, s, variants);
    std::printf("\n%s, %lld x %lld\n\n| %s |", v.name, static_cast<long long>(s.n), static_cast<long long>(s.k), corner);
    for (int c : cols) std::printf(" %d |", c);
    std::printf("\n| --- |");
    for (size_t i = 0; i < cols.size(); ++i) std::printf(" --- |");
    std::printf("\n");
    size_t i = 0;
    for (int row : rows) {
      std::printf("| %d |", row);
      for (size_t j = 0; j < cols.size(); ++j, ++i) std::printf(" %.2f%s |", r[i].us, r[i].ok ? "" : " FAIL");
      std::printf("\n");
    }
    std::fflush(stdout);
  };
  if (sweep) {
    // GEMV kernel, us per call by (16-column tiles per block, K slices); auto = the default.
    std::printf("\nGEMV kernel sweep, us per call: rows = tiles per block, columns = K slices (0: the kernel's "
                "choice)\n");
    for (const Variant& v : kinds)
      for (const Shape& s : shapes)
        sweep_table(v, s, "tiles \\ splits", {0, 1, 2, 4}, {0, 1, 2, 3, 4, 6, 8}, [](int tiles, int splits) {
          qc::cuda::NBitsOptions o;
          o.kernel = qc::cuda::NBitsKernel::kGemv;
          o.split_k = splits;
          o.gemv_tiles = tiles;
          return o;
        });
  }
  if (sweep_stream) {
    // Stream kernel (W4 only), us per call by (blocks per SM, steps in flight per warp).
    std::printf("\nStream kernel sweep, us per call: rows = blocks per SM, columns = steps in flight per warp (0: "
                "the kernel's choice)\n");
    for (const Variant& v : kinds) {
      if (v.bits != 4) continue;
      for (const Shape& s : shapes)
        sweep_table(v, s, "blocks/SM \\ depth", {0, 1, 2, 3}, {2, 4, 8}, [&](int per_sm, int depth) {
          qc::cuda::NBitsOptions o;
          o.kernel = qc::cuda::NBitsKernel::kStream;
          o.gemv_blocks = per_sm * info->sm_count;
          o.ring_stages = depth;
          return o;
        });
    }
    std::printf("\nStream kernel staging, us per call: rows = how X is staged (0: the kernel's choice, 1: the "
                "block, 2: each warp its own steps, 3: cluster pairs), columns = blocks per SM (0: the kernel's "
                "choice)\n");
    for (const Variant& v : kinds) {
      if (v.bits != 4) continue;
      for (const Shape& s : shapes)
        sweep_table(v, s, "staging \\ blocks/SM", {0, 1, 2, 3}, {0, 1, 2}, [&](int staging, int per_sm) {
          using qc::cuda::StreamStaging;
          constexpr StreamStaging kModes[] = {StreamStaging::kAuto, StreamStaging::kBlock, StreamStaging::kWarp,
                                              StreamStaging::kClusterPair};  // the rows' numbers
          qc::cuda::NBitsOptions o;
          o.kernel = qc::cuda::NBitsKernel::kStream;
          o.gemv_blocks = per_sm * info->sm_count;
          o.stream_staging = kModes[staging];
          return o;
        });
    }
  }
  if (floor) {
    // What issue 5's GEMV target (75% of the copy bandwidth, W4 g128 at batch 1) asks against what
    // reading those bytes alone takes, one launch per call.
    std::printf("\nRead floor, W4 g128 weights + fp32 scales at batch 1, one launch per call, no arithmetic "
                "(ReadKernel, best grid): us per call and %% of the copy bandwidth; the 75%% target as us\n\n");
    std::printf("| N x K | bytes | read floor us | floor %% of copy | 75%% of copy us |\n| --- | --- | --- | --- | --- |\n");
    for (const Shape& sh : shapes) {
      const qc::cuda::NBitsLayout layout{sh.k, sh.n, 4, 128};
      const double bytes = double(sh.n * layout.row_bytes()) + double(sh.n * layout.k_blocks()) * sizeof(float);
      const double us = ReadFloorUs(static_cast<size_t>(bytes), stream, info->sm_count);
      std::printf("| %lld x %lld | %.1f MB | %.2f | %.1f%% | %.2f |\n", static_cast<long long>(sh.n), static_cast<long long>(sh.k),
                  bytes / 1e6, us, 100.0 * bytes / (us * 1e-6) / 1e9 / copy, bytes / (0.75 * copy * 1e9) * 1e6);
      std::fflush(stdout);
    }
  }
  if (prefill) {
    // Where the executor's 16-bit prefill path (kDequantGemmMinRows) should start.
    std::printf("\nPrefill, W4 g128 with fp16 activations, us per call (1.1B Llama layers): kMma; dequantise + "
                "cuBLAS (the executor's path from %lld rows); cuBLAS on dense fp16 weights\n\n",
                static_cast<long long>(qc::cuda::kDequantGemmMinRows));
    std::printf("| N x K | m | kMma us | dequant + GEMM us | dense fp16 us |\n| --- | --- | --- | --- | --- |\n");
    const std::pair<int64_t, int64_t> layers[] = {{2048, 2048}, {5632, 2048}, {2048, 5632}, {32000, 2048}};
    for (const auto& [n, k] : layers)
      for (int64_t m : {16, 32, 64, 128, 256, 1024, 2048}) {
        const PrefillTimes t = RunPrefill<__half>(n, k, m, stream, handle, ws, 400);
        std::printf("| %lld x %lld | %lld | %.1f | %.1f | %.1f |\n", static_cast<long long>(n), static_cast<long long>(k),
                    static_cast<long long>(m), t.mma, t.dequant_gemm, t.dense);
        std::fflush(stdout);
      }
    // Where the float32 path (kDequantGemmMinRowsFloat32) should start.
    std::printf("\nPrefill, W4 g128 with float32 activations, us per call: kMma (two fp16 halves); dequantise + SGEMM (the "
                "executor's path from %lld rows); SGEMM on dense float32 weights\n\n",
                static_cast<long long>(qc::cuda::kDequantGemmMinRowsFloat32));
    std::printf("| N x K | m | kMma us | dequant + SGEMM us | dense fp32 us |\n| --- | --- | --- | --- | --- |\n");
    for (const auto& [n, k] : layers)
      for (int64_t m : {64, 128, 256, 512, 1024, 2048}) {
        const PrefillTimes t = RunPrefill<float>(n, k, m, stream, handle, ws, 410);
        std::printf("| %lld x %lld | %lld | %.1f | %.1f | %.1f |\n", static_cast<long long>(n), static_cast<long long>(k),
                    static_cast<long long>(m), t.mma, t.dequant_gemm, t.dense);
        std::fflush(stdout);
      }
  }
  CHECK_CUBLAS(cublasDestroy(handle));
  CHECK_CUDA(cudaStreamDestroy(stream));
  if (!all_ok) {
    std::printf("\nCHECK FAILED: a kernel's output differs from the host reference\n");
    return 1;
  }
  return 0;
}
