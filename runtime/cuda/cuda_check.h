// Error checking for the CUDA runtime API: every call and every kernel launch becomes a Status.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "formats/status.h"

namespace qc::cuda {

/// A Status for a failed CUDA call: which call, where, and the runtime's own words. No device or
/// an insufficient driver is a FailedPrecondition (the machine cannot run it), out of device memory
/// an OutOfRange (the problem is too large for the card), anything else Internal.
Status CudaError(cudaError_t error, const char* expr, const char* file, int line);

}  // namespace qc::cuda

/// Returns a Status from the enclosing function when the CUDA runtime call `expr` fails.
#define QC_CUDA_RETURN_IF_ERROR(expr)                                                   \
  do {                                                                                  \
    const cudaError_t qc_cuda_error_ = (expr);                                          \
    if (qc_cuda_error_ != cudaSuccess)                                                  \
      return ::qc::cuda::CudaError(qc_cuda_error_, #expr, __FILE__, __LINE__);          \
  } while (0)

/// Checks the kernel launch just made (bad configuration, missing kernel image, an earlier sticky
/// error). Asynchronous faults inside the kernel surface at the next synchronising call.
#define QC_CUDA_RETURN_IF_LAUNCH_ERROR(kernel_name)                                     \
  do {                                                                                  \
    const cudaError_t qc_cuda_error_ = cudaGetLastError();                              \
    if (qc_cuda_error_ != cudaSuccess)                                                  \
      return ::qc::cuda::CudaError(qc_cuda_error_, "launch of " kernel_name, __FILE__, __LINE__); \
  } while (0)
