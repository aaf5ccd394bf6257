// Generated models with external data through the whole pipeline (no ../shared needed): the
// generator and the converter leave only their outputs, artifacts are bit-identical between
// runs, and ONNX Runtime runs an external-data artifact like ours does (docs/MEMORY.md).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>

#include "formats/npy.h"
#include "formats/onnx_reader.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

const std::string kQconvert = std::string(QC_BINARY_DIR) + "/qconvert";

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int Shell(const std::string& cmd) {
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
}

class ExternalDataConvertTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qc_external_convert_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& n) const { return (dir_ / n).string(); }
  int Qconvert(const std::string& args) {
    return Shell(kQconvert + " " + args + " > " + Path("out.txt") + " 2> " + Path("err.txt") + " < /dev/null");
  }
  std::set<std::string> Files() const {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.insert(e.path().filename().string());
    names.erase("out.txt");
    names.erase("err.txt");
    return names;
  }
  fs::path dir_;
};

// A Llama-shaped model (GQA, SwiGLU, 2 layers) small enough for the suite, written the way
// bench/memory.sh writes the 1.1B one.
constexpr const char* kGenerate =
    "generate --arch llama --vocab 1024 --hidden 256 --intermediate 704 --layers 2 --heads 8 --kv-heads 2 "
    "--max-positions 128 --seed 3 --external-data -o ";

TEST_F(ExternalDataConvertTest, ConvertsDeterministicallyAndRunsInOnnxRuntime) {
  ASSERT_EQ(Qconvert(std::string(kGenerate) + Path("in.onnx")), 0) << ReadAll(Path("err.txt"));
  EXPECT_EQ(Files(), (std::set<std::string>{"in.onnx", "in.onnx.data"}));  // no scratch file left
  StatusOr<Model> in = ReadOnnxModel(Path("in.onnx"));
  ASSERT_TRUE(in.ok()) << in.status().message();
  EXPECT_TRUE(in->graph.FindInitializer("model.layers.0.mlp.up_proj.weight")->mapped());

  std::vector<int64_t> ids(4 * 64);
  std::mt19937 rng(2);
  for (int64_t& id : ids) id = rng() % 1024;
  ASSERT_TRUE(WriteNpy(Tensor::FromVector<int64_t>(ids, {static_cast<int64_t>(ids.size())}), Path("ids.npy")).ok());

  for (const std::string pass : {"absmax", "gptq"}) {
    SCOPED_TRACE(pass);
    const std::string args = Path("in.onnx") + " --pass " + pass + " --bits 4 --external-data -o " + Path(pass + ".onnx") +
                             (pass == "gptq" ? " --calib " + Path("ids.npy") + " --nsamples 4 --seqlen 64" : "");
    ASSERT_EQ(Qconvert(args), 0) << ReadAll(Path("err.txt"));
    const std::string onnx = ReadAll(Path(pass + ".onnx")), data = ReadAll(Path(pass + ".onnx.data"));
    EXPECT_GT(data.size(), onnx.size());
    ASSERT_EQ(Qconvert(args), 0) << ReadAll(Path("err.txt"));
    EXPECT_TRUE(onnx == ReadAll(Path(pass + ".onnx"))) << "artifact differs between two identical runs";
    EXPECT_TRUE(data == ReadAll(Path(pass + ".onnx.data"))) << "external data differs between two identical runs";
  }
  // Inline when not asked for external data (and under 2 GB); nothing else left behind.
  ASSERT_EQ(Qconvert(Path("in.onnx") + " --pass absmax --bits 4 -o " + Path("inline.onnx")), 0) << ReadAll(Path("err.txt"));
  EXPECT_EQ(Files(), (std::set<std::string>{"in.onnx", "in.onnx.data", "ids.npy", "absmax.onnx", "absmax.onnx.data",
                                            "gptq.onnx", "gptq.onnx.data", "inline.onnx"}));

  // ONNX Runtime loads the external-data artifact and agrees with our runtime on 8 tokens.
  ASSERT_TRUE(WriteNpy(Tensor::FromVector<int64_t>({1, 5, 9, 200, 7, 3, 1000, 42}, {1, 8}), Path("tok.npy")).ok());
  ASSERT_EQ(Qconvert("run " + Path("absmax.onnx") + " --input-ids " + Path("tok.npy") + " -o " + Path("ours.npy")), 0)
      << ReadAll(Path("err.txt"));
  if (Shell("node --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "node is not installed";
  const char* env = std::getenv("QC_ORT_NODE_MODULES");
  const std::string modules = env ? env : "/tmp/ortnode/node_modules";
  fs::create_directories(Path("ort"));
  const int code = Shell("QC_ORT_NODE_MODULES='" + modules + "' node '" + std::string(QC_SOURCE_DIR) +
                         "/tools/ort_run.js' '" + Path("absmax.onnx") + "' '" + Path("ort") + "' input_ids='" +
                         Path("tok.npy") + "' 2> '" + Path("ort.err") + "'");
  if (code == 3) GTEST_SKIP() << "onnxruntime-node not found; set QC_ORT_NODE_MODULES to its node_modules directory";
  ASSERT_EQ(code, 0) << ReadAll(Path("ort.err"));
  StatusOr<Tensor> ort = ReadNpy(Path("ort/logits.npy")), ours = ReadNpy(Path("ours.npy"));
  ASSERT_TRUE(ort.ok() && ours.ok());
  ASSERT_EQ(ort->shape(), ours->shape());
  const std::vector<float> a = ort->ToFloats(), b = ours->ToFloats();
  double max_diff = 0;
  for (size_t i = 0; i < a.size(); ++i) max_diff = std::max(max_diff, static_cast<double>(std::fabs(a[i] - b[i])));
  EXPECT_LE(max_diff, 1e-3);
}

TEST_F(ExternalDataConvertTest, Negative_ExternalDataMissingLeavesNoOutput) {
  ASSERT_EQ(Qconvert(std::string(kGenerate) + Path("in.onnx")), 0) << ReadAll(Path("err.txt"));
  fs::rename(Path("in.onnx.data"), Path("moved.data"));
  EXPECT_EQ(Qconvert(Path("in.onnx") + " --pass absmax --bits 4 -o " + Path("q.onnx")), 1);
  EXPECT_NE(ReadAll(Path("err.txt")).find("in.onnx.data"), std::string::npos) << ReadAll(Path("err.txt"));
  EXPECT_EQ(Files(), (std::set<std::string>{"in.onnx", "moved.data"}));
}

}  // namespace
}  // namespace qc
