// Activation statistics accumulated on the GPU (sequential calibration with --device cuda): the
// same InputStats as the CPU's accumulator in calibrator.cpp, which is the spec. Per window XᵀX is
// computed in float32 (cuBLAS SSYRK, as the CPU computes it through its float32 GEMM) and added to
// a float64 H on the device; abs max, the float64 sum of |x| and the outlier counts are reduced per
// column in a fixed order, so a run is bit-reproducible on one device. Nothing but the finished
// statistics comes back to the host.
#pragma once

#include <memory>
#include <string>

#include "calibrate/calibrator.h"
#include "formats/status.h"
#include "formats/tensor.h"

namespace qc {
namespace cuda {
class Context;
}

class DeviceStatsAccumulator {
 public:
  /// Device buffers for an input of width `k` on the stream of `context` (the calibration
  /// session's: the activations it adds are ordered with the runs that computed them).
  /// FailedPrecondition in a build without CUDA.
  static StatusOr<std::unique_ptr<DeviceStatsAccumulator>> Create(cuda::Context& context, std::string input, int64_t k,
                                                                  const StatsRequest& request);
  ~DeviceStatsAccumulator();

  /// Adds one window's X: a float32, float16 or bfloat16 tensor [..., k] (16-bit values widened
  /// exactly), on the device or the host (uploaded).
  Status Add(const Tensor& x);
  /// The statistics, downloaded; frees the device buffers. InvalidArgument when an activation was
  /// not finite (as the CPU accumulator reports it, but after the last window).
  StatusOr<InputStats> Finish();

  struct Impl;

 private:
  explicit DeviceStatsAccumulator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Returns the device allocator's cached free blocks to the driver (cudaFree; waits for the
/// device) when they exceed `above_bytes`. Sequential calibration calls it before and after each
/// group's visitor (the solver): the forward passes, the statistics and the solver use blocks of
/// different sizes, and a cache holding the largest of each would hold more than any one phase
/// needs. Below the threshold the blocks are kept (each cudaFree, and the cudaMalloc that later
/// replaces it, costs time). A no-op without CUDA.
Status ReleaseCachedDeviceMemory(int64_t above_bytes = int64_t{256} << 20);

}  // namespace qc
