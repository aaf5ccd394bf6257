// The executor and mapped weights: a run releases each mapped weight after its last reader, and
// constant folding never turns a mapped weight into a resident copy (docs/MEMORY.md).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <random>

#include "formats/model_builder.h"
#include "formats/onnx_reader.h"
#include "formats/onnx_writer.h"
#include "runtime/executor.h"
#include "tests/resident_memory.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

class ExecutorMemoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qc_executor_memory_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // y = x @ W1 @ W2 with 2 MiB weights, or x @ Transpose(W1) (the TorchScript pattern), written
  // with external data and read back mapped (or copied).
  Model Mapped(bool transposed, bool map = true) {
    GraphBuilder b;
    std::mt19937 rng(7);
    const std::string x = b.AddInput("x", DType::kFloat32, {Dim{-1, "rows"}, Dim{transposed ? 1024 : 512, ""}});
    const std::string w1 = b.AddInitializer("w1", RandomNormalTensor({512, 1024}, 0.0f, 0.05f, rng));
    std::string h;
    if (transposed) {
      h = b.Op("MatMul", {x, b.Op("Transpose", {w1}, {{"perm", AttrInts({1, 0})}})});
    } else {
      const std::string w2 = b.AddInitializer("w2", RandomNormalTensor({1024, 512}, 0.0f, 0.05f, rng));
      h = b.Op("MatMul", {b.Op("MatMul", {x, w1}), w2});
    }
    b.AddNodeWithOutputs("Identity", {h}, {"y"});
    b.AddOutput("y", DType::kFloat32, {Dim{-1, "rows"}, Dim{-1, ""}});
    StatusOr<Model> m = b.Build({{"", 18}});
    QC_CHECK(m.ok());
    const std::string path = (dir_ / (transposed ? "t.onnx" : "m.onnx")).string();
    OnnxWriteOptions wo;
    wo.external_data = true;
    QC_CHECK(WriteOnnxModel(*m, path, wo).ok());
    OnnxReadOptions ro;
    ro.map_external_data = map;
    StatusOr<Model> back = ReadOnnxModel(path, ro);
    QC_CHECK(back.ok());
    return *std::move(back);
  }
  fs::path dir_;
};

Tensor Ones(int64_t rows, int64_t cols) {
  Tensor t(DType::kFloat32, {rows, cols});
  for (int64_t i = 0; i < t.numel(); ++i) t.mutable_data<float>()[i] = 1.0f;
  return t;
}

TEST_F(ExecutorMemoryTest, RunReleasesMappedWeightsAfterTheirLastReader) {
  const Model model = Mapped(/*transposed=*/false);
  const Tensor& w1 = *model.graph.FindInitializer("w1");
  ASSERT_TRUE(w1.mapped());
  StatusOr<std::unique_ptr<Session>> session = Session::Create(model);
  ASSERT_TRUE(session.ok()) << session.status().message();
  // Observe the mapping while the second MatMul runs: w1 is already released, w2 is in use.
  int64_t during = -1;
  NodeObserver observer = [&](const Node& node, const std::vector<const Tensor*>& inputs,
                              const std::vector<Tensor>&) -> Status {
    if (node.op_type == "MatMul" && node.inputs[1] == "w2") during = ResidentBytesOfMapping(w1.raw());
    return Status::Ok();
  };
  StatusOr<std::vector<Tensor>> out = (*session)->Run({{"x", Ones(4, 512)}}, {}, &observer);
  ASSERT_TRUE(out.ok()) << out.status().message();
  // Both weights share one mapping of the .data file: during the second MatMul at most w2 (and
  // boundary pages) is resident, after the run nothing.
  EXPECT_GE(during, 0);
  EXPECT_LE(during, 2 * 1024 * 1024 + 16384);
  EXPECT_LE(ResidentBytesOfMapping(w1.raw()), 16384);
  // A second run reads the weights again from the page cache: same result.
  StatusOr<std::vector<Tensor>> again = (*session)->Run({{"x", Ones(4, 512)}});
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE((*again)[0].BitEqual((*out)[0]));
}

TEST_F(ExecutorMemoryTest, TransposeOfAMappedWeightIsNotFoldedIntoACopy) {
  const Model mapped = Mapped(/*transposed=*/true);
  const Model copied = Mapped(/*transposed=*/true, /*map=*/false);
  ASSERT_TRUE(mapped.graph.FindInitializer("w1")->mapped());
  ASSERT_FALSE(copied.graph.FindInitializer("w1")->mapped());
  StatusOr<std::unique_ptr<Session>> a = Session::Create(mapped), b = Session::Create(copied);
  ASSERT_TRUE(a.ok() && b.ok());
  // Transpose, MatMul, Identity: the Transpose of the in-memory weight is folded, of the mapped
  // one it runs per call.
  EXPECT_EQ((*a)->num_steps(), 3);
  EXPECT_EQ((*b)->num_steps(), 2);
  StatusOr<std::vector<Tensor>> ya = (*a)->Run({{"x", Ones(2, 1024)}}), yb = (*b)->Run({{"x", Ones(2, 1024)}});
  ASSERT_TRUE(ya.ok() && yb.ok());
  EXPECT_TRUE((*ya)[0].BitEqual((*yb)[0]));
}

}  // namespace
}  // namespace qc
