// Tests of the `smoothquant` pass: the smoothing factors of Eq. 4, the smoothing alone preserves
// the function (every synthetic architecture and export style), the W8A8 artifact of every
// architecture runs and stays close to the float model, reports, --exclude, named negative cases,
// and a real model from ../shared.
#include "passes/smoothquant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "calibrate/calibration_data.h"
#include "calibrate/calibrator.h"
#include "formats/linear_layers.h"
#include "formats/onnx_reader.h"
#include "formats/synthetic_models.h"
#include "formats/tokenizer.h"
#include "passes/registry.h"
#include "runtime/executor.h"
#include "runtime/perplexity.h"
#include "tests/passes/pass_test_support.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

PassRun RunSmoothQuant(Model& model, const QuantOptions& o, Calibrator* calibrator, bool quantize_weights = true) {
  StatusOr<std::vector<std::unique_ptr<Pass>>> pipeline = CreatePipeline("smoothquant");
  QC_CHECK(pipeline.ok() && pipeline->size() == 1);
  PassRun run;
  PassContext context{o};
  context.calibrator = calibrator;
  context.layers = &run.layers;
  context.quantize_weights = quantize_weights;
  run.status = (*pipeline)[0]->Run(model, context);
  return run;
}

TEST(SmoothingFactors, Equation4WithClamps) {
  // K = 3; two layers of the group. Channel 0: a = 4, w = max(2, 0.5) = 2; channel 1: a = 0,
  // raised to 0.1 x the median 4; channel 2: w = 0 (clamped to 1e-5).
  const std::vector<float> act = {4.0f, 0.0f, 9.0f};
  const std::vector<std::vector<float>> weights = {{2.0f, -1.0f, 0.1f, 0.3f, 0.0f, 0.0f},  // [3, 2]
                                                   {-0.5f, 0.2f, 0.0f}};                   // [3, 1]
  int64_t floored = -1;
  const std::vector<float> s = SmoothingFactors(act, weights, 3, 0.5, &floored);
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(floored, 1);
  EXPECT_NEAR(s[0], std::sqrt(4.0) / std::sqrt(2.0), 1e-6);
  EXPECT_NEAR(s[1], std::sqrt(0.4) / std::sqrt(0.3), 1e-6);
  EXPECT_NEAR(s[2], std::sqrt(9.0) / std::sqrt(1e-5), 1e-2);
  // alpha = 1 puts everything on the activations, alpha = 0 on the weights; s never below 1e-5.
  EXPECT_NEAR(SmoothingFactors(act, weights, 3, 1.0)[0], 4.0f, 1e-6);
  EXPECT_NEAR(SmoothingFactors(act, weights, 3, 0.0)[0], 0.5f, 1e-6);
  EXPECT_EQ(SmoothingFactors({0.0f}, {{0.0f}}, 1, 1.0)[0], kSmoothMinValue);
}

TEST(SmoothQuant, IsRegisteredNeedsCalibrationAndDefers) {
  bool found = false;
  for (const PassInfo& p : AllPasses()) found |= std::string(p.name) == "smoothquant";
  EXPECT_TRUE(found);
  SmoothQuantPass pass;
  EXPECT_TRUE(pass.NeedsCalibration());
  EXPECT_TRUE(pass.CanDeferQuantization());
  EXPECT_STREQ(pass.Name(), "smoothquant");
}

SyntheticConfig ArchConfig(const ArchStyleCase& c) {
  SyntheticConfig config;
  config.arch = c.arch;
  config.export_style = c.style;
  config.hidden = 32;
  config.intermediate = 64;
  config.init_std = 0.1f;
  config.seed = 500 + static_cast<uint32_t>(c.arch);
  return config;
}

class SmoothQuantArchTest : public ::testing::TestWithParam<ArchStyleCase> {};

// The invariant: smoothing alone (what `--pass smoothquant,gptq` leaves for the next pass) does
// not change the function.
TEST_P(SmoothQuantArchTest, SmoothingAlonePreservesTheFunction) {
  const SyntheticConfig config = ArchConfig(GetParam());
  StatusOr<Model> original = BuildSyntheticDecoder(config);
  ASSERT_TRUE(original.ok()) << original.status().message();
  Calibrator calibrator(TokenWindows(config.vocab, 2, 12, 1));
  for (double alpha : {0.5, 0.85}) {
    Model model = *original;
    QuantOptions o;
    o.alpha = alpha;
    PassRun run = RunSmoothQuant(model, o, &calibrator, /*quantize_weights=*/false);
    ASSERT_TRUE(run.status.ok()) << run.status.message();
    EXPECT_EQ(run.layers.size(), FindLinearLayers(original->graph).size());
    for (const LayerReport& r : run.layers) {
      EXPECT_EQ(r.scheme, "smoothed") << r.name;
      EXPECT_EQ(r.bits, 0);
    }
    EXPECT_EQ(OpCounts(model)["MatMulInteger"], 0);
    const NamedTensors feeds = TokenFeeds(config.vocab);
    const std::vector<Tensor> got = RunModel(model, feeds), want = RunModel(*original, feeds);
    ASSERT_FALSE(got.empty());
    EXPECT_LE(MaxRelDiff(got[0], want[0]), 2e-5) << "alpha " << alpha;
    // And it did change the weights (the comparison above is not vacuous).
    bool changed = false;
    for (const std::string& name : original->graph.initializer_names()) {
      const Tensor* after = model.graph.FindInitializer(name);
      changed |= after == nullptr || !after->BitEqual(*original->graph.FindInitializer(name));
    }
    EXPECT_TRUE(changed);
  }
}

TEST_P(SmoothQuantArchTest, W8A8ArtifactRunsAndStaysClose) {
  const SyntheticConfig config = ArchConfig(GetParam());
  StatusOr<Model> original = BuildSyntheticDecoder(config);
  ASSERT_TRUE(original.ok());
  const size_t linear = FindLinearLayers(original->graph).size();
  Calibrator calibrator(TokenWindows(config.vocab, 2, 12, 2));
  Model model = *original;
  PassRun run = RunSmoothQuant(model, QuantOptions{}, &calibrator);
  ASSERT_TRUE(run.status.ok()) << run.status.message();
  ASSERT_EQ(run.layers.size(), linear);
  for (const LayerReport& r : run.layers) {
    EXPECT_EQ(r.pass, "smoothquant");
    EXPECT_EQ(r.scheme, "w8a8") << r.name;
    EXPECT_EQ(r.bits, 8);
    EXPECT_EQ(r.group_size, -1);
    EXPECT_GT(r.weight_rel_error, 0.0);
    EXPECT_LT(r.weight_rel_error, 0.02);
    EXPECT_GE(r.output_rel_error, 0.0);
    EXPECT_LT(r.output_rel_error, 0.05) << r.name;
    ASSERT_FALSE(r.notes.empty());
    EXPECT_NE(r.notes[0].find("folded into"), std::string::npos) << r.notes[0];
  }
  EXPECT_EQ(OpCounts(model)["MatMulInteger"], static_cast<int>(linear));
  EXPECT_TRUE(FindLinearLayers(model.graph).empty());
  const NamedTensors feeds = TokenFeeds(config.vocab);
  const std::vector<Tensor> got = RunModel(model, feeds), want = RunModel(*original, feeds);
  ASSERT_FALSE(got.empty());
  const double diff = MaxRelDiff(got[0], want[0]);
  EXPECT_LT(diff, 0.05);
  EXPECT_GT(diff, 1e-6) << "8-bit rounding moved nothing?";
}

INSTANTIATE_TEST_SUITE_P(Architectures, SmoothQuantArchTest, ::testing::ValuesIn(ArchStyleCases()), ArchStyleCaseName);

TEST(SmoothQuant, ExcludedLayersStayFloat) {
  SyntheticConfig config;
  config.arch = SyntheticArch::kLlama;
  config.init_std = 0.1f;
  StatusOr<Model> original = BuildSyntheticDecoder(config);
  ASSERT_TRUE(original.ok());
  Calibrator calibrator(TokenWindows(config.vocab, 2, 10, 3));
  const std::vector<LinearLayer> layers = FindLinearLayers(original->graph);
  const std::string head = layers.back().node_name;
  Model model = *original;
  QuantOptions o;
  o.exclude_regex = "^" + head + "$";
  PassRun run = RunSmoothQuant(model, o, &calibrator);
  ASSERT_TRUE(run.status.ok()) << run.status.message();
  EXPECT_EQ(run.layers.size(), layers.size() - 1);
  for (const LayerReport& r : run.layers) EXPECT_NE(r.name, head);
  const std::vector<LinearLayer> left = FindLinearLayers(model.graph);
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].node_name, head);
  EXPECT_EQ(OpCounts(model)["MatMulInteger"], static_cast<int>(layers.size() - 1));
}

TEST(SmoothQuant, Negative_NoCalibrator) {
  StatusOr<Model> model = BuildSyntheticDecoder(SyntheticConfig{});
  ASSERT_TRUE(model.ok());
  const Model before = *model;
  PassRun run = RunSmoothQuant(*model, QuantOptions{}, nullptr);
  EXPECT_EQ(run.status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(run.status.message().find("--calib"), std::string::npos) << run.status.message();
  EXPECT_EQ(model->graph.nodes.size(), before.graph.nodes.size());
}

TEST(SmoothQuant, Negative_BadAlphaAndExclude) {
  StatusOr<Model> model = BuildSyntheticDecoder(SyntheticConfig{});
  ASSERT_TRUE(model.ok());
  Calibrator calibrator(TokenWindows(97, 1, 8, 0));
  QuantOptions o;
  o.alpha = 1.5;
  EXPECT_EQ(RunSmoothQuant(*model, o, &calibrator).status.code(), StatusCode::kInvalidArgument);
  o.alpha = 0.5;
  o.exclude_regex = "(";
  EXPECT_EQ(RunSmoothQuant(*model, o, &calibrator).status.code(), StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// docs-llama-12m from ../shared: a small calibration set, a short evaluation; skips without it.

bool HaveShared() { return fs::exists(std::string(QC_SHARED_DIR) + "/models/docs-llama-12m/model.onnx"); }

std::vector<int32_t> TokenizeFile(const std::string& text_path, const std::string& tokenizer_path, size_t max_bytes) {
  std::ifstream in(text_path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str().substr(0, max_bytes);
  StatusOr<Tokenizer> tok = Tokenizer::FromFile(tokenizer_path);
  QC_CHECK(tok.ok());
  StatusOr<std::vector<int32_t>> ids = tok->Encode(text);
  QC_CHECK(ids.ok());
  return *ids;
}

TEST(SmoothQuantRealModel, DocsLlamaW8A8StaysNearFloat) {
  if (!HaveShared()) GTEST_SKIP() << "../shared is not available";
  const std::string dir = std::string(QC_SHARED_DIR) + "/models/docs-llama-12m";
  StatusOr<Model> original = ReadOnnxModel(dir + "/model.onnx");
  ASSERT_TRUE(original.ok());
  const std::vector<int32_t> calib =
      TokenizeFile(std::string(QC_SHARED_DIR) + "/data/docs-calib/docs-calib.txt", dir + "/tokenizer.json", 200000);
  StatusOr<std::vector<Tensor>> windows = SampleCalibrationWindows(calib, 4, 256, 0);
  ASSERT_TRUE(windows.ok());
  Calibrator calibrator(*windows);
  Model model = *original;
  PassRun run = RunSmoothQuant(model, QuantOptions{}, &calibrator);
  ASSERT_TRUE(run.status.ok()) << run.status.message();
  EXPECT_EQ(run.layers.size(), 43u);
  EXPECT_EQ(OpCounts(model)["MatMulInteger"], 43);
  const std::vector<int32_t> val = TokenizeFile(dir + "/docs-val.txt", dir + "/tokenizer.json", 40000);
  PerplexityOptions po;
  po.seqlen = 256;
  po.max_windows = 3;
  StatusOr<std::unique_ptr<Session>> float_session = Session::Create(*original);
  StatusOr<std::unique_ptr<Session>> w8a8_session = Session::Create(model);
  ASSERT_TRUE(float_session.ok() && w8a8_session.ok());
  StatusOr<PerplexityResult> before = EvaluatePerplexity(**float_session, val, po);
  StatusOr<PerplexityResult> after = EvaluatePerplexity(**w8a8_session, val, po);
  ASSERT_TRUE(before.ok() && after.ok());
  EXPECT_LT(after->ppl, before->ppl * 1.03) << "float " << before->ppl << ", w8a8 " << after->ppl;
  EXPECT_GT(after->ppl, before->ppl * 0.97);
}

}  // namespace
}  // namespace qc
