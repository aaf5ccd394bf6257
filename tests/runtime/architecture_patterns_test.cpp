// Tests of the synthetic decoder generators (formats/synthetic_models.h) on the runtime: every
// architecture in every export style builds, survives an ONNX round trip and computes the same
// logits with the fast kernels, the reference kernels, ONNX Runtime (when available) and, for Llama
// and GPT-2, an independent scalar forward pass written from the HF modeling code.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "formats/graph.h"
#include "formats/linear_layers.h"
#include "formats/model_builder.h"
#include "formats/npy.h"
#include "formats/onnx_reader.h"
#include "formats/onnx_writer.h"
#include "formats/synthetic_models.h"
#include "runtime/executor.h"
#include "tests/ort_batch.h"
#include "tests/temp_dir.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kBatch = 2;
constexpr int64_t kSeq = 17;
// Left padding of batch row 1 in the masked runs: exercises the padding mask and position_ids.
constexpr int64_t kPad = 3;
// "1e-4 relative-ish": max |a - b| <= kTol * max(1, max |reference|).
constexpr double kTol = 1e-4;

struct Case {
  SyntheticArch arch;
  ExportStyle style;
  SyntheticInputs inputs;
};

std::string CaseName(const Case& c) {
  return std::string(SyntheticArchName(c.arch)) + "_" + ExportStyleName(c.style) +
         (c.inputs == SyntheticInputs::kIdsOnly ? "_ids" : "_masked");
}

/// A tiny config per architecture, sized to reach each one's special cases: GQA and MQA, a window
/// shorter than the sequence, partial rotary, Gemma's head_dim != hidden / heads.
SyntheticConfig TestConfig(SyntheticArch arch, ExportStyle style, SyntheticInputs inputs, float init_std = 0.02f) {
  SyntheticConfig c;
  c.arch = arch;
  c.export_style = style;
  c.inputs = inputs;
  c.hidden = 32;
  c.layers = 2;
  c.heads = 4;
  c.intermediate = 64;
  c.max_positions = 64;
  c.init_std = init_std;
  c.seed = 1000 + static_cast<uint32_t>(arch);
  switch (arch) {
    case SyntheticArch::kGpt2: c.vocab = 97; break;
    case SyntheticArch::kGptNeo:
      c.vocab = 101;
      c.sliding_window = 6;
      break;
    case SyntheticArch::kGptNeoX:
      c.vocab = 113;
      c.hidden = 64;  // head_dim 16, so rotary_pct 0.25 rotates 4 dims
      break;
    case SyntheticArch::kOpt: c.vocab = 103; break;
    case SyntheticArch::kLlama:
      c.vocab = 127;
      c.kv_heads = 2;
      break;
    case SyntheticArch::kMistral:
      c.vocab = 131;
      c.kv_heads = 1;
      c.sliding_window = 5;
      break;
    case SyntheticArch::kQwen2:
      c.vocab = 137;
      c.kv_heads = 2;
      break;
    case SyntheticArch::kPhi: c.vocab = 149; break;  // head_dim 8: partial_rotary_factor 0.5 rotates 4
    case SyntheticArch::kGemma:
      c.vocab = 257;
      c.head_dim = 16;
      c.kv_heads = 1;
      break;
  }
  return c;
}

/// The model inputs of one test run, row-major [kBatch, kSeq].
struct Feeds {
  std::vector<int64_t> ids, mask, positions;
  NamedTensors named;
  /// Whether (b, s) is a real token (padded positions' logits are meaningless, as in HF).
  bool Real(int64_t b, int64_t s) const { return mask.empty() || mask[b * kSeq + s] != 0; }
};

Feeds MakeFeeds(const SyntheticConfig& c, uint32_t seed = 7) {
  Feeds f;
  std::mt19937 rng(seed);
  for (int64_t i = 0; i < kBatch * kSeq; ++i) f.ids.push_back(static_cast<int64_t>(rng() % c.vocab));
  f.named.emplace_back("input_ids", Tensor::FromVector<int64_t>(f.ids, {kBatch, kSeq}));
  if (c.inputs == SyntheticInputs::kIdsMaskPositions) {
    for (int64_t b = 0; b < kBatch; ++b) {
      int64_t seen = 0;
      for (int64_t s = 0; s < kSeq; ++s) {
        const int64_t m = (b == 1 && s < kPad) ? 0 : 1;
        seen += m;
        f.mask.push_back(m);
        // transformers' generate(): cumsum(mask) - 1, padded positions set to 1.
        f.positions.push_back(m ? seen - 1 : 1);
      }
    }
    f.named.emplace_back("attention_mask", Tensor::FromVector<int64_t>(f.mask, {kBatch, kSeq}));
    f.named.emplace_back("position_ids", Tensor::FromVector<int64_t>(f.positions, {kBatch, kSeq}));
  }
  return f;
}

StatusOr<Tensor> RunLogits(const Model& model, const Feeds& feeds, bool reference) {
  SessionOptions options;
  options.use_reference_kernels = reference;
  QC_ASSIGN_OR_RETURN(auto session, Session::Create(model, options));
  QC_ASSIGN_OR_RETURN(std::vector<Tensor> out, session->Run(feeds.named, {"logits"}));
  return out[0];
}

/// Max |a - b| over real positions, and the bound kTol * max(1, max |reference|).
struct Diff {
  double max_abs = 0, bound = 0;
  bool finite = true;
};

Diff Compare(const std::vector<float>& got, const std::vector<double>& want, int64_t vocab, const Feeds& feeds) {
  Diff d;
  double max_ref = 0;
  for (int64_t b = 0; b < kBatch; ++b)
    for (int64_t s = 0; s < kSeq; ++s) {
      if (!feeds.Real(b, s)) continue;
      for (int64_t v = 0; v < vocab; ++v) {
        const int64_t i = (b * kSeq + s) * vocab + v;
        if (!std::isfinite(got[i])) d.finite = false;
        max_ref = std::max(max_ref, std::fabs(want[i]));
        d.max_abs = std::max(d.max_abs, std::fabs(static_cast<double>(got[i]) - want[i]));
      }
    }
  d.bound = kTol * std::max(1.0, max_ref);
  return d;
}

Diff Compare(const Tensor& got, const Tensor& want, int64_t vocab, const Feeds& feeds) {
  const std::vector<float> w = want.ToFloats();
  return Compare(got.ToFloats(), std::vector<double>(w.begin(), w.end()), vocab, feeds);
}

void ExpectLogitsShape(const Tensor& t, int64_t vocab) {
  EXPECT_EQ(t.dtype(), DType::kFloat32);
  EXPECT_EQ(t.shape(), (Shape{kBatch, kSeq, vocab}));
}

bool AllFinite(const Tensor& t) {
  for (float v : t.ToFloats())
    if (!std::isfinite(v)) return false;
  return true;
}

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  for (SyntheticArch arch : AllSyntheticArchs())
    for (ExportStyle style : {ExportStyle::kDynamo, ExportStyle::kTorchScript, ExportStyle::kOrtFused})
      for (SyntheticInputs inputs : {SyntheticInputs::kIdsOnly, SyntheticInputs::kIdsMaskPositions})
        cases.push_back({arch, style, inputs});
  return cases;
}

class ArchitecturePatternsTest : public ::testing::TestWithParam<Case> {};

// With the default N(0, 0.02) weights attention is nearly uniform, so a wrong mask or rotary moves
// the logits by only ~20x the tolerance; the comparisons also run a wide init where it is >100x.
constexpr float kWideStd = 0.25f;

// 1. Round trip through an .onnx file, then fast and reference kernels agree.
TEST_P(ArchitecturePatternsTest, FastMatchesReferenceAfterRoundTrip) {
  const Case& p = GetParam();
  for (float init_std : {0.02f, kWideStd}) {
    SCOPED_TRACE("init_std " + std::to_string(init_std));
    const SyntheticConfig config = TestConfig(p.arch, p.style, p.inputs, init_std);
    StatusOr<Model> built = BuildSyntheticDecoder(config);
    ASSERT_TRUE(built.ok()) << built.status().message();
    const TempDir dir("arch_roundtrip");
    const std::string path = dir / "model.onnx";
    ASSERT_TRUE(WriteOnnxModel(*built, path).ok());
    StatusOr<Model> model = ReadOnnxModel(path);
    ASSERT_TRUE(model.ok()) << model.status().message();
    EXPECT_EQ(model->graph.nodes.size(), built->graph.nodes.size());
    EXPECT_EQ(model->graph.num_initializers(), built->graph.num_initializers());

    const Feeds feeds = MakeFeeds(config);
    StatusOr<Tensor> fast = RunLogits(*model, feeds, /*reference=*/false);
    ASSERT_TRUE(fast.ok()) << fast.status().message();
    StatusOr<Tensor> ref = RunLogits(*model, feeds, /*reference=*/true);
    ASSERT_TRUE(ref.ok()) << ref.status().message();
    ExpectLogitsShape(*fast, config.vocab);
    EXPECT_TRUE(AllFinite(*fast));
    EXPECT_TRUE(AllFinite(*ref));
    const Diff d = Compare(*fast, *ref, config.vocab, feeds);
    EXPECT_LE(d.max_abs, d.bound) << "fast vs reference kernels";
  }
}

// 4. The same config serialises to the same bytes; another seed does not.
TEST_P(ArchitecturePatternsTest, Deterministic) {
  const Case& p = GetParam();
  SyntheticConfig config = TestConfig(p.arch, p.style, p.inputs);
  StatusOr<Model> a = BuildSyntheticDecoder(config);
  StatusOr<Model> b = BuildSyntheticDecoder(config);
  ASSERT_TRUE(a.ok() && b.ok());
  StatusOr<std::string> bytes_a = SerializeOnnxModel(*a);
  StatusOr<std::string> bytes_b = SerializeOnnxModel(*b);
  ASSERT_TRUE(bytes_a.ok() && bytes_b.ok());
  EXPECT_TRUE(*bytes_a == *bytes_b) << "two builds of one config differ";
  config.seed += 1;
  StatusOr<Model> c = BuildSyntheticDecoder(config);
  ASSERT_TRUE(c.ok());
  StatusOr<std::string> bytes_c = SerializeOnnxModel(*c);
  ASSERT_TRUE(bytes_c.ok());
  EXPECT_FALSE(*bytes_a == *bytes_c) << "the seed does not reach the weights";
}

// Every Linear of the architecture (and lm_head) is a MatMul/Gemm that FindLinearLayers sees.
TEST_P(ArchitecturePatternsTest, LinearLayersAreDiscoverable) {
  const Case& p = GetParam();
  const SyntheticConfig config = TestConfig(p.arch, p.style, p.inputs);
  StatusOr<Model> model = BuildSyntheticDecoder(config);
  ASSERT_TRUE(model.ok());
  int per_layer = 0;
  switch (p.arch) {
    case SyntheticArch::kGpt2:
    case SyntheticArch::kGptNeoX: per_layer = 4; break;  // fused QKV, out, fc1, fc2
    case SyntheticArch::kGptNeo:
    case SyntheticArch::kOpt:
    case SyntheticArch::kPhi: per_layer = 6; break;  // q, k, v, out, fc1, fc2
    default: per_layer = 7; break;                   // q, k, v, o, gate, up, down
  }
  const std::vector<LinearLayer> layers = FindLinearLayers(model->graph);
  EXPECT_EQ(static_cast<int64_t>(layers.size()), per_layer * config.layers + 1);
  // lm_head, the last linear layer, is the one output head (--head-bits applies to it alone).
  ASSERT_FALSE(layers.empty());
  EXPECT_TRUE(layers.back().output_head);
  EXPECT_EQ(std::count_if(layers.begin(), layers.end(), [](const LinearLayer& l) { return l.output_head; }), 1);
}

INSTANTIATE_TEST_SUITE_P(ArchitecturePatterns, ArchitecturePatternsTest, ::testing::ValuesIn(AllCases()),
                         [](const ::testing::TestParamInfo<Case>& info) { return CaseName(info.param); });

// The three export styles of one config compute the same function from the same weights.
class ArchitecturePatternsStylesTest : public ::testing::TestWithParam<std::pair<SyntheticArch, SyntheticInputs>> {};

TEST_P(ArchitecturePatternsStylesTest, ExportStylesAgree) {
  const auto [arch, inputs] = GetParam();
  // A wider init makes attention sharp, so a mask or rotary slip between styles shows.
  const SyntheticConfig base = TestConfig(arch, ExportStyle::kDynamo, inputs, kWideStd);
  const Feeds feeds = MakeFeeds(base);
  StatusOr<Model> dynamo = BuildSyntheticDecoder(base);
  ASSERT_TRUE(dynamo.ok()) << dynamo.status().message();
  StatusOr<Tensor> want = RunLogits(*dynamo, feeds, false);
  ASSERT_TRUE(want.ok()) << want.status().message();
  for (ExportStyle style : {ExportStyle::kTorchScript, ExportStyle::kOrtFused}) {
    SyntheticConfig c = base;
    c.export_style = style;
    StatusOr<Model> model = BuildSyntheticDecoder(c);
    ASSERT_TRUE(model.ok()) << model.status().message();
    StatusOr<Tensor> got = RunLogits(*model, feeds, false);
    ASSERT_TRUE(got.ok()) << got.status().message();
    const Diff d = Compare(*got, *want, c.vocab, feeds);
    EXPECT_LE(d.max_abs, d.bound) << ExportStyleName(style) << " vs dynamo";
  }
}

std::vector<std::pair<SyntheticArch, SyntheticInputs>> StyleCases() {
  std::vector<std::pair<SyntheticArch, SyntheticInputs>> cases;
  for (SyntheticArch arch : AllSyntheticArchs())
    for (SyntheticInputs inputs : {SyntheticInputs::kIdsOnly, SyntheticInputs::kIdsMaskPositions})
      cases.emplace_back(arch, inputs);
  return cases;
}

INSTANTIATE_TEST_SUITE_P(ArchitecturePatterns, ArchitecturePatternsStylesTest, ::testing::ValuesIn(StyleCases()),
                         [](const ::testing::TestParamInfo<std::pair<SyntheticArch, SyntheticInputs>>& info) {
                           return std::string(SyntheticArchName(info.param.first)) +
                                  (info.param.second == SyntheticInputs::kIdsOnly ? "_ids" : "_masked");
                         });

// ---------------------------------------------------------------------------------------------
// 2. An independent scalar forward pass (plain loops over the HF-layout weights, double
// accumulation), written from LlamaForCausalLM and GPT2LMHeadModel rather than from the graphs.

using Mat = std::vector<double>;  // row-major [tokens, features]

struct ScalarOptions {
  bool causal = true;  // mutation switch: false attends to the future (the test must notice)
  bool rotary = true;  // mutation switch: false skips the rotary embedding
};

// y[t, o] = sum_i x[t, i] * W[o, i] (+ b[o]) for nn.Linear weights [out, in]; Conv1D passes
// `in_out` for its [in, out] layout.
Mat LinearRef(const Mat& x, int64_t tokens, const Tensor& w, const Tensor* b, bool in_out = false) {
  const int64_t in = in_out ? w.dim(0) : w.dim(1), out = in_out ? w.dim(1) : w.dim(0);
  const float* wp = w.data<float>();
  Mat y(tokens * out);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double acc = b ? b->data<float>()[o] : 0.0;
      for (int64_t i = 0; i < in; ++i) acc += x[t * in + i] * (in_out ? wp[i * out + o] : wp[o * in + i]);
      y[t * out + o] = acc;
    }
  return y;
}

Mat RmsNormRef(const Mat& x, int64_t tokens, int64_t h, const Tensor& w, double eps) {
  Mat y(x.size());
  for (int64_t t = 0; t < tokens; ++t) {
    double ss = 0;
    for (int64_t i = 0; i < h; ++i) ss += x[t * h + i] * x[t * h + i];
    const double inv = 1.0 / std::sqrt(ss / h + eps);
    for (int64_t i = 0; i < h; ++i) y[t * h + i] = w.data<float>()[i] * (x[t * h + i] * inv);
  }
  return y;
}

Mat LayerNormRef(const Mat& x, int64_t tokens, int64_t h, const Tensor& w, const Tensor& b, double eps) {
  Mat y(x.size());
  for (int64_t t = 0; t < tokens; ++t) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < h; ++i) mean += x[t * h + i];
    mean /= h;
    for (int64_t i = 0; i < h; ++i) var += (x[t * h + i] - mean) * (x[t * h + i] - mean);
    var /= h;
    const double inv = 1.0 / std::sqrt(var + eps);
    for (int64_t i = 0; i < h; ++i)
      y[t * h + i] = (x[t * h + i] - mean) * inv * w.data<float>()[i] + b.data<float>()[i];
  }
  return y;
}

// Causal softmax attention over [batch * seq, heads * hd] projections; kv head of query head n is
// n / (heads / kv_heads). Rows with no visible key (padded queries) stay zero.
Mat AttentionRef(const Mat& q, const Mat& k, const Mat& v, const Feeds& f, int64_t heads, int64_t kv_heads, int64_t hd,
                 double scale, bool causal) {
  Mat out(kBatch * kSeq * heads * hd, 0.0);
  const int64_t group = heads / kv_heads;
  for (int64_t b = 0; b < kBatch; ++b)
    for (int64_t n = 0; n < heads; ++n)
      for (int64_t i = 0; i < kSeq; ++i) {
        const int64_t kn = n / group;
        std::vector<double> s(kSeq, -INFINITY);
        double mx = -INFINITY;
        for (int64_t j = 0; j < kSeq; ++j) {
          if ((causal && j > i) || !f.Real(b, j)) continue;
          double dot = 0;
          for (int64_t d = 0; d < hd; ++d)
            dot += q[(b * kSeq + i) * heads * hd + n * hd + d] * k[(b * kSeq + j) * kv_heads * hd + kn * hd + d];
          s[j] = dot * scale;
          mx = std::max(mx, s[j]);
        }
        if (mx == -INFINITY) continue;
        double sum = 0;
        for (int64_t j = 0; j < kSeq; ++j) sum += (s[j] = s[j] == -INFINITY ? 0.0 : std::exp(s[j] - mx));
        for (int64_t j = 0; j < kSeq; ++j)
          for (int64_t d = 0; d < hd; ++d)
            out[(b * kSeq + i) * heads * hd + n * hd + d] +=
                s[j] / sum * v[(b * kSeq + j) * kv_heads * hd + kn * hd + d];
      }
  return out;
}

// rotate_half rotary on the first `rot` dims of each head; angle = position * inv_freq in float32
// as LlamaRotaryEmbedding computes it.
void RotaryRef(Mat& x, const Feeds& f, int64_t heads, int64_t hd, int64_t rot, float theta) {
  const int64_t half = rot / 2;
  for (int64_t t = 0; t < kBatch * kSeq; ++t) {
    const int64_t pos = f.positions.empty() ? t % kSeq : f.positions[t];
    for (int64_t n = 0; n < heads; ++n) {
      double* h = &x[(t * heads + n) * hd];
      std::vector<double> y(h, h + rot);
      for (int64_t i = 0; i < half; ++i) {
        const float inv_freq = 1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(rot));
        const float angle = static_cast<float>(pos) * inv_freq;
        const double c = std::cos(static_cast<double>(angle)), s = std::sin(static_cast<double>(angle));
        y[i] = h[i] * c - h[i + half] * s;
        y[i + half] = h[i + half] * c + h[i] * s;
      }
      std::copy(y.begin(), y.end(), h);
    }
  }
}

Mat LogitsRef(const Mat& x, const Tensor& head, int64_t tokens) { return LinearRef(x, tokens, head, nullptr); }

Mat LlamaForward(const SyntheticConfig& c, const SyntheticWeights& w, const Feeds& f, const ScalarOptions& o) {
  const int64_t T = kBatch * kSeq, H = c.hidden, hd = c.head_dim;
  const double eps = *c.norm_eps;
  Mat x(T * H);
  const Tensor& embed = w.at("model.embed_tokens.weight");
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < H; ++i) x[t * H + i] = embed.data<float>()[f.ids[t] * H + i];
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const Mat h = RmsNormRef(x, T, H, w.at(p + "input_layernorm.weight"), eps);
    Mat q = LinearRef(h, T, w.at(p + "self_attn.q_proj.weight"), nullptr);
    Mat k = LinearRef(h, T, w.at(p + "self_attn.k_proj.weight"), nullptr);
    const Mat v = LinearRef(h, T, w.at(p + "self_attn.v_proj.weight"), nullptr);
    if (o.rotary) {
      RotaryRef(q, f, c.heads, hd, hd, *c.rope_theta);
      RotaryRef(k, f, c.kv_heads, hd, hd, *c.rope_theta);
    }
    const Mat a = AttentionRef(q, k, v, f, c.heads, c.kv_heads, hd, 1.0 / std::sqrt(static_cast<double>(hd)), o.causal);
    const Mat ao = LinearRef(a, T, w.at(p + "self_attn.o_proj.weight"), nullptr);
    for (int64_t i = 0; i < T * H; ++i) x[i] += ao[i];
    const Mat h2 = RmsNormRef(x, T, H, w.at(p + "post_attention_layernorm.weight"), eps);
    Mat g = LinearRef(h2, T, w.at(p + "mlp.gate_proj.weight"), nullptr);
    const Mat u = LinearRef(h2, T, w.at(p + "mlp.up_proj.weight"), nullptr);
    for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];  // silu(gate) * up
    const Mat d = LinearRef(g, T, w.at(p + "mlp.down_proj.weight"), nullptr);
    for (int64_t i = 0; i < T * H; ++i) x[i] += d[i];
  }
  const Mat h = RmsNormRef(x, T, H, w.at("model.norm.weight"), eps);
  return LogitsRef(h, *c.tie_word_embeddings ? embed : w.at("lm_head.weight"), T);
}

Mat Gpt2Forward(const SyntheticConfig& c, const SyntheticWeights& w, const Feeds& f, const ScalarOptions& o) {
  const int64_t T = kBatch * kSeq, H = c.hidden, hd = c.head_dim;
  const double eps = *c.norm_eps;
  const Tensor& wte = w.at("transformer.wte.weight");
  const Tensor& wpe = w.at("transformer.wpe.weight");
  Mat x(T * H);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t pos = f.positions.empty() ? t % kSeq : f.positions[t];
    for (int64_t i = 0; i < H; ++i) x[t * H + i] = wte.data<float>()[f.ids[t] * H + i] + wpe.data<float>()[pos * H + i];
  }
  auto conv1d = [&](const Mat& in, const std::string& m) {
    return LinearRef(in, T, w.at(m + ".weight"), &w.at(m + ".bias"), /*in_out=*/true);
  };
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string p = "transformer.h." + std::to_string(l) + ".";
    const Mat h = LayerNormRef(x, T, H, w.at(p + "ln_1.weight"), w.at(p + "ln_1.bias"), eps);
    const Mat qkv = conv1d(h, p + "attn.c_attn");
    Mat q(T * H), k(T * H), v(T * H);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < H; ++i) {
        q[t * H + i] = qkv[t * 3 * H + i];
        k[t * H + i] = qkv[t * 3 * H + H + i];
        v[t * H + i] = qkv[t * 3 * H + 2 * H + i];
      }
    const Mat a = AttentionRef(q, k, v, f, c.heads, c.heads, hd, 1.0 / std::sqrt(static_cast<double>(hd)), o.causal);
    const Mat ao = conv1d(a, p + "attn.c_proj");
    for (int64_t i = 0; i < T * H; ++i) x[i] += ao[i];
    const Mat h2 = LayerNormRef(x, T, H, w.at(p + "ln_2.weight"), w.at(p + "ln_2.bias"), eps);
    Mat m = conv1d(h2, p + "mlp.c_fc");
    for (double& z : m)
      z = 0.5 * z * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (z + 0.044715 * z * z * z)));  // gelu_new
    const Mat d = conv1d(m, p + "mlp.c_proj");
    for (int64_t i = 0; i < T * H; ++i) x[i] += d[i];
  }
  const Mat h = LayerNormRef(x, T, H, w.at("transformer.ln_f.weight"), w.at("transformer.ln_f.bias"), eps);
  return LogitsRef(h, wte, T);
}

Mat ScalarForward(const SyntheticConfig& c, const SyntheticWeights& w, const Feeds& f, const ScalarOptions& o = {}) {
  return c.arch == SyntheticArch::kLlama ? LlamaForward(c, w, f, o) : Gpt2Forward(c, w, f, o);
}

struct ScalarCase {
  Case c;
  float init_std;
};

class ArchitecturePatternsScalarTest : public ::testing::TestWithParam<ScalarCase> {};

TEST_P(ArchitecturePatternsScalarTest, MatchesScalarForwardPass) {
  const ScalarCase& p = GetParam();
  StatusOr<SyntheticConfig> config = ResolveSyntheticConfig(TestConfig(p.c.arch, p.c.style, p.c.inputs, p.init_std));
  ASSERT_TRUE(config.ok()) << config.status().message();
  StatusOr<SyntheticWeights> weights = MakeSyntheticWeights(*config);
  ASSERT_TRUE(weights.ok());
  StatusOr<Model> model = BuildSyntheticDecoder(*config);
  ASSERT_TRUE(model.ok()) << model.status().message();
  const Feeds feeds = MakeFeeds(*config);
  StatusOr<Tensor> logits = RunLogits(*model, feeds, /*reference=*/true);
  ASSERT_TRUE(logits.ok()) << logits.status().message();
  const Mat want = ScalarForward(*config, *weights, feeds);
  const Diff d = Compare(logits->ToFloats(), want, config->vocab, feeds);
  EXPECT_TRUE(d.finite);
  EXPECT_LE(d.max_abs, d.bound) << "graph vs scalar forward pass";
  RecordProperty("max_abs_diff", std::to_string(d.max_abs));
}

INSTANTIATE_TEST_SUITE_P(ArchitecturePatterns, ArchitecturePatternsScalarTest, ::testing::ValuesIn([] {
                           std::vector<ScalarCase> cases;
                           for (const Case& c : AllCases()) {
                             if (c.arch != SyntheticArch::kLlama && c.arch != SyntheticArch::kGpt2) continue;
                             for (float s : {0.02f, kWideStd}) cases.push_back({c, s});
                           }
                           return cases;
                         }()),
                         [](const ::testing::TestParamInfo<ScalarCase>& info) {
                           return CaseName(info.param.c) + (info.param.init_std > 0.1f ? "_wide" : "_std002");
                         });

// The scalar comparison has the power to see a mask or rotary mistake: mutating the scalar pass
// moves the logits far past the tolerance.
TEST(ArchitecturePatterns, ScalarCheckDetectsMaskAndRotaryMistakes) {
  for (SyntheticArch arch : {SyntheticArch::kLlama, SyntheticArch::kGpt2}) {
    StatusOr<SyntheticConfig> config =
        ResolveSyntheticConfig(TestConfig(arch, ExportStyle::kDynamo, SyntheticInputs::kIdsOnly, kWideStd));
    ASSERT_TRUE(config.ok());
    StatusOr<SyntheticWeights> weights = MakeSyntheticWeights(*config);
    ASSERT_TRUE(weights.ok());
    const Feeds feeds = MakeFeeds(*config);
    const Mat good = ScalarForward(*config, *weights, feeds);
    std::vector<ScalarOptions> mutations = {{.causal = false, .rotary = true}};
    if (arch == SyntheticArch::kLlama) mutations.push_back({.causal = true, .rotary = false});
    for (const ScalarOptions& m : mutations) {
      const Mat bad = ScalarForward(*config, *weights, feeds, m);
      const Diff d = Compare(std::vector<float>(bad.begin(), bad.end()), good, config->vocab, feeds);
      EXPECT_GT(d.max_abs, 100 * d.bound)
          << SyntheticArchName(arch) << " causal=" << m.causal << " rotary=" << m.rotary;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 3. ONNX Runtime runs every generated model to the same logits, proving the graphs are valid ONNX
// with the semantics we give them. One node process runs them all (tools/ort_run.js --batch):
// starting node and loading ORT costs far more than running a tiny model. Skipped without node or
// onnxruntime-node (found through $QC_ORT_NODE_MODULES or NODE_PATH).

TEST(ArchitecturePatterns, EveryModelMatchesOnnxRuntime) {
  if (std::system("node --version > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "node is not installed; install node and onnxruntime-node to compare with ORT";
  const TempDir dir("arch");
  struct Job {
    std::string name;
    SyntheticConfig config;
    Model model;
    Feeds feeds;
  };
  std::vector<Job> jobs;
  for (const Case& c : AllCases()) {
    for (float init_std : {0.02f, kWideStd}) {
      const std::string name = CaseName(c) + (init_std == kWideStd ? "_wide" : "");
      Job job{name, TestConfig(c.arch, c.style, c.inputs, init_std), Model(), Feeds()};
      StatusOr<Model> model = BuildSyntheticDecoder(job.config);
      ASSERT_TRUE(model.ok()) << name << ": " << model.status().message();
      job.model = std::move(model).value();
      job.feeds = MakeFeeds(job.config);
      jobs.push_back(std::move(job));
    }
  }
  std::vector<OrtJob> ort_jobs;
  for (const Job& job : jobs) ort_jobs.push_back({job.name, &job.model, job.feeds.named});
  StatusOr<OrtBatch> ran = RunOrtBatch(dir.string(), ort_jobs);
  ASSERT_TRUE(ran.ok()) << ran.status().message();
  if (*ran == OrtBatch::kUnavailable)
    GTEST_SKIP() << "onnxruntime-node not found; set QC_ORT_NODE_MODULES to its node_modules directory";
  double worst = 0;
  for (const Job& job : jobs) {
    SCOPED_TRACE(job.name);
    const std::string error = OrtJobError(dir.string(), job.name);
    EXPECT_TRUE(error.empty()) << "ONNX Runtime rejected the model: " << error;
    if (!error.empty()) continue;
    StatusOr<Tensor> ort = ReadNpy(OrtOutputDir(dir.string(), job.name) + "/logits.npy");
    ASSERT_TRUE(ort.ok()) << ort.status().message();
    ExpectLogitsShape(*ort, job.config.vocab);
    StatusOr<Tensor> ours = RunLogits(job.model, job.feeds, /*reference=*/false);
    ASSERT_TRUE(ours.ok()) << ours.status().message();
    const Diff d = Compare(*ours, *ort, job.config.vocab, job.feeds);
    EXPECT_TRUE(d.finite);
    EXPECT_LE(d.max_abs, d.bound) << "qconvert vs ONNX Runtime";
    worst = std::max(worst, d.max_abs / d.bound);
  }
  RecordProperty("worst_diff_over_bound", std::to_string(worst));
}

// ---------------------------------------------------------------------------------------------
// Structure: each style writes its own op patterns.

std::map<std::string, int> OpCounts(const Model& m) {
  std::map<std::string, int> counts;
  for (const Node& n : m.graph.nodes) counts[(n.domain.empty() ? "" : n.domain + ".") + n.op_type]++;
  return counts;
}

TEST(ArchitecturePatterns, StylesUseTheirOpPatterns) {
  SyntheticConfig c = TestConfig(SyntheticArch::kLlama, ExportStyle::kDynamo, SyntheticInputs::kIdsOnly);
  StatusOr<Model> dynamo = BuildSyntheticDecoder(c);
  c.export_style = ExportStyle::kTorchScript;
  StatusOr<Model> ts = BuildSyntheticDecoder(c);
  c.export_style = ExportStyle::kOrtFused;
  StatusOr<Model> fused = BuildSyntheticDecoder(c);
  ASSERT_TRUE(dynamo.ok() && ts.ok() && fused.ok());
  const int64_t layers = c.layers;
  auto d = OpCounts(*dynamo), t = OpCounts(*ts), f = OpCounts(*fused);
  // Dynamo: RMSNorm decomposed with Reciprocal (2 per layer + final), HF masking_utils mask,
  // constants as initializers.
  EXPECT_EQ(d["Reciprocal"], 2 * layers + 1);
  EXPECT_EQ(d["CumSum"], 1);
  EXPECT_EQ(d["GatherND"], 2);
  EXPECT_EQ(d["LessOrEqual"], 1);
  EXPECT_EQ(d["Constant"], 0);
  EXPECT_EQ(dynamo->DefaultOpset(), 18);
  // TorchScript: Constant nodes, Transpose before every weight, rsqrt as Div, clamped additive mask.
  EXPECT_GT(t["Constant"], 0);
  EXPECT_EQ(t["Reciprocal"], 0);
  EXPECT_EQ(t["Max"], layers);
  EXPECT_GE(t["Transpose"], 7 * layers + 1);
  EXPECT_GT(t["Gather"], 2);  // Shape/Gather/Unsqueeze/Concat shape arithmetic
  EXPECT_EQ(ts->DefaultOpset(), 14);
  // ORT fused: contrib norms and rotary, no decomposed RMSNorm.
  EXPECT_EQ(f["SimplifiedLayerNormalization"], 1);
  EXPECT_EQ(f["com.microsoft.SkipSimplifiedLayerNormalization"], 2 * layers);
  EXPECT_EQ(f["com.microsoft.RotaryEmbedding"], 2 * layers);
  EXPECT_EQ(f["Pow"], 0);
  EXPECT_EQ(f["Sin"], 0);

  // GPT-2: Gemm for Conv1D in the exporter styles; LayerNorm fused forms in ORT's.
  c = TestConfig(SyntheticArch::kGpt2, ExportStyle::kDynamo, SyntheticInputs::kIdsOnly);
  StatusOr<Model> gpt2 = BuildSyntheticDecoder(c);
  c.export_style = ExportStyle::kOrtFused;
  StatusOr<Model> gpt2_fused = BuildSyntheticDecoder(c);
  ASSERT_TRUE(gpt2.ok() && gpt2_fused.ok());
  auto g = OpCounts(*gpt2), gf = OpCounts(*gpt2_fused);
  EXPECT_EQ(g["Gemm"], 4 * layers);
  EXPECT_EQ(g["LayerNormalization"], 2 * layers + 1);
  EXPECT_EQ(g["Split"], layers);
  EXPECT_EQ(gf["com.microsoft.SkipLayerNormalization"], 2 * layers);
  EXPECT_EQ(gf["com.microsoft.FastGelu"], layers);

  // GPT-NeoX fused: erf gelu as com.microsoft.Gelu; Gemma fused: (1 + w) folded into the scale.
  c = TestConfig(SyntheticArch::kGptNeoX, ExportStyle::kOrtFused, SyntheticInputs::kIdsOnly);
  StatusOr<Model> neox = BuildSyntheticDecoder(c);
  ASSERT_TRUE(neox.ok());
  EXPECT_EQ(OpCounts(*neox)["com.microsoft.Gelu"], layers);
  c = TestConfig(SyntheticArch::kGemma, ExportStyle::kOrtFused, SyntheticInputs::kIdsOnly);
  StatusOr<Model> gemma = BuildSyntheticDecoder(c);
  ASSERT_TRUE(gemma.ok());
  EXPECT_NE(gemma->graph.FindInitializer("model.norm.weight_plus_1"), nullptr);
  EXPECT_EQ(gemma->graph.FindInitializer("model.norm.weight"), nullptr);
  EXPECT_EQ(OpCounts(*gemma)["com.microsoft.FastGelu"], layers);
}

// The dynamo style reproduces torch.onnx.export(dynamo=True)'s graphs node for node: same op
// histogram as the real exports in ../shared (whose configs PROVENANCE.md lists; sizes other than
// layers / heads / kv_heads do not change the graph).
TEST(ArchitecturePatterns, DynamoStyleMatchesRealExportOpCounts) {
  struct Real {
    const char* model;
    SyntheticArch arch;
    int64_t layers, heads, kv_heads;
  };
  for (const Real& r :
       {Real{"docs-llama-12m", SyntheticArch::kLlama, 6, 6, 2}, Real{"docs-gpt2-10m", SyntheticArch::kGpt2, 6, 8, 8}}) {
    const std::string path = std::string(QC_SHARED_DIR) + "/models/" + r.model + "/model.onnx";
    if (!fs::exists(path)) GTEST_SKIP() << path << " not found";
    StatusOr<Model> real = ReadOnnxModel(path);
    ASSERT_TRUE(real.ok()) << real.status().message();
    SyntheticConfig c = TestConfig(r.arch, ExportStyle::kDynamo, SyntheticInputs::kIdsOnly);
    c.layers = r.layers;
    c.heads = r.heads;
    c.kv_heads = r.kv_heads;
    c.hidden = 8 * r.heads;
    c.intermediate = 0;            // 4 * hidden: a size equal to hidden would share its shape tensors
    c.tie_word_embeddings = true;  // both real models tie lm_head to the embedding
    StatusOr<Model> ours = BuildSyntheticDecoder(c);
    ASSERT_TRUE(ours.ok()) << ours.status().message();
    EXPECT_EQ(OpCounts(*ours), OpCounts(*real)) << r.model;
    EXPECT_EQ(ours->graph.nodes.size(), real->graph.nodes.size()) << r.model;
  }
}

TEST(ArchitecturePatterns, InputsOptionDeclaresMaskAndPositions) {
  for (SyntheticInputs inputs : {SyntheticInputs::kIdsOnly, SyntheticInputs::kIdsMaskPositions}) {
    StatusOr<Model> m = BuildSyntheticDecoder(TestConfig(SyntheticArch::kQwen2, ExportStyle::kDynamo, inputs));
    ASSERT_TRUE(m.ok());
    std::vector<std::string> names;
    for (const ValueInfo& v : m->graph.inputs) {
      names.push_back(v.name);
      EXPECT_EQ(v.dtype, DType::kInt64);
      ASSERT_EQ(v.shape.size(), 2u);
      EXPECT_EQ(v.shape[0].param, "batch");
      EXPECT_EQ(v.shape[1].param, "seq");
    }
    if (inputs == SyntheticInputs::kIdsOnly) {
      EXPECT_EQ(names, (std::vector<std::string>{"input_ids"}));
    } else {
      EXPECT_EQ(names, (std::vector<std::string>{"input_ids", "attention_mask", "position_ids"}));
    }
    ASSERT_EQ(m->graph.outputs.size(), 1u);
    EXPECT_EQ(m->graph.outputs[0].name, "logits");
    EXPECT_EQ(m->graph.outputs[0].dtype, DType::kFloat32);
  }
}

TEST(ArchitecturePatterns, WeightsAreSeededNormal) {
  SyntheticConfig c = TestConfig(SyntheticArch::kLlama, ExportStyle::kDynamo, SyntheticInputs::kIdsOnly);
  c.hidden = 64;
  c.heads = 4;
  c.vocab = 257;
  StatusOr<SyntheticWeights> w = MakeSyntheticWeights(c);
  ASSERT_TRUE(w.ok());
  const std::vector<float> e = w->at("model.embed_tokens.weight").ToFloats();
  double mean = 0, sq = 0;
  for (float v : e) mean += v;
  mean /= e.size();
  for (float v : e) sq += (v - mean) * (v - mean);
  const double std = std::sqrt(sq / e.size());
  EXPECT_NEAR(mean, 0.0, 0.002);
  EXPECT_NEAR(std, 0.02, 0.002);
  for (float v : w->at("model.norm.weight").ToFloats()) EXPECT_NEAR(v, 1.0f, 0.15f);
  // Gemma stores norm weights around 0: the graph applies (1 + w).
  StatusOr<SyntheticWeights> gemma =
      MakeSyntheticWeights(TestConfig(SyntheticArch::kGemma, ExportStyle::kDynamo, SyntheticInputs::kIdsOnly));
  ASSERT_TRUE(gemma.ok());
  for (float v : gemma->at("model.norm.weight").ToFloats()) EXPECT_NEAR(v, 0.0f, 0.15f);
}

TEST(ArchitecturePatterns, GraphBuilderRandomNormalIsSeeded) {
  std::mt19937 a(42), b(42), c(43);
  const Tensor ta = RandomNormalTensor({3, 5}, 1.0f, 0.5f, a);
  EXPECT_TRUE(ta.BitEqual(RandomNormalTensor({3, 5}, 1.0f, 0.5f, b)));
  EXPECT_FALSE(ta.BitEqual(RandomNormalTensor({3, 5}, 1.0f, 0.5f, c)));
  GraphBuilder g1(7), g2(7);
  g1.AddRandomNormal("w", {4, 4});
  g2.AddRandomNormal("w", {4, 4});
  EXPECT_TRUE(g1.graph().FindInitializer("w")->BitEqual(*g2.graph().FindInitializer("w")));
}

TEST(ArchitecturePatterns, GraphBuilderBuildsARunnableModel) {
  GraphBuilder g(1);
  const std::string x = g.AddInput("x", DType::kFloat32, {Dim{-1, "n"}, Dim{3, ""}});
  const std::string w = g.AddInitializer("w", Tensor::FromVector<float>({1, 0, 0, 0, 2, 0, 0, 0, 3}, {3, 3}));
  const std::string y = g.Op("MatMul", {x, w});
  g.AddNodeWithOutputs("Add", {y, g.AddScalar(1.0f)}, {"y"});
  g.AddOutput("y", DType::kFloat32, {Dim{-1, "n"}, Dim{3, ""}});
  StatusOr<Model> m = g.Build({{"", 18}});
  ASSERT_TRUE(m.ok()) << m.status().message();
  StatusOr<std::unique_ptr<Session>> session = Session::Create(*m);
  ASSERT_TRUE(session.ok()) << session.status().message();
  StatusOr<std::vector<Tensor>> out = (*session)->Run({{"x", Tensor::FromVector<float>({1, 1, 1}, {1, 3})}});
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_EQ((*out)[0].ToFloats(), (std::vector<float>{2, 3, 4}));
}

TEST(ArchitecturePatterns, GraphBuilder_Negative_UndefinedValue) {
  GraphBuilder g;
  g.AddInput("x", DType::kFloat32, {Dim{2, ""}});
  g.AddNodeWithOutputs("Add", {"x", "missing"}, {"y"});
  g.AddOutput("y", DType::kFloat32, {Dim{2, ""}});
  StatusOr<Model> m = g.Build({{"", 18}});
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("'missing'"), std::string::npos) << m.status().message();
  GraphBuilder no_opset;
  EXPECT_FALSE(no_opset.Build({{"com.microsoft", 1}}).ok());
}

TEST(ArchitecturePatterns, Negative_KvHeadsOnMhaArchitecture) {
  SyntheticConfig c = TestConfig(SyntheticArch::kGpt2, ExportStyle::kDynamo, SyntheticInputs::kIdsOnly);
  c.kv_heads = 2;
  StatusOr<Model> m = BuildSyntheticDecoder(c);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find("kv_heads"), std::string::npos) << m.status().message();
}

TEST(ArchitecturePatterns, Negative_OddRotaryDim) {
  SyntheticConfig c = TestConfig(SyntheticArch::kPhi, ExportStyle::kDynamo, SyntheticInputs::kIdsOnly);
  c.partial_rotary_factor = 0.375f;  // 8 * 0.375 = 3 rotary dims
  StatusOr<Model> m = BuildSyntheticDecoder(c);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("rotary dimension 3"), std::string::npos) << m.status().message();
}

TEST(ArchitecturePatterns, Negative_SlidingWindowOnLlama) {
  SyntheticConfig c = TestConfig(SyntheticArch::kLlama, ExportStyle::kDynamo, SyntheticInputs::kIdsOnly);
  c.sliding_window = 4;
  StatusOr<Model> m = BuildSyntheticDecoder(c);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("sliding_window"), std::string::npos) << m.status().message();
}

TEST(ArchitecturePatterns, Negative_HeadsDoNotDivideHidden) {
  SyntheticConfig c = TestConfig(SyntheticArch::kOpt, ExportStyle::kDynamo, SyntheticInputs::kIdsOnly);
  c.heads = 5;
  StatusOr<Model> m = BuildSyntheticDecoder(c);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("multiple of heads"), std::string::npos) << m.status().message();
}

TEST(ArchitecturePatterns, Negative_UntiedGpt2) {
  SyntheticConfig c = TestConfig(SyntheticArch::kGpt2, ExportStyle::kDynamo, SyntheticInputs::kIdsOnly);
  c.tie_word_embeddings = false;
  EXPECT_FALSE(BuildSyntheticDecoder(c).ok());
}

}  // namespace
}  // namespace qc
