// cuBLAS, opened with dlopen when the first CUDA session starts. Linked normally, libcublas and
// libcublasLt are loaded and relocated at every qconvert start: ~220 MB of resident memory in
// every process, CPU-only conversions and evaluations included.
#pragma once

#include <cublas_v2.h>

#include "formats/status.h"

namespace qc::cuda {

/// The cuBLAS entry points the CUDA backend calls.
struct CublasApi {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetMathMode) set_math_mode = nullptr;
  decltype(&cublasSetWorkspace_v2) set_workspace = nullptr;
  decltype(&cublasSgemmStridedBatched) sgemm_strided_batched = nullptr;
  // Calibration statistics and the GPTQ solver (calibrate/cuda, passes/cuda).
  decltype(&cublasSgemm_v2) sgemm = nullptr;
  decltype(&cublasSsyrk_v2) ssyrk = nullptr;
  decltype(&cublasDtrsm_v2) dtrsm = nullptr;
  decltype(&cublasDgemm_v2) dgemm = nullptr;
  /// float16/bfloat16 GEMMs with float32 accumulation (CUBLAS_COMPUTE_32F). Spelled out: the
  /// header overloads the name with an inline cudaDataType-compute variant.
  cublasStatus_t (*gemm_strided_batched_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*, const void*,
                                            cudaDataType, int, long long, const void*, cudaDataType, int, long long, const void*, void*,
                                            cudaDataType, int, long long, int, cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
  decltype(&cublasGetStatusName) status_name = nullptr;
  decltype(&cublasGetStatusString) status_string = nullptr;
};

/// The cuBLAS of this build's CUDA major version (libcublas.so.N through the library search path,
/// then /usr/local/cuda/lib64 and /usr/local/cuda/lib), loaded once per process. A
/// FailedPrecondition naming the library when it cannot be found or lacks an entry point.
StatusOr<const CublasApi*> Cublas();

}  // namespace qc::cuda
