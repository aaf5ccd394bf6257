// ToolkitLibrary (toolkit_library.h).
#include "runtime/cuda/toolkit_library.h"

#include <dlfcn.h>

namespace qc::cuda {

ToolkitLibrary ToolkitLibrary::Open(const std::string& soname, const std::string& what) {
  ToolkitLibrary out;
  out.soname_ = soname;
  std::string tried;
  for (const std::string& path : {soname, "/usr/local/cuda/lib64/" + soname, "/usr/local/cuda/lib/" + soname}) {
    out.lib_ = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (out.lib_) return out;
    const char* why = dlerror();
    tried += (tried.empty() ? "" : "; ") + std::string(why ? why : path);
  }
  out.status_ = FailedPrecondition("cannot load " + what + " (" + soname +
                                   ", part of the CUDA toolkit; put its directory on LD_LIBRARY_PATH): " + tried);
  return out;
}

void* ToolkitLibrary::Symbol(const char* name) {
  if (!lib_) return nullptr;
  void* fn = dlsym(lib_, name);
  if (!fn && status_.ok()) status_ = FailedPrecondition(soname_ + " has no entry point " + name);
  return fn;
}

}  // namespace qc::cuda
