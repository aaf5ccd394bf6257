// The CUDA devices of this machine: whether there is one, and the properties kernels size by.
#pragma once

#include <cstdint>
#include <string>

#include "formats/status.h"

namespace qc::cuda {

/// Number of usable CUDA devices; 0 (not an error) when there is no device, no driver or a driver
/// too old for this build. Nothing touches the driver before the first call.
int DeviceCount();

/// What launch configurations are sized by, read once per device.
struct DeviceInfo {
  int device = 0;
  std::string name;
  int major = 0, minor = 0;      // compute capability
  int sm_count = 0;              // streaming multiprocessors
  int max_threads_per_sm = 0;
  int64_t l2_bytes = 0;
  int64_t global_memory_bytes = 0;
  int64_t max_shared_per_block = 0;  // without opting in to the larger dynamic limit
  int64_t max_shared_per_block_optin = 0;  // with cudaFuncAttributeMaxDynamicSharedMemorySize
};

/// Properties of the current device (cudaGetDevice), cached after the first call per device.
StatusOr<DeviceInfo> CurrentDeviceInfo();

}  // namespace qc::cuda
