// The op table: every CPU kernel, registered once from the ops_*.def X-macro files.
#include "runtime/cpu/kernel.h"

namespace qc {

// Declare every kernel function named in the tables.
#define QC_OP(domain, op, ref) Status ref(KernelContext&);
#define QC_OP_FAST(domain, op, ref, fast) \
  Status ref(KernelContext&);             \
  Status fast(KernelContext&);
#include "runtime/cpu/ops_elementwise.def"
#include "runtime/cpu/ops_shape.def"
#include "runtime/cpu/ops_nn.def"
#undef QC_OP
#undef QC_OP_FAST

const std::vector<OpKernels>& AllOpKernels() {
  static const std::vector<OpKernels> table = {
#define QC_OP(domain, op, ref) {domain, #op, &ref, nullptr},
#define QC_OP_FAST(domain, op, ref, fast) {domain, #op, &ref, &fast},
#include "runtime/cpu/ops_elementwise.def"
#include "runtime/cpu/ops_shape.def"
#include "runtime/cpu/ops_nn.def"
#undef QC_OP
#undef QC_OP_FAST
  };
  return table;
}

const OpKernels* FindOpKernels(const std::string& domain, const std::string& op_type) {
  const std::string d = domain == "ai.onnx" ? "" : domain;
  for (const OpKernels& k : AllOpKernels())
    if (d == k.domain && op_type == k.op_type) return &k;
  return nullptr;
}

Status KernelContext::ExpectInputs(int min, int max) const {
  if (num_inputs() < min || num_inputs() > max || (min > 0 && !has_input(0)))
    return Error("expected " + std::to_string(min) + ".." + std::to_string(max) + " inputs, got " +
                 std::to_string(num_inputs()));
  return Status::Ok();
}

}  // namespace qc
