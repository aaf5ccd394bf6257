// Launch attributes of the MatMulNBits kernels: the large dynamic shared memory of the GEMV kernels
// and the blocks that fit per SM. Both depend on the device (cudaFuncSetAttribute acts on the
// current one), so they are set or queried once per (kernel, device), not once per process.
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

/// Blocks of `kernel` (`threads` per block, `dynamic_smem` bytes of dynamic shared memory) that
/// fit on one SM of `info`'s device. Queried once per (kernel, device, threads, shared memory): the
/// query costs microseconds, a decode step makes ~150 calls. 0 when the query fails (cleared from
/// the runtime's error state; the launch itself reports what is wrong).
int BlocksPerSm(const void* kernel, int threads, size_t dynamic_smem, const DeviceInfo& info);

}  // namespace qc::cuda
