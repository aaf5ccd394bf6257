// Merged decoders: the flat prefill view and carrying its weight quantization into every branch.
#include "passes/merged_decoder.h"

#include <memory>
#include <set>
#include <unordered_map>

#include "passes/tied_embedding.h"

namespace qc {
namespace {

bool IsIf(const Node& n) { return n.op_type == "If" && n.domain.empty(); }

std::vector<std::shared_ptr<Graph>*> Branches(Node& node) {
  std::vector<std::shared_ptr<Graph>*> branches;
  for (const char* key : {"then_branch", "else_branch"}) {
    auto it = node.attributes.find(key);
    if (it != node.attributes.end() && it->second.g) branches.push_back(&it->second.g);
  }
  return branches;
}

// A MatMul/Gemm of `graph` whose weight is an initializer of `weights` (the main graph), read
// directly or through a 2-D Transpose in `graph`: the same description FindLinearLayers gives.
std::vector<LinearLayer> LinearLayersReading(const Graph& graph, const Graph& weights) {
  std::unordered_map<std::string, const Node*> producer;
  for (const Node& n : graph.nodes)
    for (const std::string& o : n.outputs) producer[o] = &n;
  std::vector<LinearLayer> layers;
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    const Node& n = graph.nodes[i];
    if (!n.domain.empty() || n.inputs.size() < 2 || (n.op_type != "MatMul" && n.op_type != "Gemm")) continue;
    if (n.op_type == "Gemm" && n.GetInt("transA", 0) != 0) continue;
    LinearLayer l;
    l.node_index = static_cast<int>(i);
    l.node_name = n.name;
    l.op_type = n.op_type;
    l.input = n.inputs[0];
    bool stored_t = false;
    if (const Tensor* w = weights.FindInitializer(n.inputs[1]); w && w->rank() == 2) {
      l.weight = n.inputs[1];
    } else if (auto it = producer.find(n.inputs[1]); it != producer.end()) {
      const Node& t = *it->second;
      const Tensor* tw = t.inputs.empty() ? nullptr : weights.FindInitializer(t.inputs[0]);
      if (t.op_type != "Transpose" || !t.domain.empty() || !tw || tw->rank() != 2 ||
          t.GetInts("perm", {1, 0}) != std::vector<int64_t>{1, 0})
        continue;
      l.weight = t.inputs[0];
      l.transpose_node = t.name;
      stored_t = true;
    } else {
      continue;
    }
    if (n.op_type == "Gemm" && n.GetInt("transB", 0) != 0) stored_t = !stored_t;
    if (n.op_type == "Gemm" && n.inputs.size() > 2) l.bias = n.inputs[2];
    const Tensor* w = weights.FindInitializer(l.weight);
    l.transposed = stored_t;
    l.k = stored_t ? w->dim(1) : w->dim(0);
    l.n = stored_t ? w->dim(0) : w->dim(1);
    layers.push_back(l);
  }
  return layers;
}

bool SameLinearAlgebra(const LinearLayer& a, const LinearLayer& b) {
  return a.op_type == b.op_type && a.weight == b.weight && a.transposed == b.transposed && a.bias == b.bias &&
         a.k == b.k && a.n == b.n;
}

// Every value name defined or read in `graph` (not descending into subgraphs).
std::set<std::string> NamesIn(const Graph& graph) {
  std::set<std::string> names;
  for (const ValueInfo& v : graph.inputs) names.insert(v.name);
  for (const ValueInfo& v : graph.outputs) names.insert(v.name);
  for (const std::string& n : graph.initializer_names()) names.insert(n);
  for (const Node& n : graph.nodes) {
    names.insert(n.name);
    names.insert(n.inputs.begin(), n.inputs.end());
    names.insert(n.outputs.begin(), n.outputs.end());
  }
  return names;
}

// Values read anywhere in `graph`, its subgraphs included (outer-scope reads count), and its
// outputs.
void CollectReads(const Graph& graph, std::set<std::string>* reads) {
  CollectReadValues(graph, reads);
  for (const ValueInfo& v : graph.outputs) reads->insert(v.name);
}

// Removes Transpose nodes of `graph` whose output nothing reads any more.
void RemoveDeadTransposes(Graph& graph) {
  std::set<std::string> reads;
  CollectReads(graph, &reads);
  std::vector<Node> kept;
  for (Node& n : graph.nodes) {
    if (n.op_type == "Transpose" && n.domain.empty() && n.outputs.size() == 1 && !reads.count(n.outputs[0])) continue;
    kept.push_back(std::move(n));
  }
  graph.nodes = std::move(kept);
}

}  // namespace

bool HasLinearLayersInBranches(const Model& model) {
  for (const Node& n : model.graph.nodes) {
    if (!IsIf(n)) continue;
    for (auto* g : Branches(const_cast<Node&>(n)))
      if (!LinearLayersReading(**g, model.graph).empty()) return true;
  }
  return false;
}

StatusOr<Model> InlinePrefillBranches(const Model& model) {
  Model view = model;
  Graph& g = view.graph;
  std::set<std::string> graph_inputs;
  for (const ValueInfo& v : g.inputs) graph_inputs.insert(v.name);
  std::set<std::string> used = NamesIn(g);
  std::vector<Node> nodes;
  for (const Node& node : g.nodes) {
    if (!IsIf(node)) {
      nodes.push_back(node);
      continue;
    }
    auto else_it = node.attributes.find("else_branch");
    if (else_it == node.attributes.end() || !else_it->second.g) return InvalidArgument(node.Describe() + " has no else_branch");
    const Graph& branch = *else_it->second.g;
    bool has_layers = false;
    for (auto* b : Branches(const_cast<Node&>(node))) has_layers |= !LinearLayersReading(**b, g).empty();
    if (!has_layers) {
      nodes.push_back(node);
      continue;
    }
    if (node.inputs.empty() || !graph_inputs.count(node.inputs[0]))
      return Unimplemented(node.Describe() +
                           " holds linear layers but its condition is computed in the graph, so which branch runs "
                           "during calibration is unknown (merged decoders condition on a graph input such as "
                           "use_cache_branch)");
    if (branch.outputs.size() != node.outputs.size())
      return InvalidArgument(node.Describe() + ": else_branch has " + std::to_string(branch.outputs.size()) +
                             " outputs for " + std::to_string(node.outputs.size()) + " If outputs");
    // Branch outputs take the If's output names; other branch values keep theirs unless that
    // would clash with a name of the main graph.
    std::map<std::string, std::string> rename;
    std::set<std::string> produced;
    for (const Node& bn : branch.nodes) produced.insert(bn.outputs.begin(), bn.outputs.end());
    std::vector<Node> passthrough;
    for (size_t i = 0; i < branch.outputs.size(); ++i) {
      const std::string& from = branch.outputs[i].name;
      if (node.outputs[i].empty()) continue;
      if (produced.count(from) && !rename.count(from)) {
        rename[from] = node.outputs[i];
      } else {  // an outer value (or a value already mapped) passed straight through
        Node id;
        id.op_type = "Identity";
        id.name = node.outputs[i] + "/passthrough";
        id.inputs = {from};
        id.outputs = {node.outputs[i]};
        passthrough.push_back(std::move(id));
      }
    }
    auto fresh = [&](const std::string& name) {
      std::string candidate = "prefill/" + name;
      for (int i = 1; used.count(candidate); ++i) candidate = "prefill/" + name + "_" + std::to_string(i);
      used.insert(candidate);
      return candidate;
    };
    for (const Node& bn : branch.nodes)
      for (const std::string& o : bn.outputs)
        if (!o.empty() && !rename.count(o) && used.count(o)) rename[o] = fresh(o);
    for (const std::string& name : branch.initializer_names()) {
      const std::string to = used.count(name) ? fresh(name) : name;
      if (to != name) rename[name] = to;
      used.insert(to);
      g.SetInitializer(to, *branch.FindInitializer(name));
    }
    auto mapped = [&](const std::string& v) {
      auto it = rename.find(v);
      return it == rename.end() ? v : it->second;
    };
    for (Node bn : branch.nodes) {
      for (std::string& in : bn.inputs) in = mapped(in);
      for (std::string& out : bn.outputs) out = mapped(out);
      if (!bn.name.empty() && used.count(bn.name)) bn.name = fresh(bn.name);
      used.insert(bn.name);
      used.insert(bn.outputs.begin(), bn.outputs.end());
      nodes.push_back(std::move(bn));
    }
    for (Node& id : passthrough) {
      id.inputs[0] = mapped(id.inputs[0]);
      nodes.push_back(std::move(id));
    }
  }
  g.nodes = std::move(nodes);
  return view;
}

std::map<std::string, LinearLayer> LinearLayersByOutput(const Model& view) {
  std::map<std::string, LinearLayer> layers;
  for (const LinearLayer& l : FindLinearLayers(view.graph)) layers[view.graph.nodes[l.node_index].outputs[0]] = l;
  return layers;
}

Status CarryWeightQuantization(const Model& quantized_view, const std::map<std::string, LinearLayer>& view_layers,
                               Model& model, std::vector<std::string>* notes) {
  // The MatMulNBits nodes of the view that took a recorded layer's place, by weight.
  std::map<std::string, std::pair<const Node*, LinearLayer>> by_weight;
  for (const Node& n : quantized_view.graph.nodes) {
    if (n.op_type != "MatMulNBits" || n.domain != "com.microsoft" || n.outputs.size() != 1) continue;
    auto it = view_layers.find(n.outputs[0]);
    if (it == view_layers.end()) continue;
    by_weight.emplace(it->second.weight, std::make_pair(&n, it->second));
  }
  if (by_weight.empty()) return Status::Ok();

  Graph& main = model.graph;
  std::set<std::string> main_names = NamesIn(main);
  auto add_tensors = [&](const Node& q) -> Status {
    for (size_t i = 1; i < q.inputs.size(); ++i) {
      const std::string& name = q.inputs[i];
      if (name.empty()) continue;
      const Tensor* t = quantized_view.graph.FindInitializer(name);
      if (t == nullptr) return Internal("MatMulNBits input '" + name + "' is not an initializer of the quantized view");
      if (const Tensor* existing = main.FindInitializer(name)) {
        if (!existing->BitEqual(*t)) return Internal("initializer '" + name + "' differs between the view and the model");
        continue;
      }
      if (main_names.count(name)) return Internal("name '" + name + "' is already used in the model");
      main.SetInitializer(name, *t);
      main_names.insert(name);
    }
    return Status::Ok();
  };

  // Rewrites the linear layers of one graph (the main graph or a branch) that read a quantized
  // weight the way the view's layer did.
  std::set<std::string> carried;
  auto rewrite = [&](Graph& graph) -> Status {
    for (const LinearLayer& l : LinearLayersReading(graph, main)) {
      auto it = by_weight.find(l.weight);
      if (it == by_weight.end()) continue;
      const auto& [q, view_layer] = it->second;
      Node& old = graph.nodes[l.node_index];
      if (!SameLinearAlgebra(l, view_layer) || old.outputs.size() != 1 ||
          (l.op_type == "Gemm" && (old.GetFloat("alpha", 1.0f) != 1.0f || old.GetFloat("beta", 1.0f) != 1.0f))) {
        if (notes) notes->push_back("left in float: " + old.Describe() + " reads '" + l.weight + "' differently from the prefill branch");
        continue;
      }
      QC_RETURN_IF_ERROR(add_tensors(*q));
      Node replacement = *q;
      replacement.name = old.name;
      replacement.inputs[0] = old.inputs[0];
      replacement.outputs = old.outputs;
      old = std::move(replacement);
      carried.insert(l.weight);
    }
    RemoveDeadTransposes(graph);
    return Status::Ok();
  };
  QC_RETURN_IF_ERROR(rewrite(main));
  for (Node& n : main.nodes) {
    if (!IsIf(n)) continue;
    for (std::shared_ptr<Graph>* branch : Branches(n)) {
      *branch = std::make_shared<Graph>(**branch);  // copy on write: Model copies share subgraphs
      QC_RETURN_IF_ERROR(rewrite(**branch));
    }
  }
  // A tied table whose linear readers all became MatMulNBits: its row Gathers, in any graph, read
  // the head's codes as the view's did (passes/tied_embedding.h).
  auto unique_name = [&](const std::string& base) {
    std::string name = base;
    for (int i = 1; main_names.count(name); ++i) name = base + "_" + std::to_string(i);
    main_names.insert(name);
    return name;
  };
  for (const auto& [weight, entry] : by_weight) {
    const auto& [q, view_layer] = entry;
    const bool g_idx = q->inputs.size() > 4 && !q->inputs[4].empty();
    const int64_t bits = q->GetInt("bits", 4);
    if (!carried.count(weight) || g_idx || TiedTableStaysFloat(view_layer, static_cast<int>(bits)) ||
        !OnlyRowGathersRead(main, weight))
      continue;
    const PackedTable p{weight, q->inputs[1], q->inputs[2], q->inputs.size() > 3 ? q->inputs[3] : "",
                        q->GetInt("N", 0), q->GetInt("K", 0), bits, q->GetInt("block_size", 0)};
    QuantizeEmbeddingGathers(main, p, model.DefaultOpset(), unique_name);
  }

  std::set<std::string> reads;
  CollectReads(main, &reads);
  for (const std::string& w : carried)
    if (!reads.count(w)) main.RemoveInitializer(w);
  bool has_ms = false;
  for (const OpsetImport& o : model.opset_imports) has_ms |= o.domain == "com.microsoft";
  if (!has_ms)
    for (const OpsetImport& o : quantized_view.opset_imports)
      if (o.domain == "com.microsoft") model.opset_imports.push_back(o);
  return Status::Ok();
}

}  // namespace qc
