// CUDA graphs: a stream's queued work captured once and replayed with one launch, which removes
// the host's per-kernel launch cost (CudaExecutor replays a run's thousand kernels this way).
#pragma once

#include <cuda_runtime_api.h>

#include <memory>

#include "formats/status.h"

namespace qc::cuda {

/// An instantiated graph, replayed on a stream. Its kernels address the device memory they were
/// captured with: the caller keeps that memory (and its contents between replays) in place.
class CapturedGraph {
 public:
  /// Starts capturing `stream`: work queued on it is recorded, not run. Relaxed mode: other calls
  /// (cudaMalloc from the caching allocator) stay legal meanwhile; synchronising the stream does
  /// not, and invalidates the capture.
  static Status BeginCapture(cudaStream_t stream);
  /// Ends the capture of `stream` (always call it after BeginCapture succeeded) and instantiates
  /// the graph. FailedPrecondition when the capture was invalidated.
  static StatusOr<std::unique_ptr<CapturedGraph>> EndCapture(cudaStream_t stream);
  ~CapturedGraph();
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;

  /// Queues one replay on `stream`.
  Status Launch(cudaStream_t stream) const;

 private:
  explicit CapturedGraph(cudaGraphExec_t exec) : exec_(exec) {}
  cudaGraphExec_t exec_;
};

}  // namespace qc::cuda
