// cuSOLVER's dense Cholesky, opened with dlopen on first use (as cuBLAS is, cublas_loader.h): only
// the GPTQ solver needs it, and a process that never factors a matrix never maps the library.
#pragma once

#include <cusolverDn.h>

#include "formats/status.h"

namespace qc::cuda {

/// The cuSOLVER entry points the GPTQ solver calls (passes/cuda/gptq_solver_cuda.cu).
struct CusolverApi {
  decltype(&cusolverDnCreate) create = nullptr;
  decltype(&cusolverDnDestroy) destroy = nullptr;
  decltype(&cusolverDnSetStream) set_stream = nullptr;
  decltype(&cusolverDnDpotrf_bufferSize) dpotrf_buffer_size = nullptr;
  decltype(&cusolverDnDpotrf) dpotrf = nullptr;
};

/// The cuSOLVER of this build's toolkit (libcusolver.so.N, N = CUSOLVER_VER_MAJOR: 12 with CUDA
/// 13), searched as Cublas() searches; loaded once per process. FailedPrecondition naming the
/// library when it cannot be loaded (it needs libcublas, libcusparse and libnvJitLink beside it).
StatusOr<const CusolverApi*> Cusolver();

}  // namespace qc::cuda
