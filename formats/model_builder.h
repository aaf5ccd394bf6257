// GraphBuilder: assembles IR graphs in code (tests, synthetic models) with seeded random weights.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "formats/graph.h"
#include "formats/status.h"
#include "formats/tensor.h"

namespace qc {

/// Attribute constructors, so nodes read `{{"axis", AttrInt(-1)}}`.
Attribute AttrInt(int64_t v);
Attribute AttrFloat(float v);
Attribute AttrString(std::string v);
Attribute AttrInts(std::vector<int64_t> v);
Attribute AttrFloats(std::vector<float> v);
Attribute AttrTensor(Tensor v);

using Attributes = std::map<std::string, Attribute>;

/// Draws N(mean, stddev) float32 values from `rng`. Uses its own Box-Muller transform on the raw
/// mt19937 output rather than std::normal_distribution, whose algorithm differs between standard
/// libraries, so a seed gives the same weights with libstdc++ and libc++ alike.
Tensor RandomNormalTensor(const Shape& shape, float mean, float stddev, std::mt19937& rng);

/// Builds one graph node by node. Values are named by the builder (`<scope>/<Op>_<n>`) unless the
/// caller names them; every name it hands out is unique within the graph. Inputs, outputs and
/// initializers are kept in insertion order, so the same calls give a byte-identical model.
class GraphBuilder {
 public:
  /// `seed` drives AddRandomNormal; `graph_name` becomes Graph::name.
  explicit GraphBuilder(uint32_t seed = 0, std::string graph_name = "main");

  /// Declares a graph input; returns its name.
  std::string AddInput(const std::string& name, DType dtype, std::vector<Dim> shape);
  /// Declares `value` (already produced by a node) as a graph output.
  void AddOutput(const std::string& value, DType dtype, std::vector<Dim> shape);

  /// Adds an initializer under `name` (must be new); returns the name.
  std::string AddInitializer(const std::string& name, Tensor tensor);
  /// Adds an initializer of N(mean, stddev) values drawn from the builder's generator.
  std::string AddRandomNormal(const std::string& name, const Shape& shape, float mean = 0.0f, float stddev = 0.02f);
  /// Adds a constant the way an exporter that folds constants does: as an initializer with a
  /// generated name ("const_<n>"). Every call adds a new one; callers that want equal constants
  /// shared, as the exporters' optimisers do, keep the returned name.
  std::string AddConstant(Tensor tensor);
  /// Adds a constant as a `Constant` node (the TorchScript exporter's form).
  std::string AddConstantNode(Tensor tensor);
  /// Shorthands for the common constant tensors (1-D int64 and scalars).
  std::string AddInt64s(const std::vector<int64_t>& values) {
    return AddConstant(Tensor::FromVector<int64_t>(values, {static_cast<int64_t>(values.size())}));
  }
  std::string AddScalar(float value) { return AddConstant(Tensor::Scalar<float>(value)); }
  std::string AddScalarInt64(int64_t value) { return AddConstant(Tensor::Scalar<int64_t>(value)); }

  /// Appends a node with `num_outputs` generated output names; returns them.
  std::vector<std::string> AddNode(const std::string& op_type, std::vector<std::string> inputs, int num_outputs,
                                   Attributes attributes = {}, const std::string& domain = "");
  /// Appends a node with explicitly named outputs ("" marks an omitted optional output).
  void AddNodeWithOutputs(const std::string& op_type, std::vector<std::string> inputs, std::vector<std::string> outputs,
                          Attributes attributes = {}, const std::string& domain = "");
  /// A single-output node; returns its output name.
  std::string Op(const std::string& op_type, std::vector<std::string> inputs, Attributes attributes = {},
                 const std::string& domain = "") {
    return AddNode(op_type, std::move(inputs), 1, std::move(attributes), domain)[0];
  }

  /// Prefix for generated node and value names (e.g. "layers.0/attn"); "" for none.
  void SetScope(std::string scope) { scope_ = std::move(scope); }
  const std::string& scope() const { return scope_; }

  /// The builder's generator, for callers that draw their own values.
  std::mt19937& rng() { return rng_; }
  const Graph& graph() const { return graph_; }
  /// Large initializers added from now on go to `store` (see Graph::set_spill_store).
  void set_spill_store(std::shared_ptr<SpillStore> store) { graph_.set_spill_store(std::move(store)); }

  /// Finishes the model: the graph plus the given opset imports (at least the default domain).
  /// Fails if a node reads a value nothing defines, or a graph output is never produced.
  StatusOr<Model> Build(std::vector<OpsetImport> opsets, std::string producer_name = "qconvert.GraphBuilder");

 private:
  std::string UniqueName(const std::string& base);

  Graph graph_;
  std::mt19937 rng_;
  std::string scope_;
  std::map<std::string, int> name_counts_;
  std::set<std::string> names_;  // every value and node name handed out
  int64_t constant_count_ = 0;
};

}  // namespace qc
