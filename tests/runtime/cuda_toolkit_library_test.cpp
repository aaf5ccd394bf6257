// ToolkitLibrary (runtime/cuda/toolkit_library.h), the dlopen behind Cublas() and Cusolver(): the
// search, entry points and the messages when either is missing. Needs no GPU (libm stands in).
#include "runtime/cuda/toolkit_library.h"

#include <gtest/gtest.h>

#include <cmath>

#include "runtime/cuda/cublas_loader.h"
#include "runtime/cuda/cusolver_loader.h"

namespace qc::cuda {
namespace {

TEST(ToolkitLibrary, BindsEntryPoints) {
  ToolkitLibrary lib = ToolkitLibrary::Open("libm.so.6", "libm");
  double (*cosine)(double) = nullptr;
  lib.Bind(cosine, "cos");
  ASSERT_TRUE(lib.status().ok()) << lib.status().ToString();
  ASSERT_NE(cosine, nullptr);
  EXPECT_EQ(cosine(0.0), 1.0);
}

TEST(ToolkitLibrary, Negative_MissingEntryPointIsNamed) {
  ToolkitLibrary lib = ToolkitLibrary::Open("libm.so.6", "libm");
  double (*fn)(double) = nullptr;
  lib.Bind(fn, "qc_no_such_function");
  lib.Bind(fn, "qc_second_missing");
  EXPECT_EQ(fn, nullptr);
  EXPECT_EQ(lib.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(lib.status().message().find("libm.so.6 has no entry point qc_no_such_function"), std::string::npos)
      << "the first missing one";
}

TEST(ToolkitLibrary, Negative_MissingLibraryIsNamed) {
  ToolkitLibrary lib = ToolkitLibrary::Open("libqc_no_such_library.so.1", "NoSuchLib");
  double (*fn)(double) = nullptr;
  lib.Bind(fn, "cos");
  EXPECT_EQ(fn, nullptr);
  EXPECT_EQ(lib.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(lib.status().message().find("cannot load NoSuchLib (libqc_no_such_library.so.1"), std::string::npos)
      << lib.status().message();
}

// The toolkit's cuBLAS and cuSOLVER load with every entry point we call (no device needed).
TEST(ToolkitLibrary, CublasAndCusolverHaveEveryEntryPoint) {
  auto blas = Cublas();
  if (!blas.ok() && blas.status().message().find("cannot load") != std::string::npos)
    GTEST_SKIP() << blas.status().message();
  ASSERT_TRUE(blas.ok()) << blas.status().ToString();
  EXPECT_NE((*blas)->gemm_strided_batched_ex, nullptr);
  auto solver = Cusolver();
  if (!solver.ok() && solver.status().message().find("cannot load") != std::string::npos)
    GTEST_SKIP() << solver.status().message();
  ASSERT_TRUE(solver.ok()) << solver.status().ToString();
  EXPECT_NE((*solver)->dpotrf, nullptr);
}

}  // namespace
}  // namespace qc::cuda
