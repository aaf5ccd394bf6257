// GPTQ's solver on the GPU (--device cuda): the algorithm of GptqQuantize (gptq_solver.h, the
// spec) with its three costly parts on the device: the Cholesky factor of H^-1 (cuSOLVER's DPOTRF
// and cuBLAS's DTRSM in float64), the per-block column loop (one thread per output column: GPTQ
// never mixes output columns) and the lazy-batch update of the rows after each block (one cuBLAS
// SGEMM). Validation, dead inputs, act-order, damping escalation and groups are PrepareGptq's, so
// act-order, static groups and g_idx behave as on the CPU. Float rounding differs from the CPU
// solver's (summation orders, fused multiply-adds), so a code may differ where a value sits on a
// rounding boundary; results are bit-reproducible on one device.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "formats/status.h"
#include "passes/gptq_solver.h"

namespace qc {

class GptqCudaSolver {
 public:
  /// Its own stream and cuBLAS handle, and cuSOLVER when it loads (without it U is computed on
  /// the host, as the CPU solver does, and every result says so in its notes).
  /// FailedPrecondition without a usable GPU or in a build without CUDA.
  static StatusOr<std::unique_ptr<GptqCudaSolver>> Create();
  ~GptqCudaSolver();

  /// GptqQuantize's contract, on the device.
  StatusOr<GptqResult> Quantize(const std::vector<float>& w, int64_t k, int64_t n, const std::vector<double>& hessian,
                                const GptqSpec& spec);

  /// OutputErrorFromHessian (calibrator.h) on the device, in float64 (cuBLAS DGEMM).
  StatusOr<std::pair<double, double>> OutputEnergies(const std::vector<double>& hessian, int64_t k,
                                                     const std::vector<float>& w, const std::vector<float>& w_hat,
                                                     int64_t n);

  struct Impl;

 private:
  explicit GptqCudaSolver(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace qc
