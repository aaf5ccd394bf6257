// The CUDA kernel interface of the executor: what one step of a device session sees, and the op
// table (ops.def) that maps an op type to its kernel.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "formats/graph.h"
#include "formats/status.h"
#include "formats/tensor.h"
#include "runtime/cuda/context.h"

namespace qc::cuda {

/// Per-step data a kernel keeps across runs (e.g. a MatMulNBits weight in its device layout).
struct OpState {
  virtual ~OpState() = default;
};

/// One execution of one node on the device.
struct OpContext {
  const Node& node;
  /// One entry per node input, nullptr where omitted. On the device, except the inputs the
  /// kernel's `host_inputs` mask names, which are host tensors.
  std::vector<const Tensor*> inputs;
  /// Whether input i is a session constant (the same value every run).
  std::vector<bool> constant;
  /// One entry per node output, to be filled with device (or, for small shape values, host) tensors.
  std::vector<Tensor> outputs;
  int64_t opset = 0;
  Context& cuda;
  /// This step's persistent state (created by the kernel on first use; lives with the session).
  std::unique_ptr<OpState>& state;
  /// Set through Decline(): the kernel does not handle this dtype/shape/attribute and the
  /// executor runs the CPU kernel instead (counted as a fallback, with this reason).
  std::string declined;

  int num_inputs() const { return static_cast<int>(inputs.size()); }
  bool has_input(int i) const { return i < num_inputs() && inputs[i] != nullptr; }
  const Tensor& input(int i) const { return *inputs[i]; }
  bool WantOutput(int i) const {
    return i < static_cast<int>(outputs.size()) && i < static_cast<int>(node.outputs.size()) && !node.outputs[i].empty();
  }
  /// Allocates device output i.
  StatusOr<Tensor*> Output(int i, DType dtype, Shape shape) {
    QC_ASSIGN_OR_RETURN(outputs[i], cuda.Empty(dtype, std::move(shape)));
    return &outputs[i];
  }
  Status Decline(std::string why) {
    declined = std::move(why);
    return Status::Ok();
  }
  Status Error(const std::string& message) const { return InvalidArgument(node.Describe() + ": " + message); }
};

using OpFn = Status (*)(OpContext&);

/// One op's CUDA kernel. `host_inputs` is a bit mask of the inputs read on the host (shape,
/// axes, starts, ...): the executor never uploads those.
struct OpKernel {
  const char* domain;
  const char* op_type;
  OpFn fn;
  uint32_t host_inputs;
};

/// MatMulInteger with the W8A8 epilogue fused (docs/FORMAT.md, "W8A8"): outputs[0] becomes
/// Mul(Mul(Cast<dtype>(MatMulInteger(..)), col), row) for `col` [N] and `row` of the output's
/// shape with a last dim of 1 (the per-channel and per-token scales), both of `dtype` (float32,
/// float16 or bfloat16). float32 is rounded as those three ops; the 16-bit types are computed in
/// float32 and rounded once. Declines other shapes and dtypes; the caller then runs the ops one by one.
Status MatMulIntegerScaledCuda(OpContext& ctx, const Tensor& col, const Tensor& row, DType dtype);

/// The CUDA kernel of an op, or nullptr ("" and "ai.onnx" are the same domain).
const OpKernel* FindOpKernel(const std::string& domain, const std::string& op_type);
/// Every registered CUDA kernel, in table order.
const std::vector<OpKernel>& AllOpKernels();

}  // namespace qc::cuda
