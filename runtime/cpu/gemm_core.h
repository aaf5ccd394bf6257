// Dense row-major GEMM entry points shared by MatMul, Gemm, MatMulNBits, MatMulInteger and Einsum.
#pragma once

#include <cstdint>
#include <string>

namespace qc {

/// C[M,N] = alpha * op(A) * op(B) + beta * C for row-major matrices with leading dimensions
/// lda/ldb/ldc; op(X) is X or X^T. beta == 0 ignores C's old contents (NaNs included).
/// `threaded` allows OpenMP threads inside this one product; pass false when the caller already
/// runs products in parallel, so threads are never nested.
void GemmF32(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
             int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc, bool threaded);
/// Float64 variant of GemmF32 (Eigen, no custom kernel).
void GemmF64(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
             int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc, bool threaded);

/// Tests only: makes GemmF32 use the "avx512", "avx2" or "eigen" kernel, or the detected one
/// again ("auto"). Returns false (changing nothing) when this CPU cannot run the named kernel.
bool ForceGemmKernelForTesting(const std::string& name);

/// Number of OpenMP threads kernels may use (omp_get_max_threads, at least 1).
int KernelThreads();

}  // namespace qc
