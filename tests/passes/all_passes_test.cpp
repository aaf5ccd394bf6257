// Every registered pass (and the composed pipelines) on every synthetic architecture and export
// style: the artifact serialises, re-reads, keeps the graph interface, runs in our executor with
// finite outputs close to the float model's, and the same inputs give the same bytes.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "calibrate/calibrator.h"
#include "formats/onnx_reader.h"
#include "formats/onnx_writer.h"
#include "formats/npy.h"
#include "formats/synthetic_models.h"
#include "passes/registry.h"
#include "runtime/executor.h"
#include "runtime/float_precision.h"
#include "tests/ort_batch.h"
#include "tests/temp_dir.h"

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

// Runs `pipeline` the way converter/pipeline.cpp does; returns the serialised artifact (and the
// layer reports in `reports` when given).
StatusOr<std::string> Convert(const Model& original, const std::string& pipeline, const Calibrator& calibrator,
                              std::vector<LayerReport>* reports = nullptr) {
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
  if (reports) *reports = layers;
  return SerializeOnnxModel(model);
}

std::vector<float> Logits(const Model& model, const Tensor& window) {
  auto session = Session::Create(model);
  QC_CHECK(session.ok());
  auto out = (*session)->Run({{"input_ids", window}});
  QC_CHECK(out.ok());
  return (*out)[0].ToFloats();
}

double RelativeRms(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0, ref = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    err += (got[i] - want[i]) * double(got[i] - want[i]);
    ref += want[i] * double(want[i]);
  }
  return std::sqrt(err / ref);
}

// The small decoder both tests convert: 2 layers of width 32, weights N(0, 0.1).
SyntheticConfig SmallConfig(SyntheticArch arch, ExportStyle style, uint32_t seed) {
  SyntheticConfig config;
  config.arch = arch;
  config.export_style = style;
  config.hidden = 32;
  config.intermediate = 64;
  config.init_std = 0.1f;
  config.seed = seed + static_cast<uint32_t>(arch);
  return config;
}

class AllPassesTest : public ::testing::TestWithParam<std::string> {};

TEST_P(AllPassesTest, EveryArchitectureAndExportStyle) {
  const std::string pipeline = GetParam();
  for (SyntheticArch arch : AllSyntheticArchs()) {
    for (ExportStyle style : {ExportStyle::kDynamo, ExportStyle::kTorchScript, ExportStyle::kOrtFused}) {
      SCOPED_TRACE(std::string(SyntheticArchName(arch)) + "/" + ExportStyleName(style));
      const SyntheticConfig config = SmallConfig(arch, style, 500);
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
      for (float v : got) ASSERT_TRUE(std::isfinite(v));
      // 4-bit groups of 16 on N(0, 0.1) weights move the logits by a few percent; a broken
      // rewrite (wrong layout, lost bias, unscaled channels) moves them by tens of percent.
      EXPECT_LT(RelativeRms(got, want), 0.25);
    }
  }
}

// Float16 and bfloat16 models (model.half() then torch.onnx.export): every pass quantizes every
// linear layer; MatMulNBits' scales take the model's type (its T), a W8A8 subgraph computes in
// float32 between Casts; the interface keeps its 16-bit dtypes; the logits stay close to the
// 16-bit model's in our executor, and ONNX Runtime runs the float16 artifacts to the same logits.
TEST_P(AllPassesTest, HalfPrecisionModels) {
  const std::string pipeline = GetParam();
  const TempDir dir("half_passes");
  std::vector<Model> artifacts;
  std::vector<std::string> names;
  std::vector<Tensor> windows;
  for (SyntheticArch arch : {SyntheticArch::kLlama, SyntheticArch::kGpt2}) {
    for (DType type : {DType::kFloat16, DType::kBFloat16}) {
      const std::string name = std::string(SyntheticArchName(arch)) + "_" + DTypeName(type);
      SCOPED_TRACE(name);
      const SyntheticConfig config = SmallConfig(arch, ExportStyle::kDynamo, 700);
      StatusOr<Model> original = BuildSyntheticDecoder(config);
      ASSERT_TRUE(original.ok()) << original.status().message();
      ASSERT_TRUE(ConvertFloatPrecision(original->graph, DType::kFloat32, type, FloatInterface::kConvert).ok());
      Calibrator calibrator(CalibrationWindows(config.vocab));

      std::vector<LayerReport> reports;
      StatusOr<std::string> bytes = Convert(*original, pipeline, calibrator, &reports);
      ASSERT_TRUE(bytes.ok()) << bytes.status().message();
      std::map<std::string, const LayerReport*> last;  // a composed pipeline reports a layer per pass
      for (const LayerReport& r : reports) last[r.name] = &r;
      for (const auto& [layer, r] : last)
        EXPECT_NE(r->scheme, "float") << layer << " left in float: " << (r->notes.empty() ? "" : r->notes[0]);
      StatusOr<Model> artifact = ParseOnnxModel(*bytes, "");
      ASSERT_TRUE(artifact.ok()) << artifact.status().message();
      ASSERT_EQ(artifact->graph.outputs.size(), original->graph.outputs.size());
      EXPECT_EQ(artifact->graph.outputs[0].dtype, type);
      int quantized = 0;
      for (const Node& node : artifact->graph.nodes) {
        if (node.op_type == "MatMulNBits") {
          ++quantized;
          const Tensor* scales = artifact->graph.FindInitializer(node.inputs[2]);
          ASSERT_NE(scales, nullptr);
          EXPECT_EQ(scales->dtype(), type) << node.name;
        }
        quantized += node.op_type == "MatMulInteger";
        if (node.op_type == "MatMul" || node.op_type == "Gemm")  // attention products read no initializer
          EXPECT_EQ(artifact->graph.FindInitializer(node.inputs[1]), nullptr) << "a float weight is left: " << node.name;
      }
      EXPECT_GT(quantized, 0);

      const Tensor& window = calibrator.windows()[0];
      const std::vector<float> want = Logits(*original, window), got = Logits(*artifact, window);
      ASSERT_EQ(got.size(), want.size());
      for (float v : got) ASSERT_TRUE(std::isfinite(v));
      EXPECT_LT(RelativeRms(got, want), 0.25);
      if (type == DType::kFloat16) {  // ONNX Runtime's CPU provider has few bfloat16 kernels
        artifacts.push_back(*artifact);
        names.push_back(name);
        windows.push_back(window);
      }
    }
  }
  std::vector<OrtJob> jobs;
  for (size_t i = 0; i < artifacts.size(); ++i) jobs.push_back({names[i], &artifacts[i], {{"input_ids", windows[i]}}});
  StatusOr<OrtBatch> ran = RunOrtBatch(dir.string(), jobs);
  ASSERT_TRUE(ran.ok()) << ran.status().message();
  if (*ran == OrtBatch::kUnavailable) GTEST_SKIP() << "onnxruntime-node not found; set QC_ORT_NODE_MODULES";
  for (size_t i = 0; i < artifacts.size(); ++i) {
    SCOPED_TRACE(names[i]);
    const std::string error = OrtJobError(dir.string(), names[i]);
    ASSERT_TRUE(error.empty()) << "ONNX Runtime rejected the artifact: " << error;
    StatusOr<Tensor> ort = ReadNpy(OrtOutputDir(dir.string(), names[i]) + "/" + artifacts[i].graph.outputs[0].name + ".npy");
    ASSERT_TRUE(ort.ok()) << ort.status().message();
    // ONNX Runtime computes float16 ops in float16 where we widen to float32: ~1e-3 apart.
    EXPECT_LT(RelativeRms(Logits(artifacts[i], windows[i]), ort->ToFloats()), 0.02);
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
