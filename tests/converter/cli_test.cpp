// End-to-end tests of the qconvert binary on the real models in ../shared, plus bad-input cases.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <limits>
#include <set>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "formats/linear_layers.h"
#include "formats/model_builder.h"
#include "formats/npy.h"
#include "formats/onnx_reader.h"
#include "formats/onnx_writer.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

const std::string kShared = QC_SHARED_DIR;
const std::string kQconvert = std::string(QC_BINARY_DIR) + "/qconvert";

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

class CliTest : public ::testing::Test {
 public:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qc_cli_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  CommandResult Run(const std::string& args) {
    std::string out = (dir_ / "stdout").string(), err = (dir_ / "stderr").string();
    std::string cmd = kQconvert + " " + args + " >" + out + " 2>" + err + " </dev/null";
    int rc = std::system(cmd.c_str());
    CommandResult r;
    r.exit_code = WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
    r.out = Slurp(out);
    r.err = Slurp(err);
    return r;
  }
  /// Starts qconvert with `args` in dir_, without a shell (a shell's background job would start
  /// with SIGINT ignored), stdout and stderr into out.txt and err.txt; `max_file_bytes` limits
  /// the size of any file it writes (RLIMIT_FSIZE), like a disk that fills up.
  pid_t Spawn(const std::vector<std::string>& args, rlim_t max_file_bytes = RLIM_INFINITY) {
    // A previous run's err.txt could be read before the child truncates it.
    fs::remove(Path("err.txt"));
    const pid_t pid = ::fork();
    if (pid != 0) return pid;
    const int out = ::open(Path("out.txt").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err = ::open(Path("err.txt").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const rlimit limit{max_file_bytes, max_file_bytes};
    if (out < 0 || err < 0 || ::dup2(out, 1) < 0 || ::dup2(err, 2) < 0 || ::chdir(dir_.c_str()) != 0 ||
        ::setrlimit(RLIMIT_FSIZE, &limit) != 0)
      ::_exit(126);
    std::vector<char*> argv{const_cast<char*>(kQconvert.c_str())};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  /// The exit code of `pid`, or 128 + the signal that killed it.
  static int Wait(pid_t pid) {
    int status = 0;
    if (::waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  /// Fails on any file in dir_ but `keep` and the captured output.
  void ExpectOnlyFiles(const std::set<std::string>& keep) {
    for (const auto& entry : fs::directory_iterator(dir_)) {
      const std::string name = entry.path().filename().string();
      EXPECT_TRUE(keep.count(name) || name.ends_with(".txt") || name == "stdout" || name == "stderr")
          << "left behind: " << name;
    }
  }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  static std::string Model(const std::string& name) { return kShared + "/models/" + name; }
  static bool HaveShared() { return fs::exists(kShared + "/models"); }

  fs::path dir_;
};

#define REQUIRE_SHARED() \
  if (!HaveShared()) GTEST_SKIP() << "../shared is absent"

// Expects a bad-input failure: exit code 1, a one-line message on stderr, no output file.
void ExpectInputError(const CommandResult& r, const std::string& must_mention) {
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("error"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(must_mention), std::string::npos) << r.err;
  EXPECT_LE(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

double MaxAbsDiff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  if (a.shape() != b.shape()) return INFINITY;
  std::vector<float> x = a.ToFloats(), y = b.ToFloats();
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, static_cast<double>(std::fabs(x[i] - y[i])));
  return m;
}

void ExpectLogitsMatch(CliTest* t, CommandResult r, const std::string& reference, const std::string& out) {
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto got = ReadNpy(out);
  auto want = ReadNpy(reference);
  ASSERT_TRUE(got.ok() && want.ok());
  EXPECT_LE(MaxAbsDiff(*got, *want), 1e-3);
}

TEST_F(CliTest, RunMatchesPyTorchLogits_Llama) {
  REQUIRE_SHARED();
  std::string m = Model("docs-llama-12m");
  ExpectLogitsMatch(this, Run("run " + m + "/model.onnx --input-ids " + m + "/sample_input_ids.npy -o " + Path("l.npy")),
                    m + "/sample_logits.npy", Path("l.npy"));
}

TEST_F(CliTest, RunMatchesPyTorchLogits_Gpt2) {
  REQUIRE_SHARED();
  std::string m = Model("docs-gpt2-10m");
  ExpectLogitsMatch(this, Run("run " + m + "/model.onnx --input-ids " + m + "/sample_input_ids.npy -o " + Path("l.npy")),
                    m + "/sample_logits.npy", Path("l.npy"));
}

TEST_F(CliTest, RunMatchesPyTorchLogits_Stories260kExternalData) {
  REQUIRE_SHARED();
  std::string m = Model("stories260k");
  ExpectLogitsMatch(this, Run("run " + m + "/stories260k.onnx --input-ids " + m + "/sample_input_ids.npy -o " + Path("l.npy")),
                    m + "/sample_logits.npy", Path("l.npy"));
}

TEST_F(CliTest, RunReferenceKernelsMatchPyTorchLogits) {
  REQUIRE_SHARED();
  std::string m = Model("stories260k");
  ExpectLogitsMatch(this,
                    Run("run --reference " + m + "/stories260k.onnx --input-ids " + m + "/sample_input_ids.npy -o " + Path("l.npy")),
                    m + "/sample_logits.npy", Path("l.npy"));
}

// --check-finite names the node whose output first holds a NaN (here an embedding row the ids
// select; the MatMul after it carries the NaN on) and writes no logits; finite runs write them.
TEST_F(CliTest, RunCheckFiniteNamesTheFirstNaNNode) {
  GraphBuilder g;
  const std::string ids = g.AddInput("input_ids", DType::kInt64, {Dim{1, ""}, Dim{-1, "seq"}});
  Tensor table(DType::kFloat32, {8, 4});
  for (int64_t i = 0; i < table.numel(); ++i) table.mutable_data<float>()[i] = 0.25f * static_cast<float>(i % 5);
  table.mutable_data<float>()[3 * 4 + 1] = std::numeric_limits<float>::quiet_NaN();  // row 3
  const std::string hidden = g.Op("Gather", {g.AddInitializer("embed", table), ids});
  const std::string logits = g.Op("MatMul", {hidden, g.AddRandomNormal("head", {4, 8})});
  g.AddOutput(logits, DType::kFloat32, {Dim{1, ""}, Dim{-1, "seq"}, Dim{8, ""}});
  StatusOr<qc::Model> nan_model = g.Build({{"", 18}});
  ASSERT_TRUE(nan_model.ok());
  ASSERT_TRUE(WriteOnnxModel(*nan_model, Path("nan.onnx")).ok());
  ASSERT_TRUE(WriteNpy(Tensor::FromVector<int64_t>({1, 3, 2}, {1, 3}), Path("bad.npy")).ok());
  ASSERT_TRUE(WriteNpy(Tensor::FromVector<int64_t>({1, 2, 5}, {1, 3}), Path("good.npy")).ok());

  CommandResult r = Run("run " + Path("nan.onnx") + " --input-ids " + Path("bad.npy") + " -o " + Path("l.npy") + " --check-finite");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("(Gather), output '" + hidden + "': 1 of 12 values are NaN or Inf"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(Path("l.npy")));

  r = Run("run " + Path("nan.onnx") + " --input-ids " + Path("good.npy") + " -o " + Path("l.npy") + " --check-finite");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("every node's output is finite"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(Path("l.npy")));
}

// docs-val.txt has LF line endings (and one literal CRLF that is content); wiki.test.raw has
// CRLF line endings throughout, which the reference ids were computed without.
TEST_F(CliTest, TokenizeReproducesReferenceIds) {
  REQUIRE_SHARED();
  for (std::string name : {"docs-llama-12m", "docs-gpt2-10m"}) {
    std::string m = Model(name);
    for (auto [text, ids] : {std::pair{m + "/docs-val.txt", m + "/docs-val.ids.npy"},
                             std::pair{kShared + "/data/wikitext2-raw/wiki.test.raw", m + "/wikitext2-test.ids.npy"}}) {
      auto r = Run("tokenize --tokenizer " + m + "/tokenizer.json --text " + text + " -o " + Path("ids.npy"));
      ASSERT_EQ(r.exit_code, 0) << r.err;
      auto got = ReadNpy(Path("ids.npy"));
      auto want = ReadNpy(ids);
      ASSERT_TRUE(got.ok() && want.ok());
      EXPECT_EQ(got->ToInt64s(), want->ToInt64s()) << name << " " << text;
    }
  }
}

// Perplexity of the first 48 windows against ONNX Runtime's number in PROVENANCE.md (0.05%).
void ExpectEvalPpl(CliTest* t, const std::string& args, double reference) {
  auto r = static_cast<CliTest*>(t)->Run(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  double ppl = j["ppl"];
  EXPECT_NEAR(ppl, reference, reference * 5e-4) << r.out;
  EXPECT_EQ(j["windows"], 48);
}

TEST_F(CliTest, EvalMatchesOnnxRuntimePerplexity_Llama) {
  REQUIRE_SHARED();
  std::string m = Model("docs-llama-12m");
  ExpectEvalPpl(this, "eval " + m + "/model.onnx --data " + m + "/docs-val.txt --tokenizer " + m + "/tokenizer.json --max-windows 48 --json",
                14.6352);
}

TEST_F(CliTest, EvalMatchesOnnxRuntimePerplexity_Gpt2) {
  REQUIRE_SHARED();
  std::string m = Model("docs-gpt2-10m");
  ExpectEvalPpl(this, "eval " + m + "/model.onnx --data " + m + "/docs-val.ids.npy --max-windows 48 --json", 12.7935);
}

TEST_F(CliTest, EvalStories260kMatchesPyTorch) {
  REQUIRE_SHARED();
  std::string m = Model("stories260k");
  auto r = Run("eval " + m + "/stories260k.onnx --data " + m + "/tinystories-valid.ids.npy --seqlen 256 --max-windows 48 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  double ppl = nlohmann::json::parse(r.out)["ppl"];
  EXPECT_NEAR(ppl, 4.1637, 4.1637 * 1e-3);
}

// The three-input export (input_ids, attention_mask, position_ids) is the same model: with the
// mask and positions bound to ones and 0..S-1 it gives the one-input export's logits and perplexity.
TEST_F(CliTest, MaskPositionExportMatchesPlainExport_Stories260k) {
  REQUIRE_SHARED();
  std::string m = Model("stories260k");
  auto plain = Run("run " + m + "/stories260k.onnx --input-ids " + m + "/sample_input_ids.npy -o " + Path("plain.npy"));
  auto mask_pos = Run("run " + m + "/stories260k.mask-pos.onnx --input-ids " + m + "/sample_input_ids.npy -o " + Path("mp.npy"));
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  ExpectLogitsMatch(this, mask_pos, m + "/sample_logits.npy", Path("mp.npy"));
  auto a = ReadNpy(Path("plain.npy")), b = ReadNpy(Path("mp.npy"));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_LE(MaxAbsDiff(*a, *b), 1e-5);

  auto r = Run("eval " + m + "/stories260k.mask-pos.onnx --data " + m + "/tinystories-valid.ids.npy --seqlen 256 --max-windows 48 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_NEAR(static_cast<double>(j["ppl"]), 4.1637, 4.1637 * 1e-3);
  EXPECT_EQ(j["windows"], 48);
}

TEST_F(CliTest, InspectListsLinearLayers) {
  REQUIRE_SHARED();
  auto r = Run("inspect " + Model("docs-gpt2-10m") + "/model.onnx");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // 6 blocks x (qkv, proj, fc, proj) Gemm layers + the tied lm_head.
  EXPECT_NE(r.out.find("quantizable linear layers: 25"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tied-embedding"), std::string::npos);
  r = Run("inspect " + Model("docs-llama-12m") + "/model.onnx");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("quantizable linear layers: 43"), std::string::npos) << r.out;
}

TEST_F(CliTest, Negative_TruncatedModel) {
  REQUIRE_SHARED();
  std::string bytes = Slurp(Model("docs-llama-12m") + "/model.onnx");
  std::ofstream(Path("t.onnx"), std::ios::binary).write(bytes.data(), bytes.size() / 2);
  auto r = Run("run " + Path("t.onnx") + " --input-ids " + Model("docs-llama-12m") + "/sample_input_ids.npy -o " + Path("o.npy"));
  ExpectInputError(r, "t.onnx");
  EXPECT_FALSE(fs::exists(Path("o.npy")));
}

TEST_F(CliTest, Negative_RandomBytesModel) {
  std::mt19937 rng(7);
  std::string bytes(4096, '\0');
  for (char& c : bytes) c = static_cast<char>(rng());
  std::ofstream(Path("r.onnx"), std::ios::binary).write(bytes.data(), bytes.size());
  ExpectInputError(Run("inspect " + Path("r.onnx")), "r.onnx");
}

TEST_F(CliTest, Negative_MissingAndShortExternalData) {
  REQUIRE_SHARED();
  std::string m = Model("stories260k");
  fs::copy_file(m + "/stories260k.onnx", Path("s.onnx"));
  auto r = Run("run " + Path("s.onnx") + " --input-ids " + m + "/sample_input_ids.npy -o " + Path("o.npy"));
  ExpectInputError(r, "stories260k.onnx.data");
  EXPECT_FALSE(fs::exists(Path("o.npy")));
  std::string data = Slurp(m + "/stories260k.onnx.data");
  std::ofstream(Path("stories260k.onnx.data"), std::ios::binary).write(data.data(), data.size() - 1000);
  r = Run("run " + Path("s.onnx") + " --input-ids " + m + "/sample_input_ids.npy -o " + Path("o.npy"));
  ExpectInputError(r, "too short");
  EXPECT_FALSE(fs::exists(Path("o.npy")));
}

TEST_F(CliTest, Negative_UnsupportedTokenizerModel) {
  std::ofstream(Path("tok.json")) << R"({"version":"1.0","added_tokens":[],"model":{"type":"Unigram","vocab":[["a",0.0]]}})";
  std::ofstream(Path("text.txt")) << "hello";
  ExpectInputError(Run("tokenize --tokenizer " + Path("tok.json") + " --text " + Path("text.txt") + " -o " + Path("o.npy")), "Unigram");
  EXPECT_FALSE(fs::exists(Path("o.npy")));
}

TEST_F(CliTest, Negative_IdsOutOfVocabulary) {
  REQUIRE_SHARED();
  ASSERT_TRUE(WriteNpy(Tensor::FromVector<int64_t>({1, 2, 99999, 4}, {1, 4}), Path("ids.npy")).ok());
  auto r = Run("run " + Model("docs-llama-12m") + "/model.onnx --input-ids " + Path("ids.npy") + " -o " + Path("o.npy"));
  ExpectInputError(r, "99999");
  EXPECT_FALSE(fs::exists(Path("o.npy")));
}

TEST_F(CliTest, Negative_EmptyTextFile) {
  REQUIRE_SHARED();
  std::ofstream(Path("empty.txt")).close();
  std::string m = Model("docs-llama-12m");
  ExpectInputError(Run("tokenize --tokenizer " + m + "/tokenizer.json --text " + Path("empty.txt") + " -o " + Path("o.npy")), "empty");
  ExpectInputError(Run("eval " + m + "/model.onnx --tokenizer " + m + "/tokenizer.json --data " + Path("empty.txt")), "empty");
}

TEST_F(CliTest, Negative_MissingModelFile) { ExpectInputError(Run("inspect " + Path("nope.onnx")), "nope.onnx"); }

}  // namespace
}  // namespace qc

namespace qc {
namespace {

// `generate` writes a runnable model and a byte-level tokenizer whose ids are the text's bytes.
// SIGTERM / SIGINT while the artifact is being validated (it exists on disk, not yet accepted):
// exit code 1, a message, and neither the artifact nor any temp file is left; the input is intact.
TEST_F(CliTest, InterruptedConversionLeavesNoOutput) {
  ASSERT_EQ(Run("generate --arch llama --vocab 512 --hidden 64 --layers 2 --heads 4 -o " + Path("in.onnx")).exit_code, 0);
  std::vector<int64_t> ids(64 * 256);
  std::mt19937 rng(1);
  for (int64_t& id : ids) id = rng() % 512;
  ASSERT_TRUE(WriteNpy(Tensor::FromVector<int64_t>(ids, {static_cast<int64_t>(ids.size())}), Path("ids.npy")).ok());
  const std::string before = Slurp(Path("in.onnx"));
  for (int sig : {SIGTERM, SIGINT}) {
    SCOPED_TRACE(strsignal(sig));
    // Wait until the conversion reports that the written artifact is being measured, then signal it.
    const pid_t pid = Spawn({"in.onnx", "--pass", "absmax", "-o", "q.onnx", "--report", "q.json", "--eval", "ids.npy",
                             "--seqlen", "256", "--eval-windows", "24"});
    ASSERT_GT(pid, 0);
    for (int i = 0; i < 1200 && Slurp(Path("err.txt")).find("quantized perplexity") == std::string::npos; ++i)
      ::usleep(50000);
    ASSERT_EQ(::kill(pid, sig), 0);
    EXPECT_EQ(Wait(pid), 1) << Slurp(Path("err.txt"));
    EXPECT_NE(Slurp(Path("err.txt")).find("interrupted"), std::string::npos) << Slurp(Path("err.txt"));
    ExpectOnlyFiles({"in.onnx", "ids.npy"});
    EXPECT_EQ(Slurp(Path("in.onnx")), before);
  }
}

// A disk that fills up (here: a file size limit, so every write past 64 KB fails): exit code 1,
// a message that says so, no artifact or scratch file left, the input untouched.
TEST_F(CliTest, Negative_FullDiskLeavesNoOutput) {
  ASSERT_EQ(Run("generate --arch llama --vocab 512 --hidden 64 --layers 2 --heads 4 -o " + Path("in.onnx")).exit_code, 0);
  ASSERT_TRUE(WriteNpy(Tensor::FromVector<int64_t>(std::vector<int64_t>(256, 7), {256}), Path("ids.npy")).ok());
  const std::string before = Slurp(Path("in.onnx"));
  for (const char* pass : {"absmax", "smoothquant"}) {
    SCOPED_TRACE(pass);
    const pid_t pid = Spawn({"in.onnx", "--pass", pass, "--calib", "ids.npy", "--nsamples", "2", "--seqlen", "64", "-o",
                             "q.onnx", "--report", "q.json"},
                            64 << 10);
    ASSERT_GT(pid, 0);
    EXPECT_EQ(Wait(pid), 1) << Slurp(Path("err.txt"));
    const std::string err = Slurp(Path("err.txt"));
    EXPECT_NE(err.find("disk full"), std::string::npos) << err;
    ExpectOnlyFiles({"in.onnx", "ids.npy"});
    EXPECT_EQ(Slurp(Path("in.onnx")), before);
  }
}

// A NaN or inf weight is a corrupt model: exit code 1 naming the weight (or the activation it
// poisons), nothing written.
TEST_F(CliTest, Negative_NonFiniteWeightLeavesNoOutput) {
  ASSERT_EQ(Run("generate --arch llama --vocab 512 --hidden 64 --layers 2 --heads 4 -o " + Path("in.onnx")).exit_code, 0);
  StatusOr<qc::Model> model = ReadOnnxModel(Path("in.onnx"));
  ASSERT_TRUE(model.ok());
  const LinearLayer layer = FindLinearLayers(model->graph)[3];
  ASSERT_TRUE(WriteNpy(Tensor::FromVector<int64_t>(std::vector<int64_t>(256, 7), {256}), Path("ids.npy")).ok());
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
    Tensor w = model->graph.FindInitializer(layer.weight)->Clone();
    w.mutable_data<float>()[17] = bad;
    model->graph.SetInitializer(layer.weight, std::move(w));
    ASSERT_TRUE(WriteOnnxModel(*model, Path("bad.onnx")).ok());
    const std::string before = Slurp(Path("bad.onnx"));
    for (const char* pass : {"absmax", "gptq", "smoothquant"}) {
      SCOPED_TRACE(pass);
      // gptq and smoothquant calibrate first: the weight check must still come before any output.
      const std::string calib = std::string(pass) == "absmax" ? "" : " --calib " + Path("ids.npy") + " --nsamples 2 --seqlen 64";
      const CommandResult r =
          Run(Path("bad.onnx") + " --pass " + pass + calib + " -o " + Path("q.onnx") + " --no-progress");
      ExpectInputError(r, "non-finite");
      // smoothquant's calibration meets the NaN first, as an activation it names.
      if (std::string(pass) != "smoothquant") EXPECT_NE(r.err.find(layer.weight), std::string::npos) << r.err;
      ExpectOnlyFiles({"in.onnx", "bad.onnx", "ids.npy"});
      EXPECT_EQ(Slurp(Path("bad.onnx")), before);
    }
  }
}

TEST_F(CliTest, GenerateWritesRunnableModelAndByteTokenizer) {
  auto r = Run("generate --arch llama --vocab 256 --hidden 32 --layers 1 --heads 4 --kv-heads 2 -o " + Path("g.onnx") +
               " --tokenizer-out " + Path("tok.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::ofstream(Path("t.txt")) << "Hello, world! x";
  r = Run("tokenize --tokenizer " + Path("tok.json") + " --text " + Path("t.txt") + " -o " + Path("ids.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto ids = ReadNpy(Path("ids.npy"));
  ASSERT_TRUE(ids.ok());
  std::vector<int64_t> want;
  for (unsigned char c : std::string("Hello, world! x")) want.push_back(c);
  EXPECT_EQ(ids->ToInt64s(), want);
  r = Run("eval " + Path("g.onnx") + " --data " + Path("t.txt") + " --tokenizer " + Path("tok.json") + " --seqlen 8 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_GT(nlohmann::json::parse(r.out)["ppl"].get<double>(), 1.0);
  ExpectInputError(Run("generate --arch nope -o " + Path("x.onnx")), "nope");
  EXPECT_FALSE(fs::exists(Path("x.onnx")));
}

// --dtype: float16/bfloat16 compute only on the GPU (a clear input error on the CPU), float32 is
// the float32 model's own type, anything else is rejected by the parser.
TEST_F(CliTest, DtypeNeedsCudaForHalfTypes) {
  auto r = Run("generate --arch llama --vocab 256 --hidden 32 --layers 1 --heads 4 --kv-heads 2 -o " + Path("g.onnx") +
               " --tokenizer-out " + Path("tok.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::ofstream(Path("t.txt")) << "Hello, world! Hello again.";
  const std::string eval = "eval " + Path("g.onnx") + " --data " + Path("t.txt") + " --tokenizer " + Path("tok.json") + " --seqlen 8 --json";
  ExpectInputError(Run(eval + " --dtype float16"), "--device cuda");
  ExpectInputError(Run(eval + " --device cpu --dtype bfloat16"), "--device cuda");
  r = Run("tokenize --tokenizer " + Path("tok.json") + " --text " + Path("t.txt") + " -o " + Path("ids.npy"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ExpectInputError(Run("run " + Path("g.onnx") + " --input-ids " + Path("ids.npy") + " -o " + Path("l.npy") + " --dtype float16"),
                   "--device cuda");
  EXPECT_FALSE(fs::exists(Path("l.npy")));
  r = Run(eval + " --dtype float32");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["dtype"], "float32");
  EXPECT_EQ(Run(eval + " --dtype float64").exit_code, 1);
}

}  // namespace
}  // namespace qc
