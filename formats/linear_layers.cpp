// Linear-layer discovery over the IR.
#include "formats/linear_layers.h"

#include <map>
#include <unordered_map>

namespace qc {

std::vector<LinearLayer> FindLinearLayers(const Graph& graph) {
  std::unordered_map<std::string, int> producer;
  for (size_t i = 0; i < graph.nodes.size(); ++i)
    for (const auto& o : graph.nodes[i].outputs) producer[o] = static_cast<int>(i);

  // Resolves `value` to an initializer, through at most one 2-D Transpose.
  auto resolve = [&](const std::string& value, std::string* init, bool* transposed, std::string* transpose_node) {
    if (const Tensor* t = graph.FindInitializer(value); t && t->rank() == 2) {
      *init = value;
      *transposed = false;
      return true;
    }
    auto it = producer.find(value);
    if (it == producer.end()) return false;
    const Node& tn = graph.nodes[it->second];
    if (tn.op_type != "Transpose" || !tn.domain.empty() || tn.inputs.empty()) return false;
    const Tensor* t = graph.FindInitializer(tn.inputs[0]);
    std::vector<int64_t> perm = tn.GetInts("perm", {1, 0});
    if (!t || t->rank() != 2 || perm != std::vector<int64_t>{1, 0}) return false;
    *init = tn.inputs[0];
    *transposed = true;
    *transpose_node = tn.name;
    return true;
  };

  std::vector<LinearLayer> layers;
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    const Node& n = graph.nodes[i];
    if (!n.domain.empty() || n.inputs.size() < 2) continue;
    LinearLayer l;
    l.node_index = static_cast<int>(i);
    l.node_name = n.name;
    l.op_type = n.op_type;
    l.input = n.inputs[0];
    bool stored_t = false;
    if (n.op_type == "MatMul") {
      if (!resolve(n.inputs[1], &l.weight, &stored_t, &l.transpose_node)) continue;
    } else if (n.op_type == "Gemm") {
      if (n.GetInt("transA", 0) != 0) continue;
      if (!resolve(n.inputs[1], &l.weight, &stored_t, &l.transpose_node)) continue;
      if (n.GetInt("transB", 0) != 0) stored_t = !stored_t;
      if (n.inputs.size() > 2) l.bias = n.inputs[2];
    } else {
      continue;
    }
    const Tensor* w = graph.FindInitializer(l.weight);
    l.transposed = stored_t;
    l.k = stored_t ? w->dim(1) : w->dim(0);
    l.n = stored_t ? w->dim(0) : w->dim(1);
    layers.push_back(l);
  }
  // Shared and tied weights.
  std::map<std::string, int> uses;
  for (const auto& l : layers) uses[l.weight]++;
  for (auto& l : layers) {
    l.consumers = uses[l.weight];
    for (const auto& n : graph.nodes)
      if (n.op_type == "Gather" && !n.inputs.empty() && n.inputs[0] == l.weight) l.tied = true;
  }
  return layers;
}

}  // namespace qc
