// `qconvert inspect`: a summary of a model and its quantizable linear layers.
#include <cstdio>
#include <map>

#include "converter/commands.h"
#include "formats/linear_layers.h"
#include "formats/onnx_reader.h"
#include "passes/merged_decoder.h"

namespace qc {
namespace {

std::string DescribeValue(const ValueInfo& v) {
  std::string s = v.name + ": " + DTypeName(v.dtype);
  if (v.has_shape) {
    s += " [";
    for (size_t i = 0; i < v.shape.size(); ++i) {
      const Dim& d = v.shape[i];
      s += (i ? ", " : "") + (!d.param.empty() ? d.param : d.value >= 0 ? std::to_string(d.value) : std::string("?"));
    }
    s += "]";
  }
  return s;
}

}  // namespace

Status RunInspect(const InspectOptions& options) {
  QC_ASSIGN_OR_RETURN(Model model, ReadOnnxModel(options.model));
  const Graph& g = model.graph;
  std::printf("model: %s\n", options.model.c_str());
  std::printf("producer: %s %s, ir_version %lld\n", model.producer_name.c_str(), model.producer_version.c_str(),
              static_cast<long long>(model.ir_version));
  std::printf("opsets:");
  for (const auto& o : model.opset_imports)
    std::printf(" %s=%lld", o.domain.empty() ? "ai.onnx" : o.domain.c_str(), static_cast<long long>(o.version));
  std::printf("\ninputs:\n");
  for (const auto& v : g.inputs)
    if (!g.FindInitializer(v.name)) std::printf("  %s\n", DescribeValue(v).c_str());
  std::printf("outputs:\n");
  for (const auto& v : g.outputs) std::printf("  %s\n", DescribeValue(v).c_str());

  std::map<std::string, int> histogram;
  for (const auto& n : g.nodes) histogram[(n.domain.empty() ? "" : n.domain + ".") + n.op_type]++;
  std::printf("nodes: %zu\n", g.nodes.size());
  for (const auto& [op, count] : histogram) std::printf("  %-32s %d\n", op.c_str(), count);

  int64_t params = 0, bytes = 0;
  for (const auto& name : g.initializer_names()) {
    const Tensor* t = g.FindInitializer(name);
    params += t->numel();
    bytes += t->nbytes();
  }
  std::printf("initializers: %zu, parameters: %lld (%.2f MB)\n", g.num_initializers(), static_cast<long long>(params), bytes / 1e6);

  std::vector<LinearLayer> layers = FindLinearLayers(g);
  if (HasLinearLayersInBranches(model)) {
    // A merged decoder: list the prefill branch's layers, which the passes quantize (and carry
    // into the with-past branch).
    QC_ASSIGN_OR_RETURN(Model view, InlinePrefillBranches(model));
    layers = FindLinearLayers(view.graph);
    std::printf("merged decoder: linear layers inside If branches (listed: the prefill branch's)\n");
  }
  std::printf("quantizable linear layers: %zu\n", layers.size());
  for (const auto& l : layers) {
    std::string flags;
    if (l.transposed) flags += " transposed";
    if (!l.transpose_node.empty()) flags += " via-Transpose";
    if (!l.bias.empty()) flags += " bias";
    if (l.tied) flags += " tied-embedding";
    if (l.consumers > 1) flags += " shared-by-" + std::to_string(l.consumers);
    std::printf("  %-40s %-6s %-40s in=%-6lld out=%-6lld%s\n", l.node_name.c_str(), l.op_type.c_str(), l.weight.c_str(),
                static_cast<long long>(l.k), static_cast<long long>(l.n), flags.c_str());
  }
  return Status::Ok();
}

}  // namespace qc
