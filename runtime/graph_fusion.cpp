// Execution-only fusions (see graph_fusion.h). Each one rewrites the last node of a chain into
// the fused op and marks the chain's other nodes for removal; a chain is fused only when every
// intermediate value has exactly one reader and is not a graph output.
#include "runtime/graph_fusion.h"

#include <set>
#include <unordered_map>

namespace qc {
namespace {

class Fuser {
 public:
  explicit Fuser(Graph& graph) : graph_(graph) {
    for (size_t i = 0; i < graph.nodes.size(); ++i) {
      for (const auto& in : graph.nodes[i].inputs) readers_[in]++;
      for (const auto& out : graph.nodes[i].outputs) producer_[out] = static_cast<int>(i);
    }
    for (const auto& o : graph.outputs) outputs_.insert(o.name);
  }

  // silu(x) = Mul(x, Sigmoid(x)) => com.microsoft.QuickGelu(x, alpha=1): one pass over the
  // [S, intermediate] activation of every MLP instead of two.
  int FuseSilu() {
    int fused = 0;
    for (Node& mul : graph_.nodes) {
      if (!IsDefault(mul, "Mul") || mul.inputs.size() != 2) continue;
      for (int side = 0; side < 2; ++side) {
        const int s = Producer(mul.inputs[side], "Sigmoid");
        if (s < 0 || !Private(mul.inputs[side])) continue;
        const Node& sig = graph_.nodes[s];
        if (sig.inputs.size() != 1 || mul.inputs[1 - side] != sig.inputs[0]) continue;
        Node q = Fused(mul, "com.microsoft", "QuickGelu", {sig.inputs[0]});
        q.attributes["alpha"] = FloatAttribute(1.0f);
        erase_.insert(s);
        mul = std::move(q);
        ++fused;
        break;
      }
    }
    return fused;
  }

  // Softmax(Add(Mul(x, c), mask), axis=-1), c a scalar constant => qconvert.fused.
  // ScaledMaskedSoftmax(x, mask; scale=c): the attention scores [B, H, S, S] are the largest
  // tensors of a prefill, and the chain reads and writes them three times.
  //
  // x, c and the mask share one type T (Mul and Add take one), float32 or 16-bit; the fused op
  // computes in float32 and rounds once on store. The 16-bit exports either softmax in T itself
  // (torch.onnx dynamo of a float16 Llama: the plain chain) or in float32 (transformers'
  // softmax(..., dtype=float32).to(dtype)): Cast(Softmax(Cast(Add(Mul(x, c), mask), to=float)),
  // to=T), which fuses too, into the T-typed op.
  int FuseScaledMaskedSoftmax() {
    int fused = 0;
    for (size_t last = 0; last < graph_.nodes.size(); ++last) {
      if (erase_.count(static_cast<int>(last))) continue;
      Node& end = graph_.nodes[last];
      int softmax_index = static_cast<int>(last);
      int widen = -1;                   // the 16-bit form's inner Cast (its outer one is `end`)
      DType type = DType::kUndefined;   // the Cast form's T (the plain form takes c's type)
      if (IsDefault(end, "Cast") && end.inputs.size() == 1) {
        type = static_cast<DType>(end.GetInt("to", 0));
        softmax_index = Producer(end.inputs[0], "Softmax");
        if (!IsHalfFloat(type) || softmax_index < 0 || !Private(end.inputs[0])) continue;
        widen = CastTo(graph_.nodes[softmax_index].inputs[0], DType::kFloat32);
        if (widen < 0) continue;
      } else if (!IsDefault(end, "Softmax")) {
        continue;
      }
      const Node& softmax = graph_.nodes[softmax_index];
      if (softmax.inputs.size() != 1) continue;
      // Only an explicit last axis: the default axis differs before and after opset 13.
      auto axis = softmax.attributes.find("axis");
      if (axis == softmax.attributes.end() || axis->second.i != -1) continue;
      const std::string& scores = widen < 0 ? softmax.inputs[0] : graph_.nodes[widen].inputs[0];
      const int add = Producer(scores, "Add");
      if (add < 0 || !Private(scores) || graph_.nodes[add].inputs.size() != 2) continue;
      const Node& add_node = graph_.nodes[add];
      for (int side = 0; side < 2; ++side) {
        const int mul = Producer(add_node.inputs[side], "Mul");
        if (mul < 0 || !Private(add_node.inputs[side]) || graph_.nodes[mul].inputs.size() != 2) continue;
        const Node& mul_node = graph_.nodes[mul];
        const int c_side = ScalarConstant(mul_node.inputs[1]) ? 1 : ScalarConstant(mul_node.inputs[0]) ? 0 : -1;
        if (c_side < 0) continue;
        // c's type (a compute float: ScalarConstant) is x's and the mask's: in the Cast form it
        // must be the outer Cast's.
        if (widen >= 0 && graph_.FindInitializer(mul_node.inputs[c_side])->dtype() != type) continue;
        const float scale = graph_.FindInitializer(mul_node.inputs[c_side])->ToFloats()[0];
        Node f = Fused(end, "qconvert.fused", "ScaledMaskedSoftmax", {mul_node.inputs[1 - c_side], add_node.inputs[1 - side]});
        f.attributes["scale"] = FloatAttribute(scale);
        erase_.insert(add);
        erase_.insert(mul);
        if (widen >= 0) {  // `end`, the outer Cast, becomes the fused op
          erase_.insert(softmax_index);
          erase_.insert(widen);
        }
        end = std::move(f);
        ++fused;
        break;
      }
    }
    return fused;
  }

  // RMSNorm as exported from Llama-style models,
  //   Mul(w, Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2), axes=[-1]), eps)))))
  // => SimplifiedLayerNormalization(x, w; axis=-1, epsilon=eps): one pass over x instead of four
  // full-size ones, as ONNX Runtime's own optimizer rewrites it.
  //
  // The 16-bit exports normalise in float32 and multiply by the weight in their own type T:
  //   Mul(w, Cast(<the chain on x32>, to=T)), x32 = Cast(x, to=float), w and x of type T
  // => SimplifiedLayerNormalization(x, w) in T (float32 inside, one rounding on store instead of
  // two).
  int FuseRmsNorm() {
    int fused = 0;
    for (Node& scale_mul : graph_.nodes) {
      if (!IsDefault(scale_mul, "Mul") || scale_mul.inputs.size() != 2) continue;
      for (int side = 0; side < 2; ++side) {
        const Tensor* w = graph_.FindInitializer(scale_mul.inputs[side]);
        if (w == nullptr || w->rank() != 1 || !IsComputeFloat(w->dtype())) continue;
        std::vector<int> casts;
        std::string normalised = scale_mul.inputs[1 - side];
        if (w->dtype() != DType::kFloat32) {
          const int narrow = CastTo(normalised, w->dtype());
          if (narrow < 0) continue;
          casts.push_back(narrow);
          normalised = graph_.nodes[narrow].inputs[0];
        }
        const std::vector<int> chain = RmsChain(normalised);
        if (chain.empty()) continue;
        const Node& pow = graph_.nodes[chain.back()];
        std::string x = pow.inputs[0];
        if (!casts.empty()) {
          // x32 is read by the chain's Pow and Mul only; x itself must be of w's type.
          const int widen = Producer(x, "Cast");
          auto readers = readers_.find(x);
          if (widen < 0 || graph_.nodes[widen].GetInt("to", 0) != static_cast<int64_t>(DType::kFloat32) ||
              readers == readers_.end() || readers->second != 2 || outputs_.count(x) ||
              graph_.nodes[widen].inputs.size() != 1 || TypeOf(graph_.nodes[widen].inputs[0]) != w->dtype())
            continue;
          casts.push_back(widen);
          x = graph_.nodes[widen].inputs[0];
        }
        const Node& add = graph_.nodes[chain[3]];
        const std::string& eps = ScalarConstant(add.inputs[0]) ? add.inputs[0] : add.inputs[1];
        Node f = Fused(scale_mul, "", "SimplifiedLayerNormalization", {x, scale_mul.inputs[side]});
        Attribute axis;
        axis.type = Attribute::Type::kInt;
        axis.i = -1;
        f.attributes["axis"] = axis;
        f.attributes["epsilon"] = FloatAttribute(graph_.FindInitializer(eps)->ToFloats()[0]);
        for (int node : chain) erase_.insert(node);
        for (int node : casts) erase_.insert(node);
        scale_mul = std::move(f);
        ++fused;
        break;
      }
    }
    return fused;
  }

  // The W8A8 layers' per-token activation quantization (docs/FORMAT.md, "W8A8"), eight ops and as
  // many passes over X (or its rest channels X_R = Gather(X, R, axis=-1), outlier-split):
  //   s = Div(Max(ReduceMax(Abs(X_R), axes=[-1], keepdims=1), eps), 127)
  //   q = Cast<uint8>(Add(Round(Div(X_R, s)), 128))
  // => qconvert.fused.QuantizeTokensUint8(X[, R]; epsilon=eps) -> (q, s), in X's type (float32,
  // float16 or bfloat16; the chain's constants of the same type). s keeps its other readers (the
  // layers' output scaling). The fused node takes the chain's first node's place: its inputs exist
  // there, and every reader of q and s comes after it.
  int FuseTokenQuantization() {
    int fused = 0;
    for (size_t last = 0; last < graph_.nodes.size(); ++last) {
      if (erase_.count(static_cast<int>(last))) continue;
      const Node& cast = graph_.nodes[last];
      if (!IsDefault(cast, "Cast") || cast.inputs.size() != 1 || cast.outputs.size() != 1 ||
          cast.GetInt("to", 0) != static_cast<int64_t>(DType::kUInt8))
        continue;
      std::vector<int> chain;  // Add, Round, Div(X, s), then Div(m, 127), Max, ReduceMax, Abs
      const int add = Producer(cast.inputs[0], "Add");
      if (add < 0 || !Private(cast.inputs[0])) continue;
      const std::string* rounded = OtherInputThan(graph_.nodes[add], 128.0f);
      const int round = rounded ? Producer(*rounded, "Round") : -1;
      if (round < 0 || !Private(*rounded) || graph_.nodes[round].inputs.size() != 1) continue;
      const std::string& scaled = graph_.nodes[round].inputs[0];
      const int div_x = Producer(scaled, "Div");
      if (div_x < 0 || !Private(scaled) || graph_.nodes[div_x].inputs.size() != 2) continue;
      const std::string& xr = graph_.nodes[div_x].inputs[0];
      const std::string& s = graph_.nodes[div_x].inputs[1];
      const int div_m = Producer(s, "Div");
      if (div_m < 0 || outputs_.count(s) || graph_.nodes[div_m].inputs.size() != 2 ||
          !IsFloatConstant(graph_.nodes[div_m].inputs[1], 127.0f))
        continue;
      const std::string& m = graph_.nodes[div_m].inputs[0];
      const int max = Producer(m, "Max");
      if (max < 0 || !Private(m) || graph_.nodes[max].inputs.size() != 2) continue;
      const Node& max_node = graph_.nodes[max];
      const int eps_side = ScalarConstant(max_node.inputs[1]) ? 1 : ScalarConstant(max_node.inputs[0]) ? 0 : -1;
      if (eps_side < 0) continue;
      const std::string& abs_max = max_node.inputs[1 - eps_side];
      const int reduce = Producer(abs_max, "ReduceMax");
      if (reduce < 0 || !Private(abs_max) || graph_.nodes[reduce].GetInt("keepdims", 1) != 1 ||
          !LastAxisOnly(graph_.nodes[reduce]))
        continue;
      const std::string& abs_value = graph_.nodes[reduce].inputs[0];
      const int abs = Producer(abs_value, "Abs");
      if (abs < 0 || !Private(abs_value) || graph_.nodes[abs].inputs.size() != 1 || graph_.nodes[abs].inputs[0] != xr) continue;
      // One float type throughout (float32, or a 16-bit one whose ops the fused kernel rounds as
      // the chain does): X's, and the constants' 128, 127 and eps.
      const DType type = TypeOf(xr);
      const Node& add_node = graph_.nodes[add];
      const std::string& c128 = &add_node.inputs[0] == rounded ? add_node.inputs[1] : add_node.inputs[0];
      if (!IsComputeFloat(type)) continue;
      bool one_type = true;
      for (const std::string* c : std::initializer_list<const std::string*>{&c128, &graph_.nodes[div_m].inputs[1], &max_node.inputs[eps_side]})
        one_type &= graph_.FindInitializer(*c)->dtype() == type;
      if (!one_type) continue;
      // X_R read by the chain alone (Abs and the Div): a Gather of X along the last axis fuses too.
      std::vector<std::string> inputs = {xr};
      int first = abs;
      const int gather = Producer(xr, "Gather");
      auto readers = readers_.find(xr);
      if (gather >= 0 && readers != readers_.end() && readers->second == 2 && !outputs_.count(xr) &&
          graph_.nodes[gather].inputs.size() == 2 && graph_.nodes[gather].GetInt("axis", 0) == -1) {
        const Tensor* columns = graph_.FindInitializer(graph_.nodes[gather].inputs[1]);
        if (columns != nullptr && columns->dtype() == DType::kInt64 && columns->rank() == 1) {
          inputs = graph_.nodes[gather].inputs;
          first = gather;
          erase_.insert(abs);
        }
      }
      Node f;
      f.name = graph_.nodes[first].name;
      f.domain = "qconvert.fused";
      f.op_type = "QuantizeTokensUint8";
      f.inputs = std::move(inputs);
      f.outputs = {cast.outputs[0], s};
      f.attributes["epsilon"] = FloatAttribute(graph_.FindInitializer(max_node.inputs[eps_side])->ToFloats()[0]);
      for (int n : {static_cast<int>(last), add, round, div_x, div_m, max, reduce, abs})
        if (n != first) erase_.insert(n);
      graph_.nodes[first] = std::move(f);
      ++fused;
    }
    return fused;
  }

  void EraseFusedNodes() {
    if (erase_.empty()) return;
    std::vector<Node> kept;
    for (size_t i = 0; i < graph_.nodes.size(); ++i)
      if (!erase_.count(static_cast<int>(i))) kept.push_back(std::move(graph_.nodes[i]));
    graph_.nodes = std::move(kept);
  }

 private:
  static bool IsDefault(const Node& n, const char* op) { return n.domain.empty() && n.op_type == op; }

  // The index of the default-domain `op` node producing `value`, not already fused away; else -1.
  int Producer(const std::string& value, const char* op) const {
    auto it = producer_.find(value);
    if (it == producer_.end() || erase_.count(it->second) || !IsDefault(graph_.nodes[it->second], op)) return -1;
    return graph_.nodes[it->second].outputs.size() == 1 ? it->second : -1;
  }
  // Read by one node only and not a graph output: the chain may swallow it.
  bool Private(const std::string& value) const {
    auto it = readers_.find(value);
    return it != readers_.end() && it->second == 1 && !outputs_.count(value);
  }
  // A one-element float constant (float32 in a float32 chain; float16/bfloat16 ones scale the
  // 16-bit exports' attention scores).
  bool ScalarConstant(const std::string& value) const {
    const Tensor* t = graph_.FindInitializer(value);
    return t != nullptr && IsComputeFloat(t->dtype()) && t->numel() == 1;
  }
  // A one-element compute-float initializer equal to `v`.
  bool IsFloatConstant(const std::string& value, float v) const {
    return ScalarConstant(value) && graph_.FindInitializer(value)->ToFloats()[0] == v;
  }
  // The other input of a two-input node one of whose inputs is the float constant `v`; else null.
  const std::string* OtherInputThan(const Node& node, float v) const {
    if (node.inputs.size() != 2) return nullptr;
    if (IsFloatConstant(node.inputs[1], v)) return &node.inputs[0];
    if (IsFloatConstant(node.inputs[0], v)) return &node.inputs[1];
    return nullptr;
  }
  // The Cast node producing `value` with target `to`, its output private to the chain; else -1.
  int CastTo(const std::string& value, DType to) const {
    const int c = Producer(value, "Cast");
    if (c < 0 || !Private(value) || graph_.nodes[c].inputs.size() != 1) return -1;
    return graph_.nodes[c].GetInt("to", 0) == static_cast<int64_t>(to) ? c : -1;
  }
  // The element type of `value` where the graph fixes it: declared (input, value_info,
  // initializer), a Cast's target, or the type every input of a type-preserving op shares
  // (ONNX's own constraints); kUndefined when nothing says.
  DType TypeOf(const std::string& value) {
    if (auto it = types_.find(value); it != types_.end()) return it->second;
    types_[value] = DType::kUndefined;  // guards against cycles in a malformed graph
    DType t = DType::kUndefined;
    if (const Tensor* init = graph_.FindInitializer(value)) t = init->dtype();
    for (const auto* infos : {&graph_.inputs, &graph_.value_infos, &graph_.outputs})
      for (const ValueInfo& vi : *infos)
        if (t == DType::kUndefined && vi.name == value) t = vi.dtype;
    auto p = producer_.find(value);
    if (t == DType::kUndefined && p != producer_.end()) {
      const Node& n = graph_.nodes[p->second];
      static const std::set<std::string> kSameType = {
          "Add", "Sub", "Mul", "Div", "Neg", "Sqrt", "Reciprocal", "Sigmoid", "Softmax", "MatMul", "Reshape", "Transpose",
          "Squeeze", "Unsqueeze", "Identity", "Expand", "Slice", "Concat", "Gather", "ReduceMean", "Max", "Min",
          "SimplifiedLayerNormalization", "QuickGelu", "MatMulNBits"};
      if (n.op_type == "Cast" && n.domain.empty()) {
        t = static_cast<DType>(n.GetInt("to", 0));
      } else if ((n.op_type == "GatherBlockQuantized" && n.inputs.size() > 2) ||
                 (n.op_type == "DequantizeLinear" && n.inputs.size() > 1)) {
        t = TypeOf(n.inputs[n.op_type == "DequantizeLinear" ? 1 : 2]);  // the scales' type
      } else if (kSameType.count(n.op_type) && !n.inputs.empty() && !n.inputs[0].empty()) {
        t = TypeOf(n.inputs[0]);  // Gather/Reshape/...: the data input's; elementwise: every input's
      }
    }
    types_[value] = t;
    return t;
  }
  // The nodes [Mul(x, r), Reciprocal, Sqrt, Add(eps), ReduceMean, Pow(x, 2)] computing the
  // normalised `value`, each output private to the chain; empty if `value` is not that.
  std::vector<int> RmsChain(const std::string& value) const {
    const int mul = Producer(value, "Mul");
    if (mul < 0 || !Private(value) || graph_.nodes[mul].inputs.size() != 2) return {};
    for (int side = 0; side < 2; ++side) {
      const Node& m = graph_.nodes[mul];
      const std::string& x = m.inputs[1 - side];
      std::vector<int> chain = {mul};
      std::string v = m.inputs[side];
      for (const char* op : {"Reciprocal", "Sqrt", "Add", "ReduceMean", "Pow"}) {
        const int n = Producer(v, op);
        if (n < 0 || !Private(v)) break;
        chain.push_back(n);
        const Node& node = graph_.nodes[n];
        if (std::string(op) == "Add") {
          if (node.inputs.size() != 2) break;
          const int c = ScalarConstant(node.inputs[1]) ? 1 : ScalarConstant(node.inputs[0]) ? 0 : -1;
          if (c < 0) break;
          v = node.inputs[1 - c];
        } else if (std::string(op) == "ReduceMean") {
          if (node.GetInt("keepdims", 1) != 1 || !LastAxisOnly(node)) break;
          v = node.inputs[0];
        } else if (std::string(op) == "Pow") {
          if (node.inputs.size() != 2 || node.inputs[0] != x || !ScalarConstant(node.inputs[1]) ||
              graph_.FindInitializer(node.inputs[1])->ToFloats()[0] != 2.0f)
            break;
          return chain;
        } else {
          if (node.inputs.size() != 1) break;
          v = node.inputs[0];
        }
      }
    }
    return {};
  }
  // A reduction (ReduceMean, ReduceMax) over axes [-1] only, given as the opset-18 input or the older attribute.
  bool LastAxisOnly(const Node& reduce) const {
    if (reduce.inputs.size() >= 2 && !reduce.inputs[1].empty()) {
      const Tensor* axes = graph_.FindInitializer(reduce.inputs[1]);
      return axes != nullptr && axes->dtype() == DType::kInt64 && axes->numel() == 1 && axes->data<int64_t>()[0] == -1;
    }
    return reduce.GetInts("axes", {}) == std::vector<int64_t>{-1};
  }
  // A node replacing `last` (same name and outputs) with the given op and inputs.
  static Node Fused(const Node& last, const char* domain, const char* op, std::vector<std::string> inputs) {
    Node n;
    n.name = last.name;
    n.domain = domain;
    n.op_type = op;
    n.inputs = std::move(inputs);
    n.outputs = last.outputs;
    return n;
  }
  static Attribute FloatAttribute(float v) {
    Attribute a;
    a.type = Attribute::Type::kFloat;
    a.f = v;
    return a;
  }

  Graph& graph_;
  std::unordered_map<std::string, int> readers_;
  std::unordered_map<std::string, int> producer_;
  std::set<std::string> outputs_;
  std::set<int> erase_;
  std::unordered_map<std::string, DType> types_;  // TypeOf's answers
};

}  // namespace

int FuseForExecution(Graph& graph) {
  for (const Node& n : graph.nodes)
    for (const auto& [key, a] : n.attributes)
      if (a.g || !a.graphs.empty()) return 0;  // subgraphs may read values implicitly: stay out
  Fuser fuser(graph);
  const int fused = fuser.FuseSilu() + fuser.FuseScaledMaskedSoftmax() + fuser.FuseRmsNorm() + fuser.FuseTokenQuantization();
  fuser.EraseFusedNodes();
  return fused;
}

}  // namespace qc
