// SiLU fusion: torch.onnx exports silu(x) as Mul(x, Sigmoid(x)); one fused pass over the
// activation saves a full write and read of an [S, intermediate] tensor per MLP.
#include "runtime/graph_fusion.h"

#include <set>
#include <unordered_map>

namespace qc {

int FuseForExecution(Graph& graph) {
  std::unordered_map<std::string, int> readers;
  for (const Node& n : graph.nodes)
    for (const auto& in : n.inputs) readers[in]++;
  for (const Node& n : graph.nodes)
    for (const auto& [key, a] : n.attributes)
      if (a.g || !a.graphs.empty()) return 0;  // subgraphs may read values implicitly: stay out
  std::set<std::string> outputs;
  for (const auto& o : graph.outputs) outputs.insert(o.name);
  std::unordered_map<std::string, int> sigmoid_of;  // sigmoid output -> node index
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    const Node& n = graph.nodes[i];
    if (n.domain.empty() && n.op_type == "Sigmoid" && n.inputs.size() == 1 && n.outputs.size() == 1)
      sigmoid_of[n.outputs[0]] = static_cast<int>(i);
  }
  std::set<int> erase;
  int fused = 0;
  for (Node& mul : graph.nodes) {
    if (!mul.domain.empty() || mul.op_type != "Mul" || mul.inputs.size() != 2) continue;
    for (int side = 0; side < 2; ++side) {
      auto it = sigmoid_of.find(mul.inputs[side]);
      if (it == sigmoid_of.end() || erase.count(it->second)) continue;
      const Node& sig = graph.nodes[it->second];
      const std::string& s = sig.outputs[0];
      if (mul.inputs[1 - side] != sig.inputs[0] || readers[s] != 1 || outputs.count(s)) continue;
      Node fusedNode;
      fusedNode.name = mul.name;
      fusedNode.op_type = "QuickGelu";
      fusedNode.domain = "com.microsoft";
      fusedNode.inputs = {sig.inputs[0]};
      fusedNode.outputs = mul.outputs;
      Attribute alpha;
      alpha.type = Attribute::Type::kFloat;
      alpha.f = 1.0f;
      fusedNode.attributes["alpha"] = alpha;
      erase.insert(it->second);
      mul = std::move(fusedNode);
      ++fused;
      break;
    }
  }
  if (!erase.empty()) {
    std::vector<Node> kept;
    for (size_t i = 0; i < graph.nodes.size(); ++i)
      if (!erase.count(static_cast<int>(i))) kept.push_back(std::move(graph.nodes[i]));
    graph.nodes = std::move(kept);
  }
  return fused;
}

}  // namespace qc
