// ONNX reader/writer: round trips on real exports and built graphs, external data, bad files.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "formats/onnx_reader.h"
#include "formats/onnx_writer.h"

namespace qc {
namespace {

namespace fs = std::filesystem;
const std::string kShared = QC_SHARED_DIR;

class OnnxIoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qc_onnx_io_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& n) const { return (dir_ / n).string(); }
  fs::path dir_;
};

void ExpectSameGraph(const Graph& a, const Graph& b) {
  ASSERT_EQ(a.nodes.size(), b.nodes.size());
  for (size_t i = 0; i < a.nodes.size(); ++i) {
    EXPECT_EQ(a.nodes[i].op_type, b.nodes[i].op_type);
    EXPECT_EQ(a.nodes[i].inputs, b.nodes[i].inputs);
    EXPECT_EQ(a.nodes[i].outputs, b.nodes[i].outputs);
    EXPECT_EQ(a.nodes[i].attributes.size(), b.nodes[i].attributes.size());
  }
  ASSERT_EQ(a.initializer_names(), b.initializer_names());
  for (const auto& name : a.initializer_names()) EXPECT_TRUE(a.FindInitializer(name)->BitEqual(*b.FindInitializer(name))) << name;
  ASSERT_EQ(a.inputs.size(), b.inputs.size());
  ASSERT_EQ(a.outputs.size(), b.outputs.size());
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    EXPECT_EQ(a.inputs[i].name, b.inputs[i].name);
    EXPECT_EQ(a.inputs[i].dtype, b.inputs[i].dtype);
    EXPECT_EQ(a.inputs[i].shape, b.inputs[i].shape);
  }
  EXPECT_EQ(a.value_infos.size(), b.value_infos.size());
}

TEST_F(OnnxIoTest, RoundTripRealExportIsLossless) {
  const std::string path = kShared + "/models/docs-llama-12m/model.onnx";
  if (!fs::exists(path)) GTEST_SKIP() << "../shared is absent";
  auto m = ReadOnnxModel(path);
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_EQ(m->DefaultOpset(), 18);
  EXPECT_EQ(m->graph.nodes.size(), 430u);
  ASSERT_TRUE(WriteOnnxModel(*m, Path("rt.onnx")).ok());
  auto m2 = ReadOnnxModel(Path("rt.onnx"));
  ASSERT_TRUE(m2.ok()) << m2.status().message();
  ExpectSameGraph(m->graph, m2->graph);
  // Writing is deterministic: the same model serialises to identical bytes.
  auto a = SerializeOnnxModel(*m), b = SerializeOnnxModel(*m2);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
}

TEST_F(OnnxIoTest, ExternalDataReadAndWrite) {
  const std::string path = kShared + "/models/stories260k/stories260k.onnx";
  if (!fs::exists(path)) GTEST_SKIP() << "../shared is absent";
  auto m = ReadOnnxModel(path);
  ASSERT_TRUE(m.ok()) << m.status().message();
  OnnxWriteOptions opts;
  opts.external_data = true;
  ASSERT_TRUE(WriteOnnxModel(*m, Path("ext.onnx"), opts).ok());
  EXPECT_TRUE(fs::exists(Path("ext.onnx.data")));
  EXPECT_LT(fs::file_size(Path("ext.onnx")), fs::file_size(Path("ext.onnx.data")));
  auto m2 = ReadOnnxModel(Path("ext.onnx"));
  ASSERT_TRUE(m2.ok()) << m2.status().message();
  ExpectSameGraph(m->graph, m2->graph);
  // Without external data the same weights land inline.
  ASSERT_TRUE(WriteOnnxModel(*m2, Path("inline.onnx")).ok());
  auto m3 = ReadOnnxModel(Path("inline.onnx"));
  ASSERT_TRUE(m3.ok());
  ExpectSameGraph(m->graph, m3->graph);
}

Model TinyModel() {
  Model m;
  m.opset_imports.push_back({"", 18});
  m.graph.name = "tiny";
  m.graph.inputs.push_back({"x", DType::kFloat32, true, {{-1, "batch"}, {4, ""}}, ""});
  m.graph.outputs.push_back({"y", DType::kFloat32, false, {}, ""});
  m.graph.SetInitializer("w", Tensor::FromVector<float>({1, 2, 3, 4, 5, 6, 7, 8}, {4, 2}));
  Node n;
  n.name = "mm";
  n.op_type = "MatMul";
  n.inputs = {"x", "w"};
  n.outputs = {"y"};
  Attribute a;
  a.type = Attribute::Type::kInts;
  a.ints = {1, 2};
  n.attributes["some_ints"] = a;
  m.graph.nodes.push_back(n);
  return m;
}

TEST_F(OnnxIoTest, RoundTripBuiltGraph) {
  Model m = TinyModel();
  ASSERT_TRUE(WriteOnnxModel(m, Path("tiny.onnx")).ok());
  auto m2 = ReadOnnxModel(Path("tiny.onnx"));
  ASSERT_TRUE(m2.ok()) << m2.status().message();
  ExpectSameGraph(m.graph, m2->graph);
  EXPECT_EQ(m2->graph.nodes[0].GetInts("some_ints"), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(m2->graph.inputs[0].shape[0].param, "batch");
}

TEST_F(OnnxIoTest, Negative_TruncatedFile) {
  Model m = TinyModel();
  auto bytes = SerializeOnnxModel(m);
  ASSERT_TRUE(bytes.ok());
  for (size_t cut : {size_t{1}, bytes->size() / 3, bytes->size() - 1}) {
    auto r = ParseOnnxModel(bytes->substr(0, cut), ".");
    EXPECT_FALSE(r.ok()) << cut;
  }
}

TEST_F(OnnxIoTest, Negative_MissingFile) {
  auto r = ReadOnnxModel(Path("missing.onnx"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("missing.onnx"), std::string::npos);
}

TEST_F(OnnxIoTest, Negative_ExternalDataEscapingModelDir) {
  Model m = TinyModel();
  OnnxWriteOptions opts;
  opts.external_data = true;
  opts.external_min_bytes = 0;
  ASSERT_TRUE(WriteOnnxModel(m, Path("e.onnx"), opts).ok());
  std::string bytes;
  {
    std::ifstream in(Path("e.onnx"), std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  // Rewrite the location to point outside the model directory (same length keeps protobuf valid).
  const std::string loc = "e.onnx.data";
  size_t at = bytes.find(loc);
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, loc.size(), "../x.onnxda");
  auto r = ParseOnnxModel(bytes, dir_.string());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("escapes"), std::string::npos) << r.status().message();
}

}  // namespace
}  // namespace qc
