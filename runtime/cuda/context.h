// One session's device state: its stream, cuBLAS handle, MatMulNBits scratch, and device tensors.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <memory>
#include <vector>

#include "formats/status.h"
#include "formats/tensor.h"
#include "runtime/cuda/allocator.h"
#include "runtime/cuda/cublas_loader.h"
#include "runtime/cuda/matmul_nbits.h"

namespace qc::cuda {

/// Bits of Context::device_errors(): data a kernel validates on the device (reading it on the host
/// would cost a synchronisation per call, and a captured CUDA graph could not replay that).
enum DeviceError : unsigned {
  kIndexOutOfRange = 1u,      // a Gather / GatherBlockQuantized index outside [-n, n)
  kTokenOutOfVocabulary = 2u,  // a NextTokenNll target outside [0, vocab)
};

/// Every kernel of a session is queued on one stream, so the caching allocator's stream-ordered
/// reuse is safe and no kernel needs its own synchronisation. Not thread-safe (one run at a time,
/// like Session).
class Context {
 public:
  /// FailedPrecondition when there is no usable device.
  static StatusOr<std::unique_ptr<Context>> Create(CachingAllocator& allocator = CachingAllocator::Default());
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  /// The cuBLAS functions (loaded at the first Create).
  const CublasApi& blas() const { return *blas_; }
  CachingAllocator& allocator() { return *allocator_; }
  NBitsWorkspace& nbits_workspace() { return nbits_workspace_; }

  /// An uninitialised device tensor from the caching allocator (Tensor::on_device()).
  StatusOr<Tensor> Empty(DType dtype, Shape shape);
  /// A device copy of a host tensor (queued on the stream; the host bytes may be freed on return).
  /// While a CUDA graph is captured (set_capture_pins), the bytes go through page-locked memory
  /// that `pins` keeps for the graph's replays (a graph cannot copy from pageable memory).
  StatusOr<Tensor> Upload(const Tensor& host);
  void set_capture_pins(std::vector<std::shared_ptr<void>>* pins) { capture_pins_ = pins; }
  /// A host copy of a device tensor; waits for the stream.
  StatusOr<Tensor> Download(const Tensor& device);
  /// Waits for every queued kernel; surfaces asynchronous kernel faults as a Status.
  Status Synchronize();
  /// A device word the kernels OR DeviceError bits into (the output they were computing then holds
  /// zeros or NaN); TakeDeviceErrors waits for the stream, returns the bits and clears them.
  unsigned* device_errors() const { return device_errors_.as<unsigned>(); }
  StatusOr<unsigned> TakeDeviceErrors();
  /// Queues the bits' reset: a run starts clean even when the one before failed before taking them.
  Status ClearDeviceErrors();

 private:
  explicit Context(CachingAllocator& allocator) : allocator_(&allocator), nbits_workspace_(allocator) {}
  static constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;
  CachingAllocator* allocator_;
  NBitsWorkspace nbits_workspace_;
  DeviceBuffer cublas_workspace_;  // outlives cublas_ (destroyed in ~Context)
  DeviceBuffer device_errors_;
  std::shared_ptr<void> device_errors_host_;  // page-locked: the word's copy
  std::vector<std::shared_ptr<void>>* capture_pins_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  const CublasApi* blas_ = nullptr;
};

/// A Status for a failed cuBLAS call.
Status CublasError(cublasStatus_t status, const char* expr, const char* file, int line);

}  // namespace qc::cuda

#define QC_CUBLAS_RETURN_IF_ERROR(expr)                                          \
  do {                                                                           \
    const cublasStatus_t qc_cublas_status_ = (expr);                             \
    if (qc_cublas_status_ != CUBLAS_STATUS_SUCCESS)                              \
      return ::qc::cuda::CublasError(qc_cublas_status_, #expr, __FILE__, __LINE__); \
  } while (0)
