// A CUDA toolkit library opened with dlopen (cublas_loader.h, cusolver_loader.h): searched by
// soname on the loader's path, then in /usr/local/cuda/lib64 and /usr/local/cuda/lib. Never
// closed: handles and kernels of the library live until the process ends.
#pragma once

#include <string>

#include "formats/status.h"

namespace qc::cuda {

class ToolkitLibrary {
 public:
  /// Opens `soname`; `what` names it in messages ("cuBLAS"). A failure is kept in status().
  static ToolkitLibrary Open(const std::string& soname, const std::string& what);

  /// Binds `fn` to the entry point `name`; the first one missing becomes status().
  template <typename Fn>
  void Bind(Fn*& fn, const char* name) {
    fn = reinterpret_cast<Fn*>(Symbol(name));
  }
  /// Ok once the library is open and every bound entry point was found.
  const Status& status() const { return status_; }

 private:
  void* Symbol(const char* name);
  void* lib_ = nullptr;
  std::string soname_;
  Status status_;
};

}  // namespace qc::cuda
