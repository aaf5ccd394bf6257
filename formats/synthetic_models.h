// Small random-weight decoder-only LLM graphs in the op patterns of real architectures and exporters.
//
// Each generator follows the Hugging Face modeling code of its architecture (what is computed, in
// which order) and the node patterns one exporter writes for it, so passes and kernels can be tested
// on every pattern without downloading checkpoints. Weights come from a seeded generator: the same
// config always gives a byte-identical model, and every export style of one config computes the same
// function (up to float rounding) from the same parameters.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "formats/graph.h"
#include "formats/spill_store.h"
#include "formats/status.h"
#include "formats/tensor.h"

namespace qc {

/// The modelled architecture (the Hugging Face model class whose forward pass the graph follows).
enum class SyntheticArch {
  kGpt2,     // GPT2LMHeadModel: learned positions, LayerNorm, Conv1D (Gemm) layers, gelu_new, tied
  kGptNeo,   // GPTNeoForCausalLM: unscaled attention, alternating global / local (windowed) layers, tied
  kGptNeoX,  // GPTNeoXForCausalLM (Pythia): parallel residual, partial rotary, per-head fused QKV, gelu
  kOpt,      // OPTForCausalLM: learned positions with offset 2, pre-LN, scaled queries, ReLU, tied
  kLlama,    // LlamaForCausalLM: RMSNorm, rotary, GQA, SwiGLU
  kMistral,  // MistralForCausalLM: Llama plus an optional sliding-window mask
  kQwen2,    // Qwen2ForCausalLM: Llama with q/k/v biases, tied (as the small checkpoints are)
  kPhi,      // PhiForCausalLM: one LayerNorm feeding parallel attention + MLP, partial rotary, biases
  kGemma,    // GemmaForCausalLM: RMSNorm times (1 + w), GeGLU (gelu-tanh), sqrt(hidden) embedding scale
};

/// Which exporter's op patterns the graph uses.
enum class ExportStyle {
  /// torch.onnx.export(dynamo=True), opset 18: MatMul against pre-transposed weight initializers
  /// (Gemm for GPT-2's Conv1D), RMSNorm as Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul, rotary cos/sin
  /// computed in the graph, the HF masking_utils mask from Range/LessOrEqual/CumSum/GatherND/Where,
  /// constants as initializers.
  kDynamo,
  /// The legacy TorchScript exporter (older HF modeling code), opset 14: Transpose + MatMul of
  /// [out, in] weights (Gemm for Conv1D), LayerNorm decomposed, Constant nodes, Shape/Gather/
  /// Unsqueeze/Concat shape arithmetic, cached cos/sin tables, causal masks from buffers (Where)
  /// or built additively and clamped with Max.
  kTorchScript,
  /// What ONNX Runtime's transformer optimizer / model builder emits, opset 17 + com.microsoft:
  /// LayerNormalization, SkipLayerNormalization, SimplifiedLayerNormalization,
  /// SkipSimplifiedLayerNormalization, FastGelu, Gelu and RotaryEmbedding.
  kOrtFused,
};

/// Which graph inputs the model declares (all int64 [batch, seq]).
enum class SyntheticInputs {
  kIdsOnly,           // input_ids; positions are 0..seq-1 and nothing is masked
  kIdsMaskPositions,  // input_ids, attention_mask (1 = attend), position_ids
};

/// Size and flavour of a synthetic decoder. Optional fields default per architecture (see
/// ResolveSyntheticConfig); zero sizes mean "derive from the others".
struct SyntheticConfig {
  SyntheticArch arch = SyntheticArch::kLlama;
  int64_t vocab = 97;
  int64_t hidden = 32;
  int64_t layers = 2;
  int64_t heads = 4;
  int64_t kv_heads = 0;      // 0: heads (GPT-2, GPT-Neo, GPT-NeoX, OPT and Phi are always MHA)
  int64_t head_dim = 0;      // 0: hidden / heads (Gemma may set it independently)
  int64_t intermediate = 0;  // 0: 4 * hidden
  int64_t max_positions = 64;
  uint32_t seed = 0;
  /// Standard deviation of the N(0, std) weights; norm scales are 1 + N(0, std).
  float init_std = 0.02f;
  ExportStyle export_style = ExportStyle::kDynamo;
  SyntheticInputs inputs = SyntheticInputs::kIdsOnly;

  /// Fraction of each head's dimensions that rotate (default: GPT-NeoX 0.25, Phi 0.5, others 1).
  std::optional<float> partial_rotary_factor;
  /// Attention window in tokens (key j is visible from query i iff i - window < j <= i). Mistral
  /// applies it to every layer when set (default: none); GPT-Neo to its odd ("local") layers
  /// (default 256, HF's window_size). Other architectures reject it.
  std::optional<int64_t> sliding_window;
  /// Whether lm_head reuses the token embedding (default: GPT-2, GPT-Neo, OPT, Qwen2, Gemma).
  std::optional<bool> tie_word_embeddings;
  std::optional<float> rope_theta;  // default 10000 (Qwen2: 1e6)
  std::optional<float> norm_eps;    // default 1e-5 for LayerNorm, 1e-6 for RMSNorm
};

/// "gpt2", "gpt_neo", "gpt_neox", "opt", "llama", "mistral", "qwen2", "phi", "gemma" (HF model_type).
const char* SyntheticArchName(SyntheticArch arch);
/// "dynamo", "torchscript", "ort_fused".
const char* ExportStyleName(ExportStyle style);
/// Every architecture, in enum order.
std::vector<SyntheticArch> AllSyntheticArchs();

/// The config with every optional and derived field filled in, or an error naming the field that
/// is out of range or does not apply to the architecture (e.g. kv_heads on GPT-2, an odd rotary
/// dimension, heads not dividing hidden).
StatusOr<SyntheticConfig> ResolveSyntheticConfig(const SyntheticConfig& config);

/// Number of rotated dimensions per head (0 for architectures without rotary embeddings).
int64_t SyntheticRotaryDim(const SyntheticConfig& resolved);

/// The parameters of a synthetic decoder in Hugging Face layout and naming (state_dict names;
/// nn.Linear weights [out, in], GPT-2 Conv1D weights [in, out]), drawn in state_dict order from
/// std::mt19937(seed). Tied models have no separate lm_head.weight.
struct SyntheticWeights {
  std::vector<std::string> names;  // draw order
  std::map<std::string, Tensor> tensors;
  /// The named parameter; aborts if absent (a generator or test bug, not bad input).
  const Tensor& at(const std::string& name) const;
  bool contains(const std::string& name) const { return tensors.count(name) > 0; }
};

/// Draws the parameters of `config` (resolved first). With `spill`, each large parameter is moved
/// to it as soon as it is drawn, so a model larger than memory can be generated.
StatusOr<SyntheticWeights> MakeSyntheticWeights(const SyntheticConfig& config, SpillStore* spill = nullptr);

/// Builds the decoder graph: input_ids int64 [batch, seq] (plus attention_mask and position_ids
/// when requested) to logits float32 [batch, seq, vocab]. Initializers carry the HF parameter
/// names; kDynamo and kOrtFused store Linear weights pre-transposed ([in, out]) under that name,
/// kTorchScript stores them [out, in] and reads them through a Transpose node. kOrtFused stores a
/// Gemma norm's folded (1 + w) as `<name>_plus_1`.
///
/// With `spill` the weights (drawn and transposed) live in that scratch file rather than in memory,
/// one or two tensors resident at a time: with WriteOnnxModel's streaming this generates models
/// of any size (`qconvert generate --external-data`, bench/memory.sh). The weights are the same
/// bytes either way. Spill failures (disk full) are errors.
StatusOr<Model> BuildSyntheticDecoder(const SyntheticConfig& config, std::shared_ptr<SpillStore> spill = nullptr);

}  // namespace qc
