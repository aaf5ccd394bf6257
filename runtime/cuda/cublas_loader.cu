// Loading cuBLAS at run time (cublas_loader.h).
#include "runtime/cuda/cublas_loader.h"

#include <string>

#include "runtime/cuda/toolkit_library.h"

namespace qc::cuda {
namespace {

struct Loaded {
  CublasApi api;
  Status status;
};

Loaded Load() {
  Loaded out;
  ToolkitLibrary lib = ToolkitLibrary::Open("libcublas.so." + std::to_string(CUBLAS_VER_MAJOR), "cuBLAS");
  lib.Bind(out.api.create, "cublasCreate_v2");
  lib.Bind(out.api.destroy, "cublasDestroy_v2");
  lib.Bind(out.api.set_stream, "cublasSetStream_v2");
  lib.Bind(out.api.set_math_mode, "cublasSetMathMode");
  lib.Bind(out.api.set_workspace, "cublasSetWorkspace_v2");
  lib.Bind(out.api.sgemm_strided_batched, "cublasSgemmStridedBatched");
  lib.Bind(out.api.sgemm, "cublasSgemm_v2");
  lib.Bind(out.api.ssyrk, "cublasSsyrk_v2");
  lib.Bind(out.api.dtrsm, "cublasDtrsm_v2");
  lib.Bind(out.api.dgemm, "cublasDgemm_v2");
  lib.Bind(out.api.gemm_strided_batched_ex, "cublasGemmStridedBatchedEx");
  lib.Bind(out.api.status_name, "cublasGetStatusName");
  lib.Bind(out.api.status_string, "cublasGetStatusString");
  out.status = lib.status();
  return out;
}

}  // namespace

StatusOr<const CublasApi*> Cublas() {
  static const Loaded loaded = Load();  // thread-safe, once per process
  if (!loaded.status.ok()) return loaded.status;
  return &loaded.api;
}

}  // namespace qc::cuda
