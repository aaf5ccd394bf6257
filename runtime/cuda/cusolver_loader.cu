// Loading cuSOLVER at run time (cusolver_loader.h).
#include "runtime/cuda/cusolver_loader.h"

#include <dlfcn.h>

#include <string>
#include <type_traits>

namespace qc::cuda {
namespace {

struct Loaded {
  CusolverApi api;
  Status status;
};

Loaded Load() {
  Loaded out;
  const std::string soname = "libcusolver.so." + std::to_string(CUSOLVER_VER_MAJOR);
  void* lib = nullptr;
  std::string tried;
  for (const std::string& path : {soname, "/usr/local/cuda/lib64/" + soname, "/usr/local/cuda/lib/" + soname}) {
    lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib) break;
    const char* why = dlerror();
    tried += (tried.empty() ? "" : "; ") + std::string(why ? why : path);
  }
  if (!lib) {
    out.status = FailedPrecondition("cannot load cuSOLVER (" + soname + ", part of the CUDA toolkit; put its directory on "
                                    "LD_LIBRARY_PATH): " + tried);
    return out;
  }
  // Never dlclose'd, like cuBLAS.
  auto bind = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
    if (!fn && out.status.ok()) out.status = FailedPrecondition(soname + " has no entry point " + name);
  };
  bind(out.api.create, "cusolverDnCreate");
  bind(out.api.destroy, "cusolverDnDestroy");
  bind(out.api.set_stream, "cusolverDnSetStream");
  bind(out.api.dpotrf_buffer_size, "cusolverDnDpotrf_bufferSize");
  bind(out.api.dpotrf, "cusolverDnDpotrf");
  return out;
}

}  // namespace

StatusOr<const CusolverApi*> Cusolver() {
  static const Loaded loaded = Load();  // thread-safe, once per process
  if (!loaded.status.ok()) return loaded.status;
  return &loaded.api;
}

}  // namespace qc::cuda
