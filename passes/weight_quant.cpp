// Group-wise weight quantization, the MatMulNBits encoding and the MatMul/Gemm -> MatMulNBits rewrite.
#include "passes/weight_quant.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <utility>

#include <Eigen/Core>

#include "formats/model_builder.h"
#include "passes/tied_embedding.h"
#include "runtime/float_precision.h"

namespace qc {
namespace {

bool IsPowerOfTwo(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

// Writes `code` as value number `i` of a `bits`-wide little-endian bit stream. Only the storage
// widths 2, 4 and 8 are written, and those never straddle a byte.
void WriteBits(uint8_t* stream, int64_t i, int bits, int32_t code) {
  const int64_t bit = i * bits;
  stream[bit / 8] |= static_cast<uint8_t>(code << (bit % 8));
}

}  // namespace

WeightQuantSpec SpecFromOptions(const QuantOptions& options, bool sym) {
  WeightQuantSpec spec;
  spec.bits = options.bits;
  spec.group_size = options.group_size;
  spec.sym = sym;
  spec.scale_search = options.scale_search;
  return spec;
}

Status ValidateWeightQuantSpec(const WeightQuantSpec& spec) {
  if (spec.bits < 2 || spec.bits > 8)
    return InvalidArgument("--bits must be between 2 and 8, got " + std::to_string(spec.bits));
  if (spec.group_size != -1 && (spec.group_size < 16 || !IsPowerOfTwo(spec.group_size)))
    return InvalidArgument("--group-size must be a power of two >= 16 (MatMulNBits' block_size) or -1 for one group "
                           "per output channel, got " + std::to_string(spec.group_size));
  if (spec.scale_search && (spec.search_steps < 1 || !(spec.search_span > 0 && spec.search_span < 1)))
    return InvalidArgument("scale search needs search_steps >= 1 and 0 < search_span < 1");
  return Status::Ok();
}

std::string SchemeName(const WeightQuantSpec& spec) {
  std::string s = "w" + std::to_string(spec.bits) + "-" +
                  (spec.group_size == -1 ? std::string("perchannel") : "g" + std::to_string(spec.group_size)) +
                  (spec.sym ? "-sym" : "-asym");
  if (spec.scale_search) s += "+search";
  return s;
}

int64_t BlockSizeFor(int64_t group_size, int64_t k) {
  const int64_t rows = group_size == -1 ? k : group_size;
  int64_t b = kMinBlockSize;
  while (b < rows && b < kMaxBlockSize) b *= 2;
  return b;
}

GroupParams ParamsFromRange(float lo, float hi, int bits, bool sym) {
  GroupParams p;
  if (sym) {
    const float extreme = std::fabs(hi) > std::fabs(lo) ? hi : lo;
    p.scale = extreme / static_cast<float>(-SymmetricZeroPoint(bits));
    p.zero_point = SymmetricZeroPoint(bits);
    return p;
  }
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  const int32_t max_code = MaxCode(bits);
  p.scale = (hi - lo) / static_cast<float>(max_code);
  const float zp = p.scale != 0.0f ? -lo / p.scale : 0.0f;
  p.zero_point = zp <= 0.0f ? 0 : zp >= static_cast<float>(max_code) ? max_code : static_cast<int32_t>(std::round(zp));
  return p;
}

int32_t QuantizeValue(float w, const GroupParams& p, int bits) {
  if (p.scale == 0.0f) return p.zero_point;
  const float r = std::round(w / p.scale) + static_cast<float>(p.zero_point);
  if (!(r > 0.0f)) return 0;  // also NaN
  const float max_code = static_cast<float>(MaxCode(bits));
  return r >= max_code ? MaxCode(bits) : static_cast<int32_t>(r);
}

double QuantizeGroup(const float* w, int64_t count, int64_t stride, const GroupParams& p, int bits, uint8_t* q,
                     float* w_hat) {
  double sse = 0;
  for (int64_t i = 0; i < count; ++i) {
    const float v = w[i * stride];
    const int32_t code = QuantizeValue(v, p, bits);
    const float dq = DequantizeValue(code, p);
    const double e = static_cast<double>(v) - dq;
    sse += e * e;
    if (q) q[i * stride] = static_cast<uint8_t>(code);
    if (w_hat) w_hat[i * stride] = dq;
  }
  return sse;
}

namespace {

// QuantizeGroup's squared error for `count` contiguous values, vectorised: per value the float
// operations of QuantizeValue and DequantizeValue (the division, round half away from zero, the
// clamp, (q - zp) * scale; Eigen packets) into `dq`, then the float64 squares of w - dq summed in 8
// interleaved partial sums (fixed order: the same result on every run and thread count; it may
// differ from QuantizeGroup's in-order sum in the last bits). The scale search scores 100
// candidates per group with it.
double GroupSquaredError(const float* w, int64_t count, const GroupParams& p, int bits, float* dq) {
  if (p.scale == 0.0f) return QuantizeGroup(w, count, 1, p, bits, nullptr, nullptr);
  const float scale = p.scale, zp = static_cast<float>(p.zero_point), max_code = static_cast<float>(MaxCode(bits));
  const Eigen::Map<const Eigen::ArrayXf> v(w, count);
  Eigen::Map<Eigen::ArrayXf>(dq, count) = (((v / scale).round() + zp).max(0.0f).min(max_code) - zp) * scale;
  constexpr int kLanes = 8;
  double partial[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const double e = static_cast<double>(w[i + l]) - static_cast<double>(dq[i + l]);
      partial[l] += e * e;
    }
  for (; i < count; ++i) {
    const double e = static_cast<double>(w[i]) - static_cast<double>(dq[i]);
    partial[0] += e * e;
  }
  double sse = 0;
  for (double x : partial) sse += x;
  return sse;
}

}  // namespace

GroupParams ComputeGroupParams(const float* w, int64_t count, int64_t stride, const WeightQuantSpec& spec) {
  float lo = std::numeric_limits<float>::infinity(), hi = -lo;
  for (int64_t i = 0; i < count; ++i) {
    lo = std::min(lo, w[i * stride]);
    hi = std::max(hi, w[i * stride]);
  }
  if (count == 0) lo = hi = 0.0f;
  GroupParams best = ParamsFromRange(lo, hi, spec.bits, spec.sym);
  if (!spec.scale_search) return best;
  // The group contiguous (GPTQ passes a column of a row-major block), and a buffer for its dequantized values.
  std::vector<float> values;
  if (stride != 1) {
    values.resize(count);
    for (int64_t i = 0; i < count; ++i) values[i] = w[i * stride];
  }
  const float* group = stride == 1 ? w : values.data();
  std::vector<float> dq(count);
  double best_err = GroupSquaredError(group, count, best, spec.bits, dq.data());
  for (int i = 1; i < spec.search_steps; ++i) {
    const float shrink = 1.0f - spec.search_span * static_cast<float>(i) / static_cast<float>(spec.search_steps);
    const GroupParams p = ParamsFromRange(lo * shrink, hi * shrink, spec.bits, spec.sym);
    const double err = GroupSquaredError(group, count, p, spec.bits, dq.data());
    if (err < best_err) {  // strict: ties keep the wider range, so the result is order-independent
      best_err = err;
      best = p;
    }
  }
  return best;
}

GroupParams QuantizedWeight::Params(int64_t col, int64_t group) const {
  GroupParams p;
  p.scale = scales[col * n_blocks() + group];
  p.zero_point = zero_points.empty() ? SymmetricZeroPoint(bits) : zero_points[col * n_blocks() + group];
  return p;
}

std::vector<float> QuantizedWeight::Dequantize() const {
  std::vector<float> out(k * n);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t r = 0; r < k; ++r) out[r * n + j] = DequantizeValue(q[j * k + r], Params(j, GroupOf(r)));
  return out;
}

Status QuantizedWeight::Validate() const {
  if (bits < 2 || bits > 8) return Internal("QuantizedWeight: bits " + std::to_string(bits) + " outside 2..8");
  if (k <= 0 || n <= 0) return Internal("QuantizedWeight: empty shape");
  if (block_size < 16 || !IsPowerOfTwo(block_size))
    return Internal("QuantizedWeight: block_size " + std::to_string(block_size) + " is not a power of two >= 16");
  const int64_t nb = n_blocks();
  if (static_cast<int64_t>(q.size()) != k * n || static_cast<int64_t>(scales.size()) != n * nb)
    return Internal("QuantizedWeight: q or scales has the wrong size");
  if (!zero_points.empty() && static_cast<int64_t>(zero_points.size()) != n * nb)
    return Internal("QuantizedWeight: zero_points has the wrong size");
  if (!g_idx.empty() && static_cast<int64_t>(g_idx.size()) != k)
    return Internal("QuantizedWeight: g_idx has the wrong size");
  const int32_t max_code = MaxCode(bits);
  for (uint8_t v : q)
    if (v > max_code) return Internal("QuantizedWeight: code " + std::to_string(v) + " exceeds 2^bits - 1");
  for (uint8_t v : zero_points)
    if (v > max_code) return Internal("QuantizedWeight: zero point " + std::to_string(v) + " exceeds 2^bits - 1");
  for (int32_t g : g_idx)
    if (g < 0 || g >= nb) return Internal("QuantizedWeight: g_idx value " + std::to_string(g) + " outside [0, n_blocks)");
  return Status::Ok();
}

StatusOr<QuantizedWeight> QuantizeRtn(const std::vector<float>& w, int64_t k, int64_t n, const WeightQuantSpec& spec) {
  QC_RETURN_IF_ERROR(ValidateWeightQuantSpec(spec));
  if (k <= 0 || n <= 0 || static_cast<int64_t>(w.size()) != k * n)
    return InvalidArgument("QuantizeRtn: weight has " + std::to_string(w.size()) + " values, expected K*N = " +
                           std::to_string(k) + "*" + std::to_string(n));
  QuantizedWeight qw;
  qw.bits = spec.bits;
  qw.k = k;
  qw.n = n;
  qw.block_size = BlockSizeFor(spec.group_size, k);
  qw.group_size = spec.group_size;
  const int64_t rows = spec.group_size == -1 ? k : spec.group_size;  // input rows per group
  const int64_t bs = qw.block_size, nb = qw.n_blocks(), groups = (k + rows - 1) / rows;
  qw.q.resize(k * n);
  qw.scales.resize(n * nb);
  if (!spec.sym) qw.zero_points.resize(n * nb);
  // Groups run along K, so work on W^T [N, K] where each group is contiguous.
  std::vector<float> wt(k * n);
  for (int64_t r = 0; r < k; ++r)
    for (int64_t j = 0; j < n; ++j) wt[j * k + r] = w[r * n + j];
  // Columns are independent, so the result does not depend on the thread count.
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t k0 = g * rows;
      const int64_t count = std::min(rows, k - k0);
      const float* group = wt.data() + j * k + k0;
      const GroupParams p = ComputeGroupParams(group, count, 1, spec);
      // A group wider than the largest block spans several blocks that repeat its parameters.
      for (int64_t b = k0 / bs; b <= (k0 + count - 1) / bs; ++b) {
        qw.scales[j * nb + b] = p.scale;
        if (!spec.sym) qw.zero_points[j * nb + b] = static_cast<uint8_t>(p.zero_point);
      }
      QuantizeGroup(group, count, 1, p, spec.bits, qw.q.data() + j * k + k0, nullptr);
    }
  }
  return qw;
}

double RelativeError(const std::vector<float>& w, const std::vector<float>& w_hat) {
  QC_CHECK(w.size() == w_hat.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    const double d = static_cast<double>(w[i]) - w_hat[i];
    num += d * d;
    den += static_cast<double>(w[i]) * w[i];
  }
  if (den == 0) return num == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(num / den);
}

double RelativeError(const std::vector<float>& w, const QuantizedWeight& qw) {
  QC_CHECK(static_cast<int64_t>(w.size()) == qw.k * qw.n);
  // Same order as the two-vector version (row-major [K, N]), so the same bits.
  double num = 0, den = 0;
  for (int64_t r = 0; r < qw.k; ++r)
    for (int64_t j = 0; j < qw.n; ++j) {
      const size_t i = static_cast<size_t>(r * qw.n + j);
      const float w_hat = DequantizeValue(qw.q[j * qw.k + r], qw.Params(j, qw.GroupOf(r)));
      const double d = static_cast<double>(w[i]) - w_hat;
      num += d * d;
      den += static_cast<double>(w[i]) * w[i];
    }
  if (den == 0) return num == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(num / den);
}

StatusOr<std::vector<float>> ReadLinearWeight(const Graph& graph, const LinearLayer& layer) {
  const Tensor* t = graph.FindInitializer(layer.weight);
  if (!t) return NotFound("weight initializer '" + layer.weight + "' of node '" + layer.node_name + "' is missing");
  if (t->rank() != 2 || t->numel() != layer.k * layer.n)
    return InvalidArgument("weight '" + layer.weight + "' has shape " + ShapeToString(t->shape()) + ", expected " +
                           std::to_string(layer.k) + " x " + std::to_string(layer.n) + " values");
  if (!IsFloatingPoint(t->dtype()))
    return InvalidArgument("weight '" + layer.weight + "' is " + DTypeName(t->dtype()) + ", not a float tensor");
  std::vector<float> stored = t->ToFloats();
  t->ReleasePages();  // the copy is what the caller works on
  // A NaN or inf would poison a whole group's scale (and GPTQ's updates) without any error.
  for (size_t i = 0; i < stored.size(); ++i)
    if (!std::isfinite(stored[i]))
      return InvalidArgument("weight '" + layer.weight + "' of node '" + layer.node_name + "' holds a non-finite value (" +
                             std::to_string(stored[i]) + " at flat index " + std::to_string(i) +
                             "): the model is corrupt; nothing was quantized");
  if (!layer.transposed) return stored;
  std::vector<float> w(stored.size());  // stored [N, K] -> logical [K, N]
  for (int64_t j = 0; j < layer.n; ++j)
    for (int64_t r = 0; r < layer.k; ++r) w[r * layer.n + j] = stored[j * layer.k + r];
  return w;
}

int StorageBits(int bits) { return bits <= 2 ? 2 : bits <= 4 ? 4 : 8; }

StatusOr<MatMulNBitsTensors> PackMatMulNBits(const QuantizedWeight& qw) {
  QC_RETURN_IF_ERROR(qw.Validate());
  MatMulNBitsTensors t;
  const int c = StorageBits(qw.bits);
  const int64_t nb = qw.n_blocks(), k = qw.k, n = qw.n, bs = qw.block_size;
  const int64_t blob = bs * c / 8;
  t.storage_bits = c;
  t.block_size = bs;
  // A symmetric code keeps its distance to the zero point when widened: the implied zero point
  // moves from 2^(bits-1) to 2^(c-1). Asymmetric codes carry an explicit zero point and stay.
  const int32_t offset = qw.symmetric() ? SymmetricZeroPoint(c) - SymmetricZeroPoint(qw.bits) : 0;
  t.b = Tensor(DType::kUInt8, {n, nb, blob});
  uint8_t* b = t.b.mutable_data<uint8_t>();
  for (int64_t j = 0; j < n; ++j)
    for (int64_t blk = 0; blk < nb; ++blk) {
      uint8_t* stream = b + (j * nb + blk) * blob;
      const int32_t pad = qw.symmetric() ? SymmetricZeroPoint(c) : qw.zero_points[j * nb + blk];
      for (int64_t i = 0; i < bs; ++i) {
        const int64_t r = blk * bs + i;
        WriteBits(stream, i, c, r < k ? qw.q[j * k + r] + offset : pad);
      }
    }
  t.scales = Tensor::FromVector<float>(qw.scales, {n * nb});
  if (!qw.symmetric() && !qw.g_idx.empty()) {
    // ONNX Runtime's g_idx path (DequantizeBlockwise with reorder_idx, 1.30) ignores packed uint8
    // zero points and uses 8; it reads zero points given as floats of A's type correctly.
    std::vector<float> zp(qw.zero_points.begin(), qw.zero_points.end());
    t.zero_points = Tensor::FromVector<float>(zp, {n * nb});
  } else if (!qw.symmetric()) {
    const int64_t row_bytes = (nb * c + 7) / 8;
    t.zero_points = Tensor(DType::kUInt8, {n * row_bytes});
    uint8_t* zp = t.zero_points.mutable_data<uint8_t>();
    for (int64_t j = 0; j < n; ++j)
      for (int64_t blk = 0; blk < nb; ++blk) WriteBits(zp + j * row_bytes, blk, c, qw.zero_points[j * nb + blk]);
  }
  if (!qw.g_idx.empty()) t.g_idx = Tensor::FromVector<int32_t>(qw.g_idx, {k});
  return t;
}

std::optional<std::string> MatMulNBitsUnsupportedReason(const Graph& graph, const LinearLayer& layer) {
  const Tensor* w = graph.FindInitializer(layer.weight);
  if (!w) return "weight '" + layer.weight + "' is not an initializer";
  if (!IsComputeFloat(w->dtype()))
    return "weight '" + layer.weight + "' is " + DTypeName(w->dtype()) + "; only float32, float16 and bfloat16 weights are quantized";
  for (const ValueInfo& in : graph.inputs)
    if (in.name == layer.weight)
      return "weight '" + layer.weight + "' is also a graph input, so callers may replace it at run time";
  if (layer.op_type == "Gemm" && !layer.bias.empty()) {
    const Tensor* c = graph.FindInitializer(layer.bias);
    if (c && c->dtype() != w->dtype())
      return "Gemm bias '" + layer.bias + "' is " + DTypeName(c->dtype()) + ", not " + DTypeName(w->dtype()) + " like its weight";
  }
  return std::nullopt;
}

MatMulNBitsRewriter::MatMulNBitsRewriter(Model& model) : model_(model) {
  NoteGraphNames();
  bool has_ms = false;
  for (const auto& o : model.opset_imports) has_ms |= o.domain == "com.microsoft";
  if (!has_ms) model.opset_imports.push_back({"com.microsoft", 1});
}

void MatMulNBitsRewriter::NoteGraphNames() {
  const Graph& g = model_.graph;
  for (const auto& v : g.inputs) names_.insert(v.name);
  for (const auto& v : g.outputs) names_.insert(v.name);
  for (const auto& v : g.value_infos) names_.insert(v.name);
  for (const auto& name : g.initializer_names()) names_.insert(name);
  for (const Node& node : g.nodes) {
    names_.insert(node.name);
    for (const auto& o : node.outputs) names_.insert(o);
  }
}

std::string MatMulNBitsRewriter::UniqueName(const std::string& base) {
  std::string name = base;
  for (int i = 1; names_.count(name); ++i) name = base + "_" + std::to_string(i);
  names_.insert(name);
  return name;
}

std::string MatMulNBitsRewriter::AddOrReuseInitializer(const std::string& base, const Tensor& t) {
  Graph& g = model_.graph;
  std::string name = base;
  for (int i = 1;; ++i) {
    // Layers sharing one weight get bit-identical tensors from round-to-nearest: store them once.
    if (const Tensor* existing = g.FindInitializer(name); existing && created_.count(name) && existing->BitEqual(t))
      return name;
    if (!names_.count(name)) break;
    name = base + "_" + std::to_string(i);
  }
  names_.insert(name);
  created_.insert(name);
  g.SetInitializer(name, t);
  return name;
}

Status MatMulNBitsRewriter::Replace(const LinearLayer& layer, const QuantizedWeight& qw, const std::string& doc) {
  QC_CHECK(!finished_);
  Graph& g = model_.graph;
  if (layer.node_index < 0 || layer.node_index >= static_cast<int>(g.nodes.size()) ||
      g.nodes[layer.node_index].name != layer.node_name || g.nodes[layer.node_index].op_type != layer.op_type)
    return Internal("linear layer '" + layer.node_name + "' no longer matches the graph (stale layer list)");
  if (qw.k != layer.k || qw.n != layer.n)
    return Internal("quantized weight of '" + layer.node_name + "' is " + std::to_string(qw.k) + "x" +
                    std::to_string(qw.n) + ", the layer is " + std::to_string(layer.k) + "x" + std::to_string(layer.n));
  if (auto reason = MatMulNBitsUnsupportedReason(g, layer)) return Unimplemented(layer.node_name + ": " + *reason);
  QC_ASSIGN_OR_RETURN(MatMulNBitsTensors t, PackMatMulNBits(qw));
  // MatMulNBits' T is A's type, the weight's: a float16/bfloat16 model gets scales (and float
  // zero points, bias) of its own type, rounded once from the float32 the passes computed.
  const DType type = g.FindInitializer(layer.weight)->dtype();
  auto in_type = [type](const Tensor& f32) { return type == DType::kFloat32 ? f32 : ConvertFloatTensor(f32, type); };

  const Node old = g.nodes[layer.node_index];
  const bool gemm = layer.op_type == "Gemm";
  const float alpha = gemm ? old.GetFloat("alpha", 1.0f) : 1.0f;
  const float beta = gemm ? old.GetFloat("beta", 1.0f) : 1.0f;
  const Tensor unscaled = in_type(t.scales);  // what a tied embedding's rows need (alpha scales the head only)
  if (alpha != 1.0f) {  // alpha * A (W~) = A ((q - zp) * (alpha * scale))
    Tensor scaled = t.scales.Clone();
    for (int64_t i = 0; i < scaled.numel(); ++i) scaled.mutable_data<float>()[i] *= alpha;
    t.scales = scaled;
  }
  t.scales = in_type(t.scales);
  if (t.zero_points.defined() && t.zero_points.dtype() == DType::kFloat32) t.zero_points = in_type(t.zero_points);

  const std::string& base = layer.weight;
  std::vector<std::string> inputs = {old.inputs[0], AddOrReuseInitializer(base + "_Q" + std::to_string(t.storage_bits), t.b),
                                     AddOrReuseInitializer(base + "_scales", t.scales), "", "", ""};
  if (t.zero_points.defined()) inputs[3] = AddOrReuseInitializer(base + "_zero_points", t.zero_points);
  if (t.g_idx.defined()) inputs[4] = AddOrReuseInitializer(base + "_g_idx", t.g_idx);
  // A tied table's Gathers can read these codes unless act-order reordered the groups (g_idx):
  // GatherBlockQuantized has no g_idx. They are rewritten in Finish(), once no layer runs any more.
  if (!TiedTableStaysFloat(layer, qw.bits) && !t.g_idx.defined() && !tied_tables_.count(layer.weight)) {
    PackedTable p{layer.weight, inputs[1], inputs[2], inputs[3], layer.n, layer.k, t.storage_bits, t.block_size};
    if (alpha != 1.0f) p.scales = AddOrReuseInitializer(base + "_scales", unscaled);
    tied_tables_[layer.weight] = p;
  }

  // Gemm's C: the bias input when it is a constant [N] (or [1, N]); otherwise an Add after the
  // MatMulNBits, since C may broadcast from any shape to [M, N] and may be computed at run time.
  std::string output = old.outputs[0];
  std::vector<Node> after;
  if (gemm && !layer.bias.empty()) {
    const Tensor* c = g.FindInitializer(layer.bias);
    const bool row = c && c->numel() == layer.n && (c->rank() == 1 || (c->rank() == 2 && c->dim(0) == 1));
    if (row && beta == 1.0f && c->rank() == 1) {
      inputs[5] = layer.bias;
    } else if (row) {
      std::vector<float> bias = c->ToFloats();
      for (float& v : bias) v *= beta;
      inputs[5] = AddOrReuseInitializer(layer.node_name + "_bias", in_type(Tensor::FromVector<float>(bias, {layer.n})));
    } else {
      std::string addend = layer.bias;
      if (beta != 1.0f && c) {
        std::vector<float> scaled = c->ToFloats();
        for (float& v : scaled) v *= beta;
        addend = AddOrReuseInitializer(layer.bias + "_times_beta", in_type(Tensor::FromVector<float>(scaled, c->shape())));
      } else if (beta != 1.0f) {
        Node mul;
        mul.name = UniqueName(layer.node_name + "_beta");
        mul.op_type = "Mul";
        mul.inputs = {layer.bias, AddOrReuseInitializer(layer.node_name + "_beta_value", in_type(Tensor::Scalar<float>(beta)))};
        mul.outputs = {UniqueName(layer.node_name + "_beta_c")};
        addend = mul.outputs[0];
        after.push_back(std::move(mul));
      }
      Node add;
      add.name = UniqueName(layer.node_name + "_add_c");
      add.op_type = "Add";
      const std::string product = UniqueName(output + "_matmulnbits");
      add.inputs = {product, addend};
      add.outputs = {output};
      output = product;
      after.push_back(std::move(add));
    }
  }
  while (!inputs.empty() && inputs.back().empty()) inputs.pop_back();

  Node node;
  node.name = old.name;
  node.op_type = "MatMulNBits";
  node.domain = "com.microsoft";
  node.inputs = std::move(inputs);
  node.outputs = {output};
  node.attributes["K"] = AttrInt(layer.k);
  node.attributes["N"] = AttrInt(layer.n);
  node.attributes["bits"] = AttrInt(t.storage_bits);
  node.attributes["block_size"] = AttrInt(t.block_size);
  node.attributes["accuracy_level"] = AttrInt(0);  // A keeps its float type: no int8 rounding of activations
  node.doc_string = doc;
  node.metadata_props = old.metadata_props;
  g.nodes[layer.node_index] = std::move(node);

  // The float weight is done with once its packed form exists: its pages go now (the initializer
  // itself goes in Finish(), once nothing reads it).
  if (const Tensor* w = g.FindInitializer(layer.weight)) w->ReleasePages();
  dropped_weights_.insert(layer.weight);
  if (!layer.bias.empty() && g.FindInitializer(layer.bias)) dropped_weights_.insert(layer.bias);  // if folded
  if (!layer.transpose_node.empty() || old.inputs[layer.weight_input] != layer.weight)
    dropped_transposes_.insert(old.inputs[layer.weight_input]);
  if (!after.empty()) {
    auto& slot = insert_after_[output];
    for (Node& n : after) slot.push_back(std::move(n));
  }
  return Status::Ok();
}

LayerReport StartLayerReport(const LinearLayer& layer, const std::string& pass, const std::string& scheme) {
  LayerReport r;
  r.name = layer.node_name;
  r.weight = layer.weight;
  r.k = layer.k;
  r.n = layer.n;
  r.pass = pass;
  r.scheme = scheme;
  return r;
}

LayerReport WeightOnlyLayerReport(const Graph& g, const LinearLayer& layer, const std::string& pass,
                                  const std::string& scheme, const WeightQuantSpec& spec) {
  LayerReport r = StartLayerReport(layer, pass, scheme);
  r.bits = spec.bits;
  r.group_size = spec.group_size;
  if (auto reason = MatMulNBitsUnsupportedReason(g, layer)) {
    r.scheme = "float";
    r.bits = 0;
    r.notes.push_back("left in float: " + *reason);
  } else if (layer.op_type == "Gemm") {
    const Node& gemm = g.nodes[layer.node_index];
    if (gemm.GetFloat("alpha", 1.0f) != 1.0f) r.notes.push_back("Gemm alpha folded into the scales");
    if (gemm.GetFloat("beta", 1.0f) != 1.0f) r.notes.push_back("Gemm beta folded into the bias");
  }
  return r;
}

void RemoveDroppedWeights(Graph& g, const std::set<std::string>& transposes, const std::set<std::string>& weights) {
  auto read_values = [&] {
    std::set<std::string> read;
    CollectReadValues(g, &read);
    for (const auto& o : g.outputs) read.insert(o.name);
    return read;
  };
  std::set<std::string> read = read_values();
  std::set<std::string> removed_values;
  auto dead = [&](const Node& n) {
    return n.op_type == "Transpose" && n.domain.empty() && n.outputs.size() == 1 && transposes.count(n.outputs[0]) &&
           !read.count(n.outputs[0]);
  };
  for (const Node& n : g.nodes)
    if (dead(n)) removed_values.insert(n.outputs[0]);
  g.nodes.erase(std::remove_if(g.nodes.begin(), g.nodes.end(), dead), g.nodes.end());
  read = read_values();  // a weight may have been read only by a Transpose removed above
  for (const std::string& w : weights)
    if (!read.count(w) && g.RemoveInitializer(w)) removed_values.insert(w);
  g.value_infos.erase(std::remove_if(g.value_infos.begin(), g.value_infos.end(),
                                     [&](const ValueInfo& v) { return removed_values.count(v.name) > 0; }),
                      g.value_infos.end());
}

void MatMulNBitsRewriter::Finish() {
  QC_CHECK(!finished_);
  finished_ = true;
  Graph& g = model_.graph;
  if (!insert_after_.empty()) {
    std::vector<Node> nodes;
    nodes.reserve(g.nodes.size() + insert_after_.size());
    for (Node& node : g.nodes) {
      auto it = node.outputs.empty() ? insert_after_.end() : insert_after_.find(node.outputs[0]);
      nodes.push_back(std::move(node));
      if (it != insert_after_.end())
        for (Node& n : it->second) nodes.push_back(std::move(n));
    }
    g.nodes = std::move(nodes);
  }
  for (const auto& [table, p] : tied_tables_)
    QuantizeEmbeddingGathers(g, p, model_.DefaultOpset(), [this](const std::string& base) { return UniqueName(base); });

  RemoveDroppedWeights(g, dropped_transposes_, dropped_weights_);
}

StatusOr<LayerFilter> LayerFilter::Create(const std::string& pattern, int head_bits) {
  LayerFilter f;
  if (head_bits != kHeadFloat && head_bits != kHeadLikeOthers && (head_bits < 2 || head_bits > 8))
    return InvalidArgument("--head-bits must be 2..8 or 'float', got " + std::to_string(head_bits));
  f.head_bits_ = head_bits;
  if (pattern.empty()) return f;
  // std::regex reports a bad pattern only by throwing; turn it into the user-facing error here.
  try {
    f.regex_.emplace(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    return InvalidArgument("--exclude: '" + pattern + "' is not a valid regular expression (" + e.what() + ")");
  }
  return f;
}

bool LayerFilter::Excluded(const LinearLayer& layer) const {
  if (layer.output_head && head_bits_ == kHeadFloat) return true;
  if (!regex_) return false;
  return std::regex_search(layer.node_name, *regex_) || std::regex_search(layer.weight, *regex_);
}

WeightQuantSpec LayerFilter::SpecFor(const LinearLayer& layer, const WeightQuantSpec& base) const {
  WeightQuantSpec spec = base;
  if (layer.output_head && head_bits_ > 0) spec.bits = head_bits_;
  return spec;
}

void AddWeightNotes(const LinearLayer& layer, const WeightQuantSpec& spec, LayerReport& report) {
  if (layer.tied) {
    if (auto why = TiedTableStaysFloat(layer, spec.bits))
      report.notes.push_back("tied to an embedding Gather, which keeps reading the float table: " + *why);
    else
      report.notes.push_back("tied to an embedding Gather, which now reads this layer's packed codes "
                             "(com.microsoft.GatherBlockQuantized) instead of the float table, unless act-order "
                             "g_idx reordered the groups");
  }
  if (layer.output_head) report.notes.push_back("output head: " + std::to_string(spec.bits) + " bits (--head-bits)");
  if (StorageBits(spec.bits) != spec.bits)
    report.notes.push_back(std::to_string(spec.bits) + "-bit codes stored in " + std::to_string(StorageBits(spec.bits)) +
                           "-bit fields (ONNX Runtime's MatMulNBits runs 2, 4 and 8 bits)");
}

Status RunRoundToNearest(Model& model, const std::string& pass_name, const WeightQuantSpec& spec,
                         const std::string& exclude_regex, std::vector<LayerReport>* reports,
                         const Calibrator* calibrator, int head_bits) {
  QC_CHECK(reports != nullptr);
  QC_RETURN_IF_ERROR(ValidateWeightQuantSpec(spec));
  QC_ASSIGN_OR_RETURN(LayerFilter filter, LayerFilter::Create(exclude_regex, head_bits));
  const std::vector<LinearLayer> layers = FindLinearLayers(model.graph);
  // One report per layer not excluded, in layer order; unsupported layers stay in float.
  std::vector<LayerReport> out;
  std::map<int, size_t> slot_of_node;
  std::vector<LinearLayer> todo;
  for (const LinearLayer& layer : layers) {
    if (filter.Excluded(layer)) continue;
    const WeightQuantSpec layer_spec = filter.SpecFor(layer, spec);
    LayerReport r = WeightOnlyLayerReport(model.graph, layer, pass_name, SchemeName(layer_spec), layer_spec);
    if (r.bits > 0) {
      slot_of_node[layer.node_index] = out.size();
      todo.push_back(layer);
    }
    out.push_back(std::move(r));
  }

  // Each layer is quantized and put in place before the next is read, so only one layer's float
  // weight is in flight (docs/MEMORY.md).
  MatMulNBitsRewriter rewriter(model);
  auto quantize = [&](const LinearLayer& layer, const std::vector<double>* hessian) -> Status {
    const auto start = std::chrono::steady_clock::now();
    LayerReport& r = out[slot_of_node.at(layer.node_index)];
    const WeightQuantSpec layer_spec = filter.SpecFor(layer, spec);
    QC_ASSIGN_OR_RETURN(std::vector<float> w, ReadLinearWeight(model.graph, layer));
    QC_ASSIGN_OR_RETURN(QuantizedWeight qw, QuantizeRtn(w, layer.k, layer.n, layer_spec));
    r.weight_rel_error = RelativeError(w, qw);
    if (hessian != nullptr) {
      const OutputError e = OutputErrorFromHessian(*hessian, layer.k, w, qw.Dequantize(), layer.n);
      r.output_rel_error = e.rel_error;
      r.sqnr_db = e.sqnr_db;
    }
    QC_RETURN_IF_ERROR(rewriter.Replace(layer, qw, "qconvert " + pass_name + " " + SchemeName(layer_spec))
                           .WithContext("quantizing " + layer.node_name));
    AddWeightNotes(layer, layer_spec, r);
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return Status::Ok();
  };
  if (calibrator != nullptr && !todo.empty()) {
    // With calibration data the report also gets each layer's output error, from the Hessian of
    // its float input (the quantization itself does not use it). The groups are visited in
    // execution order with the float weights kept, so only one group's Hessian exists at a time.
    StatsRequest request;
    request.hessian = true;
    SequentialVisitor visit = [&](const LayerGroup& group, const InputStats& stats, const std::vector<const Tensor*>&) -> StatusOr<GroupWeights> {
      for (const LinearLayer& layer : group.layers) QC_RETURN_IF_ERROR(quantize(layer, &stats.hessian));
      return GroupWeights(group.layers.size());  // empty: later groups see float inputs
    };
    QC_RETURN_IF_ERROR(calibrator->RunSequential(model, todo, request, visit));
  } else {
    for (const LinearLayer& layer : todo) QC_RETURN_IF_ERROR(quantize(layer, nullptr));
  }
  rewriter.Finish();
  for (LayerReport& r : out) reports->push_back(std::move(r));
  return Status::Ok();
}

}  // namespace qc
