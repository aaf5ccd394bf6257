// Graph IR helpers.
#include "formats/graph.h"

#include <algorithm>

#include "formats/spill_store.h"

namespace qc {

int64_t Node::GetInt(const std::string& key, int64_t fallback) const {
  auto it = attributes.find(key);
  return it == attributes.end() ? fallback : it->second.i;
}

float Node::GetFloat(const std::string& key, float fallback) const {
  auto it = attributes.find(key);
  return it == attributes.end() ? fallback : it->second.f;
}

std::string Node::GetString(const std::string& key, const std::string& fallback) const {
  auto it = attributes.find(key);
  return it == attributes.end() ? fallback : it->second.s;
}

std::vector<int64_t> Node::GetInts(const std::string& key, std::vector<int64_t> fallback) const {
  auto it = attributes.find(key);
  return it == attributes.end() ? fallback : it->second.ints;
}

std::vector<float> Node::GetFloats(const std::string& key, std::vector<float> fallback) const {
  auto it = attributes.find(key);
  return it == attributes.end() ? fallback : it->second.floats;
}

std::string Node::Describe() const {
  std::string op = domain.empty() ? op_type : domain + "." + op_type;
  return "node '" + name + "' (" + op + ")";
}

const Tensor* Graph::FindInitializer(const std::string& name) const {
  auto it = initializers_.find(name);
  return it == initializers_.end() ? nullptr : &it->second;
}

void Graph::SetInitializer(const std::string& name, Tensor tensor) {
  if (spill_) tensor = spill_->SpillOrKeep(tensor);
  auto [it, inserted] = initializers_.insert_or_assign(name, std::move(tensor));
  if (inserted) initializer_names_.push_back(name);
}

bool Graph::RemoveInitializer(const std::string& name) {
  if (initializers_.erase(name) == 0) return false;
  initializer_names_.erase(std::find(initializer_names_.begin(), initializer_names_.end(), name));
  return true;
}

int64_t Model::DefaultOpset() const {
  for (const auto& o : opset_imports)
    if (o.domain.empty() || o.domain == "ai.onnx") return o.version;
  return 0;
}

void CollectReadValues(const Node& node, std::set<std::string>* read) {
  for (const std::string& in : node.inputs)
    if (!in.empty()) read->insert(in);
  for (const auto& [key, attr] : node.attributes) {
    std::vector<const Graph*> subgraphs;
    if (attr.g) subgraphs.push_back(attr.g.get());
    for (const auto& g : attr.graphs)
      if (g) subgraphs.push_back(g.get());
    for (const Graph* g : subgraphs) {
      CollectReadValues(*g, read);
      for (const ValueInfo& out : g->outputs) read->insert(out.name);
    }
  }
}

void CollectReadValues(const Graph& graph, std::set<std::string>* read) {
  for (const Node& node : graph.nodes) CollectReadValues(node, read);
}

}  // namespace qc
