// Launch attributes of the kernels that use more than the default 48 KB of dynamic shared memory
// (the MatMulNBits GEMV kernels). cudaFuncSetAttribute acts on the current device only, so they
// are set once per (kernel, device), not once per process.
#pragma once

#include <cuda_runtime_api.h>

#include "runtime/cuda/device.h"

namespace qc::cuda {

/// Raises `kernel`'s dynamic shared-memory limit on `info`'s device to the opt-in maximum less
/// the kernel's static shared memory, and with `prefer_shared` asks for the largest shared-memory
/// carveout (over L1). Done once per (kernel, device); later calls return the first result. A
/// failure is cleared from the runtime's error state (it is returned, not left to surface at the
/// next launch check).
cudaError_t AllowLargeSharedMemory(const void* kernel, const DeviceInfo& info, bool prefer_shared);

}  // namespace qc::cuda
