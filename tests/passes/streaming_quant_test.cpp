// Layer-streaming quantization (docs/MEMORY.md): a layer's mapped float weight is released once
// its packed form exists, packed weights go to the graph's spill store, and calibrated
// round-to-nearest visits one group at a time with the same numbers as one float pass.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <random>

#include "calibrate/calibrator.h"
#include "formats/model_builder.h"
#include "formats/onnx_reader.h"
#include "formats/onnx_writer.h"
#include "formats/spill_store.h"
#include "formats/synthetic_models.h"
#include "passes/weight_quant.h"
#include "tests/resident_memory.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

class StreamingQuantTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qc_streaming_quant_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(StreamingQuantTest, MappedFloatWeightIsReleasedOncePackedAndThePackedFormIsSpilled) {
  // y = (x W1) W2 with 4 MiB weights, stored as external data and read back mapped.
  GraphBuilder b;
  std::mt19937 rng(4);
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{-1, "rows"}, Dim{1024, ""}});
  b.AddInitializer("w1", RandomNormalTensor({1024, 1024}, 0.0f, 0.02f, rng));
  b.AddInitializer("w2", RandomNormalTensor({1024, 1024}, 0.0f, 0.02f, rng));
  b.AddNodeWithOutputs("MatMul", {b.Op("MatMul", {x, "w1"}), "w2"}, {"y"});
  b.AddOutput("y", DType::kFloat32, {Dim{-1, "rows"}, Dim{1024, ""}});
  StatusOr<Model> built = b.Build({{"", 18}});
  ASSERT_TRUE(built.ok());
  OnnxWriteOptions wo;
  wo.external_data = true;
  const std::string path = (dir_ / "m.onnx").string();
  ASSERT_TRUE(WriteOnnxModel(*built, path, wo).ok());
  StatusOr<Model> model = ReadOnnxModel(path);
  ASSERT_TRUE(model.ok());
  StatusOr<std::shared_ptr<SpillStore>> store = SpillStore::Create(dir_.string());
  ASSERT_TRUE(store.ok());
  model->graph.set_spill_store(*store);
  // w2 stays (excluded) and keeps the .data mapping alive, so its residency can be read.
  const Tensor w2 = *model->graph.FindInitializer("w2");
  ASSERT_TRUE(w2.mapped());
  EXPECT_LE(ResidentBytesOfMapping(w2.raw()), 8192);

  std::vector<LayerReport> reports;
  ASSERT_TRUE(RunRoundToNearest(*model, "absmax", WeightQuantSpec{}, "MatMul_1", &reports).ok());
  ASSERT_EQ(reports.size(), 1u);
  // w1 was read in full to quantize it, and its pages were dropped as soon as it was packed.
  EXPECT_LE(ResidentBytesOfMapping(w2.raw()), 16384);
  EXPECT_EQ(model->graph.FindInitializer("w1"), nullptr);
  const Tensor* packed = model->graph.FindInitializer("w1_Q4");
  ASSERT_NE(packed, nullptr);
  EXPECT_TRUE(packed->mapped()) << "the 512 KiB packed weight belongs in the spill store";
  EXPECT_TRUE((*store)->status().ok());
  EXPECT_TRUE(fs::exists(dir_ / "m.onnx.data"));
}

TEST(StreamingQuant, RelativeErrorWithoutTheDequantizedCopyIsBitIdentical) {
  std::mt19937 rng(8);
  const int64_t k = 96, n = 40;
  const std::vector<float> w = RandomNormalTensor({k, n}, 0.0f, 0.05f, rng).ToFloats();
  for (int64_t group : {int64_t{32}, int64_t{-1}}) {
    WeightQuantSpec spec;
    spec.group_size = group;
    spec.sym = group == -1;
    StatusOr<QuantizedWeight> qw = QuantizeRtn(w, k, n, spec);
    ASSERT_TRUE(qw.ok());
    EXPECT_EQ(RelativeError(w, *qw), RelativeError(w, qw->Dequantize()));
  }
}

std::vector<Tensor> Windows(int count, int64_t seqlen, int64_t vocab) {
  std::mt19937 rng(6);
  std::vector<Tensor> windows;
  for (int w = 0; w < count; ++w) {
    Tensor t(DType::kInt64, {1, seqlen});
    for (int64_t i = 0; i < seqlen; ++i) t.mutable_data<int64_t>()[i] = static_cast<int64_t>(rng() % vocab);
    windows.push_back(t);
  }
  return windows;
}

TEST(StreamingQuant, CalibratedRoundToNearestReportsWhatOneFloatPassGives) {
  SyntheticConfig c;
  c.arch = SyntheticArch::kLlama;
  c.hidden = 32;
  c.intermediate = 64;
  c.layers = 2;
  c.kv_heads = 2;
  c.init_std = 0.1f;
  StatusOr<Model> original = BuildSyntheticDecoder(c);
  ASSERT_TRUE(original.ok());
  Calibrator calibrator(Windows(3, 16, c.vocab));
  WeightQuantSpec spec;
  spec.group_size = 16;
  Model model = *original;
  std::vector<LayerReport> reports;
  ASSERT_TRUE(RunRoundToNearest(model, "absmax", spec, "", &reports, &calibrator).ok());

  // The same numbers from every group's float statistics at once.
  const std::vector<LinearLayer> layers = FindLinearLayers(original->graph);
  StatsRequest request;
  request.hessian = true;
  StatusOr<std::vector<InputStats>> stats = calibrator.CollectStats(*original, layers, request);
  ASSERT_TRUE(stats.ok());
  std::map<std::string, const InputStats*> by_input;
  for (const InputStats& s : *stats) by_input[s.input] = &s;
  ASSERT_EQ(reports.size(), layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    SCOPED_TRACE(layers[i].node_name);
    EXPECT_EQ(reports[i].name, layers[i].node_name);  // layer order, not visit order
    StatusOr<std::vector<float>> w = ReadLinearWeight(original->graph, layers[i]);
    ASSERT_TRUE(w.ok());
    StatusOr<QuantizedWeight> qw = QuantizeRtn(*w, layers[i].k, layers[i].n, spec);
    ASSERT_TRUE(qw.ok());
    const OutputError e =
        OutputErrorFromHessian(by_input.at(layers[i].input)->hessian, layers[i].k, *w, qw->Dequantize(), layers[i].n);
    EXPECT_EQ(reports[i].output_rel_error, e.rel_error);
    EXPECT_EQ(reports[i].sqnr_db, e.sqnr_db);
  }
}

}  // namespace
}  // namespace qc
