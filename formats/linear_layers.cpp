// Linear-layer discovery over the IR.
#include "formats/linear_layers.h"

#include <map>
#include <set>
#include <unordered_map>

namespace qc {
namespace {

// Index of the node computing the logits, walking back from the logits output through ops that
// keep each logit a function of one head output (see FindLinearLayers); -1 if there is none.
int LogitsProducer(const Graph& graph, const std::unordered_map<std::string, int>& producer) {
  if (graph.outputs.empty()) return -1;
  std::string value = graph.outputs.front().name;
  for (const auto& o : graph.outputs)
    if (o.name == "logits") value = o.name;
  static const std::set<std::string> kShapeOps = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast"};
  static const std::set<std::string> kElementwise = {"Div", "Mul", "Add", "Sub", "Tanh"};
  auto is_constant = [&](const std::string& v) {
    if (v.empty() || graph.FindInitializer(v) != nullptr) return true;
    auto it = producer.find(v);
    return it != producer.end() && graph.nodes[it->second].op_type == "Constant";
  };
  for (size_t hops = 0; hops <= graph.nodes.size(); ++hops) {
    auto it = producer.find(value);
    if (it == producer.end()) return -1;
    const Node& n = graph.nodes[it->second];
    if (!n.domain.empty() || n.inputs.empty()) return -1;
    if (n.op_type == "MatMul" || n.op_type == "Gemm") return it->second;
    if (kShapeOps.count(n.op_type)) {
      value = n.inputs[0];
      continue;
    }
    if (!kElementwise.count(n.op_type)) return -1;
    // Exactly one non-constant operand carries the logits on.
    std::string next;
    for (const std::string& in : n.inputs) {
      if (is_constant(in)) continue;
      if (!next.empty()) return -1;
      next = in;
    }
    if (next.empty()) return -1;
    value = next;
  }
  return -1;
}

}  // namespace

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
  const int head = LogitsProducer(graph, producer);
  for (auto& l : layers) l.output_head = l.node_index == head;
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
