// Synthetic decoder graphs: each architecture's HF forward pass, written in one exporter's op patterns.
#include "formats/synthetic_models.h"

#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <utility>

#include "formats/model_builder.h"

namespace qc {
namespace {

// HF masks with finfo(float32).min rather than -inf so a fully masked row stays finite.
constexpr float kFloatMin = std::numeric_limits<float>::lowest();
// Slice end meaning "to the end", as the exporters write it.
constexpr int64_t kToEnd = std::numeric_limits<int64_t>::max();

enum class NormKind { kLayerNorm, kRmsNorm, kGemmaRmsNorm };
enum class QkvKind { kSeparate, kConv1D, kNeoXFused };
enum class Act { kGeluNew, kGeluErf, kGeluTanh, kRelu, kSilu };
enum class ScoreScale { kNone, kScores, kQuery };
// The TorchScript-era mask recipes: a [1, 1, P, P] bool buffer sliced and applied with Where
// (GPT-2, GPT-Neo, GPT-NeoX), or an additive mask built in the graph and clamped with Max
// (OPT, Llama family, Phi, Gemma).
enum class TsMask { kBuffer, kAdditive };

/// What distinguishes one architecture's forward pass, plus its HF parameter names.
struct ArchSpec {
  NormKind norm = NormKind::kRmsNorm;
  QkvKind qkv = QkvKind::kSeparate;
  Act act = Act::kSilu;
  bool gated_mlp = false;
  bool rotary = false;
  int64_t position_offset = -1;  // learned position embedding offset; -1: none
  bool parallel_residual = false;
  bool shared_norm = false;  // Phi: one LayerNorm feeds both branches
  bool qkv_bias = false, o_bias = false, mlp_bias = false, lm_head_bias = false;
  ScoreScale scale = ScoreScale::kScores;
  bool embed_scale = false;
  bool default_tie = false;
  float default_rotary_factor = 1.0f;
  float default_theta = 10000.0f;
  TsMask ts_mask = TsMask::kAdditive;
  bool allows_window = false, allows_gqa = false, allows_head_dim = false;

  // Parameter names: `layer` is a prefix format with {} for the index; module names are relative.
  std::string embed, positions, final_norm, lm_head, layer;
  std::string ln1, ln2, q, k, v, qkv_module, o, fc1, gate, up, fc2;
};

ArchSpec SpecFor(SyntheticArch arch) {
  ArchSpec s;
  switch (arch) {
    case SyntheticArch::kGpt2:
      s.norm = NormKind::kLayerNorm;
      s.qkv = QkvKind::kConv1D;
      s.act = Act::kGeluNew;
      s.position_offset = 0;
      s.qkv_bias = s.o_bias = s.mlp_bias = true;
      s.default_tie = true;
      s.ts_mask = TsMask::kBuffer;
      s.embed = "transformer.wte";
      s.positions = "transformer.wpe";
      s.final_norm = "transformer.ln_f";
      s.layer = "transformer.h.{}.";
      s.ln1 = "ln_1", s.ln2 = "ln_2", s.qkv_module = "attn.c_attn", s.o = "attn.c_proj";
      s.fc1 = "mlp.c_fc", s.fc2 = "mlp.c_proj";
      break;
    case SyntheticArch::kGptNeo:
      s.norm = NormKind::kLayerNorm;
      s.act = Act::kGeluNew;
      s.position_offset = 0;
      s.o_bias = s.mlp_bias = true;
      s.scale = ScoreScale::kNone;  // GPT-Neo never scales its attention scores
      s.default_tie = true;
      s.ts_mask = TsMask::kBuffer;
      s.allows_window = true;
      s.embed = "transformer.wte";
      s.positions = "transformer.wpe";
      s.final_norm = "transformer.ln_f";
      s.layer = "transformer.h.{}.";
      s.ln1 = "ln_1", s.ln2 = "ln_2", s.q = "attn.attention.q_proj", s.k = "attn.attention.k_proj";
      s.v = "attn.attention.v_proj", s.o = "attn.attention.out_proj", s.fc1 = "mlp.c_fc", s.fc2 = "mlp.c_proj";
      break;
    case SyntheticArch::kGptNeoX:
      s.norm = NormKind::kLayerNorm;
      s.qkv = QkvKind::kNeoXFused;
      s.act = Act::kGeluErf;
      s.rotary = true;
      s.parallel_residual = true;
      s.qkv_bias = s.o_bias = s.mlp_bias = true;
      s.default_rotary_factor = 0.25f;
      s.ts_mask = TsMask::kBuffer;
      s.embed = "gpt_neox.embed_in";
      s.final_norm = "gpt_neox.final_layer_norm";
      s.lm_head = "embed_out";
      s.layer = "gpt_neox.layers.{}.";
      s.ln1 = "input_layernorm", s.ln2 = "post_attention_layernorm", s.qkv_module = "attention.query_key_value";
      s.o = "attention.dense", s.fc1 = "mlp.dense_h_to_4h", s.fc2 = "mlp.dense_4h_to_h";
      break;
    case SyntheticArch::kOpt:
      s.norm = NormKind::kLayerNorm;
      s.act = Act::kRelu;
      s.position_offset = 2;  // OPTLearnedPositionalEmbedding: fairseq kept rows 0 and 1 for padding
      s.qkv_bias = s.o_bias = s.mlp_bias = true;
      s.scale = ScoreScale::kQuery;
      s.default_tie = true;
      s.embed = "model.decoder.embed_tokens";
      s.positions = "model.decoder.embed_positions";
      s.final_norm = "model.decoder.final_layer_norm";
      s.layer = "model.decoder.layers.{}.";
      s.ln1 = "self_attn_layer_norm", s.ln2 = "final_layer_norm", s.q = "self_attn.q_proj", s.k = "self_attn.k_proj";
      s.v = "self_attn.v_proj", s.o = "self_attn.out_proj", s.fc1 = "fc1", s.fc2 = "fc2";
      break;
    case SyntheticArch::kLlama:
    case SyntheticArch::kMistral:
    case SyntheticArch::kQwen2:
    case SyntheticArch::kGemma:
      s.gated_mlp = true;
      s.rotary = true;
      s.allows_gqa = true;
      s.embed = "model.embed_tokens";
      s.final_norm = "model.norm";
      s.lm_head = "lm_head";
      s.layer = "model.layers.{}.";
      s.ln1 = "input_layernorm", s.ln2 = "post_attention_layernorm", s.q = "self_attn.q_proj";
      s.k = "self_attn.k_proj", s.v = "self_attn.v_proj", s.o = "self_attn.o_proj";
      s.gate = "mlp.gate_proj", s.up = "mlp.up_proj", s.fc2 = "mlp.down_proj";
      if (arch == SyntheticArch::kMistral) s.allows_window = true;
      if (arch == SyntheticArch::kQwen2) {
        s.qkv_bias = true;
        s.default_tie = true;
        s.default_theta = 1000000.0f;
      }
      if (arch == SyntheticArch::kGemma) {
        s.norm = NormKind::kGemmaRmsNorm;
        s.act = Act::kGeluTanh;
        s.embed_scale = true;
        s.default_tie = true;
        s.allows_head_dim = true;
      }
      break;
    case SyntheticArch::kPhi:
      s.norm = NormKind::kLayerNorm;
      s.act = Act::kGeluNew;
      s.rotary = true;
      s.parallel_residual = true;
      s.shared_norm = true;
      s.qkv_bias = s.o_bias = s.mlp_bias = s.lm_head_bias = true;
      s.default_rotary_factor = 0.5f;
      s.embed = "model.embed_tokens";
      s.final_norm = "model.final_layernorm";
      s.lm_head = "lm_head";
      s.layer = "model.layers.{}.";
      s.ln1 = "input_layernorm", s.q = "self_attn.q_proj", s.k = "self_attn.k_proj", s.v = "self_attn.v_proj";
      s.o = "self_attn.dense", s.fc1 = "mlp.fc1", s.fc2 = "mlp.fc2";
      break;
  }
  return s;
}

std::string LayerPrefix(const ArchSpec& spec, int64_t layer) {
  std::string p = spec.layer;
  const size_t at = p.find("{}");
  return p.replace(at, 2, std::to_string(layer));
}

bool IsGptNeoLocalLayer(const SyntheticConfig& c, int64_t layer) {
  // GPTNeoConfig.attention_types [[["global", "local"], n]]: odd layers are local.
  return c.arch == SyntheticArch::kGptNeo && layer % 2 == 1;
}

bool LayerHasWindow(const SyntheticConfig& c, int64_t layer) {
  if (c.arch == SyntheticArch::kGptNeo) return IsGptNeoLocalLayer(c, layer);
  return c.arch == SyntheticArch::kMistral && c.sliding_window.value_or(0) > 0;
}

Tensor Transposed2D(const Tensor& w) {
  const int64_t rows = w.dim(0), cols = w.dim(1);
  Tensor t(DType::kFloat32, {cols, rows});
  const float* src = w.data<float>();
  float* dst = t.mutable_data<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
  return t;
}

/// HF's inv_freq: 1 / theta^(2i / rot), computed in float32 as the modeling code does.
std::vector<float> InverseFrequencies(float theta, int64_t rot) {
  std::vector<float> inv(rot / 2);
  for (int64_t i = 0; i < rot / 2; ++i)
    inv[i] = 1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(rot));
  return inv;
}

/// Emits one decoder graph. Member functions are the building blocks (linear, norm, attention,
/// MLP) with their per-style op patterns; Emit() wires them the way the architecture does.
class DecoderEmitter {
 public:
  DecoderEmitter(const SyntheticConfig& c, const ArchSpec& spec, const SyntheticWeights& w,
                 std::shared_ptr<SpillStore> spill)
      : c_(c), spec_(spec), w_(w), b_(c.seed, std::string("synthetic_") + SyntheticArchName(c.arch)) {
    head_dim_ = c.head_dim;
    rot_ = SyntheticRotaryDim(c);
    b_.set_spill_store(std::move(spill));
  }

  StatusOr<Model> Emit();

 private:
  bool dynamo() const { return c_.export_style == ExportStyle::kDynamo; }
  bool torchscript() const { return c_.export_style == ExportStyle::kTorchScript; }
  bool fused() const { return c_.export_style == ExportStyle::kOrtFused; }
  bool has_mask_input() const { return c_.inputs == SyntheticInputs::kIdsMaskPositions; }
  // GPT2Model / GPTNeoModel flatten input_ids to [-1, seq] and view the output back; the ORT
  // optimiser drops both no-op views.
  bool GptModelViews() const {
    return (c_.arch == SyntheticArch::kGpt2 || c_.arch == SyntheticArch::kGptNeo) && !fused();
  }

  // --- constants: initializers, except the TorchScript exporter's Constant nodes ---
  std::string Const(Tensor t) {
    if (torchscript()) return b_.AddConstantNode(std::move(t));
    // The exporters' optimisers fold equal constants into one initializer.
    std::string key = std::to_string(static_cast<int>(t.dtype())) + ShapeToString(t.shape());
    key.append(static_cast<const char*>(t.raw()), t.nbytes());
    auto [it, inserted] = constants_.emplace(key, "");
    if (inserted) it->second = b_.AddConstant(std::move(t));
    return it->second;
  }
  std::string I64(const std::vector<int64_t>& v) {
    return Const(Tensor::FromVector<int64_t>(v, {static_cast<int64_t>(v.size())}));
  }
  std::string I64Scalar(int64_t v) { return Const(Tensor::Scalar<int64_t>(v)); }
  std::string F32(float v) { return Const(Tensor::Scalar<float>(v)); }

  // --- parameters ---
  std::string Param(const std::string& name) {
    if (!b_.graph().FindInitializer(name)) b_.AddInitializer(name, w_.at(name));
    return name;
  }
  // An nn.Linear weight stored [in, out] (the exporter folded the Transpose).
  std::string ParamT(const std::string& name) {
    if (!b_.graph().FindInitializer(name)) {
      b_.AddInitializer(name, Transposed2D(w_.at(name)));
      w_.at(name).ReleasePages();  // a spilled original is not read again
    }
    return name;
  }
  // The scale a fused RMSNorm multiplies by: Gemma's (1 + w) folded, as the model builder stores it.
  std::string FusedNormScale(const std::string& module) {
    if (spec_.norm != NormKind::kGemmaRmsNorm) return Param(module + ".weight");
    const std::string name = module + ".weight_plus_1";
    if (!b_.graph().FindInitializer(name)) {
      Tensor t = w_.at(module + ".weight").Clone();
      for (int64_t i = 0; i < t.numel(); ++i) t.mutable_data<float>()[i] += 1.0f;
      b_.AddInitializer(name, std::move(t));
    }
    return name;
  }

  // --- shapes ---
  static constexpr int64_t kB = -1000, kS = -1001;  // symbolic batch / sequence in a target shape
  // A 1-element int64 tensor holding dimension `axis` of `x` (batch or sequence).
  std::string Dim1(const std::string& x, int axis, bool batch) {
    if (!torchscript()) return batch ? batch1_ : seq1_;
    const std::string shape = b_.Op("Shape", {x});
    const std::string d = b_.Op("Gather", {shape, I64Scalar(axis)}, {{"axis", AttrInt(0)}});
    return b_.Op("Unsqueeze", {d, I64({0})});
  }
  // A 1-D shape tensor for `dims` (kB / kS read from x's axes 0 / seq_axis).
  std::string ShapeValue(const std::string& x, const std::vector<int64_t>& dims, int seq_axis = 1) {
    // Outside TorchScript the symbolic dims come from input_ids once, and the exporters' common
    // subexpression elimination shares each shape tensor between layers.
    std::string key;
    for (int64_t d : dims) key += std::to_string(d) + ",";
    if (!torchscript()) {
      auto it = shapes_.find(key);
      if (it != shapes_.end()) return it->second;
    }
    std::vector<std::string> parts;
    std::vector<int64_t> run;
    auto flush = [&] {
      if (!run.empty()) parts.push_back(I64(run));
      run.clear();
    };
    for (int64_t d : dims) {
      if (d == kB || d == kS) {
        flush();
        parts.push_back(Dim1(x, d == kB ? 0 : seq_axis, d == kB));
      } else {
        run.push_back(d);
      }
    }
    flush();
    const std::string shape = parts.size() == 1 ? parts[0] : b_.Op("Concat", parts, {{"axis", AttrInt(0)}});
    if (!torchscript()) shapes_[key] = shape;
    return shape;
  }
  // `src` supplies the symbolic dims (default: x itself).
  std::string Reshape(const std::string& x, const std::vector<int64_t>& dims, int seq_axis = 1,
                      const std::string& src = "") {
    const std::string shape = ShapeValue(src.empty() ? x : src, dims, seq_axis);
    // torch.onnx dynamo marks view/reshape with allowzero=1; TorchScript leaves the default.
    if (dynamo()) return b_.Op("Reshape", {x, shape}, {{"allowzero", AttrInt(1)}});
    return b_.Op("Reshape", {x, shape});
  }
  std::string Transpose(const std::string& x, std::vector<int64_t> perm) {
    return b_.Op("Transpose", {x}, {{"perm", AttrInts(std::move(perm))}});
  }
  std::string SliceAxis(const std::string& x, int64_t start, int64_t end, int64_t axis) {
    return b_.Op("Slice", {x, I64({start}), I64({end}), I64({axis}), I64({1})});
  }
  std::string Unsqueeze(const std::string& x, const std::vector<int64_t>& axes) {
    return b_.Op("Unsqueeze", {x, I64(axes)});
  }
  std::string Cast(const std::string& x, DType to) {
    return b_.Op("Cast", {x}, {{"to", AttrInt(static_cast<int64_t>(to))}});
  }
  std::string ReduceMeanLast(const std::string& x) {
    // Opset 18 moved ReduceMean's axes from an attribute to an input.
    if (!dynamo()) return b_.Op("ReduceMean", {x}, {{"axes", AttrInts({-1})}, {"keepdims", AttrInt(1)}});
    return b_.Op("ReduceMean", {x, I64({-1})}, {{"keepdims", AttrInt(1)}, {"noop_with_empty_axes", AttrInt(0)}});
  }
  std::vector<std::string> Split3(const std::string& x, int64_t axis, int64_t part) {
    // Opset 18 added num_outputs; before it the sizes are an input.
    if (!dynamo()) return b_.AddNode("Split", {x, I64({part, part, part})}, 3, {{"axis", AttrInt(axis)}});
    return b_.AddNode("Split", {x}, 3, {{"axis", AttrInt(axis)}, {"num_outputs", AttrInt(3)}});
  }

  // --- layers ---
  std::string Linear(const std::string& x, const std::string& module, bool bias, std::string* deferred_bias = nullptr);
  std::string Conv1D(const std::string& x, const std::string& module, int64_t out,
                     std::string* deferred_bias = nullptr);
  std::string Norm(const std::string& x, const std::string& module);
  std::string ResidualNorm(std::string* residual, const std::string& delta, const std::string& bias,
                           const std::string& module, bool need_sum);
  std::string Activation(const std::string& x, const std::string& fused_bias);
  std::string Mlp(const std::string& x, const std::string& prefix, std::string* deferred_bias);
  std::string Attention(const std::string& x, int64_t layer, std::string* deferred_bias);
  std::string ApplyRotary(const std::string& x);
  std::string RepeatKv(const std::string& x, int64_t kv_heads);
  std::string FusedRotary(const std::string& x, int64_t num_heads);

  // --- model-level values ---
  void EmitShapeValues();
  void EmitPositions();
  void EmitRotaryTables();
  void EmitDynamoMasks();
  void EmitTorchScriptMasks();
  std::string Embeddings();

  std::map<std::string, std::string> constants_;  // dedup key -> initializer (not TorchScript)
  std::map<std::string, std::string> shapes_;     // dims -> shape tensor (not TorchScript)

  const SyntheticConfig& c_;
  const ArchSpec& spec_;
  const SyntheticWeights& w_;
  GraphBuilder b_;
  int64_t head_dim_ = 0, rot_ = 0;

  std::string ids_, mask_input_, position_input_;
  std::string batch1_, seq1_, batch_scalar_, seq_scalar_;
  std::string mask_;                   // int64 [B, S] attention mask (input, or OPT's implicit ones), "" if none
  std::string positions_;              // int64 [1 or B, S]
  std::string cache_position_;         // int64 [S] arange, once made
  std::string cos4_, sin4_;            // [1 or B, 1, S, rot] (dynamo, TorchScript)
  std::string cos_cache_, sin_cache_;  // [P, rot / 2] (ORT fused)
  std::string rotary_positions_;       // position_ids input of RotaryEmbedding
  // Dynamo: additive masks per layer kind. TorchScript/fused: buffer slices or additive masks.
  std::string mask_global_, mask_window_;
  std::string buffer_global_, buffer_window_, padding_additive_;
};

void DecoderEmitter::EmitShapeValues() {
  if (dynamo()) {
    batch1_ = b_.Op("Shape", {ids_}, {{"start", AttrInt(0)}, {"end", AttrInt(1)}});
    batch_scalar_ = b_.Op("Squeeze", {batch1_});
    seq1_ = b_.Op("Shape", {ids_}, {{"start", AttrInt(1)}, {"end", AttrInt(2)}});
    seq_scalar_ = b_.Op("Squeeze", {seq1_});
  } else {
    const std::string shape = b_.Op("Shape", {ids_});
    batch_scalar_ = b_.Op("Gather", {shape, I64Scalar(0)}, {{"axis", AttrInt(0)}});
    seq_scalar_ = b_.Op("Gather", {shape, I64Scalar(1)}, {{"axis", AttrInt(0)}});
    batch1_ = Unsqueeze(batch_scalar_, {0});
    seq1_ = Unsqueeze(seq_scalar_, {0});
  }
}

void DecoderEmitter::EmitPositions() {
  if (has_mask_input()) {
    mask_ = mask_input_;
  } else if (c_.arch == SyntheticArch::kOpt) {
    // OPTDecoder: attention_mask defaults to ones and positions derive from it.
    const std::string bs = b_.Op("Concat", {batch1_, seq1_}, {{"axis", AttrInt(0)}});
    mask_ = b_.Op("ConstantOfShape", {bs}, {{"value", AttrTensor(Tensor::FromVector<int64_t>({1}, {1}))}});
  }
  if (c_.inputs == SyntheticInputs::kIdsMaskPositions) {
    positions_ = position_input_;
  } else if (c_.arch == SyntheticArch::kOpt) {
    // position_ids = cumsum(attention_mask, 1) * attention_mask - 1
    const std::string cs = b_.Op("CumSum", {mask_, I64Scalar(1)});
    positions_ = b_.Op("Sub", {b_.Op("Mul", {cs, mask_}), I64Scalar(1)});
  } else {
    // cache_position = arange(seq); position_ids = cache_position.unsqueeze(0)
    cache_position_ = b_.Op("Range", {I64Scalar(0), seq_scalar_, I64Scalar(1)});
    positions_ = Unsqueeze(cache_position_, {0});
  }
}

void DecoderEmitter::EmitRotaryTables() {
  if (!spec_.rotary) return;
  const std::vector<float> inv = InverseFrequencies(*c_.rope_theta, rot_);
  const int64_t half = rot_ / 2;
  if (dynamo()) {
    // LlamaRotaryEmbedding.forward: freqs = (inv_freq[None, :, None] @ position_ids[:, None, :]).T;
    // emb = cat(freqs, freqs); cos/sin in the graph. The exporter folds the expanded inv_freq.
    std::string inv_t = Const(Tensor::FromVector<float>(inv, {1, half, 1}));
    if (has_mask_input()) {
      inv_t = b_.Op("Expand", {inv_t, b_.Op("Concat", {batch1_, I64({1, 1})}, {{"axis", AttrInt(0)}})});
    }
    const std::string pos = Cast(Unsqueeze(positions_, {1}), DType::kFloat32);
    const std::string freqs = Transpose(b_.Op("MatMul", {inv_t, pos}), {0, 2, 1});
    const std::string emb = b_.Op("Concat", {freqs, freqs}, {{"axis", AttrInt(-1)}});
    cos4_ = Unsqueeze(b_.Op("Cos", {emb}), {1});
    sin4_ = Unsqueeze(b_.Op("Sin", {emb}), {1});
    return;
  }
  // Tables over every position, computed as HF computes its cached buffers (float32 angle).
  const int64_t p = c_.max_positions;
  const int64_t width = fused() ? half : rot_;
  std::vector<float> cos_table(p * width), sin_table(p * width);
  for (int64_t t = 0; t < p; ++t)
    for (int64_t i = 0; i < width; ++i) {
      const float angle = static_cast<float>(t) * inv[i % half];
      cos_table[t * width + i] = std::cos(angle);
      sin_table[t * width + i] = std::sin(angle);
    }
  if (fused()) {
    // com.microsoft.RotaryEmbedding takes half-width caches and a position tensor.
    cos_cache_ = b_.AddInitializer("cos_cache", Tensor::FromVector<float>(cos_table, {p, half}));
    sin_cache_ = b_.AddInitializer("sin_cache", Tensor::FromVector<float>(sin_table, {p, half}));
    // Without position_ids, one start offset (0) means positions 0..S-1.
    rotary_positions_ = has_mask_input() ? positions_ : I64({0});
    return;
  }
  // HF 4.3x: cos = cos_cached[position_ids].unsqueeze(1).
  const std::string cos_cached =
      b_.AddInitializer("rotary_emb.cos_cached", Tensor::FromVector<float>(cos_table, {p, rot_}));
  const std::string sin_cached =
      b_.AddInitializer("rotary_emb.sin_cached", Tensor::FromVector<float>(sin_table, {p, rot_}));
  cos4_ = Unsqueeze(b_.Op("Gather", {cos_cached, positions_}, {{"axis", AttrInt(0)}}), {1});
  sin4_ = Unsqueeze(b_.Op("Gather", {sin_cached, positions_}, {{"axis", AttrInt(0)}}), {1});
}

void DecoderEmitter::EmitDynamoMasks() {
  // transformers.masking_utils as exported: boolean mask_function(b, h, q, kv) evaluated on index
  // grids, then Where(mask, 0, min) added to the scores.
  if (cache_position_.empty()) cache_position_ = b_.Op("Range", {I64Scalar(0), seq_scalar_, I64Scalar(1)});
  const std::string idx = Unsqueeze(cache_position_, {0, 1});  // [1, 1, S]
  const std::string q_idx = Unsqueeze(idx, {3});               // [1, 1, S, 1]
  const std::string kv_idx = Unsqueeze(idx, {2});              // [1, 1, 1, S]
  const std::string batch_range = b_.Op("Range", {I64Scalar(0), batch_scalar_, I64Scalar(1)});
  const std::string b_idx = Unsqueeze(Unsqueeze(batch_range, {1, 2}), {3});  // [B, 1, 1, 1]
  // table[b, idx] broadcast over the grid, as the exporter writes advanced indexing.
  auto gather_at = [&](const std::string& table, const std::string& idx) {
    const std::string shape = b_.Op("Shape", {b_.Op("Max", {b_idx, idx})}, {{"start", AttrInt(0)}});
    const std::string bi = Unsqueeze(b_.Op("Expand", {b_idx, shape}), {-1});
    const std::string ii = Unsqueeze(b_.Op("Expand", {idx, shape}), {-1});
    return b_.Op("GatherND", {table, b_.Op("Concat", {bi, ii}, {{"axis", AttrInt(-1)}})}, {{"batch_dims", AttrInt(0)}});
  };
  // and_masks starts from torch.ones((), dtype=bool); causal_mask_function: kv_idx <= q_idx.
  std::string allowed = b_.Op("And", {Const(Tensor::Scalar<bool>(true)), b_.Op("LessOrEqual", {kv_idx, q_idx})});
  if (!mask_.empty()) {
    // padding_mask_function: attention_mask[b, kv]
    allowed = b_.Op("And", {allowed, gather_at(Cast(mask_, DType::kBool), kv_idx)});
  } else {
    // No attention mask: find_packed_sequence_indices(position_ids) keeps packed sequences apart.
    const std::string pos = b_.Op("Expand", {positions_, b_.Op("Concat", {batch1_, I64({1})}, {{"axis", AttrInt(0)}})});
    const std::string first_dummy = b_.Op("Sub", {SliceAxis(pos, 0, 1, 1), I64Scalar(1)});
    const std::string cat = b_.Op("Concat", {first_dummy, pos}, {{"axis", AttrInt(-1)}});
    const std::string seq_plus_1 =
        b_.Op("Reshape", {b_.Op("Add", {I64Scalar(1), seq_scalar_}), I64({-1})}, {{"allowzero", AttrInt(0)}});
    const std::string prev = b_.Op("Slice", {cat, I64({0}), seq1_, I64({1}), I64({1})});
    const std::string next = b_.Op("Slice", {cat, I64({1}), seq_plus_1, I64({1}), I64({1})});
    const std::string boundary = b_.Op("Not", {b_.Op("Equal", {b_.Op("Sub", {next, prev}), I64Scalar(1)})});
    const std::string packed = b_.Op("CumSum", {Cast(boundary, DType::kInt64), I64Scalar(-1)});
    allowed = b_.Op("And", {allowed, b_.Op("Equal", {gather_at(packed, q_idx), gather_at(packed, kv_idx)})});
  }
  const std::string zero = F32(0.0f), min = F32(kFloatMin);
  mask_global_ = b_.Op("Where", {allowed, zero, min});
  if (c_.sliding_window.value_or(0) > 0) {
    // sliding_window_overlay: kv_idx > q_idx - sliding_window
    const std::string in_window = b_.Op("Greater", {kv_idx, b_.Op("Sub", {q_idx, I64Scalar(*c_.sliding_window)})});
    mask_window_ = b_.Op("Where", {b_.Op("And", {allowed, in_window}), zero, min});
  }
}

void DecoderEmitter::EmitTorchScriptMasks() {
  const int64_t window = c_.sliding_window.value_or(0);
  if (spec_.ts_mask == TsMask::kBuffer) {
    // GPT-2 / GPT-Neo / GPT-NeoX register a [1, 1, P, P] lower-triangular bool buffer and slice it
    // (bias[:, :, k - q : k, :k]); GPT-Neo's local layers XOR out the band below the window.
    const int64_t p = c_.max_positions;
    auto buffer = [&](int64_t w) {
      Tensor t(DType::kBool, {1, 1, p, p});
      bool* d = t.mutable_data<bool>();
      for (int64_t i = 0; i < p; ++i)
        for (int64_t j = 0; j < p; ++j) d[i * p + j] = j <= i && (w <= 0 || i - j < w);
      return t;
    };
    const std::string ends = b_.Op("Concat", {seq1_, seq1_}, {{"axis", AttrInt(0)}});
    const std::string global = b_.AddInitializer("attn.bias", buffer(0));
    buffer_global_ = b_.Op("Slice", {global, I64({0, 0}), ends, I64({2, 3})});
    if (c_.arch == SyntheticArch::kGptNeo && c_.layers > 1) {
      const std::string local = b_.AddInitializer("attn.local_bias", buffer(window));
      buffer_window_ = b_.Op("Slice", {local, I64({0, 0}), ends, I64({2, 3})});
    }
    if (!mask_.empty()) {
      // (1.0 - attention_mask[:, None, None, :]) * finfo.min
      const std::string m = Cast(Unsqueeze(mask_, {1, 2}), DType::kFloat32);
      padding_additive_ = b_.Op("Mul", {b_.Op("Sub", {F32(1.0f), m}), F32(kFloatMin)});
    }
    return;
  }
  // _make_causal_mask: full((S, S), min).masked_fill_(arange < (arange + 1).view(S, 1), 0)
  const std::string ss = b_.Op("Concat", {seq1_, seq1_}, {{"axis", AttrInt(0)}});
  const std::string full =
      b_.Op("ConstantOfShape", {ss}, {{"value", AttrTensor(Tensor::FromVector<float>({kFloatMin}, {1}))}});
  const std::string cond = b_.Op("Range", {I64Scalar(0), seq_scalar_, I64Scalar(1)});
  const std::string column = b_.Op(
      "Reshape", {b_.Op("Add", {cond, I64Scalar(1)}), b_.Op("Concat", {seq1_, I64({1})}, {{"axis", AttrInt(0)}})});
  const std::string causal = b_.Op("Where", {b_.Op("Less", {cond, column}), F32(0.0f), full});
  std::string global = Unsqueeze(causal, {0, 1});
  std::string windowed;
  if (window > 0) {
    // Mistral 4.34 _make_sliding_window_causal_mask: log(triu(tril(ones), -window)), with the
    // band narrowed by one so it matches masking_utils' kv > q - window.
    const std::string ones =
        b_.Op("ConstantOfShape", {ss}, {{"value", AttrTensor(Tensor::FromVector<float>({1.0f}, {1}))}});
    const std::string lower = b_.Op("Trilu", {ones, I64Scalar(0)}, {{"upper", AttrInt(0)}});
    const std::string band = b_.Op("Trilu", {lower, I64Scalar(-(window - 1))}, {{"upper", AttrInt(1)}});
    windowed = Unsqueeze(b_.Op("Log", {band}), {0, 1});
  }
  if (!mask_.empty()) {
    // _expand_mask: inverted = 1 - mask[:, None, None, :]; inverted.masked_fill(inverted.bool(), min)
    const std::string expanded = Cast(Unsqueeze(mask_, {1, 2}), DType::kFloat32);
    const std::string inverted = b_.Op("Sub", {F32(1.0f), expanded});
    const std::string padding = b_.Op("Where", {Cast(inverted, DType::kBool), F32(kFloatMin), inverted});
    global = b_.Op("Add", {padding, global});
    if (!windowed.empty()) windowed = b_.Op("Add", {padding, windowed});
  }
  mask_global_ = global;
  mask_window_ = windowed;
}

std::string DecoderEmitter::Embeddings() {
  std::string ids = ids_;
  if (GptModelViews()) ids = Reshape(ids, {-1, kS});  // input_ids.view(-1, input_shape[-1])
  std::string x = b_.Op("Gather", {Param(spec_.embed + ".weight"), ids}, {{"axis", AttrInt(0)}});
  if (spec_.position_offset >= 0) {
    std::string pos = positions_;
    if (spec_.position_offset > 0) pos = b_.Op("Add", {pos, I64Scalar(spec_.position_offset)});
    const std::string pe = b_.Op("Gather", {Param(spec_.positions + ".weight"), pos}, {{"axis", AttrInt(0)}});
    x = b_.Op("Add", {x, pe});
  }
  if (spec_.embed_scale) {
    // GemmaModel: hidden * torch.tensor(hidden_size ** 0.5, dtype=hidden.dtype)
    x = b_.Op("Mul", {x, F32(static_cast<float>(std::sqrt(static_cast<double>(c_.hidden))))});
  }
  return x;
}

std::string DecoderEmitter::Linear(const std::string& x, const std::string& module, bool bias,
                                   std::string* deferred_bias) {
  const std::string w = module + ".weight";
  std::string y;
  if (torchscript()) {
    y = b_.Op("MatMul", {x, Transpose(Param(w), {1, 0})});
  } else {
    y = b_.Op("MatMul", {x, ParamT(w)});
  }
  if (!bias) return y;
  if (deferred_bias != nullptr) {
    *deferred_bias = Param(module + ".bias");
    return y;
  }
  return b_.Op("Add", {y, Param(module + ".bias")});
}

std::string DecoderEmitter::Conv1D(const std::string& x, const std::string& module, int64_t out,
                                   std::string* deferred_bias) {
  // transformers.pytorch_utils.Conv1D: addmm(bias, x.view(-1, in), weight).view(..., out).
  const std::string w = Param(module + ".weight");
  const std::string bias = Param(module + ".bias");
  if (fused()) {
    const std::string y = b_.Op("MatMul", {x, w});
    if (deferred_bias != nullptr) {
      *deferred_bias = bias;
      return y;
    }
    return b_.Op("Add", {y, bias});
  }
  const int64_t in = w_.at(module + ".weight").dim(0);
  const std::string x2 = Reshape(x, {-1, in});
  const std::string y2 =
      b_.Op("Gemm", {x2, w, bias},
            {{"alpha", AttrFloat(1.0f)}, {"beta", AttrFloat(1.0f)}, {"transA", AttrInt(0)}, {"transB", AttrInt(0)}});
  return Reshape(y2, {kB, kS, out}, 1, x);
}

std::string DecoderEmitter::Norm(const std::string& x, const std::string& module) {
  const float eps = *c_.norm_eps;
  if (spec_.norm == NormKind::kLayerNorm) {
    const std::string w = Param(module + ".weight"), bias = Param(module + ".bias");
    if (!torchscript()) {
      return b_.Op("LayerNormalization", {x, w, bias},
                   {{"axis", AttrInt(-1)}, {"epsilon", AttrFloat(eps)}, {"stash_type", AttrInt(1)}});
    }
    // aten::layer_norm below opset 17.
    const std::string mean = ReduceMeanLast(x);
    const std::string d = b_.Op("Sub", {x, mean});
    const std::string var = ReduceMeanLast(b_.Op("Pow", {d, F32(2.0f)}));
    const std::string n = b_.Op("Div", {d, b_.Op("Sqrt", {b_.Op("Add", {var, F32(eps)})})});
    return b_.Op("Add", {b_.Op("Mul", {n, w}), bias});
  }
  const bool gemma = spec_.norm == NormKind::kGemmaRmsNorm;
  if (fused()) {
    return b_.Op("SimplifiedLayerNormalization", {x, FusedNormScale(module)},
                 {{"axis", AttrInt(-1)}, {"epsilon", AttrFloat(eps)}, {"stash_type", AttrInt(1)}});
  }
  // LlamaRMSNorm: x * rsqrt(mean(x^2) + eps), then weight * x (Gemma: x * (1 + weight)).
  const std::string var = ReduceMeanLast(b_.Op("Pow", {x, F32(2.0f)}));
  const std::string root = b_.Op("Sqrt", {b_.Op("Add", {var, F32(eps)})});
  // TorchScript writes rsqrt as 1 / sqrt; dynamo as Reciprocal.
  const std::string inv = torchscript() ? b_.Op("Div", {F32(1.0f), root}) : b_.Op("Reciprocal", {root});
  const std::string n = b_.Op("Mul", {x, inv});
  if (gemma) return b_.Op("Mul", {n, b_.Op("Add", {F32(1.0f), Param(module + ".weight")})});
  return b_.Op("Mul", {Param(module + ".weight"), n});
}

std::string DecoderEmitter::ResidualNorm(std::string* residual, const std::string& delta, const std::string& bias,
                                         const std::string& module, bool need_sum) {
  if (!fused()) {
    const std::string d = bias.empty() ? delta : b_.Op("Add", {delta, bias});
    *residual = b_.Op("Add", {*residual, d});
    return Norm(*residual, module);
  }
  // Skip(Simplified)LayerNormalization: normalises input + skip (+ bias); output 3 is that sum.
  const bool layer_norm = spec_.norm == NormKind::kLayerNorm;
  std::vector<std::string> inputs = {*residual, delta};
  inputs.push_back(layer_norm ? Param(module + ".weight") : FusedNormScale(module));
  if (layer_norm) inputs.push_back(Param(module + ".bias"));
  if (!bias.empty()) inputs.push_back(bias);
  const std::string op = layer_norm ? "SkipLayerNormalization" : "SkipSimplifiedLayerNormalization";
  const std::vector<std::string> outs =
      b_.AddNode(op, inputs, need_sum ? 4 : 1, {{"epsilon", AttrFloat(*c_.norm_eps)}}, "com.microsoft");
  if (need_sum) *residual = outs[3];
  return outs[0];
}

std::string DecoderEmitter::Activation(const std::string& x, const std::string& fused_bias) {
  if (fused()) {
    switch (spec_.act) {
      case Act::kGeluNew:
      case Act::kGeluTanh: {
        std::vector<std::string> in = {x};
        if (!fused_bias.empty()) in.push_back(fused_bias);
        return b_.Op("FastGelu", in, {}, "com.microsoft");
      }
      case Act::kGeluErf:
        return b_.Op("Gelu", {fused_bias.empty() ? x : b_.Op("Add", {x, fused_bias})}, {}, "com.microsoft");
      default: break;  // ReLU and SiLU have no fused form here
    }
  }
  const std::string in = fused_bias.empty() ? x : b_.Op("Add", {x, fused_bias});
  switch (spec_.act) {
    case Act::kGeluNew: {
      // NewGELUActivation: 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * pow(x, 3))))
      const std::string half = b_.Op("Mul", {in, F32(0.5f)});
      const std::string cube = b_.Op("Pow", {in, F32(3.0f)});
      const std::string inner = b_.Op("Add", {in, b_.Op("Mul", {cube, F32(0.044715f)})});
      const std::string t = b_.Op("Tanh", {b_.Op("Mul", {inner, F32(0.7978845608028654f)})});
      return b_.Op("Mul", {half, b_.Op("Add", {t, F32(1.0f)})});
    }
    case Act::kGeluTanh: {
      if (torchscript()) {
        // symbolic_opset9 gelu(approximate="tanh"): cube as x * (x * x).
        const std::string cube = b_.Op("Mul", {in, b_.Op("Mul", {in, in})});
        const std::string inner =
            b_.Op("Mul", {F32(0.7978845608028654f), b_.Op("Add", {in, b_.Op("Mul", {F32(0.044715f), cube})})});
        const std::string t = b_.Op("Add", {F32(1.0f), b_.Op("Tanh", {inner})});
        return b_.Op("Mul", {F32(0.5f), b_.Op("Mul", {in, t})});
      }
      // torchlib aten_gelu(approximate="tanh").
      const std::string cube = b_.Op("Pow", {in, F32(3.0f)});
      const std::string inner = b_.Op("Add", {in, b_.Op("Mul", {cube, F32(0.044715f)})});
      const std::string t = b_.Op("Tanh", {b_.Op("Mul", {inner, F32(0.7978845608028654f)})});
      return b_.Op("Mul", {b_.Op("Mul", {in, b_.Op("Add", {t, F32(1.0f)})}), F32(0.5f)});
    }
    case Act::kGeluErf: {
      // gelu(x) = x * (1 + erf(x / sqrt(2))) / 2
      const std::string e = b_.Op("Erf", {b_.Op("Div", {in, F32(1.4142135623730951f)})});
      return b_.Op("Mul", {b_.Op("Mul", {in, b_.Op("Add", {e, F32(1.0f)})}), F32(0.5f)});
    }
    case Act::kRelu: return b_.Op("Relu", {in});
    case Act::kSilu: return b_.Op("Mul", {in, b_.Op("Sigmoid", {in})});
  }
  return in;
}

std::string DecoderEmitter::Mlp(const std::string& x, const std::string& prefix, std::string* deferred_bias) {
  const int64_t inter = c_.intermediate;
  if (spec_.gated_mlp) {
    // down_proj(act(gate_proj(x)) * up_proj(x))
    const std::string g = Activation(Linear(x, prefix + spec_.gate, false), "");
    const std::string u = Linear(x, prefix + spec_.up, false);
    return Linear(b_.Op("Mul", {g, u}), prefix + spec_.fc2, false);
  }
  std::string h;
  if (spec_.qkv == QkvKind::kConv1D) {
    std::string fc_bias;
    h = Conv1D(x, prefix + spec_.fc1, inter, fused() ? &fc_bias : nullptr);
    h = Activation(h, fc_bias);
    return Conv1D(h, prefix + spec_.fc2, c_.hidden, deferred_bias);
  }
  // Fused graphs fold the fc1 bias into FastGelu / Gelu.
  std::string fc_bias;
  const bool fold_bias = fused() && spec_.act != Act::kRelu;
  h = Linear(x, prefix + spec_.fc1, spec_.mlp_bias, fold_bias ? &fc_bias : nullptr);
  h = Activation(h, fc_bias);
  return Linear(h, prefix + spec_.fc2, spec_.mlp_bias, deferred_bias);
}

std::string DecoderEmitter::ApplyRotary(const std::string& x) {
  // apply_rotary_pos_emb on [B, heads, S, head_dim]: x * cos + rotate_half(x) * sin, over the
  // first rot dims only when the rotary is partial (GPT-NeoX rotary_pct, Phi partial_rotary_factor).
  const bool partial = rot_ < head_dim_;
  const std::string xr = partial ? SliceAxis(x, 0, rot_, 3) : x;
  const std::string x1 = SliceAxis(xr, 0, rot_ / 2, 3);
  const std::string x2 = SliceAxis(xr, rot_ / 2, kToEnd, 3);
  const std::string rotated = b_.Op("Concat", {b_.Op("Neg", {x2}), x1}, {{"axis", AttrInt(-1)}});
  const std::string y = b_.Op("Add", {b_.Op("Mul", {xr, cos4_}), b_.Op("Mul", {rotated, sin4_})});
  if (!partial) return y;
  return b_.Op("Concat", {y, SliceAxis(x, rot_, kToEnd, 3)}, {{"axis", AttrInt(-1)}});
}

std::string DecoderEmitter::FusedRotary(const std::string& x, int64_t num_heads) {
  Attributes attrs = {{"interleaved", AttrInt(0)}, {"num_heads", AttrInt(num_heads)}};
  if (rot_ < head_dim_) attrs["rotary_embedding_dim"] = AttrInt(rot_);
  return b_.Op("RotaryEmbedding", {x, rotary_positions_, cos_cache_, sin_cache_}, attrs, "com.microsoft");
}

std::string DecoderEmitter::RepeatKv(const std::string& x, int64_t kv_heads) {
  // repeat_kv: x[:, :, None].expand(B, kv, n_rep, S, D).reshape(B, kv * n_rep, S, D)
  const int64_t n_rep = c_.heads / kv_heads;
  const std::string x5 = Unsqueeze(x, {2});
  const std::string shape = ShapeValue(x, {kB, kv_heads, n_rep, kS, head_dim_}, 2);
  return Reshape(b_.Op("Expand", {x5, shape}), {kB, c_.heads, kS, head_dim_}, 2, x);
}

std::string DecoderEmitter::Attention(const std::string& x, int64_t layer, std::string* deferred_bias) {
  const std::string prefix = LayerPrefix(spec_, layer);
  const int64_t nh = c_.heads, kvh = c_.kv_heads, hd = head_dim_;
  std::string qh, kh, vh;  // [B, heads, S, hd]
  std::string kt;          // [B, heads, hd, S] when produced directly
  // view(B, S, -1, hd) in the modern modeling code; the 4.3x code wrote the head count.
  auto heads_dims = [&](int64_t n) { return std::vector<int64_t>{kB, kS, dynamo() ? -1 : n, hd}; };
  auto heads_of = [&](const std::string& t3, int64_t n) { return Transpose(Reshape(t3, heads_dims(n)), {0, 2, 1, 3}); };
  if (spec_.qkv == QkvKind::kConv1D) {
    // GPT2Attention: c_attn(x).split(hidden, dim=2), heads split, key transposed for q @ k^T.
    const std::string qkv = Conv1D(x, prefix + spec_.qkv_module, 3 * c_.hidden);
    const std::vector<std::string> parts = Split3(qkv, 2, c_.hidden);
    qh = heads_of(parts[0], nh);
    vh = heads_of(parts[2], nh);
    kt = Transpose(Reshape(parts[1], heads_dims(nh)), {0, 2, 3, 1});
  } else if (spec_.qkv == QkvKind::kNeoXFused) {
    // GPTNeoXAttention: qkv.view(B, S, heads, 3 * hd).transpose(1, 2).chunk(3, dim=-1)
    const std::string qkv = Linear(x, prefix + spec_.qkv_module, spec_.qkv_bias);
    const std::string heads = Transpose(Reshape(qkv, {kB, kS, dynamo() ? -1 : nh, 3 * hd}), {0, 2, 1, 3});
    const std::vector<std::string> parts = Split3(heads, -1, hd);
    qh = parts[0], kh = parts[1], vh = parts[2];
    if (fused()) {
      qh = FusedRotary(qh, nh);
      kh = FusedRotary(kh, nh);
    }
  } else {
    std::string q3 = Linear(x, prefix + spec_.q, spec_.qkv_bias);
    std::string k3 = Linear(x, prefix + spec_.k, spec_.qkv_bias);
    const std::string v3 = Linear(x, prefix + spec_.v, spec_.qkv_bias);
    if (spec_.scale == ScoreScale::kQuery) {
      // OPTAttention: q_proj(x) * head_dim ** -0.5
      q3 = b_.Op("Mul", {q3, F32(static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd))))});
    }
    if (fused() && spec_.rotary) {
      q3 = FusedRotary(q3, nh);
      k3 = FusedRotary(k3, kvh);
    }
    qh = heads_of(q3, nh);
    kh = heads_of(k3, kvh);
    vh = heads_of(v3, kvh);
  }
  if (spec_.rotary && !fused()) {
    qh = ApplyRotary(qh);
    kh = ApplyRotary(kh);
  }
  if (kvh != nh) {
    kh = RepeatKv(kh, kvh);
    vh = RepeatKv(vh, kvh);
  }
  if (kt.empty()) kt = Transpose(kh, {0, 1, 3, 2});
  std::string scores = b_.Op("MatMul", {qh, kt});
  if (spec_.scale == ScoreScale::kScores) {
    if (torchscript()) {
      scores = b_.Op("Div", {scores, F32(static_cast<float>(std::sqrt(static_cast<double>(hd))))});
    } else {
      scores = b_.Op("Mul", {scores, F32(static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd))))});
    }
  }
  const bool windowed = LayerHasWindow(c_, layer);
  if (dynamo()) {
    scores = b_.Op("Add", {scores, windowed ? mask_window_ : mask_global_});
  } else if (spec_.ts_mask == TsMask::kBuffer) {
    scores = b_.Op("Where", {windowed ? buffer_window_ : buffer_global_, scores, F32(kFloatMin)});
    if (!padding_additive_.empty()) scores = b_.Op("Add", {scores, padding_additive_});
  } else {
    scores = b_.Op("Add", {scores, windowed ? mask_window_ : mask_global_});
    // HF 4.3x clamps: torch.max(attn_weights, finfo.min), so min + min never reaches -inf.
    scores = b_.Op("Max", {scores, F32(kFloatMin)});
  }
  const std::string probs = b_.Op("Softmax", {scores}, {{"axis", AttrInt(-1)}});
  const std::string context = Transpose(b_.Op("MatMul", {probs, vh}), {0, 2, 1, 3});
  if (spec_.qkv == QkvKind::kConv1D && dynamo()) {
    // The exporter merges _merge_heads' view with Conv1D's view(-1, hidden) into one Reshape.
    return Conv1D(context, prefix + spec_.o, c_.hidden, deferred_bias);
  }
  const std::string merged = Reshape(context, {kB, kS, dynamo() ? -1 : nh * hd});
  if (spec_.qkv == QkvKind::kConv1D) return Conv1D(merged, prefix + spec_.o, c_.hidden, deferred_bias);
  return Linear(merged, prefix + spec_.o, spec_.o_bias, deferred_bias);
}

StatusOr<Model> DecoderEmitter::Emit() {
  const std::vector<Dim> bs = {Dim{-1, "batch"}, Dim{-1, "seq"}};
  ids_ = b_.AddInput("input_ids", DType::kInt64, bs);
  if (has_mask_input()) {
    mask_input_ = b_.AddInput("attention_mask", DType::kInt64, bs);
    position_input_ = b_.AddInput("position_ids", DType::kInt64, bs);
  }
  b_.SetScope("positions");
  EmitShapeValues();
  EmitPositions();
  b_.SetScope("rotary");
  EmitRotaryTables();
  b_.SetScope("mask");
  if (dynamo()) {
    EmitDynamoMasks();
  } else {
    EmitTorchScriptMasks();
  }

  b_.SetScope("embed");
  std::string x = Embeddings();
  b_.SetScope(LayerPrefix(spec_, 0) + "norm");
  // Fused graphs defer biases of the projections feeding a residual into SkipLayerNormalization.
  const bool defer = fused() && !spec_.parallel_residual;
  std::string h1 = Norm(x, LayerPrefix(spec_, 0) + spec_.ln1);
  std::string h2 = spec_.parallel_residual && !spec_.shared_norm ? Norm(x, LayerPrefix(spec_, 0) + spec_.ln2) : h1;
  for (int64_t layer = 0; layer < c_.layers; ++layer) {
    const std::string prefix = LayerPrefix(spec_, layer);
    const bool last = layer + 1 == c_.layers;
    const std::string next_ln1 = last ? spec_.final_norm : LayerPrefix(spec_, layer + 1) + spec_.ln1;
    std::string attn_bias, mlp_bias;
    b_.SetScope(prefix + "attn");
    const std::string a = Attention(h1, layer, defer ? &attn_bias : nullptr);
    if (spec_.parallel_residual) {
      b_.SetScope(prefix + "mlp");
      const std::string m = Mlp(h2, prefix, nullptr);
      b_.SetScope(prefix + "residual");
      // GPT-NeoX: mlp + attn + x; Phi: attn + mlp + x.
      const std::string delta = c_.arch == SyntheticArch::kGptNeoX ? b_.Op("Add", {m, a}) : b_.Op("Add", {a, m});
      h1 = ResidualNorm(&x, delta, "", next_ln1, !last);
      h2 = h1;
      if (!last && !spec_.shared_norm) h2 = Norm(x, LayerPrefix(spec_, layer + 1) + spec_.ln2);
      continue;
    }
    b_.SetScope(prefix + "residual");
    h2 = ResidualNorm(&x, a, attn_bias, prefix + spec_.ln2, true);
    b_.SetScope(prefix + "mlp");
    const std::string m = Mlp(h2, prefix, defer ? &mlp_bias : nullptr);
    b_.SetScope(prefix + "residual");
    h1 = ResidualNorm(&x, m, mlp_bias, next_ln1, !last);
  }

  b_.SetScope("lm_head");
  if (GptModelViews()) h1 = Reshape(h1, {-1, kS, c_.hidden});  // hidden_states.view(output_shape)
  const bool tied = *c_.tie_word_embeddings;
  std::string head;
  if (tied || torchscript()) {
    head = Transpose(Param(tied ? spec_.embed + ".weight" : spec_.lm_head + ".weight"), {1, 0});
  } else {
    head = ParamT(spec_.lm_head + ".weight");
  }
  if (spec_.lm_head_bias) {
    const std::string y = b_.Op("MatMul", {h1, head});
    b_.AddNodeWithOutputs("Add", {y, Param(spec_.lm_head + ".bias")}, {"logits"});
  } else {
    b_.AddNodeWithOutputs("MatMul", {h1, head}, {"logits"});
  }
  b_.AddOutput("logits", DType::kFloat32, {Dim{-1, "batch"}, Dim{-1, "seq"}, Dim{c_.vocab, ""}});

  std::vector<OpsetImport> opsets;
  switch (c_.export_style) {
    case ExportStyle::kDynamo: opsets = {{"", 18}}; break;
    case ExportStyle::kTorchScript: opsets = {{"", 14}}; break;
    case ExportStyle::kOrtFused: opsets = {{"", 17}, {"com.microsoft", 1}}; break;
  }
  QC_ASSIGN_OR_RETURN(Model model, b_.Build(opsets, "qconvert.synthetic"));
  model.doc_string = std::string("synthetic ") + SyntheticArchName(c_.arch) + " decoder, " +
                     ExportStyleName(c_.export_style) + " export style";
  model.metadata_props = {{"arch", SyntheticArchName(c_.arch)},
                          {"export_style", ExportStyleName(c_.export_style)},
                          {"seed", std::to_string(c_.seed)}};
  return model;
}

}  // namespace

const char* SyntheticArchName(SyntheticArch arch) {
  switch (arch) {
    case SyntheticArch::kGpt2: return "gpt2";
    case SyntheticArch::kGptNeo: return "gpt_neo";
    case SyntheticArch::kGptNeoX: return "gpt_neox";
    case SyntheticArch::kOpt: return "opt";
    case SyntheticArch::kLlama: return "llama";
    case SyntheticArch::kMistral: return "mistral";
    case SyntheticArch::kQwen2: return "qwen2";
    case SyntheticArch::kPhi: return "phi";
    case SyntheticArch::kGemma: return "gemma";
  }
  return "unknown";
}

const char* ExportStyleName(ExportStyle style) {
  switch (style) {
    case ExportStyle::kDynamo: return "dynamo";
    case ExportStyle::kTorchScript: return "torchscript";
    case ExportStyle::kOrtFused: return "ort_fused";
  }
  return "unknown";
}

std::vector<SyntheticArch> AllSyntheticArchs() {
  return {SyntheticArch::kGpt2,  SyntheticArch::kGptNeo, SyntheticArch::kGptNeoX,
          SyntheticArch::kOpt,   SyntheticArch::kLlama,  SyntheticArch::kMistral,
          SyntheticArch::kQwen2, SyntheticArch::kPhi,    SyntheticArch::kGemma};
}

StatusOr<SyntheticConfig> ResolveSyntheticConfig(const SyntheticConfig& config) {
  SyntheticConfig c = config;
  const ArchSpec spec = SpecFor(c.arch);
  const std::string arch = SyntheticArchName(c.arch);
  auto bad = [&](const std::string& m) { return InvalidArgument("synthetic " + arch + " config: " + m); };
  if (c.vocab < 2 || c.hidden < 2 || c.layers < 1 || c.heads < 1 || c.max_positions < 1)
    return bad("vocab, hidden, layers, heads and max_positions must be positive (vocab, hidden >= 2)");
  if (c.kv_heads == 0) c.kv_heads = c.heads;
  if (c.kv_heads != c.heads && !spec.allows_gqa) return bad("kv_heads must equal heads (the architecture is MHA)");
  if (c.kv_heads < 1 || c.heads % c.kv_heads != 0)
    return bad("heads (" + std::to_string(c.heads) + ") must be a multiple of kv_heads (" + std::to_string(c.kv_heads) +
               ")");
  if (c.head_dim == 0) {
    if (c.hidden % c.heads != 0)
      return bad("hidden (" + std::to_string(c.hidden) + ") must be a multiple of heads (" + std::to_string(c.heads) +
                 ")");
    c.head_dim = c.hidden / c.heads;
  } else if (c.head_dim != c.hidden / c.heads || c.hidden % c.heads != 0) {
    if (!spec.allows_head_dim) return bad("head_dim must be hidden / heads (only Gemma sets it independently)");
  }
  if (c.head_dim < 1) return bad("head_dim must be positive");
  if (c.intermediate == 0) c.intermediate = 4 * c.hidden;
  if (c.intermediate < 1) return bad("intermediate must be positive");
  if (!(c.init_std > 0.0f)) return bad("init_std must be positive");
  if (!c.tie_word_embeddings) c.tie_word_embeddings = spec.default_tie;
  if (spec.lm_head.empty() && !*c.tie_word_embeddings)
    return bad("the architecture always ties lm_head to the token embedding");
  if (!c.rope_theta) c.rope_theta = spec.default_theta;
  if (!c.norm_eps) c.norm_eps = spec.norm == NormKind::kLayerNorm ? 1e-5f : 1e-6f;
  if (!c.partial_rotary_factor) c.partial_rotary_factor = spec.default_rotary_factor;
  if (c.arch == SyntheticArch::kGptNeo && !c.sliding_window) c.sliding_window = 256;
  if (c.sliding_window && !spec.allows_window) return bad("sliding_window applies only to Mistral and GPT-Neo");
  if (c.sliding_window && *c.sliding_window < 0) return bad("sliding_window must be >= 0");
  if (c.arch == SyntheticArch::kGptNeo && *c.sliding_window < 1) return bad("GPT-Neo's window must be >= 1");
  if (spec.rotary) {
    const int64_t rot = SyntheticRotaryDim(c);
    if (rot < 2 || rot % 2 != 0 || rot > c.head_dim)
      return bad("rotary dimension " + std::to_string(rot) + " (head_dim " + std::to_string(c.head_dim) + " x " +
                 std::to_string(*c.partial_rotary_factor) + ") must be even, >= 2 and <= head_dim");
    if (!(*c.rope_theta > 1.0f)) return bad("rope_theta must be > 1");
  } else if (*c.partial_rotary_factor != 1.0f) {
    return bad("partial_rotary_factor applies only to rotary architectures");
  }
  return c;
}

int64_t SyntheticRotaryDim(const SyntheticConfig& resolved) {
  if (!SpecFor(resolved.arch).rotary) return 0;
  // int(head_dim * factor), as GPTNeoXAttention and PhiAttention compute it.
  return static_cast<int64_t>(static_cast<double>(resolved.head_dim) * resolved.partial_rotary_factor.value_or(1.0f));
}

const Tensor& SyntheticWeights::at(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) std::fprintf(stderr, "SyntheticWeights: no parameter '%s'\n", name.c_str());
  QC_CHECK(it != tensors.end());
  return it->second;
}

StatusOr<SyntheticWeights> MakeSyntheticWeights(const SyntheticConfig& config, SpillStore* spill) {
  QC_ASSIGN_OR_RETURN(const SyntheticConfig c, ResolveSyntheticConfig(config));
  const ArchSpec spec = SpecFor(c.arch);
  SyntheticWeights w;
  std::mt19937 rng(c.seed);
  const float std = c.init_std;
  auto add = [&](const std::string& name, Tensor t) {
    w.names.push_back(name);
    if (spill) t = spill->SpillOrKeep(t);  // failures surface through spill->status()
    w.tensors.emplace(name, std::move(t));
  };
  auto normal = [&](const std::string& name, Shape shape) { add(name, RandomNormalTensor(shape, 0.0f, std, rng)); };
  auto norm = [&](const std::string& module) {
    // Scales near 1; Gemma stores w with (1 + w) applied, so its raw weights sit near 0.
    const float center = spec.norm == NormKind::kGemmaRmsNorm ? 0.0f : 1.0f;
    add(module + ".weight", RandomNormalTensor({c.hidden}, center, std, rng));
    if (spec.norm == NormKind::kLayerNorm) normal(module + ".bias", {c.hidden});
  };
  auto linear = [&](const std::string& module, int64_t in, int64_t out, bool bias) {
    normal(module + ".weight", {out, in});
    if (bias) normal(module + ".bias", {out});
  };
  auto conv1d = [&](const std::string& module, int64_t in, int64_t out) {
    normal(module + ".weight", {in, out});
    normal(module + ".bias", {out});
  };
  const int64_t h = c.hidden, q_out = c.heads * c.head_dim, kv_out = c.kv_heads * c.head_dim, inter = c.intermediate;
  normal(spec.embed + ".weight", {c.vocab, h});
  if (spec.position_offset >= 0) normal(spec.positions + ".weight", {c.max_positions + spec.position_offset, h});
  for (int64_t layer = 0; layer < c.layers; ++layer) {
    const std::string p = LayerPrefix(spec, layer);
    norm(p + spec.ln1);
    switch (spec.qkv) {
      case QkvKind::kConv1D:
        conv1d(p + spec.qkv_module, h, 3 * h);
        conv1d(p + spec.o, h, h);
        break;
      case QkvKind::kNeoXFused:
        linear(p + spec.qkv_module, h, 3 * h, spec.qkv_bias);
        linear(p + spec.o, h, h, spec.o_bias);
        break;
      case QkvKind::kSeparate:
        linear(p + spec.q, h, q_out, spec.qkv_bias);
        linear(p + spec.k, h, kv_out, spec.qkv_bias);
        linear(p + spec.v, h, kv_out, spec.qkv_bias);
        linear(p + spec.o, q_out, h, spec.o_bias);
        break;
    }
    if (!spec.shared_norm) norm(p + spec.ln2);
    if (spec.qkv == QkvKind::kConv1D) {
      conv1d(p + spec.fc1, h, inter);
      conv1d(p + spec.fc2, inter, h);
    } else if (spec.gated_mlp) {
      linear(p + spec.gate, h, inter, false);
      linear(p + spec.up, h, inter, false);
      linear(p + spec.fc2, inter, h, false);
    } else {
      linear(p + spec.fc1, h, inter, spec.mlp_bias);
      linear(p + spec.fc2, inter, h, spec.mlp_bias);
    }
  }
  norm(spec.final_norm);
  if (!*c.tie_word_embeddings) {
    linear(spec.lm_head, h, c.vocab, spec.lm_head_bias);
  } else if (spec.lm_head_bias) {
    normal(spec.lm_head + ".bias", {c.vocab});  // Phi's lm_head keeps its bias when tied
  }
  return w;
}

StatusOr<Model> BuildSyntheticDecoder(const SyntheticConfig& config, std::shared_ptr<SpillStore> spill) {
  QC_ASSIGN_OR_RETURN(const SyntheticConfig c, ResolveSyntheticConfig(config));
  QC_ASSIGN_OR_RETURN(const SyntheticWeights weights, MakeSyntheticWeights(c, spill.get()));
  if (spill) QC_RETURN_IF_ERROR(spill->status().WithContext("generating weights"));
  const ArchSpec spec = SpecFor(c.arch);
  DecoderEmitter emitter(c, spec, weights, spill);
  QC_ASSIGN_OR_RETURN(Model model, emitter.Emit());
  if (spill) QC_RETURN_IF_ERROR(spill->status().WithContext("generating weights"));
  return model;
}

}  // namespace qc
