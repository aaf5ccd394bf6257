// One test per fuzzing finding (docs/FUZZING.md): each input of tests/data/fuzz/ goes through the
// normal parser in the normal build and must give a clean error Status (or load correctly).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "formats/npy.h"
#include "formats/onnx_reader.h"
#include "formats/report.h"
#include "formats/tokenizer.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

std::string DataPath(const std::string& name) { return std::string(QC_SOURCE_DIR) + "/tests/data/fuzz/" + name; }

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// A fresh directory beside which ONNX regression inputs are placed (their external data resolves
/// relative to it); removed at the end of the test.
class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = (fs::temp_directory_path() / "qc_fuzz_regression.XXXXXX").string();
    EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
    path_ = tmpl;
    fs::create_directory(path_ / "sub");
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  /// Copies tests/data/fuzz/`name` into the directory and returns its path there.
  std::string Place(const std::string& name) const {
    const fs::path to = path_ / fs::path(name).filename();
    fs::copy_file(DataPath(name), to, fs::copy_options::overwrite_existing);
    return to.string();
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// --- ONNX reader -------------------------------------------------------------------------------

// 26 bytes declaring a [2^20, 2^19] float32 tensor with no data: the reader allocated the 2 TB
// tensor before checking its data, and bad_alloc escaped the library.
TEST(FuzzRegressionTest, Onnx_HugeDeclaredTensorWithoutData) {
  ScratchDir dir;
  auto model = ReadOnnxModel(dir.Place("onnx_reader/huge_declared_tensor_no_data.onnx"));
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(model.status().message().find("tensor 'w'"), std::string::npos) << model.status().message();
}

// Bool raw_data bytes 2 and 255: reading them as bool is undefined behaviour (UBSan); the reader
// now stores them as 1, as numpy and ONNX Runtime read them.
TEST(FuzzRegressionTest, Onnx_BoolBytesNormalised) {
  ScratchDir dir;
  auto model = ReadOnnxModel(dir.Place("onnx_reader/bool_raw_data_not_0_or_1.onnx"));
  ASSERT_TRUE(model.ok()) << model.status().message();
  const Tensor* mask = model->graph.FindInitializer("mask");
  ASSERT_NE(mask, nullptr);
  EXPECT_EQ(mask->ToInt64s(), (std::vector<int64_t>{0, 1, 1, 1}));
}

// A model names its external-data files; it must not reach outside its own directory.
TEST(FuzzRegressionTest, Onnx_ExternalDataAbsolutePathRefused) {
  ScratchDir dir;
  auto model = ReadOnnxModel(dir.Place("onnx_reader/external_data_absolute_path.onnx"));
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("must be relative"), std::string::npos) << model.status().message();
}

TEST(FuzzRegressionTest, Onnx_ExternalDataDotDotRefused) {
  ScratchDir dir;
  // The escaping path names a file that does exist, so only the check can stop it.
  std::ofstream(dir.path().parent_path() / "model.onnx.data") << std::string(64, 'x');
  auto model = ReadOnnxModel(dir.Place("onnx_reader/external_data_dotdot.onnx"));
  fs::remove(dir.path().parent_path() / "model.onnx.data");
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("escapes the model directory"), std::string::npos) << model.status().message();
}

TEST(FuzzRegressionTest, Onnx_ExternalDataMissingFile) {
  ScratchDir dir;
  for (bool map : {true, false}) {
    OnnxReadOptions options;
    options.map_external_data = map;
    auto model = ReadOnnxModel(dir.Place("onnx_reader/external_data_missing_file.onnx"), options);
    ASSERT_FALSE(model.ok());
    EXPECT_EQ(model.status().code(), StatusCode::kNotFound) << model.status().message();
  }
}

// External data that is a FIFO: open() blocked forever waiting for a writer (a hang).
TEST(FuzzRegressionTest, Onnx_ExternalDataFifoDoesNotHang) {
  ScratchDir dir;
  const std::string model_path = dir.Place("onnx_reader/external_data_missing_file.onnx");
  ASSERT_EQ(::mkfifo((dir.path() / "missing.bin").c_str(), 0600), 0);
  auto model = ReadOnnxModel(model_path);
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("not a regular file"), std::string::npos) << model.status().message();
}

// --- .npy ----------------------------------------------------------------------------------------

// The fuzzer's input: a |b1 array of shape (3,) whose header length is 3 bytes short, so its data
// are the header's padding spaces (byte 32); bool bytes other than 0/1 were kept and read as bool
// (undefined behaviour).
TEST(FuzzRegressionTest, Npy_BoolBytesNormalised) {
  auto t = ReadNpy(DataPath("npy/bool_byte_not_0_or_1.npy"));
  ASSERT_TRUE(t.ok()) << t.status().message();
  ASSERT_EQ(t->dtype(), DType::kBool);
  for (int64_t v : t->ToInt64s()) EXPECT_TRUE(v == 0 || v == 1) << v;

  std::string header = std::string("\x93NUMPY\x01\x00", 8);
  std::string dict = "{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }";
  dict.resize(117, ' ');
  dict += '\n';
  header += static_cast<char>(dict.size());
  header += '\0';
  auto u = ParseNpy(header + dict + std::string("\x00\x02\xff", 3));
  ASSERT_TRUE(u.ok()) << u.status().message();
  EXPECT_EQ(u->ToInt64s(), (std::vector<int64_t>{0, 1, 1}));
}

// --- tokenizer.json --------------------------------------------------------------------------------

// One vocab entry with id 2^31-1: the id tables were sized by the largest id (2^31 strings), and
// max_id + 1 overflowed int32.
TEST(FuzzRegressionTest, Tokenizer_VocabIdFarBeyondVocabSize) {
  auto tok = Tokenizer::FromFile(DataPath("tokenizer/vocab_id_int32_max.json"));
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(tok.status().message().find("far beyond"), std::string::npos) << tok.status().message();
}

// 40 Replace steps "a" -> "aa": the text (here an added token, normalised at load) doubled 40
// times: 2^40 bytes, a hang then out of memory.
TEST(FuzzRegressionTest, Tokenizer_NormalizerExponentialGrowth) {
  auto tok = Tokenizer::FromFile(DataPath("tokenizer/normalizer_doubles_text_40_times.json"));
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.status().message().find("grows the text"), std::string::npos) << tok.status().message();
}

// 40 ByteLevel pre-tokenizers: each maps every byte to a 1-2 byte character, so the text of a
// non-ASCII input doubled per step at encode time.
TEST(FuzzRegressionTest, Tokenizer_PreTokenizerExponentialGrowth) {
  auto tok = Tokenizer::FromFile(DataPath("tokenizer/bytelevel_chain_doubles_text.json"));
  ASSERT_TRUE(tok.ok()) << tok.status().message();  // loading is fine; encoding must stop
  auto ids = tok->Encode("caf\xC3\xA9");
  ASSERT_FALSE(ids.ok());
  EXPECT_NE(ids.status().message().find("grows the text"), std::string::npos) << ids.status().message();
}

// Nesting 200000 deep (generated here: the file would be 400 KB; the 100-deep file of
// tests/data/fuzz feeds the fuzzer's replay): the recursive readers overflowed the stack.
TEST(FuzzRegressionTest, Tokenizer_DeepNestingRefused) {
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  for (const std::string& json : {"{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]},\"decoder\":" + deep + "}",
                                  ReadBytes(DataPath("tokenizer/nested_100_deep_normalizer.json"))}) {
    auto tok = Tokenizer::FromJson(json);
    ASSERT_FALSE(tok.ok());
    EXPECT_NE(tok.status().message().find("nested more than"), std::string::npos) << tok.status().message();
  }
  // Real files nest about 6 deep and still load.
  auto ok = Tokenizer::FromJson(R"({"model":{"type":"BPE","vocab":{"a":0},"merges":[]},"decoder":{"type":"Sequence","decoders":[{"type":"ByteLevel"}]}})");
  EXPECT_TRUE(ok.ok()) << ok.status().message();
}

// --- report ----------------------------------------------------------------------------------------

// "options" nested 200000 deep: copying and dumping it recursed until the stack overflowed.
TEST(FuzzRegressionTest, Report_DeepNestingRefused) {
  const std::string file = ReadBytes(DataPath("report/nested_100_deep_options.json"));
  auto report = ReportFromJson(file);
  ASSERT_FALSE(report.ok());
  EXPECT_NE(report.status().message().find("nested more than"), std::string::npos) << report.status().message();

  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  auto deeper = ReportFromJson(R"({"schema":"qconvert-report/1","tool_version":"0","options":)" + deep + R"(,"layers":[]})");
  ASSERT_FALSE(deeper.ok());
  EXPECT_NE(deeper.status().message().find("nested more than"), std::string::npos) << deeper.status().message();
}

// Every input of tests/data/fuzz goes through its parser without crashing (the same files the
// fuzz smoke run replays under the sanitizers).
TEST(FuzzRegressionTest, AllInputsParseOrFailCleanly) {
  ScratchDir dir;
  int count = 0;
  for (const auto& entry : fs::recursive_directory_iterator(std::string(QC_SOURCE_DIR) + "/tests/data/fuzz")) {
    if (!entry.is_regular_file()) continue;
    const std::string kind = entry.path().parent_path().filename().string();
    const std::string bytes = ReadBytes(entry.path().string());
    ++count;
    if (kind == "onnx_reader") (void)ParseOnnxModel(bytes, dir.path().string());
    else if (kind == "tokenizer") (void)Tokenizer::FromJson(bytes);
    else if (kind == "npy") (void)ParseNpy(bytes);
    else if (kind == "report") (void)ReportFromJson(bytes);
    else ADD_FAILURE() << "unknown fuzz target folder " << kind;
  }
  EXPECT_GE(count, 10);
}

}  // namespace
}  // namespace qc
