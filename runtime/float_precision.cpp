// Rewriting a graph's float precision (float_precision.h).
#include "runtime/float_precision.h"

#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace qc {
namespace {


// Largest finite value of each compute type.
float MaxFinite(DType t) {
  if (t == DType::kFloat16) return 65504.0f;
  if (t == DType::kBFloat16) return BFloat16ToFloat(0x7f7f);  // 3.3895e38
  return std::numeric_limits<float>::max();
}

// Inputs ONNX types as tensor(float) whatever the data's type: they stay float32.
bool KeepsFloat32(const Node& node, size_t input) {
  if (!node.domain.empty() && node.domain != "ai.onnx") return false;
  return (node.op_type == "Resize" && input == 2) || (node.op_type == "Upsample" && input == 1);
}

// Ops whose `dtype` attribute names the type of the values they create.
bool HasDTypeAttribute(const Node& node) {
  static const std::set<std::string> kOps = {"EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                                             "Bernoulli"};
  return (node.domain.empty() || node.domain == "ai.onnx") && kOps.count(node.op_type) > 0;
}

// Renames reads of `from` to `to` in every node but those in `except` (indices into graph.nodes),
// subgraphs included (they may read outer values).
void RenameReads(Graph& graph, const std::string& from, const std::string& to, const std::set<size_t>& except = {}) {
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    if (except.count(i)) continue;
    Node& node = graph.nodes[i];
    for (std::string& in : node.inputs)
      if (in == from) in = to;
    for (auto& [key, a] : node.attributes) {
      if (a.g) RenameReads(*a.g, from, to);
      for (auto& sub : a.graphs) RenameReads(*sub, from, to);
    }
  }
}

// A value name not used in `graph` yet, from `base`.
std::string FreshName(const Graph& graph, std::set<std::string>& taken, const std::string& base) {
  if (taken.empty()) {
    for (const ValueInfo& v : graph.inputs) taken.insert(v.name);
    for (const ValueInfo& v : graph.outputs) taken.insert(v.name);
    for (const std::string& n : graph.initializer_names()) taken.insert(n);
    for (const Node& node : graph.nodes) {
      taken.insert(node.inputs.begin(), node.inputs.end());
      taken.insert(node.outputs.begin(), node.outputs.end());
    }
  }
  std::string name = base;
  for (int i = 2; taken.count(name); ++i) name = base + "_" + std::to_string(i);
  taken.insert(name);
  return name;
}

Node MakeCast(const std::string& name, const std::string& in, const std::string& out, DType to) {
  Node cast;
  cast.name = name;
  cast.op_type = "Cast";
  cast.inputs = {in};
  cast.outputs = {out};
  Attribute a;
  a.type = Attribute::Type::kInt;
  a.i = static_cast<int64_t>(to);
  cast.attributes["to"] = a;
  return cast;
}

// Converts one node's attributes (and its subgraphs, entirely).
Status ConvertGraphBody(Graph& graph, DType from, DType to);

Status ConvertNode(Node& node, DType from, DType to) {
  const bool default_domain = node.domain.empty() || node.domain == "ai.onnx";
  if (default_domain && node.op_type == "Cast") {
    auto it = node.attributes.find("to");
    if (it != node.attributes.end() && it->second.i == static_cast<int64_t>(from)) it->second.i = static_cast<int64_t>(to);
  } else if (default_domain && node.op_type == "Constant") {
    auto value = node.attributes.find("value");
    if (value != node.attributes.end() && value->second.t.dtype() == from) value->second.t = ConvertFloatTensor(value->second.t, to);
    if (from == DType::kFloat32) {  // value_float / value_floats hold float32 by definition
      for (const char* key : {"value_float", "value_floats"}) {
        auto it = node.attributes.find(key);
        if (it == node.attributes.end()) continue;
        const Attribute& a = it->second;
        Tensor t = a.type == Attribute::Type::kFloat ? Tensor::Scalar<float>(a.f)
                                                     : Tensor::FromVector<float>(a.floats, {static_cast<int64_t>(a.floats.size())});
        Attribute tensor;
        tensor.type = Attribute::Type::kTensor;
        tensor.t = ConvertFloatTensor(t, to);
        node.attributes.erase(it);
        node.attributes["value"] = std::move(tensor);
        break;
      }
    }
  } else if (default_domain && node.op_type == "ConstantOfShape") {
    auto value = node.attributes.find("value");
    if (value != node.attributes.end()) {
      if (value->second.t.dtype() == from) value->second.t = ConvertFloatTensor(value->second.t, to);
    } else if (from == DType::kFloat32) {  // the default is a float32 zero
      Attribute zero;
      zero.type = Attribute::Type::kTensor;
      zero.t = ConvertFloatTensor(Tensor::FromVector<float>({0.0f}, {1}), to);
      node.attributes["value"] = std::move(zero);
    }
  } else if (HasDTypeAttribute(node)) {
    auto it = node.attributes.find("dtype");
    if (it != node.attributes.end() && it->second.i == static_cast<int64_t>(from)) it->second.i = static_cast<int64_t>(to);
  }
  for (auto& [key, a] : node.attributes) {
    if (a.g) QC_RETURN_IF_ERROR(ConvertGraphBody(*a.g, from, to));
    for (auto& sub : a.graphs) QC_RETURN_IF_ERROR(ConvertGraphBody(*sub, from, to));
  }
  return Status::Ok();
}

// A subgraph: everything converts, its declared inputs and outputs included.
Status ConvertGraphBody(Graph& graph, DType from, DType to) {
  for (const std::string& name : std::vector<std::string>(graph.initializer_names())) {
    const Tensor* t = graph.FindInitializer(name);
    if (t->dtype() == from) graph.SetInitializer(name, ConvertFloatTensor(*t, to));
  }
  for (Node& node : graph.nodes) QC_RETURN_IF_ERROR(ConvertNode(node, from, to));
  for (auto* infos : {&graph.inputs, &graph.outputs, &graph.value_infos})
    for (ValueInfo& v : *infos)
      if (v.dtype == from) v.dtype = to;
  return Status::Ok();
}

template <typename In>
float LoadFloat(In v) {
  if constexpr (std::is_same_v<In, Float16>) return HalfToFloat(v.bits);
  else if constexpr (std::is_same_v<In, BFloat16>) return BFloat16ToFloat(v.bits);
  else return v;
}


bool IsDefaultDomain(const Node& node) { return node.domain.empty() || node.domain == "ai.onnx"; }

// The dtype of every value the main graph computes, as far as the op set's typing rules decide it
// (enough to tell float values from integer and bool ones); kUndefined where unknown.
std::map<std::string, DType> InferDTypes(const Graph& graph) {
  std::map<std::string, DType> type;
  for (const ValueInfo& v : graph.inputs) type[v.name] = v.dtype;
  for (const std::string& name : graph.initializer_names()) type[name] = graph.FindInitializer(name)->dtype();
  auto of = [&](const std::string& name) {
    auto it = type.find(name);
    return name.empty() || it == type.end() ? DType::kUndefined : it->second;
  };
  static const std::set<std::string> kBool = {"Equal", "Greater", "Less", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Not", "IsNaN", "IsInf"};
  static const std::set<std::string> kInt64 = {"Shape", "Size", "ArgMax", "ArgMin", "NonZero"};
  // Nodes may be out of order: repeat until nothing changes (each pass types at least one more node).
  for (size_t pass = 0; pass <= graph.nodes.size(); ++pass) {
    bool changed = false;
    for (const Node& node : graph.nodes) {
      std::vector<DType> out(node.outputs.size(), DType::kUndefined);
      DType first = DType::kUndefined;
      for (const std::string& in : node.inputs)
        if (!in.empty()) {
          first = of(in);
          break;
        }
      for (DType& t : out) t = first;
      const std::string& op = node.op_type;
      if (!IsDefaultDomain(node)) {
        if (op == "GatherBlockQuantized" && node.inputs.size() > 2) out.assign(out.size(), of(node.inputs[2]));
      } else if (op == "Cast") {
        out.assign(out.size(), static_cast<DType>(node.GetInt("to", 0)));
      } else if (op == "CastLike" && node.inputs.size() > 1) {
        out.assign(out.size(), of(node.inputs[1]));
      } else if (kBool.count(op)) {
        out.assign(out.size(), DType::kBool);
      } else if (kInt64.count(op)) {
        out.assign(out.size(), DType::kInt64);
      } else if (op == "TopK" && out.size() > 1) {
        out[1] = DType::kInt64;
      } else if (op == "MatMulInteger") {
        out.assign(out.size(), DType::kInt32);
      } else if (op == "DequantizeLinear" && node.inputs.size() > 1) {
        out.assign(out.size(), of(node.inputs[1]));
      } else if (op == "QuantizeLinear") {
        out.assign(out.size(), node.inputs.size() > 2 && !node.inputs[2].empty() ? of(node.inputs[2]) : DType::kUInt8);
      } else if (op == "DynamicQuantizeLinear") {
        out = {DType::kUInt8, DType::kFloat32, DType::kUInt8};
        out.resize(node.outputs.size());
      } else if (op == "Where" && node.inputs.size() > 1) {
        out.assign(out.size(), of(node.inputs[1]));
      } else if (op == "OneHot" && node.inputs.size() > 2) {
        out.assign(out.size(), of(node.inputs[2]));
      } else if (op == "Constant" || op == "ConstantOfShape") {
        DType t = op == "ConstantOfShape" ? DType::kFloat32 : DType::kUndefined;
        for (const auto& [key, a] : node.attributes) {
          if (key == "value") t = a.t.dtype();
          else if (key == "value_float" || key == "value_floats") t = DType::kFloat32;
          else if (key == "value_int" || key == "value_ints") t = DType::kInt64;
        }
        out.assign(out.size(), t);
      } else if (op == "Dropout" && out.size() > 1) {
        out[1] = DType::kBool;
      }
      for (size_t i = 0; i < node.outputs.size(); ++i) {
        if (node.outputs[i].empty() || out[i] == DType::kUndefined || of(node.outputs[i]) == out[i]) continue;
        type[node.outputs[i]] = out[i];
        changed = true;
      }
    }
    if (!changed) break;
  }
  return type;
}

// A Sin/Cos argument computed from a float initializer larger than this, or by more than 64
// nodes, is an activation, not a table of angles: it is not kept in float32.
constexpr int64_t kMaxAngleTableElements = int64_t{1} << 16;

// The nodes computing the arguments of Sin and Cos (rotary embeddings' angles: positions times
// inverse frequencies), with the Sin/Cos nodes themselves: these stay float32. In float16 a
// position-500 angle is off by up to 0.125 rad; bfloat16 does not even hold positions above 256
// exactly (docs-llama-12m: +33% perplexity). As the Hugging Face models do with .float() there.
// Indices into graph.nodes.
// With `inputs_float32` false (the graph's inputs change type), closures reading a float graph
// input are not kept.
std::set<size_t> AngleNodes(const Graph& graph, const std::map<std::string, DType>& type, bool inputs_float32) {
  std::map<std::string, size_t> producer;
  for (size_t i = 0; i < graph.nodes.size(); ++i)
    for (const std::string& o : graph.nodes[i].outputs)
      if (!o.empty()) producer[o] = i;
  auto is_float = [&](const std::string& v) {
    auto it = type.find(v);
    return it != type.end() && IsFloatingPoint(it->second);
  };
  std::set<size_t> kept;
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    const Node& trig = graph.nodes[i];
    if (!IsDefaultDomain(trig) || (trig.op_type != "Sin" && trig.op_type != "Cos") || trig.inputs.empty()) continue;
    std::set<size_t> closure = {i};
    std::vector<std::string> todo = {trig.inputs[0]};
    bool angles = true;
    while (!todo.empty() && angles) {
      const std::string v = todo.back();
      todo.pop_back();
      if (const Tensor* t = graph.FindInitializer(v)) {
        angles = t->numel() <= kMaxAngleTableElements;
        continue;
      }
      auto it = producer.find(v);
      if (it == producer.end()) {
        angles = inputs_float32;  // a graph input
        continue;
      }
      if (closure.count(it->second)) continue;
      closure.insert(it->second);
      angles = closure.size() <= 64;  // a few ops per table; more is a network
      for (const std::string& in : graph.nodes[it->second].inputs)
        if (!in.empty() && is_float(in)) todo.push_back(in);
    }
    if (angles) kept.insert(closure.begin(), closure.end());
  }
  return kept;
}

}  // namespace

DType ModelFloatDType(const Graph& graph) {
  std::map<DType, int64_t> elements;
  for (const std::string& name : graph.initializer_names()) {
    const Tensor* t = graph.FindInitializer(name);
    if (IsComputeFloat(t->dtype())) elements[t->dtype()] += t->numel();
  }
  DType best = DType::kUndefined;
  int64_t most = -1;
  for (const auto& [dtype, n] : elements)
    if (n > most) {
      best = dtype;
      most = n;
    }
  return best;
}

Tensor ConvertFloatTensor(const Tensor& t, DType to) {
  QC_CHECK(IsComputeFloat(t.dtype()) && IsComputeFloat(to) && !t.on_device());
  if (t.dtype() == to) return t;
  const int64_t n = t.numel();
  const float max = MaxFinite(to);
  Tensor out = Tensor::Uninitialized(to, t.shape());
  auto convert = [&](auto in_tag) {
    using In = decltype(in_tag);
    const In* x = static_cast<const In*>(t.raw());
    for (int64_t i = 0; i < n; ++i) {
      float v = LoadFloat(x[i]);
      if (std::isfinite(v) && std::fabs(v) > max) v = std::copysign(max, v);
      if (to == DType::kFloat16) out.mutable_data<Float16>()[i] = Float16{FloatToHalf(v)};
      else if (to == DType::kBFloat16) out.mutable_data<BFloat16>()[i] = BFloat16{FloatToBFloat16(v)};
      else out.mutable_data<float>()[i] = v;
    }
  };
  if (t.dtype() == DType::kFloat16) convert(Float16{});
  else if (t.dtype() == DType::kBFloat16) convert(BFloat16{});
  else convert(float{});
  return out;
}

Status ConvertFloatPrecision(Graph& graph, DType from, DType to, FloatInterface interface) {
  if (!IsComputeFloat(from) || !IsComputeFloat(to))
    return InvalidArgument("float precision: only float32, float16 and bfloat16 convert into each other, not " + DTypeName(from) +
                           " -> " + DTypeName(to));
  if (from == to) return Status::Ok();
  std::set<std::string> taken;
  const std::string suffix = "/" + DTypeName(to);

  // Nodes computing Sin/Cos arguments (and Sin/Cos) stay in float32; their results are cast.
  const std::set<size_t> angles = from == DType::kFloat32 ? AngleNodes(graph, InferDTypes(graph), interface == FloatInterface::kKeep) : std::set<size_t>{};
  std::set<std::string> angle_values;
  for (size_t i : angles)
    for (const std::string& o : graph.nodes[i].outputs)
      if (!o.empty()) angle_values.insert(o);

  // Values at the interface that keep their dtype: inputs, and initializers that are inputs
  // (overridable defaults) or outputs. Readers inside the graph see a Cast of them.
  std::set<std::string> boundary;
  if (interface == FloatInterface::kKeep) {
    for (const ValueInfo& v : graph.inputs) {
      const Tensor* init = graph.FindInitializer(v.name);
      if (v.dtype == from || (v.dtype == DType::kUndefined && init && init->dtype() == from)) boundary.insert(v.name);
    }
    for (const ValueInfo& v : graph.outputs) {
      const Tensor* t = graph.FindInitializer(v.name);
      if (t && t->dtype() == from) boundary.insert(v.name);
    }
  }
  // Initializers read at an input that must stay float32 keep it (when from is float32).
  std::set<std::string> keep_float32;
  if (from == DType::kFloat32)
    for (const Node& node : graph.nodes)
      for (size_t i = 0; i < node.inputs.size(); ++i)
        if (KeepsFloat32(node, i) && graph.FindInitializer(node.inputs[i])) keep_float32.insert(node.inputs[i]);

  // Initializers: converted, unless only angle nodes read them; read by both, the others get a
  // converted copy.
  std::map<std::string, int> readers;  // bit 1: an angle node, bit 2: another node
  for (size_t i = 0; i < graph.nodes.size(); ++i)
    for (const std::string& in : graph.nodes[i].inputs) readers[in] |= angles.count(i) ? 1 : 2;
  for (const std::string& name : std::vector<std::string>(graph.initializer_names())) {
    const Tensor* t = graph.FindInitializer(name);
    if (t->dtype() != from || boundary.count(name) || keep_float32.count(name)) continue;
    const int r = readers.count(name) ? readers[name] : 0;
    if (r == 1) continue;
    if (r == 3) {
      const std::string copy = FreshName(graph, taken, name + suffix);
      graph.SetInitializer(copy, ConvertFloatTensor(*t, to));
      RenameReads(graph, name, copy, angles);
      continue;
    }
    graph.SetInitializer(name, ConvertFloatTensor(*t, to));
  }
  for (size_t i = 0; i < graph.nodes.size(); ++i)
    if (!angles.count(i)) QC_RETURN_IF_ERROR(ConvertNode(graph.nodes[i], from, to));
  for (ValueInfo& v : graph.value_infos)
    if (v.dtype == from && !boundary.count(v.name) && !angle_values.count(v.name)) v.dtype = to;

  std::vector<Node> prologue, epilogue;
  // Interface inputs: a Cast for every reader but the angle nodes, which read them as they are.
  for (const std::string& name : boundary) {
    const std::string cast = FreshName(graph, taken, name + suffix);
    RenameReads(graph, name, cast, angles);
    prologue.push_back(MakeCast("qconvert_precision_in/" + name, name, cast, to));
  }
  // Angle results read elsewhere: cast to `to`.
  for (const std::string& v : angle_values) {
    if (!(readers.count(v) && (readers[v] & 2))) continue;
    const std::string cast = FreshName(graph, taken, v + suffix);
    RenameReads(graph, v, cast, angles);
    prologue.push_back(MakeCast("qconvert_precision_angles/" + v, v, cast, to));
  }
  // Computed values read where float32 is required get a Cast back.
  if (from == DType::kFloat32) {
    std::map<std::string, std::string> back;  // value -> its float32 copy
    for (size_t n = 0; n < graph.nodes.size(); ++n) {
      Node& node = graph.nodes[n];
      for (size_t i = 0; i < node.inputs.size(); ++i) {
        std::string& in = node.inputs[i];
        if (!KeepsFloat32(node, i) || in.empty() || keep_float32.count(in) || angle_values.count(in)) continue;
        auto [it, fresh] = back.emplace(in, "");
        if (fresh) {
          it->second = FreshName(graph, taken, in + "/float32");
          prologue.push_back(MakeCast("qconvert_precision_keep/" + in, in, it->second, DType::kFloat32));
        }
        in = it->second;
      }
    }
  }
  for (ValueInfo& out : graph.outputs) {
    if (interface == FloatInterface::kConvert) {
      if (out.dtype == from && !angle_values.count(out.name)) out.dtype = to;
      continue;
    }
    // Undeclared outputs are left to the caller (Session converts them back at run time); angle
    // values are float32 already.
    if (out.dtype != from || angle_values.count(out.name)) continue;
    bool produced = false;
    for (const Node& node : graph.nodes)
      for (const std::string& o : node.outputs) produced |= o == out.name;
    if (!produced) continue;  // a graph input or initializer passed through: already in its own dtype
    const std::string inner = FreshName(graph, taken, out.name + suffix);
    RenameReads(graph, out.name, inner);
    for (Node& node : graph.nodes)
      for (std::string& o : node.outputs)
        if (o == out.name) o = inner;
    epilogue.push_back(MakeCast("qconvert_precision_out/" + out.name, inner, out.name, from));
  }
  if (interface == FloatInterface::kConvert)
    for (ValueInfo& v : graph.inputs)
      if (v.dtype == from) v.dtype = to;
  // The executor orders nodes topologically; the Casts go first and last for readability.
  graph.nodes.insert(graph.nodes.begin(), std::make_move_iterator(prologue.begin()), std::make_move_iterator(prologue.end()));
  for (Node& cast : epilogue) graph.nodes.push_back(std::move(cast));
  return Status::Ok();
}

}  // namespace qc
