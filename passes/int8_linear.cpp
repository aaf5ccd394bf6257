// The W8A8 / outlier-split encoding of linear layers (see int8_linear.h, docs/FORMAT.md).
#include "passes/int8_linear.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <utility>

#include "formats/model_builder.h"
#include "passes/weight_quant.h"
#include "runtime/cpu/gemm_core.h"

namespace qc {
namespace {

// ONNX Round's rounding (half to even) under the default floating-point environment.
inline float RoundHalfEven(float v) { return std::nearbyint(v); }

std::string ChannelKey(const std::string& x, const std::vector<int64_t>& channels) {
  std::string key = x;
  key.push_back('\0');
  for (int64_t c : channels) key += std::to_string(c) + ",";
  return key;
}

Node MakeNode(std::string name, std::string op, std::vector<std::string> inputs, std::string output,
              Attributes attributes = {}) {
  Node n;
  n.name = std::move(name);
  n.op_type = std::move(op);
  n.inputs = std::move(inputs);
  n.outputs = {std::move(output)};
  n.attributes = std::move(attributes);
  return n;
}

}  // namespace

std::vector<float> Int8Weight::Dequantize() const {
  std::vector<float> out(k * n);
  for (int64_t r = 0; r < k; ++r)
    for (int64_t j = 0; j < n; ++j) out[r * n + j] = static_cast<float>(q[r * n + j]) * scale[j];
  return out;
}

Int8Weight QuantizeWeightInt8(const std::vector<float>& w, int64_t k, int64_t n) {
  QC_CHECK(static_cast<int64_t>(w.size()) == k * n);
  Int8Weight out;
  out.k = k;
  out.n = n;
  out.q.resize(k * n);
  out.scale.assign(n, 0.0f);
  std::vector<float> abs_max(n, 0.0f);
  for (int64_t r = 0; r < k; ++r)
    for (int64_t j = 0; j < n; ++j) abs_max[j] = std::max(abs_max[j], std::fabs(w[r * n + j]));
  for (int64_t j = 0; j < n; ++j) out.scale[j] = abs_max[j] / static_cast<float>(kInt8MaxCode);
  const float max_code = static_cast<float>(kInt8MaxCode);
  for (int64_t r = 0; r < k; ++r)
    for (int64_t j = 0; j < n; ++j) {
      const float s = out.scale[j];
      const float v = s > 0.0f ? RoundHalfEven(w[r * n + j] / s) : 0.0f;
      out.q[r * n + j] = static_cast<int8_t>(std::clamp(v, -max_code, max_code));
    }
  return out;
}

float QuantizeTokenInt8(const float* x, int64_t k, int8_t* q) {
  float m = 0.0f;
  for (int64_t j = 0; j < k; ++j) m = std::max(m, std::fabs(x[j]));
  m = std::max(m, kTokenAbsMaxFloor);
  const float s = m / static_cast<float>(kInt8MaxCode);
  // |x_j| <= m, so |x_j / s| <= 127 (1 + 2^-23) and the rounded code never leaves [-127, 127].
  for (int64_t j = 0; j < k; ++j) q[j] = static_cast<int8_t>(RoundHalfEven(x[j] / s));
  return s;
}

std::vector<float> W8A8Reference(const std::vector<float>& x, int64_t rows, const Int8Weight& w) {
  QC_CHECK(static_cast<int64_t>(x.size()) == rows * w.k);
  std::vector<float> y(rows * w.n);
  std::vector<int8_t> qx(w.k);
  for (int64_t t = 0; t < rows; ++t) {
    const float s_x = QuantizeTokenInt8(x.data() + t * w.k, w.k, qx.data());
    for (int64_t j = 0; j < w.n; ++j) {
      int64_t acc = 0;
      for (int64_t r = 0; r < w.k; ++r) acc += static_cast<int32_t>(qx[r]) * w.q[r * w.n + j];
      y[t * w.n + j] = (static_cast<float>(static_cast<int32_t>(acc)) * w.scale[j]) * s_x;
    }
  }
  return y;
}

StatusOr<LayerFilter> W8A8LayerFilter(const QuantOptions& options) {
  return LayerFilter::Create(options.exclude_regex,
                             options.head_bits == kHeadFloat ? kHeadFloat : kHeadLikeOthers);
}

StatusOr<OutputError> MeasureW8A8Error(const std::vector<const Tensor*>& inputs, const W8A8Probe& probe) {
  const W8A8Probe& p = probe;
  QC_CHECK(p.w != nullptr && p.q != nullptr);
  const int64_t n = p.q->n, kr = p.q->k, ko = static_cast<int64_t>(p.outliers.size()), k = kr + ko;
  QC_CHECK(static_cast<int64_t>(p.w->size()) == k * n);
  // The int8 codes as float (exact), the float outlier rows, the non-outlier channels.
  const std::vector<float> q(p.q->q.begin(), p.q->q.end());
  std::vector<float> w_o;
  std::vector<int64_t> rest;
  for (int64_t c = 0, o = 0; c < k; ++c) {
    if (o < ko && p.outliers[o] == c) {
      w_o.insert(w_o.end(), p.w->begin() + c * n, p.w->begin() + (c + 1) * n);
      ++o;
    } else {
      rest.push_back(c);
    }
  }
  double signal = 0, noise = 0;
  std::vector<float> x_r, x_o, q_x, s_x, y, y_q, y_o;
  std::vector<int8_t> codes(kr);
  std::vector<float> widened;
  for (const Tensor* input : inputs) {
    if (input == nullptr || !IsFloatingPoint(input->dtype()) || input->rank() < 1 || input->dim(-1) != k)
      return Internal("measuring the W8A8 error: the layer input is not a float [.., " + std::to_string(k) + "] tensor");
    // A float16/bfloat16 model's X, widened: its W8A8 subgraph computes in float32 too.
    if (input->dtype() != DType::kFloat32) widened = input->ToFloats();
    const float* x = input->dtype() == DType::kFloat32 ? input->data<float>() : widened.data();
    const int64_t rows = input->numel() / k;
    y.resize(rows * n);
    GemmF32(false, false, rows, n, k, 1.0f, x, k, p.w->data(), n, 0.0f, y.data(), n, /*threaded=*/true);
    x_r.resize(rows * kr);
    x_o.resize(rows * ko);
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t j = 0; j < kr; ++j) x_r[t * kr + j] = x[t * k + rest[j]];
      for (int64_t j = 0; j < ko; ++j) x_o[t * ko + j] = x[t * k + p.outliers[j]];
    }
    q_x.resize(rows * kr);
    s_x.resize(rows);
    for (int64_t t = 0; t < rows; ++t) {
      s_x[t] = QuantizeTokenInt8(x_r.data() + t * kr, kr, codes.data());
      for (int64_t j = 0; j < kr; ++j) q_x[t * kr + j] = codes[j];
    }
    // Codes times codes in float32 (exact below 2^24 per partial sum; an error metric needs no more).
    y_q.resize(rows * n);
    GemmF32(false, false, rows, n, kr, 1.0f, q_x.data(), kr, q.data(), n, 0.0f, y_q.data(), n, /*threaded=*/true);
    if (ko > 0) {
      y_o.resize(rows * n);
      GemmF32(false, false, rows, n, ko, 1.0f, x_o.data(), ko, w_o.data(), n, 0.0f, y_o.data(), n, true);
    }
    for (int64_t t = 0; t < rows; ++t)
      for (int64_t j = 0; j < n; ++j) {
        double v = static_cast<double>(y_q[t * n + j]) * p.q->scale[j] * s_x[t];
        if (ko > 0) v += y_o[t * n + j];
        const double ref = y[t * n + j];
        signal += ref * ref;
        noise += (ref - v) * (ref - v);
      }
  }
  return OutputErrorFromEnergies(signal, noise);
}

StatusOr<W8A8Rewriter> W8A8Rewriter::Create(Model& model) {
  W8A8Rewriter r(model);
  r.opset_ = model.DefaultOpset();
  if (r.opset_ < 11)
    return Unimplemented("the W8A8 encoding needs default-domain opset >= 11 (Round, negative Gather axes); the "
                         "model imports opset " + std::to_string(r.opset_));
  const Graph& g = model.graph;
  for (const auto& v : g.inputs) r.names_.insert(v.name);
  for (const auto& v : g.outputs) r.names_.insert(v.name);
  for (const auto& v : g.value_infos) r.names_.insert(v.name);
  for (const auto& name : g.initializer_names()) r.names_.insert(name);
  for (const Node& node : g.nodes) {
    r.names_.insert(node.name);
    for (const auto& o : node.outputs) r.names_.insert(o);
  }
  return r;
}

std::string W8A8Rewriter::UniqueName(const std::string& base) {
  std::string name = base;
  for (int i = 1; names_.count(name); ++i) name = base + "_" + std::to_string(i);
  names_.insert(name);
  return name;
}

std::string W8A8Rewriter::AddInitializer(const std::string& base, Tensor t) {
  const std::string name = UniqueName(base);
  model_->graph.SetInitializer(name, std::move(t));
  return name;
}

std::string W8A8Rewriter::Int64s(const std::vector<int64_t>& values) {
  std::string key = "i64:";
  for (int64_t v : values) key += std::to_string(v) + ",";
  auto it = scalars_.find(key);
  if (it != scalars_.end()) return it->second;
  const std::string name =
      AddInitializer("w8a8_const_i64", Tensor::FromVector<int64_t>(values, {static_cast<int64_t>(values.size())}));
  scalars_[key] = name;
  return name;
}

std::string W8A8Rewriter::FloatScalar(float v) {
  char text[32];
  std::snprintf(text, sizeof(text), "%a", v);
  auto it = scalars_.find(text);
  if (it != scalars_.end()) return it->second;
  const std::string name = AddInitializer("w8a8_const_f32", Tensor::Scalar<float>(v));
  scalars_[text] = name;
  return name;
}

DType W8A8Rewriter::LayerType(const LinearLayer& layer) const {
  const Tensor* w = model_->graph.FindInitializer(layer.weight);
  return w != nullptr ? w->dtype() : DType::kFloat32;
}

std::string W8A8Rewriter::AsFloat32(const std::string& x, DType type, int user, const std::string& scope) {
  if (type == DType::kFloat32) return x;
  auto it = casts_.find(x);
  if (it == casts_.end()) {
    SharedNodes c;
    c.value = UniqueName(x + "_float");
    c.nodes.push_back(MakeNode(UniqueName(scope + "/CastToFloat"), "Cast", {x}, c.value,
                               {{"to", AttrInt(static_cast<int64_t>(DType::kFloat32))}}));
    it = casts_.emplace(x, std::move(c)).first;
  }
  it->second.first_user = it->second.first_user < 0 ? user : std::min(it->second.first_user, user);
  return it->second.value;
}

std::string W8A8Rewriter::GatherChannels(const std::string& x, const std::vector<int64_t>& channels, int user,
                                         const std::string& scope) {
  const std::string key = ChannelKey(x, channels);
  auto it = gathers_.find(key);
  if (it == gathers_.end()) {
    SharedNodes g;
    g.value = UniqueName(x + "_channels");
    const std::string indices = AddInitializer(scope + "_channel_indices", Tensor::FromVector<int64_t>(
                                                   channels, {static_cast<int64_t>(channels.size())}));
    g.nodes.push_back(MakeNode(UniqueName(scope + "/Gather"), "Gather", {x, indices}, g.value, {{"axis", AttrInt(-1)}}));
    it = gathers_.emplace(key, std::move(g)).first;
  }
  it->second.first_user = it->second.first_user < 0 ? user : std::min(it->second.first_user, user);
  return it->second.value;
}

W8A8Rewriter::SharedNodes& W8A8Rewriter::QuantizeActivation(const std::string& x, const std::vector<int64_t>& channels,
                                                          int user, const std::string& scope) {
  const std::string key = ChannelKey(x, channels);
  auto it = act_.find(key);
  if (it == act_.end()) {
    const std::string src = channels.empty() ? x : GatherChannels(x, channels, user, scope + "/rest");
    const std::string s = scope + "/act_quant";
    SharedNodes a;
    std::vector<Node>& n = a.nodes;
    const std::string abs = UniqueName(src + "_abs");
    n.push_back(MakeNode(UniqueName(s + "/Abs"), "Abs", {src}, abs));
    const std::string abs_max = UniqueName(src + "_absmax");
    if (opset_ >= 18) {
      n.push_back(MakeNode(UniqueName(s + "/ReduceMax"), "ReduceMax", {abs, Int64s({-1})}, abs_max,
                           {{"keepdims", AttrInt(1)}}));
    } else {
      n.push_back(MakeNode(UniqueName(s + "/ReduceMax"), "ReduceMax", {abs}, abs_max,
                           {{"axes", AttrInts({-1})}, {"keepdims", AttrInt(1)}}));
    }
    const std::string m = UniqueName(src + "_absmax_floor");
    n.push_back(MakeNode(UniqueName(s + "/Max"), "Max", {abs_max, FloatScalar(kTokenAbsMaxFloor)}, m));
    a.s_x = UniqueName(src + "_scale");
    n.push_back(MakeNode(UniqueName(s + "/Div"), "Div", {m, FloatScalar(static_cast<float>(kInt8MaxCode))}, a.s_x));
    const std::string scaled = UniqueName(src + "_scaled");
    n.push_back(MakeNode(UniqueName(s + "/Div"), "Div", {src, a.s_x}, scaled));
    const std::string rounded = UniqueName(src + "_rounded");
    n.push_back(MakeNode(UniqueName(s + "/Round"), "Round", {scaled}, rounded));
    const std::string shifted = UniqueName(src + "_shifted");
    n.push_back(MakeNode(UniqueName(s + "/Add"), "Add",
                         {rounded, FloatScalar(static_cast<float>(kInt8StorageZeroPoint))}, shifted));
    a.value = UniqueName(src + "_quant");
    n.push_back(MakeNode(UniqueName(s + "/Cast"), "Cast", {shifted}, a.value,
                         {{"to", AttrInt(static_cast<int64_t>(DType::kUInt8))}}));
    it = act_.emplace(key, std::move(a)).first;
  } else if (!channels.empty()) {
    GatherChannels(x, channels, user, scope + "/rest");  // moves the Gather up with its first user
  }
  it->second.first_user = it->second.first_user < 0 ? user : std::min(it->second.first_user, user);
  return it->second;
}

Status W8A8Rewriter::CheckLayer(const LinearLayer& layer, int64_t k, int64_t n) const {
  QC_CHECK(!finished_);
  const Graph& g = model_->graph;
  if (layer.node_index < 0 || layer.node_index >= static_cast<int>(g.nodes.size()) ||
      g.nodes[layer.node_index].name != layer.node_name || g.nodes[layer.node_index].op_type != layer.op_type)
    return Internal("linear layer '" + layer.node_name + "' no longer matches the graph (stale layer list)");
  if (replacement_.count(layer.node_index)) return Internal("linear layer '" + layer.node_name + "' replaced twice");
  if (k != layer.k || n != layer.n)
    return Internal("int8 weight of '" + layer.node_name + "' is " + std::to_string(k) + "x" + std::to_string(n) +
                    ", the layer is " + std::to_string(layer.k) + "x" + std::to_string(layer.n));
  if (auto reason = MatMulNBitsUnsupportedReason(g, layer)) return Unimplemented(layer.node_name + ": " + *reason);
  return Status::Ok();
}

std::string W8A8Rewriter::AppendInt8Product(const LinearLayer& layer, const SharedNodes& act, const Int8Weight& w,
                                            float alpha, const std::string& doc, std::vector<Node>* out) {
  const std::string base = layer.node_name.empty() ? layer.weight : layer.node_name;
  Tensor q(DType::kUInt8, {w.k, w.n});
  uint8_t* qp = q.mutable_data<uint8_t>();
  for (int64_t i = 0; i < w.k * w.n; ++i) qp[i] = static_cast<uint8_t>(w.q[i] + kInt8StorageZeroPoint);
  std::vector<float> scale = w.scale;
  for (float& v : scale) v *= alpha;
  const std::string q_name = AddInitializer(layer.weight + "_int8", std::move(q));
  const std::string s_name = AddInitializer(layer.weight + "_scale", Tensor::FromVector<float>(scale, {w.n}));
  auto zero_point = scalars_.find("zp");
  if (zero_point == scalars_.end())
    zero_point = scalars_.emplace("zp", AddInitializer("w8a8_zero_point", Tensor::Scalar<uint8_t>(
                                                            static_cast<uint8_t>(kInt8StorageZeroPoint)))).first;
  const std::string acc = UniqueName(base + "_acc");
  Node mm = MakeNode(UniqueName(base + "/MatMulInteger"), "MatMulInteger",
                     {act.value, q_name, zero_point->second, zero_point->second}, acc);
  mm.doc_string = doc;
  out->push_back(std::move(mm));
  const std::string acc_f = UniqueName(base + "_acc_float");
  out->push_back(MakeNode(UniqueName(base + "/Cast"), "Cast", {acc}, acc_f,
                          {{"to", AttrInt(static_cast<int64_t>(DType::kFloat32))}}));
  const std::string y_w = UniqueName(base + "_scaled_w");
  out->push_back(MakeNode(UniqueName(base + "/MulWeightScale"), "Mul", {acc_f, s_name}, y_w));
  const std::string y = UniqueName(base + "_w8a8");
  out->push_back(MakeNode(UniqueName(base + "/MulTokenScale"), "Mul", {y_w, act.s_x}, y));
  return y;
}

void W8A8Rewriter::AppendBias(const LinearLayer& layer, const std::string& product, DType type, std::vector<Node>* out) {
  Graph& g = model_->graph;
  const Node& old = g.nodes[layer.node_index];
  const std::string base = layer.node_name.empty() ? layer.weight : layer.node_name;
  const std::string& layer_output = old.outputs[0];
  // A 16-bit model: the float32 result is cast back to the model's type into the layer's output.
  const std::string output = type == DType::kFloat32 ? layer_output : UniqueName(layer_output + "_float");
  auto finish = [&] {
    if (type == DType::kFloat32) return;
    out->push_back(MakeNode(UniqueName(base + "/CastToModelType"), "Cast", {output}, layer_output,
                            {{"to", AttrInt(static_cast<int64_t>(type))}}));
  };
  if (layer.op_type != "Gemm" || layer.bias.empty()) {
    QC_CHECK(!out->empty() && out->back().outputs[0] == product);
    out->back().outputs[0] = output;  // the node computing the product writes the layer's output
    finish();
    return;
  }
  const float beta = old.GetFloat("beta", 1.0f);
  std::string addend = layer.bias;
  if (const Tensor* c = g.FindInitializer(layer.bias); c != nullptr && (beta != 1.0f || c->dtype() != DType::kFloat32)) {
    std::vector<float> scaled = c->ToFloats();
    for (float& v : scaled) v *= beta;
    addend = AddInitializer(layer.bias + (beta != 1.0f ? "_times_beta" : "_float"), Tensor::FromVector<float>(scaled, c->shape()));
    dropped_weights_.insert(layer.bias);
  } else if (c == nullptr) {
    addend = AsFloat32(layer.bias, type, layer.node_index, base);
    if (beta != 1.0f) {
      const std::string scaled = UniqueName(base + "_beta_c");
      out->push_back(MakeNode(UniqueName(base + "/MulBeta"), "Mul", {addend, FloatScalar(beta)}, scaled));
      addend = scaled;
    }
  }
  out->push_back(MakeNode(UniqueName(base + "/AddBias"), "Add", {product, addend}, output));
  finish();
}

void W8A8Rewriter::MarkReplaced(const LinearLayer& layer, std::vector<Node> nodes) {
  const Node& old = model_->graph.nodes[layer.node_index];
  for (Node& n : nodes)
    if (n.metadata_props.empty()) n.metadata_props = old.metadata_props;
  dropped_weights_.insert(layer.weight);
  if (!layer.transpose_node.empty() || old.inputs[layer.weight_input] != layer.weight)
    dropped_transposes_.insert(old.inputs[layer.weight_input]);
  replacement_[layer.node_index] = std::move(nodes);
}

Status W8A8Rewriter::Replace(const LinearLayer& layer, const Int8Weight& w, const std::string& doc) {
  QC_RETURN_IF_ERROR(CheckLayer(layer, w.k, w.n));
  const Node& old = model_->graph.nodes[layer.node_index];
  const float alpha = layer.op_type == "Gemm" ? old.GetFloat("alpha", 1.0f) : 1.0f;
  const std::string base = layer.node_name.empty() ? layer.weight : layer.node_name;
  const DType type = LayerType(layer);
  const SharedNodes& act = QuantizeActivation(AsFloat32(layer.input, type, layer.node_index, base), {}, layer.node_index, base);
  std::vector<Node> nodes;
  const std::string y = AppendInt8Product(layer, act, w, alpha, doc, &nodes);
  AppendBias(layer, y, type, &nodes);
  MarkReplaced(layer, std::move(nodes));
  return Status::Ok();
}

Status W8A8Rewriter::ReplaceWithOutliers(const LinearLayer& layer, const std::vector<int64_t>& outliers,
                                         const std::vector<float>& w_outliers, const Int8Weight& w_rest,
                                         const std::string& doc) {
  if (outliers.empty()) return Replace(layer, w_rest, doc);
  const int64_t n_out = static_cast<int64_t>(outliers.size());
  for (size_t i = 0; i < outliers.size(); ++i)
    if (outliers[i] < 0 || outliers[i] >= layer.k || (i > 0 && outliers[i] <= outliers[i - 1]))
      return Internal("outlier channels of '" + layer.node_name + "' must be sorted, unique and in [0, K)");
  if (n_out >= layer.k) return Internal("every input channel of '" + layer.node_name + "' is an outlier");
  if (static_cast<int64_t>(w_outliers.size()) != n_out * layer.n)
    return Internal("float outlier rows of '" + layer.node_name + "' have the wrong size");
  QC_RETURN_IF_ERROR(CheckLayer(layer, w_rest.k + n_out, w_rest.n));
  const Node& old = model_->graph.nodes[layer.node_index];
  const float alpha = layer.op_type == "Gemm" ? old.GetFloat("alpha", 1.0f) : 1.0f;
  const std::string base = layer.node_name.empty() ? layer.weight : layer.node_name;

  std::vector<int64_t> rest;
  for (int64_t c = 0, i = 0; c < layer.k; ++c) {
    if (i < n_out && outliers[i] == c) ++i;
    else rest.push_back(c);
  }
  const DType type = LayerType(layer);
  const std::string x = AsFloat32(layer.input, type, layer.node_index, base);
  const SharedNodes& act = QuantizeActivation(x, rest, layer.node_index, base);
  const std::string x_o = GatherChannels(x, outliers, layer.node_index, base + "/outliers");

  std::vector<Node> nodes;
  const std::string y_int8 = AppendInt8Product(layer, act, w_rest, alpha, doc, &nodes);
  std::vector<float> w_o = w_outliers;
  for (float& v : w_o) v *= alpha;
  const std::string w_o_name = AddInitializer(layer.weight + "_outlier_rows", Tensor::FromVector<float>(w_o, {n_out, layer.n}));
  const std::string y_float = UniqueName(base + "_outliers");
  nodes.push_back(MakeNode(UniqueName(base + "/MatMulOutliers"), "MatMul", {x_o, w_o_name}, y_float));
  const std::string y = UniqueName(base + "_int8_plus_outliers");
  nodes.push_back(MakeNode(UniqueName(base + "/AddOutliers"), "Add", {y_int8, y_float}, y));
  AppendBias(layer, y, type, &nodes);
  MarkReplaced(layer, std::move(nodes));
  return Status::Ok();
}

void W8A8Rewriter::Finish() {
  QC_CHECK(!finished_);
  finished_ = true;
  Graph& g = model_->graph;
  // Shared nodes go in front of their first reader: Casts to float32 first (16-bit models), then
  // Gathers (activation quantization of a channel subset reads its Gather), then the activation
  // quantization.
  std::map<int, std::vector<Node>> before;
  for (auto* table : {&casts_, &gathers_, &act_})
    for (auto& [key, a] : *table) {
      auto& slot = before[a.first_user];
      for (Node& n : a.nodes) slot.push_back(std::move(n));
    }
  std::vector<Node> nodes;
  nodes.reserve(g.nodes.size() + 16 * replacement_.size());
  for (int i = 0; i < static_cast<int>(g.nodes.size()); ++i) {
    if (auto it = before.find(i); it != before.end())
      for (Node& n : it->second) nodes.push_back(std::move(n));
    if (auto it = replacement_.find(i); it != replacement_.end()) {
      for (Node& n : it->second) nodes.push_back(std::move(n));
    } else {
      nodes.push_back(std::move(g.nodes[i]));
    }
  }
  g.nodes = std::move(nodes);

  RemoveDroppedWeights(g, dropped_transposes_, dropped_weights_);
}

}  // namespace qc
