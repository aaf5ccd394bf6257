// Tests of the round-to-nearest passes (`absmax`, and `zeropoint` where the behaviour is shared):
// graph structure before/after, the artifact computes the float graph with dequantized weights,
// named negative cases, deterministic bytes, every synthetic architecture, and ONNX Runtime.
#include "passes/absmax.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "formats/linear_layers.h"
#include "formats/model_builder.h"
#include "formats/npy.h"
#include "formats/onnx_writer.h"
#include "formats/synthetic_models.h"
#include "passes/registry.h"
#include "passes/tied_embedding.h"
#include "passes/weight_quant.h"
#include "passes/zeropoint.h"
#include "runtime/executor.h"
#include "runtime/float_precision.h"
#include "tests/ort_batch.h"
#include "tests/passes/pass_test_support.h"
#include "tests/temp_dir.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

PassRun RunPass(const std::string& name, Model& model, const QuantOptions& options) {
  StatusOr<std::vector<std::unique_ptr<Pass>>> pipeline = CreatePipeline(name);
  QC_CHECK(pipeline.ok() && pipeline->size() == 1);
  PassRun run;
  PassContext context{options};
  context.layers = &run.layers;
  run.status = (*pipeline)[0]->Run(model, context);
  return run;
}

QuantOptions Options(int bits, int64_t group_size, bool scale_search = false) {
  QuantOptions o;
  o.bits = bits;
  o.group_size = group_size;
  o.scale_search = scale_search;
  return o;
}

// The float model the artifact must equal: every quantized layer reads Dequant(Q(W)) (a copy),
// and so does a tied embedding's Gather where the artifact's reads the head's codes.
Model DequantizedReference(const Model& original, const std::string& pass, const QuantOptions& o,
                           const std::vector<LayerReport>& reports) {
  Model ref = original;
  std::map<std::string, bool> quantized;
  for (const LayerReport& r : reports) quantized[r.name] = r.bits > 0;
  const WeightQuantSpec spec = SpecFromOptions(o, /*sym=*/pass == "absmax");
  for (const LinearLayer& l : FindLinearLayers(original.graph)) {
    if (!quantized[l.node_name]) continue;
    StatusOr<std::vector<float>> w = ReadLinearWeight(original.graph, l);
    QC_CHECK(w.ok());
    StatusOr<QuantizedWeight> qw = QuantizeRtn(*w, l.k, l.n, spec);
    QC_CHECK(qw.ok());
    std::vector<float> dq = qw->Dequantize(), stored(dq.size());
    for (int64_t r = 0; r < l.k; ++r)
      for (int64_t j = 0; j < l.n; ++j) (l.transposed ? stored[j * l.k + r] : stored[r * l.n + j]) = dq[r * l.n + j];
    const std::string name = l.weight + "__dq_" + l.node_name;
    ref.graph.SetInitializer(name, Tensor::FromVector<float>(stored, original.graph.FindInitializer(l.weight)->shape()));
    Node& consumer = ref.graph.nodes[l.node_index];
    if (consumer.inputs[l.weight_input] == l.weight) {
      consumer.inputs[l.weight_input] = name;
    } else {  // through a Transpose: feed the copy to that Transpose
      for (Node& n : ref.graph.nodes)
        if (n.outputs.size() == 1 && n.outputs[0] == consumer.inputs[l.weight_input]) n.inputs[0] = name;
    }
    if (l.tied && !TiedTableStaysFloat(l, spec.bits))
      for (Node& n : ref.graph.nodes)
        if (n.op_type == "Gather" && n.inputs[0] == l.weight) n.inputs[0] = name;
  }
  return ref;
}

// max |a - b| <= 1e-4 * max(1, max |b|): summation order differs between the fused kernel and
// a float GEMM over the dequantized weight, nothing else.
void ExpectClose(const Tensor& got, const Tensor& want) {
  ASSERT_EQ(got.shape(), want.shape());
  const std::vector<float> a = got.ToFloats(), b = want.ToFloats();
  double max_diff = 0, max_ref = 1;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_TRUE(std::isfinite(a[i]));
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(b[i])));
  }
  EXPECT_LE(max_diff, 1e-4 * max_ref);
}

// A graph with every pattern the passes handle: a plain MatMul, a MatMul through a Transpose of
// an [out, in] weight, a Gemm with transB, bias, alpha and beta, and a tied lm_head (Transpose of
// the embedding table that a Gather also reads).
Model PatternGraph() {
  GraphBuilder b(17);
  const int64_t vocab = 50, hidden = 32, inner = 64, mid = 48;
  const std::string ids = b.AddInput("ids", DType::kInt64, {Dim{2}, Dim{3}});
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{2}, Dim{3}, Dim{hidden}});
  const std::string emb = b.AddRandomNormal("emb", {vocab, hidden}, 0.0f, 0.5f);
  const std::string h = b.Op("Add", {x, b.Op("Gather", {emb, ids})});
  const std::string h1 = b.Op("MatMul", {h, b.AddRandomNormal("w1", {hidden, inner}, 0.0f, 0.2f)});
  const std::string r = b.Op("Relu", {h1});
  const std::string w2t = b.Op("Transpose", {b.AddRandomNormal("w2", {mid, inner}, 0.0f, 0.2f)}, {{"perm", AttrInts({1, 0})}});
  const std::string h2 = b.Op("Reshape", {b.Op("MatMul", {r, w2t}), b.AddInt64s({-1, mid})});
  const std::string h3 = b.Op("Gemm", {h2, b.AddRandomNormal("w3", {hidden, mid}, 0.0f, 0.2f), b.AddRandomNormal("c3", {hidden})},
                              {{"transB", AttrInt(1)}, {"alpha", AttrFloat(0.5f)}, {"beta", AttrFloat(2.0f)}});
  const std::string h3r = b.Op("Reshape", {h3, b.AddInt64s({2, 3, hidden})});
  const std::string head = b.Op("Transpose", {emb}, {{"perm", AttrInts({1, 0})}});
  b.AddNodeWithOutputs("MatMul", {h3r, head}, {"logits"});
  b.AddOutput("logits", DType::kFloat32, {Dim{2}, Dim{3}, Dim{vocab}});
  StatusOr<Model> m = b.Build({{"", 17}});
  QC_CHECK(m.ok());
  return std::move(m).value();
}

NamedTensors PatternFeeds() {
  std::mt19937 rng(5);
  return {{"ids", Tensor::FromVector<int64_t>({1, 7, 49, 0, 3, 22}, {2, 3})},
          {"x", RandomNormalTensor({2, 3, 32}, 0.0f, 1.0f, rng)}};
}

class RoundToNearestTest : public ::testing::TestWithParam<std::string> {};

TEST_P(RoundToNearestTest, StructureBeforeAndAfter) {
  Model model = PatternGraph();
  EXPECT_EQ(FindLinearLayers(model.graph).size(), 4u);
  EXPECT_EQ(OpCounts(model), (std::map<std::string, int>{{"Add", 1}, {"Gather", 1}, {"Gemm", 1}, {"MatMul", 3},
                                                          {"Relu", 1}, {"Reshape", 2}, {"Transpose", 2}}));
  const auto inputs = model.graph.inputs;
  const auto outputs = model.graph.outputs;
  // The head at 8 bits (the CLI's --head-bits), whose codes the embedding lookups then share.
  QuantOptions options = Options(4, 16);
  options.head_bits = kCliHeadBits;
  PassRun run = RunPass(GetParam(), model, options);
  ASSERT_TRUE(run.status.ok()) << run.status.message();
  // The embedding Gather reads the head's codes: Reshapes of its data and scales (and zero points).
  const int reshapes = GetParam() == "zeropoint" ? 3 : 2;
  EXPECT_EQ(OpCounts(model), (std::map<std::string, int>{{"Add", 1},
                                                          {"Relu", 1},
                                                          {"Reshape", 2 + reshapes},
                                                          {"com.microsoft.GatherBlockQuantized", 1},
                                                          {"com.microsoft.MatMulNBits", 4}}));
  ASSERT_EQ(run.layers.size(), 4u);
  for (const LayerReport& r : run.layers) {
    EXPECT_EQ(r.pass, GetParam());
    EXPECT_EQ(r.bits, &r == &run.layers.back() ? 8 : 4) << r.name;
    EXPECT_EQ(r.group_size, 16);
    EXPECT_GT(r.weight_rel_error, 0.0);
    EXPECT_LT(r.weight_rel_error, 0.2);
    EXPECT_EQ(r.output_rel_error, -1) << "no calibration, no output error";
  }
  // Every float weight is gone, the embedding table too: its Gather reads the head's codes.
  const Graph& g = model.graph;
  EXPECT_EQ(g.FindInitializer("w1"), nullptr);
  EXPECT_EQ(g.FindInitializer("w2"), nullptr);
  EXPECT_EQ(g.FindInitializer("w3"), nullptr);
  EXPECT_EQ(g.FindInitializer("c3"), nullptr) << "beta folded into a new bias: the old one is dead";
  EXPECT_EQ(g.FindInitializer("emb"), nullptr);
  ASSERT_FALSE(run.layers.back().notes.empty());
  EXPECT_NE(run.layers.back().notes[0].find("now reads this layer's packed codes"), std::string::npos)
      << run.layers.back().notes[0];
  // Same interface.
  ASSERT_EQ(g.inputs.size(), inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) EXPECT_EQ(g.inputs[i].name, inputs[i].name);
  ASSERT_EQ(g.outputs.size(), outputs.size());
  EXPECT_EQ(g.outputs[0].name, outputs[0].name);
  bool has_ms = false;
  for (const auto& o : model.opset_imports) has_ms |= o.domain == "com.microsoft" && o.version == 1;
  EXPECT_TRUE(has_ms);
  // Nothing is left for a second run.
  EXPECT_TRUE(FindLinearLayers(g).empty());
}

TEST_P(RoundToNearestTest, ArtifactEqualsFloatGraphWithDequantizedWeights) {
  for (const QuantOptions& o : {Options(4, 16), Options(3, 32, true), Options(8, -1), Options(2, 16)}) {
    SCOPED_TRACE("bits " + std::to_string(o.bits) + " group " + std::to_string(o.group_size));
    const Model original = PatternGraph();
    Model model = original;
    PassRun run = RunPass(GetParam(), model, o);
    ASSERT_TRUE(run.status.ok()) << run.status.message();
    const Model reference = DequantizedReference(original, GetParam(), o, run.layers);
    const std::vector<Tensor> got = RunModel(model, PatternFeeds()), want = RunModel(reference, PatternFeeds());
    ASSERT_EQ(got.size(), 1u);
    ASSERT_EQ(want.size(), 1u);
    ExpectClose(got[0], want[0]);
  }
}

TEST_P(RoundToNearestTest, GemmWithComputedBiasGetsAnAdd) {
  GraphBuilder b(3);
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{4}, Dim{32}});
  const std::string c = b.AddInput("c", DType::kFloat32, {Dim{4}, Dim{16}});
  b.AddNodeWithOutputs("Gemm", {x, b.AddRandomNormal("w", {32, 16}, 0.0f, 0.3f), b.Op("Relu", {c})}, {"y"},
                       {{"beta", AttrFloat(0.5f)}});
  b.AddOutput("y", DType::kFloat32, {Dim{4}, Dim{16}});
  StatusOr<Model> built = b.Build({{"", 17}});
  ASSERT_TRUE(built.ok());
  const Model original = *built;
  Model model = original;
  const QuantOptions o = Options(4, 16);
  PassRun run = RunPass(GetParam(), model, o);
  ASSERT_TRUE(run.status.ok()) << run.status.message();
  EXPECT_EQ(OpCounts(model), (std::map<std::string, int>{
                                 {"Add", 1}, {"Mul", 1}, {"Relu", 1}, {"com.microsoft.MatMulNBits", 1}}));
  std::mt19937 rng(2);
  const NamedTensors feeds = {{"x", RandomNormalTensor({4, 32}, 0.0f, 1.0f, rng)},
                              {"c", RandomNormalTensor({4, 16}, 0.0f, 1.0f, rng)}};
  const std::vector<Tensor> got = RunModel(model, feeds),
                            want = RunModel(DequantizedReference(original, GetParam(), o, run.layers), feeds);
  ASSERT_EQ(got.size(), 1u);
  ExpectClose(got[0], want[0]);
}

TEST_P(RoundToNearestTest, SharedWeightIsStoredOnce) {
  GraphBuilder b(4);
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{2}, Dim{32}});
  const std::string w = b.AddRandomNormal("w", {32, 16});
  const std::string y1 = b.Op("MatMul", {x, w});
  b.AddNodeWithOutputs("MatMul", {b.Op("Relu", {x}), w}, {"y2"});
  b.AddNodeWithOutputs("Add", {y1, "y2"}, {"y"});
  b.AddOutput("y", DType::kFloat32, {Dim{2}, Dim{16}});
  StatusOr<Model> model = b.Build({{"", 17}});
  ASSERT_TRUE(model.ok());
  PassRun run = RunPass(GetParam(), *model, Options(4, 16));
  ASSERT_TRUE(run.status.ok());
  EXPECT_EQ(OpCounts(*model)["com.microsoft.MatMulNBits"], 2);
  EXPECT_EQ(model->graph.nodes[0].inputs[1], model->graph.nodes[2].inputs[1]) << "one packed weight for both";
  EXPECT_EQ(model->graph.FindInitializer("w"), nullptr);
}

TEST_P(RoundToNearestTest, Negative_WeightNotConstant) {
  GraphBuilder b(5);
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{2}, Dim{32}});
  const std::string w = b.AddInput("w", DType::kFloat32, {Dim{32}, Dim{16}});
  b.AddNodeWithOutputs("MatMul", {x, w}, {"y"});
  b.AddOutput("y", DType::kFloat32, {Dim{2}, Dim{16}});
  StatusOr<Model> model = b.Build({{"", 17}});
  ASSERT_TRUE(model.ok());
  PassRun run = RunPass(GetParam(), *model, Options(4, 16));
  ASSERT_TRUE(run.status.ok());
  EXPECT_TRUE(run.layers.empty());
  EXPECT_EQ(OpCounts(*model), (std::map<std::string, int>{{"MatMul", 1}}));
  EXPECT_EQ(model->graph.nodes[0].inputs, (std::vector<std::string>{x, w}));
}

TEST_P(RoundToNearestTest, Negative_WeightIsAlsoAGraphInput) {
  // An initializer listed as a graph input is only a default: callers may feed another weight.
  std::vector<float> values(32 * 16, 0.01f);
  GraphBuilder b(6);
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{2}, Dim{32}});
  b.AddInput("w", DType::kFloat32, {Dim{32}, Dim{16}});
  b.AddNodeWithOutputs("MatMul", {x, "w"}, {"y"});
  b.AddOutput("y", DType::kFloat32, {Dim{2}, Dim{16}});
  StatusOr<Model> model = b.Build({{"", 17}});
  ASSERT_TRUE(model.ok());
  model->graph.SetInitializer("w", Tensor::FromVector<float>(values, {32, 16}));
  PassRun run = RunPass(GetParam(), *model, Options(4, 16));
  ASSERT_TRUE(run.status.ok());
  ASSERT_EQ(run.layers.size(), 1u);
  EXPECT_EQ(run.layers[0].bits, 0);
  ASSERT_EQ(run.layers[0].notes.size(), 1u);
  EXPECT_NE(run.layers[0].notes[0].find("graph input"), std::string::npos);
  EXPECT_EQ(OpCounts(*model), (std::map<std::string, int>{{"MatMul", 1}}));
}

// A float16 model's layer: MatMulNBits' T is float16, so its scales are float16 too.
TEST_P(RoundToNearestTest, Float16WeightGetsFloat16Scales) {
  std::mt19937 rng(8);
  const Tensor w32 = RandomNormalTensor({32, 16}, 0.0f, 1.0f, rng), x32 = RandomNormalTensor({2, 32}, 0.0f, 1.0f, rng);
  GraphBuilder b(7);
  const std::string x = b.AddInput("x", DType::kFloat16, {Dim{2}, Dim{32}});
  b.AddInitializer("w", ConvertFloatTensor(w32, DType::kFloat16));
  b.AddNodeWithOutputs("MatMul", {x, "w"}, {"y"});
  b.AddOutput("y", DType::kFloat16, {Dim{2}, Dim{16}});
  StatusOr<Model> model = b.Build({{"", 17}});
  ASSERT_TRUE(model.ok());
  const Model before = *model;
  PassRun run = RunPass(GetParam(), *model, Options(4, 16));
  ASSERT_TRUE(run.status.ok()) << run.status.message();
  ASSERT_EQ(run.layers.size(), 1u);
  EXPECT_EQ(run.layers[0].bits, 4);
  EXPECT_EQ(OpCounts(*model), (std::map<std::string, int>{{"com.microsoft.MatMulNBits", 1}}));
  EXPECT_EQ(model->graph.FindInitializer(model->graph.nodes[0].inputs[2])->dtype(), DType::kFloat16);
  const NamedTensors feeds = {{"x", ConvertFloatTensor(x32, DType::kFloat16)}};
  const std::vector<Tensor> want = RunModel(before, feeds), got = RunModel(*model, feeds);
  ASSERT_EQ(got[0].dtype(), DType::kFloat16);
  const std::vector<float> a = want[0].ToFloats(), q = got[0].ToFloats();
  double err = 0, ref = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    err += (q[i] - a[i]) * double(q[i] - a[i]);
    ref += a[i] * double(a[i]);
  }
  EXPECT_LT(std::sqrt(err / ref), 0.2);  // 4-bit groups of 16: ~0.1
}

TEST_P(RoundToNearestTest, Negative_Float64WeightIsSkippedWithANote) {
  GraphBuilder b(7);
  const std::string x = b.AddInput("x", DType::kFloat64, {Dim{2}, Dim{32}});
  b.AddInitializer("w", Tensor(DType::kFloat64, {32, 16}));
  b.AddNodeWithOutputs("MatMul", {x, "w"}, {"y"});
  b.AddOutput("y", DType::kFloat64, {Dim{2}, Dim{16}});
  StatusOr<Model> model = b.Build({{"", 17}});
  ASSERT_TRUE(model.ok());
  PassRun run = RunPass(GetParam(), *model, Options(4, 16));
  ASSERT_TRUE(run.status.ok());
  ASSERT_EQ(run.layers.size(), 1u);
  EXPECT_EQ(run.layers[0].bits, 0);
  EXPECT_EQ(run.layers[0].scheme, "float");
  EXPECT_NE(run.layers[0].notes[0].find("float64"), std::string::npos);
  EXPECT_EQ(OpCounts(*model), (std::map<std::string, int>{{"MatMul", 1}}));
}

TEST_P(RoundToNearestTest, Negative_ExcludedLayersStayFloat) {
  Model model = PatternGraph();
  const std::vector<LinearLayer> layers = FindLinearLayers(model.graph);
  QuantOptions o = Options(4, 16);
  o.exclude_regex = "^(" + layers[0].node_name + "|emb)$";  // by node name, and by weight name
  PassRun run = RunPass(GetParam(), model, o);
  ASSERT_TRUE(run.status.ok()) << run.status.message();
  ASSERT_EQ(run.layers.size(), 2u);
  EXPECT_EQ(run.layers[0].weight, "w2");
  EXPECT_EQ(run.layers[1].weight, "w3");
  EXPECT_EQ(OpCounts(model)["MatMul"], 2);
  EXPECT_EQ(OpCounts(model)["Transpose"], 1) << "the head's Transpose still feeds the float MatMul";
  EXPECT_NE(model.graph.FindInitializer("w1"), nullptr);
}

TEST_P(RoundToNearestTest, Negative_BadOptions) {
  for (const QuantOptions& o : {Options(9, 128), Options(1, 128), Options(4, 100), Options(4, 0)}) {
    Model model = PatternGraph();
    PassRun run = RunPass(GetParam(), model, o);
    EXPECT_EQ(run.status.code(), StatusCode::kInvalidArgument);
  }
  Model model = PatternGraph();
  QuantOptions o = Options(4, 16);
  o.exclude_regex = "[";
  EXPECT_EQ(RunPass(GetParam(), model, o).status.code(), StatusCode::kInvalidArgument);
}

TEST_P(RoundToNearestTest, DeterministicBytes) {
  std::string first;
  for (int i = 0; i < 2; ++i) {
    Model model = PatternGraph();
    ASSERT_TRUE(RunPass(GetParam(), model, Options(4, 16, /*scale_search=*/true)).status.ok());
    StatusOr<std::string> bytes = SerializeOnnxModel(model);
    ASSERT_TRUE(bytes.ok());
    if (i == 0) first = *bytes;
    else EXPECT_EQ(first, *bytes);
  }
}

INSTANTIATE_TEST_SUITE_P(Passes, RoundToNearestTest, ::testing::Values("absmax", "zeropoint"),
                         [](const auto& info) { return info.param; });

TEST(Absmax, IsRegisteredAndNeedsNoCalibration) {
  bool absmax = false, zeropoint = false;
  for (const PassInfo& p : AllPasses()) {
    absmax |= std::string(p.name) == "absmax";
    zeropoint |= std::string(p.name) == "zeropoint";
  }
  EXPECT_TRUE(absmax);
  EXPECT_TRUE(zeropoint);
  EXPECT_FALSE(AbsmaxPass().NeedsCalibration());
  EXPECT_FALSE(AbsmaxPass().CanDeferQuantization());
  EXPECT_STREQ(AbsmaxPass().Name(), "absmax");
}

TEST(Absmax, SymmetricArtifactHasNoZeroPoints) {
  Model model = PatternGraph();
  ASSERT_TRUE(RunPass("absmax", model, Options(4, 16)).status.ok());
  for (const Node& n : model.graph.nodes)
    if (n.op_type == "MatMulNBits") {
      EXPECT_TRUE(n.inputs.size() < 4 || n.inputs[3].empty()) << n.name;
      EXPECT_EQ(n.GetInt("bits", 0), 4);
      EXPECT_EQ(n.GetInt("block_size", 0), 16);
      EXPECT_EQ(n.GetInt("accuracy_level", -1), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Every synthetic architecture in every export style: the artifact runs and equals the float
// graph with dequantized weights; ONNX Runtime agrees when it is installed.

struct ArchCase {
  SyntheticArch arch;
  ExportStyle style;
  std::string pass;
};

std::vector<ArchCase> ArchCases() {
  std::vector<ArchCase> cases;
  for (SyntheticArch arch : AllSyntheticArchs())
    for (ExportStyle style : {ExportStyle::kDynamo, ExportStyle::kTorchScript, ExportStyle::kOrtFused})
      for (const char* pass : {"absmax", "zeropoint"}) cases.push_back({arch, style, pass});
  return cases;
}

SyntheticConfig ArchConfig(const ArchCase& c) {
  SyntheticConfig config;
  config.arch = c.arch;
  config.export_style = c.style;
  config.hidden = 32;
  config.intermediate = 64;
  config.init_std = 0.1f;  // wide enough that 4-bit rounding visibly moves the logits
  config.seed = 300 + static_cast<uint32_t>(c.arch);
  return config;
}

NamedTensors ArchFeeds(const SyntheticConfig& config) {
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 9; ++i) ids.push_back((i * 37 + 5) % config.vocab);
  return {{"input_ids", Tensor::FromVector<int64_t>(ids, {1, 9})}};
}

class RoundToNearestArchTest : public ::testing::TestWithParam<ArchCase> {};

TEST_P(RoundToNearestArchTest, EveryLinearLayerQuantizedAndArtifactRuns) {
  const ArchCase& c = GetParam();
  const SyntheticConfig config = ArchConfig(c);
  StatusOr<Model> original = BuildSyntheticDecoder(config);
  ASSERT_TRUE(original.ok()) << original.status().message();
  const size_t linear = FindLinearLayers(original->graph).size();
  ASSERT_GT(linear, 0u);
  Model model = *original;
  const QuantOptions o = Options(4, 16);
  PassRun run = RunPass(c.pass, model, o);
  ASSERT_TRUE(run.status.ok()) << run.status.message();
  EXPECT_EQ(run.layers.size(), linear);
  for (const LayerReport& r : run.layers) EXPECT_EQ(r.bits, 4) << r.name;
  EXPECT_TRUE(FindLinearLayers(model.graph).empty());
  const NamedTensors feeds = ArchFeeds(config);
  const std::vector<Tensor> got = RunModel(model, feeds),
                            want = RunModel(DequantizedReference(*original, c.pass, o, run.layers), feeds),
                            float_out = RunModel(*original, feeds);
  ASSERT_FALSE(got.empty());
  ASSERT_FALSE(want.empty());
  ExpectClose(got[0], want[0]);
  // And quantization did change something (the comparison above is not vacuous).
  const std::vector<float> a = got[0].ToFloats(), f = float_out[0].ToFloats();
  double moved = 0;
  for (size_t i = 0; i < a.size(); ++i) moved = std::max(moved, std::fabs(static_cast<double>(a[i]) - f[i]));
  EXPECT_GT(moved, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Architectures, RoundToNearestArchTest, ::testing::ValuesIn(ArchCases()), [](const auto& info) {
  return std::string(SyntheticArchName(info.param.arch)) + "_" + ExportStyleName(info.param.style) + "_" + info.param.pass;
});

// ONNX Runtime runs every artifact, and the reordered-group (g_idx) and 3-bit encodings, with our
// numbers. Skips when node or onnxruntime-node is missing.
TEST(RoundToNearestOrt, OnnxRuntimeAgrees) {
  if (std::system("node --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "node is not installed";
  if (!std::getenv("QC_ORT_NODE_MODULES") && fs::exists("/tmp/ortnode/node_modules"))
    ::setenv("QC_ORT_NODE_MODULES", "/tmp/ortnode/node_modules", 1);
  const TempDir dir("rtn_ort");
  struct Job {
    std::string name;
    Model model;
    NamedTensors feeds;
  };
  std::vector<Job> jobs;
  for (const ArchCase& c : ArchCases()) {
    const SyntheticConfig config = ArchConfig(c);
    StatusOr<Model> model = BuildSyntheticDecoder(config);
    ASSERT_TRUE(model.ok());
    for (int bits : {4, 3}) {
      Job job{std::string(SyntheticArchName(c.arch)) + "_" + ExportStyleName(c.style) + "_" + c.pass + "_w" +
                  std::to_string(bits),
              *model, ArchFeeds(config)};
      ASSERT_TRUE(RunPass(c.pass, job.model, Options(bits, bits == 4 ? 16 : -1)).status.ok());
      jobs.push_back(std::move(job));
    }
  }
  {  // A MatMulNBits with act-order groups (g_idx), the encoding GPTQ writes.
    GraphBuilder b(8);
    const std::string x = b.AddInput("x", DType::kFloat32, {Dim{3}, Dim{64}});
    const std::string w = b.AddRandomNormal("w", {64, 24}, 0.0f, 0.3f);
    const std::vector<float> values = b.graph().FindInitializer(w)->ToFloats();
    b.AddNodeWithOutputs("MatMul", {x, w}, {"y"});
    b.AddOutput("y", DType::kFloat32, {Dim{3}, Dim{24}});
    StatusOr<Model> model = b.Build({{"", 17}});
    ASSERT_TRUE(model.ok());
    for (bool sym : {true, false}) {
      WeightQuantSpec spec;
      spec.group_size = 16;
      spec.sym = sym;
      StatusOr<QuantizedWeight> qw = QuantizeRtn(values, 64, 24, spec);
      ASSERT_TRUE(qw.ok());
      qw->g_idx.resize(64);
      for (int r = 0; r < 64; ++r) qw->g_idx[r] = (r * 5 + 3) % 4;
      Model m = *model;
      MatMulNBitsRewriter rewriter(m);
      ASSERT_TRUE(rewriter.Replace(FindLinearLayers(m.graph)[0], *qw, "g_idx test").ok());
      rewriter.Finish();
      std::mt19937 rng(1);
      jobs.push_back({std::string("g_idx_") + (sym ? "sym" : "asym"), m, {{"x", RandomNormalTensor({3, 64}, 0.0f, 1.0f, rng)}}});
    }
  }
  std::vector<OrtJob> ort_jobs;
  for (const Job& job : jobs) ort_jobs.push_back({job.name, &job.model, job.feeds});
  StatusOr<OrtBatch> ran = RunOrtBatch(dir.string(), ort_jobs);
  ASSERT_TRUE(ran.ok()) << ran.status().message();
  if (*ran == OrtBatch::kUnavailable) {
    GTEST_SKIP() << "onnxruntime-node not found; set QC_ORT_NODE_MODULES to its node_modules directory";
  }
  for (const Job& job : jobs) {
    SCOPED_TRACE(job.name);
    const std::string out_dir = OrtOutputDir(dir.string(), job.name);
    const std::string error = OrtJobError(dir.string(), job.name);
    EXPECT_TRUE(error.empty()) << "ONNX Runtime rejected the artifact: " << error;
    if (!error.empty()) continue;
    const std::string output = job.model.graph.outputs[0].name;
    StatusOr<Tensor> ort = ReadNpy(out_dir + "/" + output + ".npy");
    ASSERT_TRUE(ort.ok()) << ort.status().message();
    const std::vector<Tensor> ours = RunModel(job.model, job.feeds);
    ASSERT_FALSE(ours.empty());
    ExpectClose(ours[0], *ort);
  }
}

}  // namespace
}  // namespace qc
