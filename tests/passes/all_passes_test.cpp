// Every registered pass (and the composed pipelines) on every synthetic architecture and export
// style: the artifact serialises, re-reads, keeps the graph interface, runs in our executor with
// finite outputs close to the float model's, and the same inputs give the same bytes.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "calibrate/calibrator.h"
#include "formats/onnx_reader.h"
#include "formats/onnx_writer.h"
#include "formats/synthetic_models.h"
#include "passes/registry.h"
#include "runtime/executor.h"

namespace qc {
namespace {

// Single passes from the registry, plus the compositions the issue names (when registered).
std::vector<std::string> Pipelines() {
  std::vector<std::string> pipelines;
  for (const PassInfo& info : AllPasses()) pipelines.push_back(info.name);
  for (const char* composed : {"awq,gptq", "smoothquant,gptq"})
    if (CreatePipeline(composed).ok()) pipelines.push_back(composed);
  return pipelines;
}

std::vector<Tensor> CalibrationWindows(int64_t vocab) {
  std::mt19937 rng(11);
  std::vector<Tensor> windows;
  for (int w = 0; w < 4; ++w) {
    Tensor t(DType::kInt64, {1, 12});
    for (int64_t i = 0; i < 12; ++i) t.mutable_data<int64_t>()[i] = rng() % vocab;
    windows.push_back(t);
  }
  return windows;
}

// Runs `pipeline` the way converter/pipeline.cpp does; returns the serialised artifact.
StatusOr<std::string> Convert(const Model& original, const std::string& pipeline, const Calibrator& calibrator) {
  Model model = original;
  QuantOptions options;
  options.bits = 4;
  options.group_size = 16;
  QC_ASSIGN_OR_RETURN(auto passes, CreatePipeline(pipeline));
  std::vector<LayerReport> layers;
  for (size_t i = 0; i < passes.size(); ++i) {
    PassContext context{options};
    context.calibrator = const_cast<Calibrator*>(&calibrator);
    context.layers = &layers;
    context.quantize_weights = !(passes[i]->CanDeferQuantization() && i + 1 < passes.size());
    QC_RETURN_IF_ERROR(passes[i]->Run(model, context));
  }
  if (layers.empty()) return Internal("no layer report");
  return SerializeOnnxModel(model);
}

std::vector<float> Logits(const Model& model, const Tensor& window) {
  auto session = Session::Create(model);
  QC_CHECK(session.ok());
  auto out = (*session)->Run({{"input_ids", window}});
  QC_CHECK(out.ok());
  return (*out)[0].ToFloats();
}

class AllPassesTest : public ::testing::TestWithParam<std::string> {};

TEST_P(AllPassesTest, EveryArchitectureAndExportStyle) {
  const std::string pipeline = GetParam();
  for (SyntheticArch arch : AllSyntheticArchs()) {
    for (ExportStyle style : {ExportStyle::kDynamo, ExportStyle::kTorchScript, ExportStyle::kOrtFused}) {
      SCOPED_TRACE(std::string(SyntheticArchName(arch)) + "/" + ExportStyleName(style));
      SyntheticConfig config;
      config.arch = arch;
      config.export_style = style;
      config.hidden = 32;
      config.intermediate = 64;
      config.init_std = 0.1f;
      config.seed = 500 + static_cast<uint32_t>(arch);
      StatusOr<Model> original = BuildSyntheticDecoder(config);
      ASSERT_TRUE(original.ok()) << original.status().message();
      Calibrator calibrator(CalibrationWindows(config.vocab));

      StatusOr<std::string> bytes = Convert(*original, pipeline, calibrator);
      ASSERT_TRUE(bytes.ok()) << bytes.status().message();
      StatusOr<std::string> again = Convert(*original, pipeline, calibrator);
      ASSERT_TRUE(again.ok());
      EXPECT_TRUE(*bytes == *again) << "not deterministic";
      StatusOr<Model> artifact = ParseOnnxModel(*bytes, "");
      ASSERT_TRUE(artifact.ok()) << artifact.status().message();

      ASSERT_EQ(artifact->graph.inputs.size(), original->graph.inputs.size());
      for (size_t i = 0; i < original->graph.inputs.size(); ++i)
        EXPECT_EQ(artifact->graph.inputs[i].name, original->graph.inputs[i].name);
      ASSERT_EQ(artifact->graph.outputs.size(), original->graph.outputs.size());
      EXPECT_EQ(artifact->graph.outputs[0].name, original->graph.outputs[0].name);

      const Tensor& window = calibrator.windows()[0];
      const std::vector<float> want = Logits(*original, window), got = Logits(*artifact, window);
      ASSERT_EQ(got.size(), want.size());
      double err = 0, ref = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_TRUE(std::isfinite(got[i]));
        err += (got[i] - want[i]) * double(got[i] - want[i]);
        ref += want[i] * double(want[i]);
      }
      // 4-bit groups of 16 on N(0, 0.1) weights move the logits by a few percent; a broken
      // rewrite (wrong layout, lost bias, unscaled channels) moves them by tens of percent.
      EXPECT_LT(std::sqrt(err / ref), 0.25);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Registry, AllPassesTest, ::testing::ValuesIn(Pipelines()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name;
                           for (char c : info.param) name += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return name;
                         });

}  // namespace
}  // namespace qc
