// GraphBuilder: assembles IR graphs in code with seeded random weights.
#include "formats/model_builder.h"

#include <cmath>

namespace qc {

Attribute AttrInt(int64_t v) {
  Attribute a;
  a.type = Attribute::Type::kInt;
  a.i = v;
  return a;
}

Attribute AttrFloat(float v) {
  Attribute a;
  a.type = Attribute::Type::kFloat;
  a.f = v;
  return a;
}

Attribute AttrString(std::string v) {
  Attribute a;
  a.type = Attribute::Type::kString;
  a.s = std::move(v);
  return a;
}

Attribute AttrInts(std::vector<int64_t> v) {
  Attribute a;
  a.type = Attribute::Type::kInts;
  a.ints = std::move(v);
  return a;
}

Attribute AttrFloats(std::vector<float> v) {
  Attribute a;
  a.type = Attribute::Type::kFloats;
  a.floats = std::move(v);
  return a;
}

Attribute AttrTensor(Tensor v) {
  Attribute a;
  a.type = Attribute::Type::kTensor;
  a.t = std::move(v);
  return a;
}

Tensor RandomNormalTensor(const Shape& shape, float mean, float stddev, std::mt19937& rng) {
  Tensor t(DType::kFloat32, shape);
  float* out = t.mutable_data<float>();
  const int64_t n = t.numel();
  // 2^-32 maps a 32-bit draw into [0, 1); u1 is shifted into (0, 1] so log(u1) is finite.
  constexpr double kInv32 = 1.0 / 4294967296.0;
  constexpr double kTwoPi = 6.283185307179586476925;
  for (int64_t i = 0; i < n; i += 2) {
    const double u1 = (static_cast<double>(rng()) + 1.0) * kInv32;
    const double u2 = static_cast<double>(rng()) * kInv32;
    const double r = std::sqrt(-2.0 * std::log(u1));
    out[i] = static_cast<float>(mean + stddev * r * std::cos(kTwoPi * u2));
    if (i + 1 < n) out[i + 1] = static_cast<float>(mean + stddev * r * std::sin(kTwoPi * u2));
  }
  return t;
}

GraphBuilder::GraphBuilder(uint32_t seed, std::string graph_name) : rng_(seed) { graph_.name = std::move(graph_name); }

std::string GraphBuilder::UniqueName(const std::string& base) {
  const std::string stem = scope_.empty() ? base : scope_ + "/" + base;
  std::string name;
  do {
    name = stem + "_" + std::to_string(name_counts_[stem]++);
  } while (names_.count(name));
  names_.insert(name);
  return name;
}

std::string GraphBuilder::AddInput(const std::string& name, DType dtype, std::vector<Dim> shape) {
  QC_CHECK(!names_.count(name));
  names_.insert(name);
  ValueInfo info;
  info.name = name;
  info.dtype = dtype;
  info.has_shape = true;
  info.shape = std::move(shape);
  graph_.inputs.push_back(std::move(info));
  return name;
}

void GraphBuilder::AddOutput(const std::string& value, DType dtype, std::vector<Dim> shape) {
  ValueInfo info;
  info.name = value;
  info.dtype = dtype;
  info.has_shape = true;
  info.shape = std::move(shape);
  graph_.outputs.push_back(std::move(info));
}

std::string GraphBuilder::AddInitializer(const std::string& name, Tensor tensor) {
  QC_CHECK(!names_.count(name));
  names_.insert(name);
  graph_.SetInitializer(name, std::move(tensor));
  return name;
}

std::string GraphBuilder::AddRandomNormal(const std::string& name, const Shape& shape, float mean, float stddev) {
  return AddInitializer(name, RandomNormalTensor(shape, mean, stddev, rng_));
}

std::string GraphBuilder::AddConstant(Tensor tensor) {
  // Exporters name folded constants by a global counter ("val_26"); so do we, outside any scope.
  std::string name;
  do {
    name = "const_" + std::to_string(constant_count_++);
  } while (names_.count(name));
  return AddInitializer(name, std::move(tensor));
}

std::string GraphBuilder::AddConstantNode(Tensor tensor) {
  return Op("Constant", {}, {{"value", AttrTensor(std::move(tensor))}});
}

std::vector<std::string> GraphBuilder::AddNode(const std::string& op_type, std::vector<std::string> inputs,
                                               int num_outputs, Attributes attributes, const std::string& domain) {
  const std::string node_name = UniqueName(op_type);
  std::vector<std::string> outputs;
  for (int i = 0; i < num_outputs; ++i) {
    std::string out = node_name + "_out" + (num_outputs > 1 ? std::to_string(i) : "");
    QC_CHECK(!names_.count(out));
    names_.insert(out);
    outputs.push_back(std::move(out));
  }
  Node node;
  node.name = node_name;
  node.op_type = op_type;
  node.domain = domain;
  node.inputs = std::move(inputs);
  node.outputs = outputs;
  node.attributes = std::move(attributes);
  graph_.nodes.push_back(std::move(node));
  return outputs;
}

void GraphBuilder::AddNodeWithOutputs(const std::string& op_type, std::vector<std::string> inputs,
                                      std::vector<std::string> outputs, Attributes attributes,
                                      const std::string& domain) {
  for (const std::string& out : outputs) {
    if (out.empty()) continue;
    QC_CHECK(!names_.count(out));
    names_.insert(out);
  }
  Node node;
  node.name = UniqueName(op_type);
  node.op_type = op_type;
  node.domain = domain;
  node.inputs = std::move(inputs);
  node.outputs = std::move(outputs);
  node.attributes = std::move(attributes);
  graph_.nodes.push_back(std::move(node));
}

StatusOr<Model> GraphBuilder::Build(std::vector<OpsetImport> opsets, std::string producer_name) {
  bool has_default = false;
  for (const OpsetImport& o : opsets) has_default |= o.domain.empty() || o.domain == "ai.onnx";
  if (!has_default) return InvalidArgument("GraphBuilder::Build: no opset import for the default domain");
  // Nodes are appended in dependency order by construction; check it so a builder bug surfaces
  // here, with the node's name, rather than as an executor error far away.
  std::set<std::string> defined;
  for (const ValueInfo& in : graph_.inputs) defined.insert(in.name);
  for (const std::string& name : graph_.initializer_names()) defined.insert(name);
  for (const Node& node : graph_.nodes) {
    for (const std::string& in : node.inputs)
      if (!in.empty() && !defined.count(in))
        return Internal("GraphBuilder::Build: " + node.Describe() + " reads '" + in + "' before it is defined");
    for (const std::string& out : node.outputs)
      if (!out.empty()) defined.insert(out);
  }
  for (const ValueInfo& out : graph_.outputs)
    if (!defined.count(out.name))
      return Internal("GraphBuilder::Build: graph output '" + out.name + "' is never produced");
  Model model;
  model.opset_imports = std::move(opsets);
  model.producer_name = std::move(producer_name);
  model.graph = std::move(graph_);
  graph_ = Graph();
  return model;
}

}  // namespace qc
