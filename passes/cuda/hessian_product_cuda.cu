// HessianProductCuda (passes/hessian_product_cuda.h): H resident on the device, products by cuBLAS.
#include <cstdint>
#include <limits>
#include <string>

#include "passes/hessian_product_cuda.h"
#include "runtime/cuda/context.h"
#include "runtime/cuda/cuda_check.h"

namespace qc {
namespace {

constexpr int kThreads = 256;

// out[r] = Σ_j d[r, j] p[r, j] in float64: each thread a strided partial, then a fixed-shape tree
// (the same sum for the same inputs on every run).
__global__ void RowDotKernel(int64_t k, const float* __restrict__ d, const float* __restrict__ p, double* __restrict__ out) {
  __shared__ double partial[kThreads];
  const int64_t r = blockIdx.x;
  double s = 0;
  for (int64_t j = threadIdx.x; j < k; j += kThreads) s += static_cast<double>(d[r * k + j]) * p[r * k + j];
  partial[threadIdx.x] = s;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) partial[threadIdx.x] += partial[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[r] = partial[0];
}

}  // namespace

struct HessianProductCuda::Impl {
  std::unique_ptr<cuda::Context> ctx;
  cuda::DeviceBuffer h;
  int64_t k = 0;

  StatusOr<cuda::DeviceBuffer> Allocate(size_t bytes) { return ctx->allocator().Allocate(std::max<size_t>(bytes, 1)); }

  // dh [rows, k] = d [rows, k] · H on the device; d is copied up into *d_dev.
  Status Product(const float* d, int64_t rows, cuda::DeviceBuffer* d_dev, cuda::DeviceBuffer* dh) {
    if (k == 0) return FailedPrecondition("HessianProductCuda: no Hessian set");
    if (rows > std::numeric_limits<int>::max() / 2) return Unimplemented("HessianProductCuda: too many rows for cuBLAS");
    const size_t count = static_cast<size_t>(rows) * static_cast<size_t>(k);
    QC_ASSIGN_OR_RETURN(*d_dev, Allocate(count * sizeof(float)));
    QC_ASSIGN_OR_RETURN(*dh, Allocate(count * sizeof(float)));
    QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_dev->data(), d, count * sizeof(float), cudaMemcpyHostToDevice, ctx->stream()));
    // Row-major [rows, k] is column-major [k, rows]: (d H)ᵀ = Hᵀ dᵀ = H dᵀ, H symmetric.
    const float one = 1.0f, zero = 0.0f;
    const int ki = static_cast<int>(k), ri = static_cast<int>(rows);
    QC_CUBLAS_RETURN_IF_ERROR(ctx->blas().sgemm(ctx->cublas(), CUBLAS_OP_N, CUBLAS_OP_N, ki, ri, ki, &one, h.as<float>(), ki,
                                                d_dev->as<float>(), ki, &zero, dh->as<float>(), ki));
    return Status::Ok();
  }
};

HessianProductCuda::HessianProductCuda(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HessianProductCuda::~HessianProductCuda() = default;

StatusOr<std::unique_ptr<HessianProductCuda>> HessianProductCuda::Create() {
  auto impl = std::make_unique<Impl>();
  QC_ASSIGN_OR_RETURN(impl->ctx, cuda::Context::Create());
  return std::unique_ptr<HessianProductCuda>(new HessianProductCuda(std::move(impl)));
}

Status HessianProductCuda::SetHessian(const std::vector<float>& h, int64_t k) {
  Impl& m = *impl_;
  if (k <= 0 || static_cast<int64_t>(h.size()) != k * k)
    return InvalidArgument("HessianProductCuda: H has " + std::to_string(h.size()) + " values, not " + std::to_string(k) + "^2");
  if (k > std::numeric_limits<int>::max() / 2) return Unimplemented("HessianProductCuda: K too large for cuBLAS");
  QC_RETURN_IF_ERROR(m.ctx->Synchronize());  // products queued with the previous H have finished
  m.h = cuda::DeviceBuffer();
  QC_ASSIGN_OR_RETURN(m.h, m.Allocate(h.size() * sizeof(float)));
  QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(m.h.data(), h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice, m.ctx->stream()));
  m.k = k;
  return Status::Ok();
}

Status HessianProductCuda::Multiply(const float* d, int64_t rows, float* out) {
  Impl& m = *impl_;
  if (rows == 0) return Status::Ok();
  cuda::DeviceBuffer d_dev, dh;
  QC_RETURN_IF_ERROR(m.Product(d, rows, &d_dev, &dh));
  QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out, dh.data(), static_cast<size_t>(rows * m.k) * sizeof(float),
                                          cudaMemcpyDeviceToHost, m.ctx->stream()));
  return m.ctx->Synchronize();  // out is complete; the buffers go back to the cache after this
}

StatusOr<double> HessianProductCuda::Quadratic(const float* d, int64_t rows) {
  Impl& m = *impl_;
  if (rows == 0) return 0.0;
  cuda::DeviceBuffer d_dev, dh;
  QC_RETURN_IF_ERROR(m.Product(d, rows, &d_dev, &dh));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer sums, m.Allocate(static_cast<size_t>(rows) * sizeof(double)));
  RowDotKernel<<<static_cast<unsigned>(rows), kThreads, 0, m.ctx->stream()>>>(m.k, d_dev.as<float>(), dh.as<float>(),
                                                                              sums.as<double>());
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("RowDotKernel");
  std::vector<double> host(rows);
  QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host.data(), sums.data(), host.size() * sizeof(double), cudaMemcpyDeviceToHost,
                                          m.ctx->stream()));
  QC_RETURN_IF_ERROR(m.ctx->Synchronize());
  double total = 0;
  for (double v : host) total += v;
  return total;
}

}  // namespace qc
