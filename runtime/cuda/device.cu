// The CUDA devices of this machine (device.h).
#include "runtime/cuda/device.h"

#include <array>
#include <mutex>

#include "runtime/cuda/cuda_check.h"

namespace qc::cuda {

Status CudaError(cudaError_t error, const char* expr, const char* file, int line) {
  std::string msg = std::string("CUDA error ") + cudaGetErrorName(error) + " (" + cudaGetErrorString(error) +
                    ") in " + expr + " at " + file + ":" + std::to_string(line);
  switch (error) {
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorNoKernelImageForDevice:
      return FailedPrecondition(std::move(msg));
    case cudaErrorMemoryAllocation:
      return OutOfRange(std::move(msg));
    default:
      return Internal(std::move(msg));
  }
}

int DeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the non-sticky error so later calls start clean
    return 0;
  }
  return n;
}

StatusOr<DeviceInfo> CurrentDeviceInfo() {
  static std::mutex mu;
  static std::array<DeviceInfo, 64> cache;  // index: device ordinal; sm_count 0 = not read yet
  int dev = 0;
  QC_CUDA_RETURN_IF_ERROR(cudaGetDevice(&dev));
  if (dev < 0 || dev >= static_cast<int>(cache.size())) return Internal("device ordinal out of range");
  std::lock_guard<std::mutex> lock(mu);
  DeviceInfo& info = cache[dev];
  if (info.sm_count == 0) {
    cudaDeviceProp p{};
    QC_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&p, dev));
    info.device = dev;
    info.name = p.name;
    info.major = p.major;
    info.minor = p.minor;
    info.sm_count = p.multiProcessorCount;
    info.max_threads_per_sm = p.maxThreadsPerMultiProcessor;
    info.l2_bytes = p.l2CacheSize;
    info.global_memory_bytes = static_cast<int64_t>(p.totalGlobalMem);
    info.max_shared_per_block = static_cast<int64_t>(p.sharedMemPerBlock);
    info.max_shared_per_block_optin = static_cast<int64_t>(p.sharedMemPerBlockOptin);
  }
  return info;
}

}  // namespace qc::cuda
