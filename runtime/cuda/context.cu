// The per-session device state (context.h).
#include "runtime/cuda/context.h"

#include <cstring>
#include <string>
#include <utility>

#include "runtime/cuda/cuda_check.h"
#include "runtime/cuda/device.h"
#include "runtime/cuda/pinned_pool.h"

namespace qc::cuda {

Status CublasError(cublasStatus_t status, const char* expr, const char* file, int line) {
  // Only called after a cuBLAS call, so the library is loaded.
  const CublasApi* blas = *Cublas();
  std::string msg = std::string("cuBLAS error ") + blas->status_name(status) + " (" + blas->status_string(status) +
                    ") in " + expr + " at " + file + ":" + std::to_string(line);
  if (status == CUBLAS_STATUS_ALLOC_FAILED) return OutOfRange(std::move(msg));
  if (status == CUBLAS_STATUS_NOT_INITIALIZED || status == CUBLAS_STATUS_ARCH_MISMATCH)
    return FailedPrecondition(std::move(msg));
  return Internal(std::move(msg));
}

StatusOr<std::unique_ptr<Context>> Context::Create(CachingAllocator& allocator) {
  if (DeviceCount() == 0)
    return FailedPrecondition("no CUDA device is usable on this machine (no GPU, no driver, or a driver older than this build's CUDA)");
  QC_ASSIGN_OR_RETURN(const CublasApi* blas, Cublas());
  std::unique_ptr<Context> ctx(new Context(allocator));
  ctx->blas_ = blas;
  QC_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&ctx->stream_, cudaStreamNonBlocking));
  QC_CUBLAS_RETURN_IF_ERROR(blas->create(&ctx->cublas_));
  QC_CUBLAS_RETURN_IF_ERROR(blas->set_stream(ctx->cublas_, ctx->stream_));
  // A workspace of our own (after set_stream, which resets it): cuBLAS then allocates nothing
  // per call, which a captured CUDA graph needs (32 MiB: cuBLAS's own advice for Hopper).
  QC_ASSIGN_OR_RETURN(ctx->cublas_workspace_, allocator.Allocate(kCublasWorkspaceBytes));
  QC_CUBLAS_RETURN_IF_ERROR(blas->set_workspace(ctx->cublas_, ctx->cublas_workspace_.data(), kCublasWorkspaceBytes));
  QC_ASSIGN_OR_RETURN(ctx->device_errors_, allocator.Allocate(sizeof(unsigned)));
  QC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(ctx->device_errors_.data(), 0, sizeof(unsigned), ctx->stream_));
  QC_ASSIGN_OR_RETURN(ctx->device_errors_host_, AllocatePinned(sizeof(unsigned)));
  // Plain fp32 GEMMs (no TF32): the CUDA backend is held to the CPU executor's numbers.
  QC_CUBLAS_RETURN_IF_ERROR(blas->set_math_mode(ctx->cublas_, CUBLAS_DEFAULT_MATH));
  return std::move(ctx);
}

Context::~Context() {
  if (stream_) (void)cudaStreamSynchronize(stream_);
  if (cublas_) (void)blas_->destroy(cublas_);
  if (stream_) (void)cudaStreamDestroy(stream_);
}

StatusOr<Tensor> Context::Empty(DType dtype, Shape shape) {
  const int64_t bytes = DTypeStorageBytes(dtype, NumElements(shape));
  QC_ASSIGN_OR_RETURN(DeviceBuffer buffer, allocator_->Allocate(static_cast<size_t>(bytes)));
  auto holder = std::make_shared<DeviceBuffer>(std::move(buffer));
  void* data = holder->data();
  return Tensor::OnDevice(dtype, std::move(shape), std::shared_ptr<const void>(holder, data), data);
}

StatusOr<Tensor> Context::Upload(const Tensor& host) {
  QC_CHECK(!host.on_device());
  QC_ASSIGN_OR_RETURN(Tensor t, Empty(host.dtype(), host.shape()));
  const size_t bytes = static_cast<size_t>(host.nbytes());
  if (bytes == 0) return t;
  const void* source = host.raw();
  if (capture_pins_ != nullptr) {
    QC_ASSIGN_OR_RETURN(std::shared_ptr<void> pinned, AllocatePinned(bytes));
    std::memcpy(pinned.get(), source, bytes);
    source = pinned.get();
    capture_pins_->push_back(std::move(pinned));
  }
  QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(t.mutable_raw(), source, bytes, cudaMemcpyHostToDevice, stream_));
  return t;
}

StatusOr<Tensor> Context::Download(const Tensor& device) {
  QC_CHECK(device.on_device());
  Tensor t = Tensor::Uninitialized(device.dtype(), device.shape());
  if (device.nbytes() > 0)
    QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(t.mutable_raw(), device.raw(), static_cast<size_t>(device.nbytes()),
                                            cudaMemcpyDeviceToHost, stream_));
  QC_RETURN_IF_ERROR(Synchronize());
  return t;
}

Status Context::Synchronize() {
  QC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return Status::Ok();
}

Status Context::ClearDeviceErrors() {
  QC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(device_errors_.data(), 0, sizeof(unsigned), stream_));
  return Status::Ok();
}

StatusOr<unsigned> Context::TakeDeviceErrors() {
  unsigned* host = static_cast<unsigned*>(device_errors_host_.get());
  QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host, device_errors_.data(), sizeof(unsigned), cudaMemcpyDeviceToHost, stream_));
  QC_RETURN_IF_ERROR(Synchronize());
  const unsigned errors = *host;
  if (errors != 0) QC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(device_errors_.data(), 0, sizeof(unsigned), stream_));
  return errors;
}

}  // namespace qc::cuda
