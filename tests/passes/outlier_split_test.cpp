// Tests of the `outlier-split` pass: the outlier channel rule, the artifact of every synthetic
// architecture runs and stays close to the float model, reports (outliers_kept), --exclude, named
// negative cases, and a real model from ../shared. The decomposition itself (Y = X_O W_O +
// W8A8(X_R, W_R), exact when nothing rounds) is tested in int8_linear_test.cpp.
#include "passes/outlier_split.h"

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

PassRun RunOutlierSplit(Model& model, const QuantOptions& o, Calibrator* calibrator) {
  StatusOr<std::vector<std::unique_ptr<Pass>>> pipeline = CreatePipeline("outlier-split");
  QC_CHECK(pipeline.ok() && pipeline->size() == 1);
  PassRun run;
  PassContext context{o};
  context.calibrator = calibrator;
  context.layers = &run.layers;
  run.status = (*pipeline)[0]->Run(model, context);
  return run;
}

InputStats CountStats(const std::vector<int64_t>& counts, const std::vector<float>& abs_max, int64_t rows) {
  InputStats s;
  s.k = static_cast<int64_t>(counts.size());
  s.rows = rows;
  s.outlier_count = counts;
  s.abs_max = abs_max;
  return s;
}

TEST(SelectOutlierChannels, FrequencyRuleAndCap) {
  // 10000 tokens: at least 10 exceedances (0.1%) make an outlier; one stray exceedance does not.
  const InputStats s = CountStats({0, 10, 9, 500, 1, 0, 10000, 0}, {1, 7, 7, 30, 6.5f, 2, 9, 3}, 10000);
  EXPECT_EQ(SelectOutlierChannels(s), (std::vector<int64_t>{3, 6}))
      << "channel 6 exceeds on every token, but the cap is 8 / 4 = 2: the two most frequent win";
  EXPECT_EQ(SelectOutlierChannels(s, 1e-3, 1.0), (std::vector<int64_t>{1, 3, 6}));
  EXPECT_EQ(SelectOutlierChannels(s, 0.0, 1.0), (std::vector<int64_t>{1, 2, 3, 4, 6})) << "any exceedance";
  // Few tokens: at least one exceedance is needed, never zero.
  EXPECT_EQ(SelectOutlierChannels(CountStats({0, 1, 0, 0}, {1, 8, 1, 1}, 20), 1e-3, 1.0), (std::vector<int64_t>{1}));
  EXPECT_TRUE(SelectOutlierChannels(CountStats({0, 0, 0, 0}, {1, 1, 1, 1}, 20)).empty());
  // Ties on counts under the cap: the larger max |x| wins; never every channel.
  EXPECT_EQ(SelectOutlierChannels(CountStats({5, 5, 5, 5}, {7, 9, 8, 6}, 100), 0.0, 0.5), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(SelectOutlierChannels(CountStats({5, 5}, {7, 9}, 100), 0.0, 1.0), (std::vector<int64_t>{1}));
}

TEST(OutlierSplit, IsRegisteredAndNeedsCalibration) {
  bool found = false;
  for (const PassInfo& p : AllPasses()) found |= std::string(p.name) == "outlier-split";
  EXPECT_TRUE(found);
  OutlierSplitPass pass;
  EXPECT_TRUE(pass.NeedsCalibration());
  EXPECT_FALSE(pass.CanDeferQuantization());
  EXPECT_STREQ(pass.Name(), "outlier-split");
}

class OutlierSplitArchTest : public ::testing::TestWithParam<ArchStyleCase> {};

TEST_P(OutlierSplitArchTest, ArtifactRunsAndStaysClose) {
  SyntheticConfig config;
  config.arch = GetParam().arch;
  config.export_style = GetParam().style;
  config.hidden = 32;
  config.intermediate = 64;
  config.init_std = 0.1f;
  config.seed = 700 + static_cast<uint32_t>(config.arch);
  StatusOr<Model> original = BuildSyntheticDecoder(config);
  ASSERT_TRUE(original.ok()) << original.status().message();
  const size_t linear = FindLinearLayers(original->graph).size();
  Calibrator calibrator(TokenWindows(config.vocab, 2, 12, 4));
  Model model = *original;
  QuantOptions o;
  o.threshold = 0.4;  // the random-weight models' activations are O(1): some channels exceed 0.4
  PassRun run = RunOutlierSplit(model, o, &calibrator);
  ASSERT_TRUE(run.status.ok()) << run.status.message();
  ASSERT_EQ(run.layers.size(), linear);
  int64_t kept = 0;
  for (const LayerReport& r : run.layers) {
    EXPECT_EQ(r.scheme, "int8+outliers");
    EXPECT_EQ(r.bits, 8);
    EXPECT_GE(r.outliers_kept, 0);
    EXPECT_LE(r.outliers_kept, static_cast<int64_t>(kOutlierMaxChannelFraction * r.k));
    EXPECT_GE(r.output_rel_error, 0.0);
    EXPECT_LT(r.output_rel_error, 0.05);
    kept += r.outliers_kept;
  }
  EXPECT_GT(kept, 0) << "the threshold should leave some channels float";
  const std::map<std::string, int> ops = OpCounts(model);
  EXPECT_EQ(ops.at("MatMulInteger"), static_cast<int>(linear));
  // What is left float are the outlier rows: one MatMul over gathered channels per split layer.
  size_t split = 0;
  for (const LayerReport& r : run.layers) split += r.outliers_kept > 0;
  const std::vector<LinearLayer> left = FindLinearLayers(model.graph);
  EXPECT_EQ(left.size(), split);
  for (const LinearLayer& l : left) EXPECT_NE(l.weight.find("_outlier_rows"), std::string::npos) << l.weight;
  const NamedTensors feeds = TokenFeeds(config.vocab);
  const std::vector<Tensor> got = RunModel(model, feeds), want = RunModel(*original, feeds);
  ASSERT_FALSE(got.empty());
  const double diff = MaxRelDiff(got[0], want[0]);
  EXPECT_LT(diff, 0.05);
  EXPECT_GT(diff, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Architectures, OutlierSplitArchTest, ::testing::ValuesIn(ArchStyleCases()), ArchStyleCaseName);

TEST(OutlierSplit, HighThresholdIsPlainW8A8AndExcludeIsRespected) {
  SyntheticConfig config;
  config.arch = SyntheticArch::kGpt2;  // Gemm layers with biases
  config.init_std = 0.1f;
  StatusOr<Model> original = BuildSyntheticDecoder(config);
  ASSERT_TRUE(original.ok());
  const std::vector<LinearLayer> layers = FindLinearLayers(original->graph);
  Calibrator calibrator(TokenWindows(config.vocab, 2, 10, 5));
  Model model = *original;
  QuantOptions o;
  o.threshold = 1e6;
  o.exclude_regex = "^" + layers[0].node_name + "$";
  PassRun run = RunOutlierSplit(model, o, &calibrator);
  ASSERT_TRUE(run.status.ok()) << run.status.message();
  ASSERT_EQ(run.layers.size(), layers.size() - 1);
  for (const LayerReport& r : run.layers) EXPECT_EQ(r.outliers_kept, 0) << r.name;
  const std::map<std::string, int> ops = OpCounts(model);
  EXPECT_EQ(ops.count("Gather") ? ops.at("Gather") : 0, OpCounts(*original).count("Gather") ? OpCounts(*original).at("Gather") : 0)
      << "no outliers: no channel Gathers";
  EXPECT_EQ(ops.at("MatMulInteger"), static_cast<int>(layers.size() - 1));
  const std::vector<LinearLayer> left = FindLinearLayers(model.graph);
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].node_name, layers[0].node_name);
  const std::vector<Tensor> got = RunModel(model, TokenFeeds(config.vocab));
  ASSERT_FALSE(got.empty());
}

TEST(OutlierSplit, Negative_NoCalibratorAndBadThreshold) {
  StatusOr<Model> model = BuildSyntheticDecoder(SyntheticConfig{});
  ASSERT_TRUE(model.ok());
  PassRun run = RunOutlierSplit(*model, QuantOptions{}, nullptr);
  EXPECT_EQ(run.status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(run.status.message().find("--calib"), std::string::npos) << run.status.message();
  Calibrator calibrator(TokenWindows(97, 1, 8, 0));
  QuantOptions o;
  o.threshold = 0;
  EXPECT_EQ(RunOutlierSplit(*model, o, &calibrator).status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(OpCounts(*model).count("MatMulInteger"), 0u);
}

// ---------------------------------------------------------------------------------------------
// docs-llama-12m from ../shared: a small calibration set, a short evaluation; skips without it.

bool HaveShared() { return fs::exists(std::string(QC_SHARED_DIR) + "/models/docs-llama-12m/model.onnx"); }

std::vector<int32_t> TokenizeFile(const std::string& text_path, const std::string& tokenizer_path, size_t max_bytes) {
  std::ifstream in(text_path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  StatusOr<Tokenizer> tok = Tokenizer::FromFile(tokenizer_path);
  QC_CHECK(tok.ok());
  StatusOr<std::vector<int32_t>> ids = tok->Encode(ss.str().substr(0, max_bytes));
  QC_CHECK(ids.ok());
  return *ids;
}

TEST(OutlierSplitRealModel, DocsLlamaStaysNearFloat) {
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
  PassRun run = RunOutlierSplit(model, QuantOptions{}, &calibrator);
  ASSERT_TRUE(run.status.ok()) << run.status.message();
  EXPECT_EQ(run.layers.size(), 43u);
  EXPECT_EQ(OpCounts(model)["MatMulInteger"], 43);
  int64_t kept = 0;
  for (const LayerReport& r : run.layers) kept += r.outliers_kept;
  EXPECT_GT(kept, 0) << "the MLP down projections have channels beyond 6";
  const std::vector<int32_t> val = TokenizeFile(dir + "/docs-val.txt", dir + "/tokenizer.json", 40000);
  PerplexityOptions po;
  po.seqlen = 256;
  po.max_windows = 3;
  StatusOr<std::unique_ptr<Session>> float_session = Session::Create(*original);
  StatusOr<std::unique_ptr<Session>> int8_session = Session::Create(model);
  ASSERT_TRUE(float_session.ok() && int8_session.ok());
  StatusOr<PerplexityResult> before = EvaluatePerplexity(**float_session, val, po);
  StatusOr<PerplexityResult> after = EvaluatePerplexity(**int8_session, val, po);
  ASSERT_TRUE(before.ok() && after.ok());
  EXPECT_LT(after->ppl, before->ppl * 1.03) << "float " << before->ppl << ", int8 " << after->ppl;
  EXPECT_GT(after->ppl, before->ppl * 0.97);
}

}  // namespace
}  // namespace qc
