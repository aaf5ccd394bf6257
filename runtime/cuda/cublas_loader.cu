// Loading cuBLAS at run time (cublas_loader.h).
#include "runtime/cuda/cublas_loader.h"

#include <dlfcn.h>

#include <mutex>
#include <string>

namespace qc::cuda {
namespace {

struct Loaded {
  CublasApi api;
  Status status;
};

Loaded Load() {
  Loaded out;
  const std::string soname = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
  void* lib = nullptr;
  std::string tried;
  for (const std::string& path : {soname, "/usr/local/cuda/lib64/" + soname, "/usr/local/cuda/lib/" + soname}) {
    lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib) break;
    const char* why = dlerror();
    tried += (tried.empty() ? "" : "; ") + std::string(why ? why : path);
  }
  if (!lib) {
    out.status = FailedPrecondition("cannot load cuBLAS (" + soname + ", part of the CUDA toolkit; put its directory on "
                                    "LD_LIBRARY_PATH): " + tried);
    return out;
  }
  // Never dlclose'd: handles and kernels of the library live until the process ends.
  auto bind = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
    if (!fn && out.status.ok()) out.status = FailedPrecondition(soname + " has no entry point " + name);
  };
  bind(out.api.create, "cublasCreate_v2");
  bind(out.api.destroy, "cublasDestroy_v2");
  bind(out.api.set_stream, "cublasSetStream_v2");
  bind(out.api.set_math_mode, "cublasSetMathMode");
  bind(out.api.sgemm_strided_batched, "cublasSgemmStridedBatched");
  bind(out.api.sgemm, "cublasSgemm_v2");
  bind(out.api.ssyrk, "cublasSsyrk_v2");
  bind(out.api.dtrsm, "cublasDtrsm_v2");
  bind(out.api.dgemm, "cublasDgemm_v2");
  bind(out.api.gemm_strided_batched_ex, "cublasGemmStridedBatchedEx");
  bind(out.api.status_name, "cublasGetStatusName");
  bind(out.api.status_string, "cublasGetStatusString");
  return out;
}

}  // namespace

StatusOr<const CublasApi*> Cublas() {
  static const Loaded loaded = Load();  // thread-safe, once per process
  if (!loaded.status.ok()) return loaded.status;
  return &loaded.api;
}

}  // namespace qc::cuda
