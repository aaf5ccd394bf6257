// HessianProductCuda in a build without the CUDA backend (hessian_product_cuda.h).
#ifndef QC_HAVE_CUDA
#include "passes/hessian_product_cuda.h"

namespace qc {

struct HessianProductCuda::Impl {};
HessianProductCuda::HessianProductCuda(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HessianProductCuda::~HessianProductCuda() = default;
StatusOr<std::unique_ptr<HessianProductCuda>> HessianProductCuda::Create() {
  return FailedPrecondition("this qconvert was built without the CUDA backend; use --device cpu");
}
Status HessianProductCuda::SetHessian(const std::vector<float>&, int64_t) { return FailedPrecondition("built without CUDA"); }
Status HessianProductCuda::Multiply(const float*, int64_t, float*) { return FailedPrecondition("built without CUDA"); }
StatusOr<double> HessianProductCuda::Quadratic(const float*, int64_t) { return FailedPrecondition("built without CUDA"); }

}  // namespace qc
#endif  // QC_HAVE_CUDA
