// The CPU kernel interface: a kernel reads its node's input tensors and fills its outputs.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "formats/graph.h"
#include "formats/status.h"
#include "formats/tensor.h"

namespace qc {

/// Everything one node execution sees. Kernels never mutate inputs (they may be shared).
struct KernelContext {
  const Node& node;
  /// One entry per node input; nullptr where an optional input is omitted ("" name).
  std::vector<const Tensor*> inputs;
  /// One entry per node output, filled by the kernel (an output left undefined is an error
  /// unless its name is "").
  std::vector<Tensor> outputs;
  /// Opset version of the node's domain, for ops whose semantics changed across opsets.
  int64_t opset = 0;
  /// Runs a subgraph (If/Loop bodies) with the outer scope visible; set by the executor.
  std::function<StatusOr<std::vector<Tensor>>(const Graph&)> run_subgraph;

  int num_inputs() const { return static_cast<int>(inputs.size()); }
  bool has_input(int i) const { return i < num_inputs() && inputs[i] != nullptr; }
  const Tensor& input(int i) const { return *inputs[i]; }
  int num_outputs() const { return static_cast<int>(outputs.size()); }

  /// An InvalidArgument status that names the node: "node 'x' (Op): message".
  Status Error(const std::string& message) const { return InvalidArgument(node.Describe() + ": " + message); }
  Status UnsupportedDType(DType t) const {
    return Unimplemented(node.Describe() + ": unsupported input dtype " + DTypeName(t));
  }
  /// Checks the number of present inputs lies in [min, max].
  Status ExpectInputs(int min, int max) const;
};

using KernelFn = Status (*)(KernelContext&);

/// The kernels implementing one op. `reference` is the scalar numeric spec; `fast` (optional)
/// must agree with it within float rounding and is what the executor uses by default.
struct OpKernels {
  const char* domain;
  const char* op_type;
  KernelFn reference;
  KernelFn fast;  // nullptr: the reference kernel is also the fast one
};

/// Looks an op up in the registry ("" and "ai.onnx" are the same domain).
const OpKernels* FindOpKernels(const std::string& domain, const std::string& op_type);
/// Every registered op, in registry order.
const std::vector<OpKernels>& AllOpKernels();

}  // namespace qc
