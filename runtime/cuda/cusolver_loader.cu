// Loading cuSOLVER at run time (cusolver_loader.h).
#include "runtime/cuda/cusolver_loader.h"

#include <string>

#include "runtime/cuda/toolkit_library.h"

namespace qc::cuda {
namespace {

struct Loaded {
  CusolverApi api;
  Status status;
};

Loaded Load() {
  Loaded out;
  ToolkitLibrary lib = ToolkitLibrary::Open("libcusolver.so." + std::to_string(CUSOLVER_VER_MAJOR), "cuSOLVER");
  lib.Bind(out.api.create, "cusolverDnCreate");
  lib.Bind(out.api.destroy, "cusolverDnDestroy");
  lib.Bind(out.api.set_stream, "cusolverDnSetStream");
  lib.Bind(out.api.dpotrf_buffer_size, "cusolverDnDpotrf_bufferSize");
  lib.Bind(out.api.dpotrf, "cusolverDnDpotrf");
  out.status = lib.status();
  return out;
}

}  // namespace

StatusOr<const CusolverApi*> Cusolver() {
  static const Loaded loaded = Load();  // thread-safe, once per process
  if (!loaded.status.ok()) return loaded.status;
  return &loaded.api;
}

}  // namespace qc::cuda
