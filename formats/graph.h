// The graph IR: Model -> Graph -> Nodes over named values, with constant initializers.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "formats/status.h"
#include "formats/tensor.h"

namespace qc {

struct Graph;
class SpillStore;

/// One node attribute; `type` says which member is meaningful (mirrors onnx::AttributeProto).
struct Attribute {
  enum class Type { kUndefined = 0, kFloat = 1, kInt = 2, kString = 3, kTensor = 4, kGraph = 5,
                    kFloats = 6, kInts = 7, kStrings = 8, kTensors = 9, kGraphs = 10 };
  Type type = Type::kUndefined;
  float f = 0;
  int64_t i = 0;
  std::string s;
  Tensor t;
  std::shared_ptr<Graph> g;
  std::vector<float> floats;
  std::vector<int64_t> ints;
  std::vector<std::string> strings;
  std::vector<Tensor> tensors;
  std::vector<std::shared_ptr<Graph>> graphs;
  std::string ref_attr_name;  // for attributes inside functions
};

/// A dimension of a declared shape: a fixed size, a symbolic name, or unknown.
struct Dim {
  int64_t value = -1;  // -1 when symbolic or unknown
  std::string param;   // symbolic name such as "batch"
  bool operator==(const Dim&) const = default;
};

/// Declared type of a graph input/output/intermediate value.
struct ValueInfo {
  std::string name;
  DType dtype = DType::kUndefined;
  bool has_shape = false;
  std::vector<Dim> shape;
  std::string doc_string;
};

/// One operator application. Empty strings in `inputs` mark omitted optional inputs.
struct Node {
  std::string name;
  std::string op_type;
  std::string domain;  // "" (= ai.onnx) or e.g. "com.microsoft"
  std::vector<std::string> inputs;
  std::vector<std::string> outputs;
  std::map<std::string, Attribute> attributes;
  std::string doc_string;
  std::vector<std::pair<std::string, std::string>> metadata_props;

  bool HasAttr(const std::string& key) const { return attributes.count(key) > 0; }
  int64_t GetInt(const std::string& key, int64_t fallback) const;
  float GetFloat(const std::string& key, float fallback) const;
  std::string GetString(const std::string& key, const std::string& fallback) const;
  std::vector<int64_t> GetInts(const std::string& key, std::vector<int64_t> fallback = {}) const;
  std::vector<float> GetFloats(const std::string& key, std::vector<float> fallback = {}) const;
  /// "node 'name' (OpType)" for error messages.
  std::string Describe() const;
};

/// A computation graph. Initializers keep their file order for lossless round trips.
struct Graph {
  std::string name;
  std::string doc_string;
  std::vector<Node> nodes;
  std::vector<ValueInfo> inputs;
  std::vector<ValueInfo> outputs;
  std::vector<ValueInfo> value_infos;

  /// Constant tensors by name. Use the accessors to keep name order and map in sync.
  const Tensor* FindInitializer(const std::string& name) const;
  /// Adds or replaces an initializer; with a spill store set, a large owned tensor is moved to it.
  void SetInitializer(const std::string& name, Tensor tensor);
  bool RemoveInitializer(const std::string& name);
  const std::vector<std::string>& initializer_names() const { return initializer_names_; }
  size_t num_initializers() const { return initializer_names_.size(); }

  /// Where SetInitializer puts large owned tensors from now on (quantized weights a pass creates),
  /// so they do not pile up in memory (docs/MEMORY.md); nullptr keeps them in memory. A failed
  /// spill keeps the tensor in memory and is reported by SpillStore::status().
  void set_spill_store(std::shared_ptr<SpillStore> store) { spill_ = std::move(store); }
  const std::shared_ptr<SpillStore>& spill_store() const { return spill_; }

 private:
  std::vector<std::string> initializer_names_;
  std::unordered_map<std::string, Tensor> initializers_;
  std::shared_ptr<SpillStore> spill_;
};

struct OpsetImport {
  std::string domain;
  int64_t version = 0;
};

/// Inserts into `read` every value name `node` reads: its non-empty inputs and, through its
/// subgraph attributes (If/Loop/Scan bodies), whatever their nodes read and their outputs name
/// (a subgraph may read, or pass on as an output, a value of the enclosing graph).
void CollectReadValues(const Node& node, std::set<std::string>* read);
/// The same for every node of `graph` (the graph's own outputs are not included).
void CollectReadValues(const Graph& graph, std::set<std::string>* read);

/// A model-local function (ONNX FunctionProto); kept so round trips stay lossless.
struct Function {
  std::string name;
  std::string domain;
  std::vector<std::string> inputs;
  std::vector<std::string> outputs;
  std::vector<std::string> attribute_names;
  std::vector<Node> nodes;
  std::vector<OpsetImport> opset_imports;
  std::string doc_string;
};

/// A whole model file.
struct Model {
  int64_t ir_version = 8;
  std::vector<OpsetImport> opset_imports;
  std::string producer_name;
  std::string producer_version;
  std::string domain;
  int64_t model_version = 0;
  std::string doc_string;
  std::vector<std::pair<std::string, std::string>> metadata_props;
  std::vector<Function> functions;
  Graph graph;

  /// Opset version of the default ("" / "ai.onnx") domain, 0 if absent.
  int64_t DefaultOpset() const;
};

}  // namespace qc
