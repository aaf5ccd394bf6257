// GptqCudaSolver in a build without the CUDA backend (gptq_solver_cuda.h).
#ifndef QC_HAVE_CUDA
#include "passes/gptq_solver_cuda.h"

namespace qc {

struct GptqCudaSolver::Impl {};
GptqCudaSolver::GptqCudaSolver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GptqCudaSolver::~GptqCudaSolver() = default;
StatusOr<std::unique_ptr<GptqCudaSolver>> GptqCudaSolver::Create() {
  return FailedPrecondition("this qconvert was built without the CUDA backend; use --device cpu");
}
StatusOr<GptqResult> GptqCudaSolver::Quantize(const std::vector<float>&, int64_t, int64_t, const std::vector<double>&,
                                              const GptqSpec&) {
  return FailedPrecondition("built without CUDA");
}
StatusOr<std::pair<double, double>> GptqCudaSolver::OutputEnergies(const std::vector<double>&, int64_t,
                                                                   const std::vector<float>&, const std::vector<float>&,
                                                                   int64_t) {
  return FailedPrecondition("built without CUDA");
}

}  // namespace qc
#endif  // QC_HAVE_CUDA
