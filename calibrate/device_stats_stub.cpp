// DeviceStatsAccumulator in a build without the CUDA backend (device_stats.h).
#ifndef QC_HAVE_CUDA
#include "calibrate/device_stats.h"

namespace qc {

struct DeviceStatsAccumulator::Impl {};
DeviceStatsAccumulator::DeviceStatsAccumulator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceStatsAccumulator::~DeviceStatsAccumulator() = default;
StatusOr<std::unique_ptr<DeviceStatsAccumulator>> DeviceStatsAccumulator::Create(cuda::Context&, std::string, int64_t,
                                                                                 const StatsRequest&) {
  return FailedPrecondition("this qconvert was built without the CUDA backend; use --device cpu");
}
Status DeviceStatsAccumulator::Add(const Tensor&) { return FailedPrecondition("built without CUDA"); }
StatusOr<InputStats> DeviceStatsAccumulator::Finish() { return FailedPrecondition("built without CUDA"); }
Status ReleaseCachedDeviceMemory(int64_t) { return Status::Ok(); }

}  // namespace qc
#endif  // QC_HAVE_CUDA
