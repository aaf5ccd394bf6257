// Function-preserving per-input-channel rescaling of a layer group (see channel_scaling.h).
#include "passes/channel_scaling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>

#include "formats/linear_layers.h"
#include "runtime/executor.h"
#include "runtime/input_binding.h"

namespace qc {
namespace {

// Readers and producers of every value of the main graph (subgraph reads count as reads by the
// node that owns the subgraph, so a value an If branch reads is never treated as exclusive).
struct GraphIndex {
  std::unordered_map<std::string, int> producer;
  std::unordered_map<std::string, std::vector<int>> readers;
  std::set<std::string> graph_outputs;
  std::set<std::string> graph_inputs;
  std::set<std::string> names;  // every value, node and initializer name (for fresh names)

  explicit GraphIndex(const Graph& g) {
    for (const auto& v : g.inputs) graph_inputs.insert(v.name), names.insert(v.name);
    for (const auto& v : g.outputs) graph_outputs.insert(v.name), names.insert(v.name);
    for (const auto& v : g.value_infos) names.insert(v.name);
    for (const auto& n : g.initializer_names()) names.insert(n);
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      const Node& node = g.nodes[i];
      names.insert(node.name);
      for (const auto& o : node.outputs)
        if (!o.empty()) producer[o] = static_cast<int>(i), names.insert(o);
      std::set<std::string> read;
      CollectReadValues(node, &read);
      for (const auto& v : read) readers[v].push_back(static_cast<int>(i));
    }
  }

  const std::vector<int>& Readers(const std::string& v) const {
    static const std::vector<int> kNone;
    auto it = readers.find(v);
    return it == readers.end() ? kNone : it->second;
  }
  int Producer(const std::string& v) const {
    auto it = producer.find(v);
    return it == producer.end() ? -1 : it->second;
  }
  /// Readers of `v` that depend on its values: a Shape or Size node sees only the shape, which
  /// scaling keeps (the TorchScript exporter reads shapes of activations for its Reshapes).
  std::vector<int> ValueReaders(const Graph& g, const std::string& v) const {
    std::vector<int> out;
    for (int r : Readers(v)) {
      const Node& n = g.nodes[r];
      if (!(n.domain.empty() && (n.op_type == "Shape" || n.op_type == "Size"))) out.push_back(r);
    }
    return out;
  }
  /// True when `v` is an intermediate value whose values only the node `reader` reads.
  bool OnlyReader(const Graph& g, const std::string& v, int reader) const {
    const auto r = ValueReaders(g, v);
    return r.size() == 1 && r[0] == reader && !graph_outputs.count(v) && !graph_inputs.count(v);
  }
  std::string Fresh(const std::string& base) {
    std::string name = base;
    for (int i = 1; names.count(name); ++i) name = base + "_" + std::to_string(i);
    names.insert(name);
    return name;
  }
};

// Records edits so a fold whose numeric check fails can be undone exactly.
class Editor {
 public:
  explicit Editor(Model& model) : graph_(model.graph) {}

  void SetInitializer(const std::string& name, Tensor t) {
    const Tensor* old = graph_.FindInitializer(name);
    init_log_.emplace_back(name, old ? std::optional<Tensor>(*old) : std::nullopt);
    graph_.SetInitializer(name, std::move(t));
  }
  void SetInput(int node, int input, const std::string& value) {
    input_log_.push_back({node, input, graph_.nodes[node].inputs[input]});
    graph_.nodes[node].inputs[input] = value;
  }
  void Undo() {
    for (auto it = input_log_.rbegin(); it != input_log_.rend(); ++it) graph_.nodes[it->node].inputs[it->input] = it->old;
    for (auto it = init_log_.rbegin(); it != init_log_.rend(); ++it) {
      if (it->second) graph_.SetInitializer(it->first, *it->second);
      else graph_.RemoveInitializer(it->first);
    }
    Commit();
  }
  void Commit() {
    init_log_.clear();
    input_log_.clear();
  }

 private:
  struct InputEdit {
    int node;
    int input;
    std::string old;
  };
  Graph& graph_;
  std::vector<std::pair<std::string, std::optional<Tensor>>> init_log_;
  std::vector<InputEdit> input_log_;
};

// A float tensor of `dtype` holding `values` in `shape`.
StatusOr<Tensor> FloatsLike(DType dtype, const std::vector<float>& values, const Shape& shape) {
  Tensor t(dtype, shape);
  QC_CHECK(static_cast<int64_t>(values.size()) == t.numel());
  switch (dtype) {
    case DType::kFloat32:
      std::copy(values.begin(), values.end(), t.mutable_data<float>());
      return t;
    case DType::kFloat64:
      for (size_t i = 0; i < values.size(); ++i) t.mutable_data<double>()[i] = values[i];
      return t;
    case DType::kFloat16:
      for (size_t i = 0; i < values.size(); ++i) t.mutable_data<Float16>()[i].bits = FloatToHalf(values[i]);
      return t;
    case DType::kBFloat16:
      for (size_t i = 0; i < values.size(); ++i) t.mutable_data<BFloat16>()[i].bits = FloatToBFloat16(values[i]);
      return t;
    default:
      return Unimplemented("cannot rescale a " + DTypeName(dtype) + " tensor");
  }
}

// A constant value: an initializer that no graph input overrides, or a Constant node's tensor.
const Tensor* FindConstant(const Graph& g, const GraphIndex& index, const std::string& v) {
  if (v.empty() || index.graph_inputs.count(v)) return nullptr;
  if (const Tensor* t = g.FindInitializer(v)) return t;
  const int p = index.Producer(v);
  if (p < 0) return nullptr;
  const Node& n = g.nodes[p];
  if (n.op_type == "Constant" && n.domain.empty()) {
    auto it = n.attributes.find("value");
    if (it != n.attributes.end() && it->second.type == Attribute::Type::kTensor) return &it->second.t;
  }
  return nullptr;
}

// A tensor that varies along the last axis only, with last dimension `k`: [k] or [1, .., 1, k].
bool IsChannelVector(const Tensor& t, int64_t k) {
  if (t.rank() < 1 || t.dim(-1) != k || !IsFloatingPoint(t.dtype())) return false;
  for (int i = 0; i + 1 < t.rank(); ++i)
    if (t.dim(i) != 1) return false;
  return true;
}

// Evaluates a small constant expression (Gemma's `1 + weight`): a constant, or Add/Sub/Mul/Div of
// two constant expressions where one side is a scalar or both have the same shape.
std::optional<Tensor> EvalConstant(const Graph& g, const GraphIndex& index, const std::string& v, int depth = 0) {
  if (const Tensor* t = FindConstant(g, index, v)) {
    if (!IsFloatingPoint(t->dtype())) return std::nullopt;
    return *t;
  }
  const int p = index.Producer(v);
  if (p < 0 || depth > 3) return std::nullopt;
  const Node& n = g.nodes[p];
  static const std::set<std::string> kArith = {"Add", "Sub", "Mul", "Div"};
  if (!n.domain.empty() || !kArith.count(n.op_type) || n.inputs.size() != 2 || n.outputs.size() != 1) return std::nullopt;
  auto a = EvalConstant(g, index, n.inputs[0], depth + 1), b = EvalConstant(g, index, n.inputs[1], depth + 1);
  if (!a || !b || a->dtype() != b->dtype()) return std::nullopt;
  const bool same = a->shape() == b->shape();
  if (!same && a->numel() != 1 && b->numel() != 1) return std::nullopt;
  const Shape shape = a->numel() >= b->numel() && (same || b->numel() == 1) ? a->shape() : b->shape();
  const std::vector<float> av = a->ToFloats(), bv = b->ToFloats();
  std::vector<float> out(std::max(av.size(), bv.size()));
  for (size_t i = 0; i < out.size(); ++i) {
    const float x = av[av.size() == 1 ? 0 : i], y = bv[bv.size() == 1 ? 0 : i];
    out[i] = n.op_type == "Add" ? x + y : n.op_type == "Sub" ? x - y : n.op_type == "Mul" ? x * y : x / y;
  }
  StatusOr<Tensor> t = FloatsLike(a->dtype(), out, shape);
  if (!t.ok()) return std::nullopt;
  return *t;
}

bool IsNormOp(const Node& n) {
  static const std::set<std::string> kNorms = {"LayerNormalization", "SimplifiedLayerNormalization",
                                               "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
                                               "RMSNormalization"};
  return kNorms.count(n.op_type) && (n.domain.empty() || n.domain == "com.microsoft");
}

// Input positions of a normalisation's per-channel affine parameters (scale, then bias if any).
std::vector<int> NormAffineInputs(const Node& n) {
  if (n.op_type == "LayerNormalization") return {1, 2};
  if (n.op_type == "SkipLayerNormalization") return {2, 3};  // input, skip, gamma, beta, bias
  if (n.op_type == "SkipSimplifiedLayerNormalization") return {2};  // input, skip, gamma, bias
  return {1};  // SimplifiedLayerNormalization, RMSNormalization: X, scale
}

// One per-channel constant of the plan: node input `input` of node `node` is multiplied along its
// last axis by the factor of the channel that each position maps to.
struct ConstEdit {
  int node = -1;
  int input = -1;
  // column -> X channel (position j of the constant's last axis scales by 1/s[channel[j]]), -1:
  // unchanged. Empty: identity (the constant is in X's channel space).
  std::vector<int64_t> channel;
};

// Where 1/s goes.
struct FoldPlan {
  std::vector<ConstEdit> consts;
  // A linear producer: its output columns [offset, offset + k) are X's channels.
  std::optional<LinearLayer> producer;
  int64_t producer_offset = 0;
  std::string description;
  std::vector<std::string> route;  // ops from the linear producer down to X
  bool needs_probe = false;  // the channel mapping rests on assumptions a numeric check verifies
};

class ChannelScaler {
 public:
  ChannelScaler(Model& model, const LayerGroup& group, const std::vector<float>& s)
      : model_(model), g_(model.graph), group_(group), s_(s), k_(static_cast<int64_t>(s.size())), index_(g_),
        editor_(model) {}

  StatusOr<ChannelScaleResult> Run() {
    QC_RETURN_IF_ERROR(Validate());
    ChannelScaleResult result;
    std::string why_not;
    std::optional<FoldPlan> plan = PlanFold(&why_not);
    bool folded = false;
    if (plan && plan->needs_probe) {
      Status probe = ProbeFold(*plan);
      if (!probe.ok()) {
        why_not = plan->description + " rejected: " + probe.message();
        plan.reset();
      }
    }
    if (plan) {
      Status applied = ApplyFold(*plan, s_);
      if (applied.ok()) {
        editor_.Commit();
        result.folded_into = plan->description;
        folded = true;
      } else {  // e.g. a constant of a dtype we cannot rescale: leave it and insert the Mul
        editor_.Undo();
        replaced_.clear();
        why_not = plan->description + " failed: " + applied.message();
      }
    }
    std::vector<std::pair<int, Node>> insertions;  // (insert before node index, node)
    if (!folded) {
      Node mul;
      mul.name = index_.Fresh(group_.input + "_channel_scale");
      mul.op_type = "Mul";
      std::vector<float> inv(k_);
      for (int64_t c = 0; c < k_; ++c) inv[c] = 1.0f / s_[c];
      const std::string inv_name = index_.Fresh(group_.input + "_inv_channel_scale");
      QC_ASSIGN_OR_RETURN(Tensor inv_t, FloatsLike(ActivationDType(), inv, {k_}));
      g_.SetInitializer(inv_name, std::move(inv_t));
      const std::string scaled = index_.Fresh(group_.input + "_channel_scaled");
      mul.inputs = {group_.input, inv_name};
      mul.outputs = {scaled};
      for (const LinearLayer& l : group_.layers) g_.nodes[l.node_index].inputs[0] = scaled;
      insertions.emplace_back(FirstGroupNode(), std::move(mul));
      result.inserted_mul = true;
      result.folded_into = "inserted Mul '" + insertions.back().second.name + "'";
      if (!why_not.empty()) result.folded_into += " (" + why_not + ")";
    }
    QC_RETURN_IF_ERROR(ScaleGroupWeights(&insertions));
    editor_.Commit();
    // Back to front, so earlier insertion points stay valid.
    std::stable_sort(insertions.begin(), insertions.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    for (auto& [at, node] : insertions) g_.nodes.insert(g_.nodes.begin() + at, std::move(node));
    RemoveDeadConstants();
    return result;
  }

  // The linear layer PlanFold would fold into (its node's output value), without the probe.
  std::optional<std::string> PlannedLinearTarget() {
    if (!Validate().ok()) return std::nullopt;
    std::string why_not;
    const std::optional<FoldPlan> plan = PlanFold(&why_not);
    if (!plan || !plan->producer) return std::nullopt;
    return g_.nodes[plan->producer->node_index].outputs[0];
  }

 private:
  Status Validate() {
    if (group_.layers.empty()) return InvalidArgument("channel scaling: the layer group of '" + group_.input + "' is empty");
    for (size_t c = 0; c < s_.size(); ++c)
      if (!std::isfinite(s_[c]) || !(s_[c] > 0))
        return InvalidArgument("channel scaling of '" + group_.input + "': s[" + std::to_string(c) + "] = " +
                               std::to_string(s_[c]) + " is not a finite positive number");
    for (const LinearLayer& l : group_.layers) {
      if (l.node_index < 0 || l.node_index >= static_cast<int>(g_.nodes.size()) ||
          g_.nodes[l.node_index].name != l.node_name || g_.nodes[l.node_index].op_type != l.op_type)
        return Internal("linear layer '" + l.node_name + "' no longer matches the graph (stale layer list)");
      if (l.input != group_.input || g_.nodes[l.node_index].inputs[0] != group_.input)
        return InvalidArgument("layer '" + l.node_name + "' does not read the group's input '" + group_.input + "'");
      if (l.k != k_)
        return InvalidArgument("channel scaling of '" + group_.input + "': " + std::to_string(k_) +
                               " scales for layer '" + l.node_name + "' with " + std::to_string(l.k) + " input features");
      group_nodes_.insert(l.node_index);
      // Checked here so that scaling the weights, the last step, cannot fail half way.
      const Tensor* w = g_.FindInitializer(l.weight);
      if (!w) return Internal("weight '" + l.weight + "' of '" + l.node_name + "' is missing");
      if (!IsFloatingPoint(w->dtype()))  // the dtypes FloatsLike writes
        return Unimplemented("weight '" + l.weight + "' is " + DTypeName(w->dtype()) +
                             "; channel scaling needs float32, float64, float16 or bfloat16");
      for (const LinearLayer& other : group_.layers)
        if (other.weight == l.weight && other.transposed != l.transposed)
          return Unimplemented("weight '" + l.weight + "' is read both transposed and not by the group");
    }
    return Status::Ok();
  }

  int FirstGroupNode() const { return *group_nodes_.begin(); }

  DType ActivationDType() const {
    const Tensor* w = g_.FindInitializer(group_.layers.front().weight);
    return w && IsFloatingPoint(w->dtype()) ? w->dtype() : DType::kFloat32;
  }

  // ---- Planning ----------------------------------------------------------------------------

  std::optional<FoldPlan> PlanFold(std::string* why_not) {
    const std::string& x = group_.input;
    if (index_.graph_inputs.count(x) || index_.graph_outputs.count(x) || FindConstant(g_, index_, x)) {
      *why_not = "'" + x + "' is a graph input, output or constant";
      return std::nullopt;
    }
    for (int r : index_.ValueReaders(g_, x))
      if (!group_nodes_.count(r)) {
        *why_not = "'" + x + "' is also read by " + g_.nodes[r].Describe();
        return std::nullopt;
      }
    FoldPlan plan;
    std::vector<std::string> path;
    std::string v = x;
    // Ops that keep X's channels on the last axis one to one: Reshapes that keep the last
    // dimension k, and per-channel bias Adds (which are divided by s too).
    for (int depth = 0; depth < 8; ++depth) {
      const int p = index_.Producer(v);
      if (p < 0) {
        *why_not = "'" + v + "' has no producer";
        return std::nullopt;
      }
      const Node& n = g_.nodes[p];
      if (n.op_type == "Reshape" && n.domain.empty() && n.inputs.size() >= 2) {
        if (LastShapeEntry(n.inputs[1]) != k_ || !index_.OnlyReader(g_, n.inputs[0], p)) break;
        path.push_back("Reshape");
        v = n.inputs[0];
        continue;
      }
      if (n.op_type == "Add" && n.domain.empty() && n.inputs.size() == 2) {
        const int ci = FindConstant(g_, index_, n.inputs[1]) ? 1 : FindConstant(g_, index_, n.inputs[0]) ? 0 : -1;
        if (ci < 0) break;
        const Tensor* c = FindConstant(g_, index_, n.inputs[ci]);
        const std::string& other = n.inputs[1 - ci];
        if (!IsChannelVector(*c, k_) || !index_.OnlyReader(g_, other, p)) break;
        plan.consts.push_back({p, ci, {}});
        path.push_back("Add");
        v = other;
        continue;
      }
      break;
    }
    const int p = index_.Producer(v);
    if (p < 0) {
      *why_not = "'" + v + "' has no producer";
      return std::nullopt;
    }
    const Node& n = g_.nodes[p];
    auto via = [&] {
      std::string s;
      for (auto it = path.rbegin(); it != path.rend(); ++it) s += (s.empty() ? " via " : ", ") + *it;
      return s;
    };
    // A normalisation's output 0 is scale * normalized (+ bias): divide scale and bias.
    if (IsNormOp(n)) {
      if (n.outputs.empty() || n.outputs[0] != v) {
        *why_not = "X is not output 0 of " + n.Describe();
        return std::nullopt;
      }
      for (int i : NormAffineInputs(n)) {
        if (i >= static_cast<int>(n.inputs.size()) || n.inputs[i].empty()) continue;
        const Tensor* c = FindConstant(g_, index_, n.inputs[i]);
        if (!c || !IsChannelVector(*c, k_)) {
          *why_not = "the affine parameters of " + n.Describe() + " are not constant [" + std::to_string(k_) + "] vectors";
          return std::nullopt;
        }
        plan.consts.push_back({p, i, {}});
      }
      plan.description = n.op_type + " '" + n.name + "'" + via();
      return plan;
    }
    // Mul by a per-channel constant (the decomposed RMSNorm's weight, Gemma's 1 + weight).
    if (n.op_type == "Mul" && n.domain.empty() && n.inputs.size() == 2) {
      for (int ci = 0; ci < 2; ++ci) {
        std::optional<Tensor> c = EvalConstant(g_, index_, n.inputs[ci]);
        if (!c || !IsChannelVector(*c, k_)) continue;
        if (EvalConstant(g_, index_, n.inputs[1 - ci])) continue;  // both constant: nothing to fold into
        plan.consts.push_back({p, ci, {}});
        plan.description = "Mul '" + n.name + "' (per-channel constant)" + via();
        return plan;
      }
    }
    // A linear layer upstream, through channel-preserving ops.
    std::string chain_why;
    if (PlanLinearProducer(v, &plan, &chain_why)) {
      plan.needs_probe = true;
      plan.route.insert(plan.route.end(), path.rbegin(), path.rend());
      for (size_t i = 0; i < plan.route.size(); ++i) plan.description += (i ? ", " : " through ") + plan.route[i];
      return plan;
    }
    *why_not = "no fold target above '" + v + "' (" + n.Describe() + (chain_why.empty() ? "" : ": " + chain_why) + ")";
    return std::nullopt;
  }

  // The last entry of a Reshape's target shape when it is known statically: a constant, or a
  // Concat (the exporters' shape arithmetic) whose last piece is a constant.
  std::optional<int64_t> LastShapeEntry(const std::string& v, int depth = 0) const {
    if (const Tensor* t = FindConstant(g_, index_, v)) {
      if (t->rank() != 1 || t->numel() < 1 || IsFloatingPoint(t->dtype())) return std::nullopt;
      return t->ToInt64s().back();
    }
    const int p = index_.Producer(v);
    if (p < 0 || depth > 4) return std::nullopt;
    const Node& n = g_.nodes[p];
    if (n.domain.empty() && n.op_type == "Concat" && !n.inputs.empty() && n.GetInt("axis", 0) == 0)
      return LastShapeEntry(n.inputs.back(), depth + 1);
    if (n.domain.empty() && n.op_type == "Cast" && !n.inputs.empty()) return LastShapeEntry(n.inputs[0], depth + 1);
    return std::nullopt;
  }

  // True when `a` is `b` or an ancestor of `b` (so scaling `a` would also change `b`).
  bool DependsOn(const std::string& b, const std::string& a) const {
    std::set<std::string> seen;
    std::vector<std::string> stack = {b};
    while (!stack.empty()) {
      std::string v = stack.back();
      stack.pop_back();
      if (v == a) return true;
      if (!seen.insert(v).second) continue;
      const int p = index_.Producer(v);
      if (p < 0) continue;
      for (const auto& in : g_.nodes[p].inputs)
        if (!in.empty()) stack.push_back(in);
    }
    return false;
  }

  // Walks from `v` (X's channels on the last axis) up to a linear layer whose output columns become
  // X's channels through Reshape / Transpose / Split / Relu, the attention MatMul P·V (channels of
  // V), a Mul by another activation that does not depend on this branch (SwiGLU's up_proj) or by
  // a scalar, and the producer's per-column bias Add. The mapping assumed is column offset + c
  // (the offset of a Split part); the numeric probe checks it.
  bool PlanLinearProducer(std::string v, FoldPlan* plan, std::string* why) {
    std::vector<std::string> path;
    int64_t offset = 0;
    std::optional<ConstEdit> bias_add;
    std::unordered_map<int, size_t> layer_at;
    const std::vector<LinearLayer> layers = FindLinearLayers(g_);
    for (size_t i = 0; i < layers.size(); ++i) layer_at[layers[i].node_index] = i;
    for (int depth = 0; depth < 16; ++depth) {
      const int p = index_.Producer(v);
      if (p < 0) return false;
      const Node& n = g_.nodes[p];
      if (auto it = layer_at.find(p); it != layer_at.end() && n.outputs[0] == v) {
        const LinearLayer& l = layers[it->second];
        if (offset + k_ > l.n) {
          *why = "linear '" + l.node_name + "' has " + std::to_string(l.n) + " outputs, fewer than the " +
                 std::to_string(offset + k_) + " the mapping needs";
          return false;
        }
        if (offset == 0 && l.n != k_) {
          *why = "linear '" + l.node_name + "' has " + std::to_string(l.n) + " outputs for " + std::to_string(k_) +
                 " channels (grouped-query attention repeats them)";
          return false;
        }
        if (l.op_type == "Gemm" && !l.bias.empty()) {
          const Tensor* c = FindConstant(g_, index_, l.bias);
          if (!c || !IsChannelVector(*c, l.n)) {
            *why = "Gemm '" + l.node_name + "' has a bias that is not a constant [n] vector";
            return false;
          }
        }
        if (bias_add && (bias_add->channel.size() != static_cast<size_t>(l.n))) return false;
        plan->producer = l;
        plan->producer_offset = offset;
        if (bias_add) {
          for (int64_t j = 0; j < l.n; ++j) bias_add->channel[j] = j >= offset && j < offset + k_ ? j - offset : -1;
          plan->consts.push_back(*bias_add);
        }
        plan->route.assign(path.rbegin(), path.rend());
        plan->description = "linear '" + l.node_name + "' (" + l.weight + ")" +
                            (offset ? " columns from " + std::to_string(offset) : "");
        return true;
      }
      if (bias_add) {  // a bias Add must sit directly on the producer
        *why = "a bias Add that is not directly after a linear layer";
        return false;
      }
      const std::string& op = n.op_type;
      if (!n.domain.empty() || n.inputs.empty()) return false;
      std::string next;
      if (op == "Reshape" || op == "Transpose" || op == "Relu" || op == "Identity") {
        next = n.inputs[0];
      } else if (op == "Split") {
        const int out = static_cast<int>(std::find(n.outputs.begin(), n.outputs.end(), v) - n.outputs.begin());
        std::vector<int64_t> sizes;
        if (n.inputs.size() > 1 && !n.inputs[1].empty()) {
          const Tensor* t = FindConstant(g_, index_, n.inputs[1]);
          if (!t) return false;
          sizes = t->ToInt64s();
        } else if (n.HasAttr("split")) {
          sizes = n.GetInts("split");
        } else {
          sizes.assign(n.outputs.size(), k_);  // equal parts; the probe checks the part size
        }
        if (sizes.size() != n.outputs.size() || sizes[out] != k_) return false;
        for (int i = 0; i < out; ++i) offset += sizes[i];
        next = n.inputs[0];
      } else if (op == "MatMul" && n.inputs.size() == 2 && !FindConstant(g_, index_, n.inputs[0]) &&
                 !FindConstant(g_, index_, n.inputs[1]) && !DependsOn(n.inputs[0], n.inputs[1])) {
        next = n.inputs[1];  // P·V: the output's last axis is V's last axis
      } else if (op == "Mul" && n.inputs.size() == 2) {
        int follow = -1;
        for (int i = 0; i < 2 && follow < 0; ++i) {
          const std::string& other = n.inputs[1 - i];
          if (const Tensor* c = FindConstant(g_, index_, other)) {
            if (c->numel() == 1) follow = i;
            continue;
          }
          if (FindConstant(g_, index_, n.inputs[i]) || DependsOn(other, n.inputs[i])) continue;
          // Prefer the operand that a linear layer produces directly (SwiGLU's up_proj).
          const int q = index_.Producer(n.inputs[i]);
          if (q >= 0 && layer_at.count(q)) follow = i;
        }
        if (follow < 0) return false;
        next = n.inputs[follow];
      } else if (op == "Add" && n.inputs.size() == 2) {
        const int ci = FindConstant(g_, index_, n.inputs[1]) ? 1 : FindConstant(g_, index_, n.inputs[0]) ? 0 : -1;
        if (ci < 0) return false;
        const Tensor* c = FindConstant(g_, index_, n.inputs[ci]);
        if (c->rank() < 1 || !IsChannelVector(*c, c->dim(-1))) return false;
        bias_add = ConstEdit{p, ci, std::vector<int64_t>(c->dim(-1), -1)};
        next = n.inputs[1 - ci];
      } else {
        return false;
      }
      if (!index_.OnlyReader(g_, next, p)) {
        *why = "'" + next + "' has readers outside the path to X";
        return false;
      }
      path.push_back(op);
      v = next;
    }
    return false;
  }

  // ---- Applying ----------------------------------------------------------------------------

  // Multiplies input `input` of node `node` along its last axis by f[channel] (1 where unmapped),
  // in place when only this node reads the constant, else as a new initializer.
  Status ScaleNodeConstant(const ConstEdit& e, const std::vector<float>& factor) {
    Node& n = g_.nodes[e.node];
    const std::string name = n.inputs[e.input];
    std::optional<Tensor> c = EvalConstant(g_, index_, name);
    if (!c) return Internal("channel scaling: '" + name + "' is no longer constant");
    const int64_t last = c->dim(-1);
    std::vector<float> v = c->ToFloats();
    for (size_t i = 0; i < v.size(); ++i) {
      const int64_t j = static_cast<int64_t>(i) % last;
      const int64_t ch = e.channel.empty() ? j : e.channel[j];
      if (ch >= 0) v[i] *= factor[ch];
    }
    QC_ASSIGN_OR_RETURN(Tensor t, FloatsLike(c->dtype(), v, c->shape()));
    const bool exclusive = g_.FindInitializer(name) && index_.OnlyReader(g_, name, e.node);
    if (exclusive) {
      editor_.SetInitializer(name, std::move(t));
    } else {
      const std::string copy = index_.Fresh(name + "_scaled");
      editor_.SetInitializer(copy, std::move(t));
      editor_.SetInput(e.node, e.input, copy);
      replaced_.insert(name);
    }
    return Status::Ok();
  }

  // Multiplies the output columns of a linear layer (logical [k, n]) by `col_factor` [n].
  Status ScaleLinearColumns(const LinearLayer& l, const std::vector<float>& col_factor) {
    const Tensor* w = g_.FindInitializer(l.weight);
    if (!w) return Internal("weight '" + l.weight + "' is missing");
    std::vector<float> v = w->ToFloats();
    for (size_t i = 0; i < v.size(); ++i) {
      // Stored [k, n] (column i % n) or [n, k] (column i / k).
      const int64_t col = l.transposed ? static_cast<int64_t>(i) / l.k : static_cast<int64_t>(i) % l.n;
      v[i] *= col_factor[col];
    }
    QC_ASSIGN_OR_RETURN(Tensor t, FloatsLike(w->dtype(), v, w->shape()));
    // The weight's direct reader: the layer, or its Transpose node.
    const int direct = l.transpose_node.empty() ? l.node_index : index_.Producer(g_.nodes[l.node_index].inputs[l.weight_input]);
    const int direct_input = l.transpose_node.empty() ? l.weight_input : 0;
    const bool exclusive = index_.OnlyReader(g_, l.weight, direct) &&
                           (l.transpose_node.empty() || index_.OnlyReader(g_, g_.nodes[l.node_index].inputs[l.weight_input], l.node_index));
    if (exclusive) {
      editor_.SetInitializer(l.weight, std::move(t));
    } else if (l.transpose_node.empty() || index_.OnlyReader(g_, g_.nodes[l.node_index].inputs[l.weight_input], l.node_index)) {
      const std::string copy = index_.Fresh(l.weight + "_scaled");
      editor_.SetInitializer(copy, std::move(t));
      editor_.SetInput(direct, direct_input, copy);
      replaced_.insert(l.weight);
    } else {
      return Unimplemented("the Transpose of weight '" + l.weight + "' is shared");
    }
    if (l.op_type == "Gemm" && !l.bias.empty()) {
      std::vector<int64_t> identity(l.n);
      for (int64_t j = 0; j < l.n; ++j) identity[j] = j;
      QC_RETURN_IF_ERROR(ScaleNodeConstant({l.node_index, 2, identity}, col_factor));
    }
    return Status::Ok();
  }

  // Applies the plan with X's channels divided by `s` (1/s per channel).
  Status ApplyFold(const FoldPlan& plan, const std::vector<float>& s) {
    std::vector<float> inv(k_);
    for (int64_t c = 0; c < k_; ++c) inv[c] = 1.0f / s[c];
    for (const ConstEdit& e : plan.consts) QC_RETURN_IF_ERROR(ScaleNodeConstant(e, inv));
    if (plan.producer) {
      std::vector<float> col(plan.producer->n, 1.0f);
      for (int64_t c = 0; c < k_; ++c) col[plan.producer_offset + c] = inv[c];
      QC_RETURN_IF_ERROR(ScaleLinearColumns(*plan.producer, col));
    }
    return Status::Ok();
  }

  // Runs the model on one short input to read X, applies the plan with a probe scale, and checks
  // X_after = X_before / s_probe elementwise; undoes the probe fold either way.
  Status ProbeFold(const FoldPlan& plan) {
    std::vector<float> s_probe(k_);
    for (int64_t c = 0; c < k_; ++c) s_probe[c] = 0.5f + 1.5f * static_cast<float>((c * 7919 + 13) % 101) / 100.0f;
    QC_ASSIGN_OR_RETURN(Tensor before, ReadX());
    Status applied = ApplyFold(plan, s_probe);
    StatusOr<Tensor> after = applied.ok() ? ReadX() : StatusOr<Tensor>(applied);
    editor_.Undo();
    replaced_.clear();
    if (!after.ok()) return after.status();
    if (after->shape() != before.shape() || before.dim(-1) != k_)
      return FailedPrecondition("X changed shape in the probe run");
    const std::vector<float> b = before.ToFloats(), a = after->ToFloats();
    float max_abs = 0;
    for (float v : b) max_abs = std::max(max_abs, std::fabs(v));
    // Float32 rounding leaves ~1e-6 of X; a 16-bit model rounds the folded weights and every
    // activation to its type (eps 2^-10 float16, 2^-7 bfloat16): 8 of its eps. A wrong fold is
    // off by tens of percent (s_probe spans [0.5, 2]).
    const float eps = before.dtype() == DType::kFloat16 ? 0x1p-10f : before.dtype() == DType::kBFloat16 ? 0x1p-7f : 0.0f;
    const float abs_tol = std::max(1e-4f, 8 * eps) * max_abs, rel_tol = std::max(1e-3f, 8 * eps);
    for (size_t i = 0; i < b.size(); ++i) {
      const float want = b[i] / s_probe[i % k_];
      if (!(std::fabs(a[i] - want) <= abs_tol + rel_tol * std::fabs(want)))
        return FailedPrecondition("the probe run did not give X / s (channel " + std::to_string(i % k_) + ": " +
                                  std::to_string(a[i]) + " vs " + std::to_string(want) + ")");
    }
    return Status::Ok();
  }

  // Inputs of a model that is not a token decoder, when every input has a static shape: floats
  // from a fixed pseudo-random sequence, integers zero.
  static StatusOr<NamedTensors> StaticFeeds(const Session& session) {
    NamedTensors feeds;
    uint32_t state = 12345;
    for (const ValueInfo& info : session.inputs()) {
      Shape shape;
      for (const Dim& d : info.shape) {
        if (d.value < 0) return FailedPrecondition("input '" + info.name + "' has a symbolic dimension");
        shape.push_back(d.value);
      }
      if (!info.has_shape) return FailedPrecondition("input '" + info.name + "' has no declared shape");
      Tensor t(info.dtype, shape);
      if (info.dtype == DType::kFloat32) {
        for (int64_t i = 0; i < t.numel(); ++i) {
          state = state * 1664525u + 1013904223u;  // a fixed LCG: the probe needs no good randomness
          t.mutable_data<float>()[i] = static_cast<float>(state >> 8) / static_cast<float>(1 << 24) * 2.0f - 1.0f;
        }
      } else if (!IsInteger(info.dtype)) {
        return FailedPrecondition("input '" + info.name + "' is " + DTypeName(info.dtype));
      } else {
        std::memset(t.mutable_raw(), 0, t.nbytes());
      }
      feeds.emplace_back(info.name, std::move(t));
    }
    return feeds;
  }

  // X on a short fixed input (token ids 0..7).
  StatusOr<Tensor> ReadX() const {
    SessionOptions options;
    options.fuse_ops = false;
    QC_ASSIGN_OR_RETURN(auto session, Session::Create(model_, options));
    std::vector<int64_t> ids(8);
    for (int64_t i = 0; i < 8; ++i) ids[i] = (i * 5 + 1) % 8;
    StatusOr<NamedTensors> bound = BindInputs(*session, Tensor::FromVector<int64_t>(ids, {1, 8}));
    if (!bound.ok()) bound = StaticFeeds(*session);
    if (!bound.ok()) return bound.status();
    const NamedTensors& feeds = *bound;
    const int step = session->StepProducing(group_.input);
    if (step < 0) return FailedPrecondition("'" + group_.input + "' is not computed by a step of the plan");
    QC_ASSIGN_OR_RETURN(auto exec, session->Start(feeds));
    QC_RETURN_IF_ERROR(exec->RunUntil(step + 1));
    const Tensor* x = exec->Value(group_.input);
    if (!x) return Internal("'" + group_.input + "' was not kept after its step");
    if (!IsFloatingPoint(x->dtype())) return FailedPrecondition("X is not a float tensor");
    return x->Clone();
  }

  // Multiplies row r of every group weight (logical [k, n]) by s[r]; weights read outside the
  // group are copied first.
  Status ScaleGroupWeights(std::vector<std::pair<int, Node>>* insertions) {
    // Rebuild the index: the fold may have rewired inputs.
    index_ = GraphIndex(g_);
    for (const auto& [at, node] : *insertions)
      for (const auto& o : node.outputs) index_.names.insert(o);
    std::map<std::string, std::vector<const LinearLayer*>> by_weight;
    for (const LinearLayer& l : group_.layers) by_weight[l.weight].push_back(&l);
    for (const auto& [weight, users] : by_weight) {
      const Tensor* w = g_.FindInitializer(weight);
      if (!w) return Internal("weight '" + weight + "' is missing");
      const LinearLayer& l0 = *users.front();
      std::vector<float> v = w->ToFloats();
      for (size_t i = 0; i < v.size(); ++i) {
        // Logical row r: stored [k, n] row i / n, or stored [n, k] column i % k.
        const int64_t r = l0.transposed ? static_cast<int64_t>(i) % l0.k : static_cast<int64_t>(i) / l0.n;
        v[i] *= s_[r];
      }
      QC_ASSIGN_OR_RETURN(Tensor t, FloatsLike(w->dtype(), v, w->shape()));
      // The nodes reading the weight directly are the group's layers or their Transposes, each
      // read only by group layers: then scale in place.
      std::set<int> allowed;
      for (const LinearLayer* l : users) {
        const std::string& wv = g_.nodes[l->node_index].inputs[l->weight_input];
        if (wv == weight) {
          allowed.insert(l->node_index);
        } else {
          const int t_node = index_.Producer(wv);
          bool only_group = true;
          for (int r : index_.Readers(wv)) only_group &= group_nodes_.count(r) > 0;
          if (t_node >= 0 && only_group) allowed.insert(t_node);
        }
      }
      bool exclusive = !index_.graph_inputs.count(weight) && !index_.graph_outputs.count(weight);
      for (int r : index_.Readers(weight)) exclusive &= allowed.count(r) > 0;
      if (exclusive) {
        g_.SetInitializer(weight, std::move(t));
        continue;
      }
      const std::string copy = index_.Fresh(weight + "_scaled");
      g_.SetInitializer(copy, std::move(t));
      std::map<int, std::string> new_transpose;  // shared Transpose node -> its copy's output
      for (const LinearLayer* l : users) {
        Node& node = g_.nodes[l->node_index];
        const std::string wv = node.inputs[l->weight_input];
        if (wv == weight) {
          node.inputs[l->weight_input] = copy;
          continue;
        }
        const int t_node = index_.Producer(wv);
        if (allowed.count(t_node)) {
          g_.nodes[t_node].inputs[0] = copy;
          continue;
        }
        // A Transpose also read outside the group: give the group its own.
        auto it = new_transpose.find(t_node);
        if (it == new_transpose.end()) {
          Node t = g_.nodes[t_node];
          t.name = index_.Fresh(t.name + "_scaled");
          t.inputs[0] = copy;
          t.outputs = {index_.Fresh(wv + "_scaled")};
          it = new_transpose.emplace(t_node, t.outputs[0]).first;
          insertions->emplace_back(FirstGroupNode(), std::move(t));
        }
        node.inputs[l->weight_input] = it->second;
      }
    }
    return Status::Ok();
  }

  // Removes the initializers and constant-expression nodes a fold replaced by scaled copies,
  // when nothing reads them any more.
  void RemoveDeadConstants() {
    if (replaced_.empty()) return;
    for (bool changed = true; changed;) {
      changed = false;
      GraphIndex index(g_);
      for (const std::string& name : std::set<std::string>(replaced_)) {
        if (!index.Readers(name).empty() || index.graph_outputs.count(name)) continue;
        replaced_.erase(name);
        const int p = index.Producer(name);
        if (p >= 0) {
          const Node& n = g_.nodes[p];
          if (n.outputs.size() != 1) continue;
          for (const auto& in : n.inputs)
            if (!in.empty()) replaced_.insert(in);
          g_.nodes.erase(g_.nodes.begin() + p);
          changed = true;
        } else if (!index.graph_inputs.count(name) && g_.RemoveInitializer(name)) {
          changed = true;
        }
      }
    }
  }

  Model& model_;
  Graph& g_;
  const LayerGroup& group_;
  const std::vector<float>& s_;
  const int64_t k_;
  GraphIndex index_;
  Editor editor_;
  std::set<int> group_nodes_;
  std::set<std::string> replaced_;  // constants that may have become unread
};

}  // namespace

StatusOr<ChannelScaleResult> ApplyInputChannelScale(Model& model, const LayerGroup& group, const std::vector<float>& s) {
  ChannelScaler scaler(model, group, s);
  return scaler.Run();
}

std::optional<std::string> PlannedLinearFoldTarget(Model& model, const LayerGroup& group) {
  if (group.layers.empty()) return std::nullopt;
  const std::vector<float> ones(group.layers.front().k, 1.0f);
  ChannelScaler scaler(model, group, ones);
  return scaler.PlannedLinearTarget();
}

}  // namespace qc
