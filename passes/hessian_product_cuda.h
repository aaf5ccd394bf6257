// D·H on the GPU for AWQ's searches (--device cuda): the scale search scores every candidate
// scale by tr(Δᵀ H Δ) and the clip search needs H δ for every output column; both are products
// of many error matrices with one symmetric Hessian, which stays on the device while cuBLAS SGEMM
// multiplies (plain float32, no TF32). The products equal GemmF32's up to summation order.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "formats/status.h"

namespace qc {

class HessianProductCuda {
 public:
  /// Its own stream and cuBLAS handle. FailedPrecondition without a usable GPU or in a build
  /// without CUDA.
  static StatusOr<std::unique_ptr<HessianProductCuda>> Create();
  ~HessianProductCuda();

  /// Uploads H [k, k] (symmetric, row-major), replacing the one before.
  Status SetHessian(const std::vector<float>& h, int64_t k);
  /// out [rows, k] = d [rows, k] · H (row-major; GemmF32(false, false, rows, k, k, 1, d, k, H, k,
  /// 0, out, k) on the host).
  Status Multiply(const float* d, int64_t rows, float* out);
  /// Σ_r d_r H d_rᵀ over the rows of d [rows, k] (= Σ d ∘ (d · H)): for d = Δᵀ, tr(Δᵀ H Δ).
  /// Each row's sum in float64 on the device, the rows added in order on the host.
  StatusOr<double> Quadratic(const float* d, int64_t rows);

  struct Impl;

 private:
  explicit HessianProductCuda(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace qc
