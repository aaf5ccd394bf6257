// End-to-end tests of `qconvert MODEL.onnx --pass ...`, the report and `qconvert diff` on the real
// models in ../shared (skipped when absent), plus bad-input cases that must leave no output.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "formats/report.h"
#include "formats/sha256.h"
#include "passes/registry.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

const std::string kShared = QC_SHARED_DIR;
const std::string kQconvert = std::string(QC_BINARY_DIR) + "/qconvert";

struct Result {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class ConvertTest : public ::testing::Test {
 public:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qc_convert_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  Result Run(const std::string& args, const std::string& env = "") {
    const std::string out = Path("stdout.txt"), err = Path("stderr.txt");
    const std::string cmd = env + " " + kQconvert + " " + args + " >" + out + " 2>" + err + " </dev/null";
    const int rc = std::system(cmd.c_str());
    Result r;
    r.exit_code = WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
    r.out = ReadAll(out);
    r.err = ReadAll(err);
    return r;
  }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  static std::string ModelDir(const std::string& name) { return kShared + "/models/" + name; }
  static bool HaveShared() { return fs::exists(kShared + "/models"); }
  // Files in the temp dir other than the captured stdout/stderr.
  std::vector<std::string> Outputs() const {
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(dir_)) {
      const std::string name = e.path().filename().string();
      if (name != "stdout.txt" && name != "stderr.txt" && name.rfind("in", 0) != 0) files.push_back(name);
    }
    return files;
  }

  fs::path dir_;
};

#define REQUIRE_SHARED() \
  if (!HaveShared()) GTEST_SKIP() << "../shared is absent"

int64_t InspectLinearCount(ConvertTest* t, const std::string& model) {
  Result r = t->Run("inspect " + model);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const std::string key = "quantizable linear layers: ";
  const size_t at = r.out.find(key);
  if (at == std::string::npos) return -1;
  return std::stoll(r.out.substr(at + key.size()));
}

double EvalPpl(ConvertTest* t, const std::string& model, const std::string& ids, int windows) {
  Result r = t->Run("eval " + model + " --data " + ids + " --max-windows " + std::to_string(windows) + " --json --no-progress");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  if (r.exit_code != 0) return -1;
  return nlohmann::json::parse(r.out)["ppl"].get<double>();
}

// The report with every timing field zeroed: what must be identical between two runs.
nlohmann::json WithoutTiming(const std::string& report_text) {
  nlohmann::json j = nlohmann::json::parse(report_text);
  for (auto& l : j["layers"]) l["seconds"] = 0;
  j["totals"]["seconds"] = 0;
  return j;
}

// The whole acceptance path on one model: every linear layer quantized, smaller artifact, our
// runtime evaluates it close to the float model, input untouched, report consistent.
void QuantizeAndEvaluate(ConvertTest* t, const std::string& name, double max_ppl_ratio) {
  const std::string m = ConvertTest::ModelDir(name);
  const std::string model = m + "/model.onnx", ids = m + "/docs-val.ids.npy";
  const int64_t linear = InspectLinearCount(t, model);
  ASSERT_GT(linear, 0);
  StatusOr<FileDigest> before = Sha256File(model);
  ASSERT_TRUE(before.ok());

  Result r = t->Run(model + " --pass absmax --bits 4 -o " + t->Path("q.onnx") + " --report " + t->Path("q.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("wrote"), std::string::npos) << r.out;

  const nlohmann::json report = nlohmann::json::parse(ReadAll(t->Path("q.json")));
  EXPECT_EQ(report["schema"], "qconvert-report/1");
  EXPECT_EQ(static_cast<int64_t>(report["layers"].size()), linear);
  EXPECT_EQ(report["totals"]["layers_quantized"].get<int64_t>(), linear);
  int heads = 0;
  for (const auto& l : report["layers"]) {
    // The output head gets --head-bits (8 by default), every other layer --bits.
    const bool head = l["notes"].dump().find("output head") != std::string::npos;
    heads += head;
    EXPECT_EQ(l["bits"], head ? 8 : 4) << l["name"];
    EXPECT_EQ(l["pass"], "absmax");
    EXPECT_GT(l["weight_rel_error"].get<double>(), 0.0);
    EXPECT_LT(l["weight_rel_error"].get<double>(), 0.2) << l["name"];
    EXPECT_TRUE(l["output_rel_error"].is_null());
  }
  EXPECT_EQ(heads, 1);
  EXPECT_EQ(report["input"]["sha256"], before->sha256);
  StatusOr<FileDigest> artifact = Sha256File(t->Path("q.onnx"));
  ASSERT_TRUE(artifact.ok());
  EXPECT_EQ(report["output"]["sha256"], artifact->sha256);
  EXPECT_EQ(report["output"]["bytes"].get<int64_t>(), artifact->bytes);
  EXPECT_LT(artifact->bytes, before->bytes / 2) << "4-bit weights must at least halve the file";
  StatusOr<FileDigest> after = Sha256File(model);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->sha256, before->sha256) << "the input must never be modified";

  EXPECT_EQ(InspectLinearCount(t, t->Path("q.onnx")), 0) << "no float linear layer left";
  const double ppl_float = EvalPpl(t, model, ids, 8), ppl_q = EvalPpl(t, t->Path("q.onnx"), ids, 8);
  EXPECT_GT(ppl_q, ppl_float * 0.99);
  EXPECT_LT(ppl_q, ppl_float * max_ppl_ratio) << "float " << ppl_float << ", quantized " << ppl_q;
}

TEST_F(ConvertTest, QuantizesEveryLinearLayer_Llama) {
  REQUIRE_SHARED();
  QuantizeAndEvaluate(this, "docs-llama-12m", 1.10);
}

TEST_F(ConvertTest, QuantizesEveryLinearLayer_Gpt2Gemm) {
  REQUIRE_SHARED();
  QuantizeAndEvaluate(this, "docs-gpt2-10m", 1.10);
}

TEST_F(ConvertTest, SameCommandTwiceGivesIdenticalBytes) {
  REQUIRE_SHARED();
  const std::string model = ModelDir("docs-llama-12m") + "/model.onnx";
  const std::string args = model + " --pass zeropoint --scale-search --bits 3 --group-size 64 -o " + Path("q.onnx") +
                           " --report " + Path("q.json");
  ASSERT_EQ(Run(args).exit_code, 0);
  const std::string bytes = ReadAll(Path("q.onnx")), report = ReadAll(Path("q.json"));
  ASSERT_EQ(Run(args).exit_code, 0);
  EXPECT_TRUE(bytes == ReadAll(Path("q.onnx"))) << "artifact bytes differ between two identical runs";
  EXPECT_EQ(WithoutTiming(report), WithoutTiming(ReadAll(Path("q.json"))));
}

TEST_F(ConvertTest, DefaultOutputBesideTheInputAndConvertAlias) {
  REQUIRE_SHARED();
  fs::copy_file(ModelDir("docs-gpt2-10m") + "/model.onnx", Path("in.onnx"));
  Result r = Run("convert " + Path("in.onnx") + " --pass absmax --no-progress");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(Path("in.absmax-w4.onnx")));
  EXPECT_TRUE(r.err.empty()) << "--no-progress: " << r.err;
  r = Run(Path("in.onnx") + " --pass zeropoint --bits 8 --group-size -1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(Path("in.zeropoint-w8.onnx")));
}

TEST_F(ConvertTest, EvalReportsPerplexityBeforeAndAfter) {
  REQUIRE_SHARED();
  const std::string m = ModelDir("docs-gpt2-10m");
  Result r = Run(m + "/model.onnx --pass absmax -o " + Path("q.onnx") + " --report " + Path("q.json") + " --eval " + m +
                 "/docs-val.ids.npy --eval-windows 4");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json report = nlohmann::json::parse(ReadAll(Path("q.json")));
  const double before = report["perplexity"]["before"], after = report["perplexity"]["after"];
  EXPECT_NEAR(before, EvalPpl(this, m + "/model.onnx", m + "/docs-val.ids.npy", 4), 1e-9 * before);
  EXPECT_NEAR(after, EvalPpl(this, Path("q.onnx"), m + "/docs-val.ids.npy", 4), 1e-9 * after);
  EXPECT_GT(after, before);
}

TEST_F(ConvertTest, ListPasses) {
  Result r = Run("--list-passes");
  ASSERT_EQ(r.exit_code, 0);
  for (const PassInfo& p : AllPasses()) EXPECT_NE(r.out.find(p.name), std::string::npos) << p.name;
}

TEST_F(ConvertTest, DiffGatesOnRegressions) {
  REQUIRE_SHARED();
  const std::string m = ModelDir("docs-gpt2-10m");
  const std::string eval = " --eval " + m + "/docs-val.ids.npy --eval-windows 2 --no-progress";
  ASSERT_EQ(Run(m + "/model.onnx --pass absmax --bits 4 -o " + Path("w4.onnx") + " --report " + Path("w4.json") + eval)
                .exit_code, 0);
  ASSERT_EQ(Run(m + "/model.onnx --pass absmax --bits 2 -o " + Path("w2.onnx") + " --report " + Path("w2.json") + eval)
                .exit_code, 0);
  // No thresholds, or an improvement: exit 0.
  Result r = Run("diff " + Path("w4.json") + " " + Path("w2.json"));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("node_addmm"), std::string::npos) << r.out;
  EXPECT_EQ(Run("diff " + Path("w2.json") + " " + Path("w4.json") + " --max-ppl-increase 0 --max-layer-error-increase 0")
                .exit_code, 0);
  // A forced regression: 4 -> 2 bits.
  r = Run("diff " + Path("w4.json") + " " + Path("w2.json") + " --max-layer-error-increase 50");
  EXPECT_EQ(r.exit_code, 3) << r.out << r.err;
  EXPECT_NE(r.out.find("EXCEEDED"), std::string::npos);
  // The worst layer is listed first.
  const size_t header = r.out.find("change");
  EXPECT_NE(header, std::string::npos);
  EXPECT_EQ(Run("diff " + Path("w4.json") + " " + Path("w2.json") + " --max-ppl-increase 5").exit_code, 3);
  EXPECT_EQ(Run("diff " + Path("w4.json") + " " + Path("w4.json") + " --max-ppl-increase 0 --max-layer-error-increase 0")
                .exit_code, 0);
  // Bad input: exit 1.
  std::ofstream(Path("bad.json")) << "{\"schema\": \"qconvert-report/1\", \"layers\": 3}";
  EXPECT_EQ(Run("diff " + Path("w4.json") + " " + Path("bad.json")).exit_code, 1);
  EXPECT_EQ(Run("diff " + Path("w4.json") + " " + Path("missing.json")).exit_code, 1);
}

// Bad input: exit code 1, a one-line message naming the problem, and no output file.
void ExpectRejected(ConvertTest* t, const std::string& args, const std::string& must_mention) {
  SCOPED_TRACE(args);
  Result r = t->Run(args + " --no-progress");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("error"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(must_mention), std::string::npos) << r.err;
  EXPECT_TRUE(t->Outputs().empty()) << "left behind: " << t->Outputs()[0];
}

TEST_F(ConvertTest, Negative_BadArgumentsLeaveNoOutput) {
  REQUIRE_SHARED();
  const std::string model = ModelDir("docs-llama-12m") + "/model.onnx";
  const std::string out = " -o " + Path("q.onnx") + " --report " + Path("q.json");
  ExpectRejected(this, model + " --pass nosuchpass" + out, "unknown pass 'nosuchpass'");
  ExpectRejected(this, model + " --pass absmax --bits 9" + out, "--bits");
  ExpectRejected(this, model + " --pass absmax --bits 1" + out, "--bits");
  ExpectRejected(this, model + " --pass absmax --group-size 100" + out, "--group-size");
  ExpectRejected(this, model + " --pass absmax --asym" + out, "zeropoint");
  ExpectRejected(this, model + " --pass absmax,zeropoint" + out, "must come last");
  ExpectRejected(this, model + " --pass absmax --exclude '['" + out, "--exclude");
  ExpectRejected(this, model + " --pass absmax --device cuda" + out, "--device");
  ExpectRejected(this, model + " --pass zeropoint --device cuda" + out, "neither --calib nor --eval");
  ExpectRejected(this, model + " --pass gptq --device tpu" + out, "--device");
  ExpectRejected(this, model + " --pass absmax -o " + Path("no/such/dir/q.onnx"), "does not exist");
  ExpectRejected(this, model + " --pass absmax --eval " + Path("missing.npy") + out, "missing.npy");
  // Every pass that needs calibration data says so when --calib is missing.
  for (const PassInfo& p : AllPasses())
    if (p.create()->NeedsCalibration()) ExpectRejected(this, model + " --pass " + p.name + out, "--calib");
}

TEST_F(ConvertTest, Negative_CorruptModelLeavesNoOutput) {
  std::mt19937 rng(3);
  std::string bytes(4096, '\0');
  for (char& c : bytes) c = static_cast<char>(rng());
  std::ofstream(Path("in_corrupt.onnx"), std::ios::binary).write(bytes.data(), bytes.size());
  ExpectRejected(this, Path("in_corrupt.onnx") + " --pass absmax -o " + Path("q.onnx") + " --report " + Path("q.json"),
                 "in_corrupt.onnx");
  ExpectRejected(this, Path("in_missing.onnx") + " --pass absmax -o " + Path("q.onnx"), "in_missing.onnx");
}

TEST_F(ConvertTest, Negative_OutputIsTheInput) {
  REQUIRE_SHARED();
  fs::copy_file(ModelDir("docs-gpt2-10m") + "/model.onnx", Path("in.onnx"));
  const std::string before = ReadAll(Path("in.onnx"));
  Result r = Run(Path("in.onnx") + " --pass absmax -o " + Path("in.onnx"));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(before == ReadAll(Path("in.onnx")));
}

// ONNX Runtime loads and runs the artifact, and its perplexity equals ours within 0.1%.
TEST_F(ConvertTest, OnnxRuntimeAgreesOnPerplexity) {
  REQUIRE_SHARED();
  if (std::system("node --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "node is not installed";
  std::string modules = std::getenv("QC_ORT_NODE_MODULES") ? std::getenv("QC_ORT_NODE_MODULES") : "/tmp/ortnode/node_modules";
  if (!fs::exists(modules + "/onnxruntime-node")) GTEST_SKIP() << "onnxruntime-node not found at " << modules;
  for (const std::string name : {"docs-llama-12m", "docs-gpt2-10m"}) {
    SCOPED_TRACE(name);
    const std::string m = ModelDir(name);
    const std::string q = Path(name + ".onnx");
    ASSERT_EQ(Run(m + "/model.onnx --pass zeropoint --bits 4 --group-size 32 -o " + q).exit_code, 0);
    const std::string cmd = "QC_ORT_NODE_MODULES='" + modules + "' node '" + std::string(QC_SOURCE_DIR) +
                            "/tools/ort_eval.js' " + q + " " + m + "/docs-val.ids.npy 512 4 2 > " + Path("ort.json") +
                            " 2> " + Path("ort.err");
    ASSERT_EQ(std::system(cmd.c_str()), 0) << ReadAll(Path("ort.err"));
    const double ort = nlohmann::json::parse(ReadAll(Path("ort.json")))["ppl"];
    const double ours = EvalPpl(this, q, m + "/docs-val.ids.npy", 4);
    EXPECT_NEAR(ours, ort, 1e-3 * ort);
  }
}

// The provenance digest and the report format the converter writes. (They test formats/ code
// and belong in tests/formats once that suite's owner takes them.)
TEST(ConvertProvenance, Sha256MatchesFips180Vectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // One million 'a', fed in uneven pieces to exercise the block buffering.
  Sha256 s;
  std::string piece(997, 'a');
  int64_t left = 1000000;
  while (left > 0) {
    const int64_t take = std::min<int64_t>(left, piece.size());
    s.Update(piece.data(), static_cast<size_t>(take));
    left -= take;
  }
  EXPECT_EQ(s.FinishHex(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(ConvertProvenance, ReportRoundTripsAndDropsTiming) {
  QuantReport r;
  r.tool_version = "0.1.0";
  r.command = "qconvert m.onnx --pass absmax";
  r.options_json = "{\"bits\":4}";
  r.seed = 7;
  r.input_path = "m.onnx";
  r.input_sha256 = std::string(64, 'a');
  r.input_bytes = 100;
  r.output_path = "q.onnx";
  r.output_sha256 = std::string(64, 'b');
  r.output_bytes = 30;
  LayerReport l;
  l.name = "node_linear";
  l.weight = "w";
  l.k = 384;
  l.n = 128;
  l.pass = "absmax";
  l.scheme = "w4-g128-sym";
  l.bits = 4;
  l.group_size = 128;
  l.weight_rel_error = 0.1;
  l.seconds = 0.25;
  l.notes = {"a note"};
  r.layers = {l};
  r.ppl_after = 15.5;
  r.seconds = 3;
  StatusOr<QuantReport> back = ReportFromJson(ReportToJson(r));
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(ReportToJson(*back), ReportToJson(r));
  EXPECT_EQ(back->layers[0].output_rel_error, -1);
  EXPECT_EQ(back->ppl_before, -1);
  EXPECT_EQ(back->layers[0].notes, l.notes);
  const nlohmann::json untimed = nlohmann::json::parse(ReportToJson(r, /*with_timing=*/false));
  EXPECT_EQ(untimed["layers"][0]["seconds"], 0.0);
  EXPECT_EQ(untimed["totals"]["seconds"], 0.0);
  EXPECT_TRUE(untimed["layers"][0]["output_rel_error"].is_null());
}

TEST(ConvertProvenance, Negative_MalformedReports) {
  EXPECT_FALSE(ReportFromJson("not json").ok());
  EXPECT_FALSE(ReportFromJson("[]").ok());
  StatusOr<QuantReport> r = ReportFromJson(R"({"schema": "qconvert-report/1", "tool_version": "x", "layers": [{"bits": 4}]})");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("layers[0].name"), std::string::npos) << r.status().message();
  r = ReportFromJson(R"({"schema": "qconvert-report/1", "tool_version": "x", "layers": [{"name": "a", "bits": "four"}]})");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("layers[0].bits"), std::string::npos) << r.status().message();
  r = ReportFromJson(R"({"schema": "other/2", "tool_version": "x", "layers": []})");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("schema"), std::string::npos);
}

}  // namespace
}  // namespace qc
