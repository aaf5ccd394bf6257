// DeviceStatsAccumulator (calibrate/device_stats.h): per-column reductions and H += XᵀX on the GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "calibrate/cuda/stats_columns.h"
#include "calibrate/device_stats.h"
#include "runtime/cuda/context.h"
#include "runtime/cuda/cuda_check.h"

namespace qc {
namespace {

using stats_columns::kRowsPerChunk;
constexpr int kThreads = 256;

__global__ void ColumnPartialsKernel(const float* __restrict__ x, int64_t rows, int64_t k, float threshold,
                                     float* __restrict__ part_max, double* __restrict__ part_sum,
                                     long long* __restrict__ part_count, int* __restrict__ nonfinite) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= k) return;
  if (!stats_columns::ColumnPartials(x, rows, k, threshold, j, blockIdx.y, part_max, part_sum, part_count))
    *nonfinite = 1;  // every writer writes 1: the race is benign
}

__global__ void FoldPartialsKernel(int64_t chunks, int64_t k, const float* __restrict__ part_max,
                                   const double* __restrict__ part_sum, const long long* __restrict__ part_count,
                                   float* abs_max, double* abs_sum, long long* outlier_count) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < k) stats_columns::FoldPartials(chunks, k, j, part_max, part_sum, part_count, abs_max, abs_sum, outlier_count);
}

// H += S for the symmetric S whose lower triangle SSYRK wrote column-major; H is row-major (and
// symmetric, so either order).
__global__ void AddSymmetricKernel(int64_t k, const float* __restrict__ s, double* __restrict__ h) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t r = blockIdx.y;
  if (c < k) h[r * k + c] += static_cast<double>(s[stats_columns::LowerIndex(k, r, c)]);
}

// A float16/bfloat16 activation widened to float32 (exact), on the device: the statistics are
// float32/float64 as on the CPU, without a host round trip per window and layer.
template <typename Half>
__global__ void WidenKernel(const Half* __restrict__ x, float* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if constexpr (std::is_same_v<Half, __half>) y[i] = __half2float(x[i]);
    else y[i] = __bfloat162float(x[i]);
  }
}

int Blocks(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

}  // namespace

struct DeviceStatsAccumulator::Impl {
  cuda::Context* ctx = nullptr;
  std::string input;
  int64_t k = 0;
  StatsRequest request;
  int64_t rows = 0;
  cuda::DeviceBuffer abs_max, abs_sum, outlier_count, hessian, window_xtx, nonfinite;
};

DeviceStatsAccumulator::DeviceStatsAccumulator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceStatsAccumulator::~DeviceStatsAccumulator() = default;

StatusOr<std::unique_ptr<DeviceStatsAccumulator>> DeviceStatsAccumulator::Create(cuda::Context& context, std::string input,
                                                                                 int64_t k, const StatsRequest& request) {
  if (k <= 0) return InvalidArgument("activation '" + input + "' has no columns");
  auto impl = std::make_unique<Impl>();
  impl->ctx = &context;
  impl->input = std::move(input);
  impl->k = k;
  impl->request = request;
  cuda::CachingAllocator& alloc = context.allocator();
  const cudaStream_t stream = context.stream();
  auto zeroed = [&](cuda::DeviceBuffer* b, size_t bytes) -> Status {
    QC_ASSIGN_OR_RETURN(*b, alloc.Allocate(bytes));
    QC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(b->data(), 0, bytes, stream));
    return Status::Ok();
  };
  const size_t kk = static_cast<size_t>(k);
  QC_RETURN_IF_ERROR(zeroed(&impl->abs_max, kk * sizeof(float)));
  QC_RETURN_IF_ERROR(zeroed(&impl->abs_sum, kk * sizeof(double)));
  QC_RETURN_IF_ERROR(zeroed(&impl->outlier_count, kk * sizeof(long long)));
  QC_RETURN_IF_ERROR(zeroed(&impl->nonfinite, sizeof(int)));
  if (request.hessian) {
    QC_RETURN_IF_ERROR(zeroed(&impl->hessian, kk * kk * sizeof(double)));
    QC_ASSIGN_OR_RETURN(impl->window_xtx, alloc.Allocate(kk * kk * sizeof(float)));
  }
  return std::unique_ptr<DeviceStatsAccumulator>(new DeviceStatsAccumulator(std::move(impl)));
}

Status DeviceStatsAccumulator::Add(const Tensor& x_in) {
  Impl& m = *impl_;
  const int64_t k = m.k;
  const DType dtype = x_in.dtype();
  if (!IsComputeFloat(dtype))
    return Unimplemented("calibration needs float activations, but '" + m.input + "' is " + DTypeName(dtype));
  if (x_in.rank() < 1 || x_in.dim(-1) != k)
    return InvalidArgument("activation '" + m.input + "' has shape " + ShapeToString(x_in.shape()) +
                           ", expected a last axis of " + std::to_string(k));
  Tensor uploaded;
  if (!x_in.on_device()) {
    QC_ASSIGN_OR_RETURN(uploaded, m.ctx->Upload(x_in));
  }
  const Tensor& x = x_in.on_device() ? x_in : uploaded;
  const int64_t rows = x.numel() / k;
  if (rows == 0) return Status::Ok();
  const cudaStream_t stream = m.ctx->stream();
  cuda::CachingAllocator& alloc = m.ctx->allocator();
  cuda::DeviceBuffer widened;  // back to the stream-ordered cache on return, after the kernels below
  const float* data = nullptr;
  if (dtype == DType::kFloat32) {
    data = x.device_data<float>();
  } else {
    const int64_t n = x.numel();
    QC_ASSIGN_OR_RETURN(widened, alloc.Allocate(static_cast<size_t>(n) * sizeof(float)));
    const int blocks = static_cast<int>(std::min<int64_t>(Blocks(n), 4096));
    if (dtype == DType::kFloat16)
      WidenKernel<<<blocks, kThreads, 0, stream>>>(reinterpret_cast<const __half*>(x.device_data<Float16>()), widened.as<float>(), n);
    else
      WidenKernel<<<blocks, kThreads, 0, stream>>>(reinterpret_cast<const __nv_bfloat16*>(x.device_data<BFloat16>()), widened.as<float>(), n);
    QC_CUDA_RETURN_IF_LAUNCH_ERROR("WidenKernel");
    data = widened.as<float>();
  }

  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  const size_t parts = static_cast<size_t>(chunks * k);
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer part_max, alloc.Allocate(parts * sizeof(float)));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer part_sum, alloc.Allocate(parts * sizeof(double)));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer part_count, alloc.Allocate(parts * sizeof(long long)));
  // No outlier threshold: count nothing (+inf is never exceeded; the counts are not returned).
  const float threshold = m.request.outlier_threshold > 0 ? static_cast<float>(m.request.outlier_threshold) : INFINITY;
  ColumnPartialsKernel<<<dim3(Blocks(k), static_cast<unsigned>(chunks)), kThreads, 0, stream>>>(
      data, rows, k, threshold, part_max.as<float>(), part_sum.as<double>(), part_count.as<long long>(),
      m.nonfinite.as<int>());
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("ColumnPartialsKernel");
  FoldPartialsKernel<<<Blocks(k), kThreads, 0, stream>>>(chunks, k, part_max.as<float>(), part_sum.as<double>(),
                                                         part_count.as<long long>(), m.abs_max.as<float>(),
                                                         m.abs_sum.as<double>(), m.outlier_count.as<long long>());
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("FoldPartialsKernel");

  if (m.request.hessian) {
    if (k > INT32_MAX || rows > INT32_MAX) return Unimplemented("activation '" + m.input + "' is too large for cuBLAS");
    // X is row-major [rows, k]: column-major it is the k x rows matrix A = Xᵀ, and A Aᵀ = XᵀX.
    const float one = 1.0f, zero = 0.0f;
    QC_CUBLAS_RETURN_IF_ERROR(m.ctx->blas().ssyrk(m.ctx->cublas(), CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N,
                                                  static_cast<int>(k), static_cast<int>(rows), &one, data,
                                                  static_cast<int>(k), &zero, m.window_xtx.as<float>(),
                                                  static_cast<int>(k)));
    AddSymmetricKernel<<<dim3(Blocks(k), static_cast<unsigned>(k)), kThreads, 0, stream>>>(
        k, m.window_xtx.as<float>(), m.hessian.as<double>());
    QC_CUDA_RETURN_IF_LAUNCH_ERROR("AddSymmetricKernel");
  }
  m.rows += rows;
  // The partial buffers (and an uploaded X) go back to the stream-ordered cache on return: the
  // kernels queued above run before any later use of those blocks.
  return Status::Ok();
}

StatusOr<InputStats> DeviceStatsAccumulator::Finish() {
  Impl& m = *impl_;
  const int64_t k = m.k;
  const cudaStream_t stream = m.ctx->stream();
  m.window_xtx.Reset();
  InputStats stats;
  stats.input = m.input;
  stats.k = k;
  stats.rows = m.rows;
  stats.abs_max.resize(k);
  std::vector<double> abs_sum(k);
  std::vector<long long> counts(k);
  int nonfinite = 0;
  QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(stats.abs_max.data(), m.abs_max.data(), k * sizeof(float), cudaMemcpyDeviceToHost, stream));
  QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(abs_sum.data(), m.abs_sum.data(), k * sizeof(double), cudaMemcpyDeviceToHost, stream));
  QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(counts.data(), m.outlier_count.data(), k * sizeof(long long), cudaMemcpyDeviceToHost, stream));
  QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(&nonfinite, m.nonfinite.data(), sizeof(int), cudaMemcpyDeviceToHost, stream));
  if (m.request.hessian) {
    stats.hessian.resize(static_cast<size_t>(k * k));
    QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(stats.hessian.data(), m.hessian.data(), static_cast<size_t>(k * k) * sizeof(double),
                                            cudaMemcpyDeviceToHost, stream));
  }
  QC_RETURN_IF_ERROR(m.ctx->Synchronize());
  m.hessian.Reset();
  if (nonfinite)
    return InvalidArgument("activation '" + m.input + "' holds a non-finite value on a calibration window");
  // As StatsAccumulator::Finish.
  const double rows = static_cast<double>(std::max<int64_t>(m.rows, 1));
  stats.abs_mean.resize(k);
  for (int64_t j = 0; j < k; ++j) stats.abs_mean[j] = abs_sum[j] / rows;
  for (double& h : stats.hessian) h *= 2.0 / rows;
  if (m.request.outlier_threshold > 0) stats.outlier_count.assign(counts.begin(), counts.end());
  return stats;
}

Status ReleaseCachedDeviceMemory(int64_t above_bytes) {
  cuda::CachingAllocator& allocator = cuda::CachingAllocator::Default();
  if (static_cast<int64_t>(allocator.stats().bytes_cached) <= above_bytes) return Status::Ok();
  return allocator.EmptyCache();
}

}  // namespace qc
