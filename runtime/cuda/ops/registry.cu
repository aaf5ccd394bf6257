// The CUDA op table, built once from ops.def.
#include "runtime/cuda/ops/op_kernel.h"

namespace qc::cuda {

#define QC_CUDA_OP(domain, op, fn, host) Status fn(OpContext&);
#include "runtime/cuda/ops/ops.def"
#undef QC_CUDA_OP

const std::vector<OpKernel>& AllOpKernels() {
  static const std::vector<OpKernel> table = {
#define QC_CUDA_OP(domain, op, fn, host) {domain, #op, &fn, host},
#include "runtime/cuda/ops/ops.def"
#undef QC_CUDA_OP
  };
  return table;
}

const OpKernel* FindOpKernel(const std::string& domain, const std::string& op_type) {
  const std::string d = domain == "ai.onnx" ? "" : domain;
  for (const OpKernel& k : AllOpKernels())
    if (d == k.domain && op_type == k.op_type) return &k;
  return nullptr;
}

}  // namespace qc::cuda
