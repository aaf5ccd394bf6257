// The CUDA side of Session (SessionOptions::device = kCuda): runs a compiled Plan's steps on the
// GPU. The plan (constant folding, fusions, topological steps, liveness) is the CPU executor's;
// this adds where each value lives.
//
// Constants that a CUDA kernel reads are uploaded once, at creation, and stay on the device.
// Activations live in device buffers from the caching allocator and are freed after their last
// reader, as on the CPU. Each step runs:
//   - its CUDA kernel (runtime/cuda/ops/ops.def), with the inputs it reads on the host (shapes,
//     axes, starts) kept there;
//   - or, for the view ops (Reshape, Squeeze, Shape, ...), its CPU kernel, which only touches shapes;
//   - or, when every input is on the host and small (shape arithmetic on int64), its CPU kernel;
//   - or, when the op has no CUDA kernel or the kernel declines the dtype/shape, its CPU kernel
//     with explicit copies: a fallback, counted per op type in Summary() so gaps are visible.
// A value copied to the other side is kept there too (a mirror) until the value is freed.
// With SessionOptions::compute_dtype float16/bfloat16 the plan is that of the rewritten graph
// (runtime/float_precision.h) and the kernels take those types; a host step or fallback whose CPU
// kernel has no 16-bit path runs it on widened inputs (runtime/cpu/half_widening.h).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "formats/status.h"
#include "formats/tensor.h"
#include "runtime/executor.h"

namespace qc {

class Plan;
class CudaExecutor;
namespace cuda {
class Context;
}

/// The device side of one incremental run (an Execution of a kCuda session, and each
/// CudaExecutor::Run): the other-side copies of its frame's values, the steps a fused epilogue
/// already did, the slots replaced through Execution::SetValue, and how far it ran. Registered with
/// its executor while alive, so that streamed constants (SessionOptions::stream_constants) are freed
/// once every live run has passed their last reader.
struct CudaRunState {
  ~CudaRunState();
  const CudaExecutor* executor = nullptr;
  std::vector<Tensor> mirror;
  std::vector<char> skip;
  std::vector<char> overridden;
  int cursor = 0;
};

/// The process-wide device allocator's counters (runtime/cuda/allocator.h); zeros without CUDA or
/// before the first device allocation.
struct CudaMemoryStats {
  int64_t bytes_in_use = 0;
  int64_t peak_bytes_in_use = 0;
  int64_t bytes_cached = 0;
  int64_t pinned_host_bytes = 0;  // page-locked host memory for parked activations (kept for reuse)
};
CudaMemoryStats CudaMemory();
/// Diagnostics, process-wide: every device block the allocator hands out from now on is first
/// filled with NaN bytes (cuda::CachingAllocator::set_poison), so reads of memory nothing wrote
/// show as NaN. Slow (a device synchronisation per allocation). FailedPrecondition without CUDA.
Status PoisonDeviceAllocations();

class CudaExecutor {
 public:
  /// Creates the device context (stream, cuBLAS) and uploads the constants the CUDA kernels read.
  /// FailedPrecondition when the build has no CUDA backend or the machine no usable GPU.
  static StatusOr<std::unique_ptr<CudaExecutor>> Create(const Plan& plan, const Graph& graph, const SessionOptions& options);
  ~CudaExecutor();

  /// Runs every step of the plan. `frame` holds the feeds and constants on the host (as
  /// Session::BindFeeds makes it); on return the `wanted` output slots hold host tensors and the
  /// plan's other outputs are dropped, never copied (perplexity asks for the NLLs, not the logits).
  Status Run(std::vector<Tensor>& frame, const std::vector<int>& wanted) const;
  /// Incremental runs (Session::Start with --device cuda). Begin registers a run over `slots`
  /// frame slots; RunSteps executes its steps [run.cursor, end) on the frame as Run does (values
  /// stay where their kernels put them: device tensors, or host tensors for host steps and
  /// fallbacks), then frees the streamed constants no live run still needs.
  std::unique_ptr<CudaRunState> Begin(size_t slots) const;
  Status RunSteps(std::vector<Tensor>& frame, CudaRunState& run, int end) const;
  /// Moves the run's activations that live on the device to host memory (their device memory is
  /// freed; the steps that read them next upload them again). Constants and SetValue
  /// replacements stay where they are.
  Status Park(std::vector<Tensor>& frame, CudaRunState& run) const;
  /// Device bytes the run's activations hold (not constants, not SetValue replacements).
  int64_t DeviceBytes(const std::vector<Tensor>& frame, const CudaRunState& run) const;
  /// Copies between host and device on the session's stream (Download waits for it).
  StatusOr<Tensor> Upload(const Tensor& host) const;
  StatusOr<Tensor> Download(const Tensor& device) const;
  /// The session's stream, cuBLAS handle and allocator, for device work ordered with its runs
  /// (calibration statistics).
  cuda::Context& context() const;
  /// Per-op timings (each step synchronised) when SessionOptions::profile is set.
  std::vector<OpProfile> Profile() const;
  /// Fallback ops and host/device copies, one line each.
  std::vector<std::string> Summary() const;

  struct Impl;

 private:
  friend struct CudaRunState;
  explicit CudaExecutor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace qc
