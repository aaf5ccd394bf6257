// ApplyInputChannelScale preserves the function of every synthetic architecture and export style,
// folds 1/s into norms where it can, and falls back to an inserted Mul where it must.
#include "passes/channel_scaling.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "formats/linear_layers.h"
#include "formats/model_builder.h"
#include "formats/synthetic_models.h"
#include "runtime/executor.h"
#include "runtime/input_binding.h"

namespace qc {
namespace {

Tensor Ids(int64_t seq, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  Tensor t(DType::kInt64, {1, seq});
  for (int64_t i = 0; i < seq; ++i) t.mutable_data<int64_t>()[i] = rng() % vocab;
  return t;
}

// The model's first output on `ids`.
std::vector<float> Logits(const Model& model, const Tensor& ids) {
  auto session = Session::Create(model);
  QC_CHECK(session.ok());
  auto feeds = BindInputs(**session, ids);
  QC_CHECK(feeds.ok());
  auto out = (*session)->Run(*feeds);
  QC_CHECK(out.ok());
  return (*out)[0].ToFloats();
}

// max |a - b| / max |b|.
double MaxRelDiff(const std::vector<float>& a, const std::vector<float>& b) {
  QC_CHECK(a.size() == b.size());
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  return diff / std::max(scale, 1e-30);
}

std::vector<float> RandomScales(int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.5f, 2.0f);
  std::vector<float> s(k);
  for (float& v : s) v = u(rng);
  return s;
}

// Whether a layer group is the attention input (q/k/v or fused qkv) or the MLP input of a block.
bool IsNormFedGroup(const LayerGroup& group) {
  for (const LinearLayer& l : group.layers) {
    const std::string& w = l.weight;
    for (const char* part : {"q_proj", "c_attn", "gate_proj", "up_proj", "c_fc", "fc1", "dense_h_to_4h",
                             "query_key_value", "lm_head", "wte"})
      if (w.find(part) != std::string::npos) return true;
  }
  return false;
}

StatusOr<Model> Decoder(SyntheticArch arch, ExportStyle style, int64_t kv_heads = 0) {
  SyntheticConfig c;
  c.arch = arch;
  c.export_style = style;
  c.kv_heads = kv_heads;
  c.init_std = 0.1f;  // larger weights: logits far from zero, so relative differences mean something
  return BuildSyntheticDecoder(c);
}

// Every group of every architecture and export style, one at a time: the logits stay the same.
TEST(ChannelScaling, PreservesEveryArchitectureGroupByGroup) {
  const Tensor ids = Ids(11, 97, 1);
  std::map<std::string, int> targets;  // fold target kind -> count, printed for the record
  for (SyntheticArch arch : AllSyntheticArchs()) {
    for (ExportStyle style : {ExportStyle::kDynamo, ExportStyle::kTorchScript, ExportStyle::kOrtFused}) {
      const std::string tag = std::string(SyntheticArchName(arch)) + "/" + ExportStyleName(style);
      StatusOr<Model> base = Decoder(arch, style);
      ASSERT_TRUE(base.ok()) << tag << ": " << base.status().message();
      const std::vector<float> want = Logits(*base, ids);
      const std::vector<LayerGroup> groups = GroupLayersByInput(FindLinearLayers(base->graph));
      ASSERT_FALSE(groups.empty()) << tag;
      for (size_t gi = 0; gi < groups.size(); ++gi) {
        Model model = *base;
        const LayerGroup& group = groups[gi];
        const std::vector<float> s = RandomScales(group.layers[0].k, 100 + gi);
        const std::optional<std::string> planned = PlannedLinearFoldTarget(model, group);
        StatusOr<ChannelScaleResult> r = ApplyInputChannelScale(model, group, s);
        ASSERT_TRUE(r.ok()) << tag << " group " << group.input << ": " << r.status().message();
        // The prediction awq holds layers back by names the layer a linear fold went into, and
        // nothing when the fold went into a norm or a constant Mul.
        if (r->folded_into.rfind("linear '", 0) == 0) {
          ASSERT_TRUE(planned.has_value()) << tag << ": " << r->folded_into;
          std::string producer;
          for (const Node& node : base->graph.nodes)
            if (!node.outputs.empty() && node.outputs[0] == *planned) producer = node.name;
          EXPECT_EQ(r->folded_into.rfind("linear '" + producer + "'", 0), 0u) << tag << ": " << r->folded_into;
        } else if (!r->inserted_mul) {
          EXPECT_FALSE(planned.has_value()) << tag << ": " << r->folded_into;
        }
        const double diff = MaxRelDiff(Logits(model, ids), want);
        EXPECT_LT(diff, 2e-5) << tag << " group '" << group.input << "' folded into " << r->folded_into;
        EXPECT_EQ(FindLinearLayers(model.graph).size(), FindLinearLayers(base->graph).size()) << tag;
        const std::string kind = r->inserted_mul ? "inserted Mul" : r->folded_into.substr(0, r->folded_into.find(' '));
        targets[kind]++;
        // Norm-fed groups (attention and MLP inputs, lm_head) of the Llama and GPT-2 patterns fold.
        if ((arch == SyntheticArch::kLlama || arch == SyntheticArch::kGpt2) && IsNormFedGroup(group)) {
          EXPECT_FALSE(r->inserted_mul) << tag << " group of '" << group.layers[0].node_name << "': "
                                        << r->folded_into;
        }
        // Llama's o_proj folds into v_proj and down_proj into up_proj (MHA here).
        if (arch == SyntheticArch::kLlama && group.layers.size() == 1) {
          const std::string& w = group.layers[0].weight;
          if (w.find("o_proj") != std::string::npos) {
            EXPECT_NE(r->folded_into.find("v_proj"), std::string::npos) << tag << ": " << r->folded_into;
          }
          if (w.find("down_proj") != std::string::npos) {
            EXPECT_NE(r->folded_into.find("up_proj"), std::string::npos) << tag << ": " << r->folded_into;
          }
        }
      }
    }
  }
  for (const auto& [kind, count] : targets) std::printf("  fold target %-34s %d groups\n", kind.c_str(), count);
  EXPECT_GT(targets["inserted Mul"], 0);  // GELU MLPs have nothing to fold fc2's scale into
}

// All groups in turn, re-finding the layers after each (what AWQ does), still the same function.
TEST(ChannelScaling, PreservesWithEveryGroupScaled) {
  const Tensor ids = Ids(9, 97, 2);
  for (SyntheticArch arch : {SyntheticArch::kLlama, SyntheticArch::kGpt2, SyntheticArch::kOpt, SyntheticArch::kPhi,
                             SyntheticArch::kGemma, SyntheticArch::kGptNeoX}) {
    for (ExportStyle style : {ExportStyle::kDynamo, ExportStyle::kTorchScript, ExportStyle::kOrtFused}) {
      const std::string tag = std::string(SyntheticArchName(arch)) + "/" + ExportStyleName(style);
      StatusOr<Model> model = Decoder(arch, style);
      ASSERT_TRUE(model.ok()) << tag;
      const std::vector<float> want = Logits(*model, ids);
      const size_t n_groups = GroupLayersByInput(FindLinearLayers(model->graph)).size();
      for (size_t gi = 0; gi < n_groups; ++gi) {
        const std::vector<LayerGroup> groups = GroupLayersByInput(FindLinearLayers(model->graph));
        ASSERT_EQ(groups.size(), n_groups) << tag;
        StatusOr<ChannelScaleResult> r =
            ApplyInputChannelScale(*model, groups[gi], RandomScales(groups[gi].layers[0].k, 7 + gi));
        ASSERT_TRUE(r.ok()) << tag << ": " << r.status().message();
      }
      EXPECT_LT(MaxRelDiff(Logits(*model, ids), want), 5e-5) << tag;
    }
  }
}

// Grouped-query attention repeats v_proj's columns over several heads: o_proj's channels are not
// one to one with them, so the scale goes into an inserted Mul.
TEST(ChannelScaling, GroupedQueryAttentionDoesNotFoldIntoVProj) {
  StatusOr<Model> base = Decoder(SyntheticArch::kLlama, ExportStyle::kDynamo, /*kv_heads=*/2);
  ASSERT_TRUE(base.ok()) << base.status().message();
  const Tensor ids = Ids(10, 97, 3);
  const std::vector<float> want = Logits(*base, ids);
  int checked = 0;
  for (const LayerGroup& group : GroupLayersByInput(FindLinearLayers(base->graph))) {
    if (group.layers[0].weight.find("o_proj") == std::string::npos) continue;
    Model model = *base;
    StatusOr<ChannelScaleResult> r = ApplyInputChannelScale(model, group, RandomScales(group.layers[0].k, 4));
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_TRUE(r->inserted_mul) << r->folded_into;
    EXPECT_LT(MaxRelDiff(Logits(model, ids), want), 2e-5);
    ++checked;
  }
  EXPECT_EQ(checked, 2);
}

// x -> LayerNorm -> X -> {MatMul W1 (the group), Relu -> + } ; a second path reads X too.
// With `permute`, X instead comes from a linear layer through a head transpose that permutes
// channels (Reshape [.., 4, 4] -> Transpose(0, 2, 1) -> Reshape), which only the probe can tell.
Model SmallModel(bool x_read_outside, bool permute) {
  constexpr int64_t k = 16, n = 6;
  GraphBuilder b(5);
  const std::string x_in = b.AddInput("x", DType::kFloat32, {Dim{3, ""}, Dim{k, ""}});
  std::string x;
  if (permute) {
    const std::string w0 = b.AddRandomNormal("w0", {k, k}, 0.0f, 0.5f);
    const std::string y0 = b.Op("MatMul", {x_in, w0});
    const std::string heads = b.Op("Reshape", {y0, b.AddInt64s({3, 4, 4})});
    const std::string t = b.Op("Transpose", {heads}, {{"perm", AttrInts({0, 2, 1})}});
    x = b.Op("Reshape", {t, b.AddInt64s({3, k})});
  } else {
    const std::string gamma = b.AddRandomNormal("gamma", {k}, 1.0f, 0.2f);
    const std::string beta = b.AddRandomNormal("beta", {k}, 0.0f, 0.2f);
    x = b.Op("LayerNormalization", {x_in, gamma, beta}, {{"axis", AttrInt(-1)}});
  }
  const std::string w1 = b.AddRandomNormal("w1", {k, n}, 0.0f, 0.5f);
  std::string y = b.Op("MatMul", {x, w1});
  if (x_read_outside) {
    const std::string w2 = b.AddRandomNormal("w2", {k, n}, 0.0f, 0.5f);
    y = b.Op("Add", {y, b.Op("MatMul", {b.Op("Relu", {x}), w2})});
  }
  b.AddOutput(y, DType::kFloat32, {Dim{3, ""}, Dim{n, ""}});
  auto m = b.Build({{"", 17}});
  QC_CHECK(m.ok());
  return std::move(m).value();
}

std::vector<float> RunSmall(const Model& model) {
  std::mt19937 rng(9);
  Tensor x = RandomNormalTensor({3, 16}, 0.0f, 1.0f, rng);
  auto session = Session::Create(model);
  QC_CHECK(session.ok());
  auto out = (*session)->Run({{"x", x}});
  QC_CHECK(out.ok());
  return (*out)[0].ToFloats();
}

// The group of the layer whose weight is `weight`.
LayerGroup GroupOf(const Model& model, const std::string& weight) {
  for (const LayerGroup& g : GroupLayersByInput(FindLinearLayers(model.graph)))
    for (const LinearLayer& l : g.layers)
      if (l.weight == weight) return g;
  QC_CHECK(false);
  return {};
}

TEST(ChannelScaling, FoldsIntoLayerNormalization) {
  Model model = SmallModel(false, false);
  const std::vector<float> want = RunSmall(model);
  const size_t nodes = model.graph.nodes.size();
  StatusOr<ChannelScaleResult> r = ApplyInputChannelScale(model, GroupOf(model, "w1"), RandomScales(16, 1));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_FALSE(r->inserted_mul);
  EXPECT_NE(r->folded_into.find("LayerNormalization"), std::string::npos) << r->folded_into;
  EXPECT_EQ(model.graph.nodes.size(), nodes);
  EXPECT_LT(MaxRelDiff(RunSmall(model), want), 1e-5);
}

TEST(ChannelScaling, Negative_InputReadOutsideGroupInsertsMul) {
  Model model = SmallModel(true, false);
  const std::vector<float> want = RunSmall(model);
  const size_t nodes = model.graph.nodes.size();
  const std::vector<float> gamma = model.graph.FindInitializer("gamma")->ToFloats();
  StatusOr<ChannelScaleResult> r = ApplyInputChannelScale(model, GroupOf(model, "w1"), RandomScales(16, 2));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(r->inserted_mul);
  EXPECT_NE(r->folded_into.find("Relu"), std::string::npos) << r->folded_into;  // says who else reads X
  EXPECT_EQ(model.graph.nodes.size(), nodes + 1);
  EXPECT_EQ(model.graph.FindInitializer("gamma")->ToFloats(), gamma);
  EXPECT_LT(MaxRelDiff(RunSmall(model), want), 1e-5);
  // The Mul sits before the layer and after X's producer.
  auto session = Session::Create(model);
  EXPECT_TRUE(session.ok()) << session.status().message();
}

TEST(ChannelScaling, Negative_PermutedChannelsRejectedByProbe) {
  Model model = SmallModel(false, true);
  const std::vector<float> want = RunSmall(model);
  const std::vector<float> w0 = model.graph.FindInitializer("w0")->ToFloats();
  StatusOr<ChannelScaleResult> r = ApplyInputChannelScale(model, GroupOf(model, "w1"), RandomScales(16, 3));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(r->inserted_mul) << r->folded_into;
  EXPECT_NE(r->folded_into.find("probe"), std::string::npos) << r->folded_into;
  EXPECT_EQ(model.graph.FindInitializer("w0")->ToFloats(), w0);  // the probe fold was undone
  EXPECT_LT(MaxRelDiff(RunSmall(model), want), 1e-5);
}

TEST(ChannelScaling, Negative_ZeroOrNaNScale) {
  Model model = SmallModel(false, false);
  const LayerGroup group = GroupOf(model, "w1");
  std::vector<float> s = RandomScales(16, 4);
  s[3] = 0.0f;
  StatusOr<ChannelScaleResult> r = ApplyInputChannelScale(model, group, s);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  s[3] = std::nanf("");
  EXPECT_EQ(ApplyInputChannelScale(model, group, s).status().code(), StatusCode::kInvalidArgument);
  s[3] = -1.0f;
  EXPECT_EQ(ApplyInputChannelScale(model, group, s).status().code(), StatusCode::kInvalidArgument);
  s.pop_back();  // wrong length
  EXPECT_EQ(ApplyInputChannelScale(model, group, s).status().code(), StatusCode::kInvalidArgument);
}

// A weight also read outside the group (the tied embedding of GPT-2's lm_head) is copied: the
// embedding table stays as it was.
TEST(ChannelScaling, TiedEmbeddingIsCopied) {
  StatusOr<Model> base = Decoder(SyntheticArch::kGpt2, ExportStyle::kDynamo);
  ASSERT_TRUE(base.ok());
  for (const LayerGroup& group : GroupLayersByInput(FindLinearLayers(base->graph))) {
    if (!group.layers[0].tied) continue;
    Model model = *base;
    const std::string table = group.layers[0].weight;
    StatusOr<ChannelScaleResult> r = ApplyInputChannelScale(model, group, RandomScales(group.layers[0].k, 5));
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_TRUE(model.graph.FindInitializer(table)->BitEqual(*base->graph.FindInitializer(table)));
    for (const LinearLayer& l : FindLinearLayers(model.graph))
      if (l.node_name == group.layers[0].node_name) {
        EXPECT_NE(l.weight, table);
      }
    return;
  }
  FAIL() << "no tied group in the GPT-2 model";
}

}  // namespace
}  // namespace qc
