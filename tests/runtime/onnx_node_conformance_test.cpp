// Runs the ONNX backend node tests (Debian libonnx-testdata) for every op the executor claims.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include "formats/onnx_reader.h"
#include "runtime/cpu/kernel.h"
#include "runtime/executor.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

constexpr const char* kNodeTestDir = "/usr/share/libonnx-testdata/data/node";

// Cases we claim the op for but deliberately do not support, each with its reason.
const std::map<std::string, std::string>& KnownUnsupported() {
  const std::string kString = "string tensors are not part of the IR";
  const std::string kBf16 = "ONNX 1.12 test data stores bfloat16 as uint16 (and expects truncation, not rounding)";
  const std::string kSequence = "sequence/optional types are not part of the IR";
  const std::string kTraining = "training-mode Dropout is random";
  static const std::map<std::string, std::string> cases = {
      {"test_cast_FLOAT_to_STRING", kString},
      {"test_cast_STRING_to_FLOAT", kString},
      {"test_castlike_FLOAT_to_STRING", kString},
      {"test_castlike_FLOAT_to_STRING_expanded", kString},
      {"test_castlike_STRING_to_FLOAT", kString},
      {"test_castlike_STRING_to_FLOAT_expanded", kString},
      {"test_cast_BFLOAT16_to_FLOAT", kBf16},
      {"test_cast_FLOAT_to_BFLOAT16", kBf16},
      {"test_castlike_BFLOAT16_to_FLOAT", kBf16},
      {"test_castlike_BFLOAT16_to_FLOAT_expanded", kBf16},
      {"test_castlike_FLOAT_to_BFLOAT16", kBf16},
      {"test_castlike_FLOAT_to_BFLOAT16_expanded", kBf16},
      {"test_identity_opt", kSequence},
      {"test_identity_sequence", kSequence},
      {"test_if_seq", kSequence},
      {"test_if_opt", kSequence},
      {"test_training_dropout", kTraining},
      {"test_training_dropout_default", kTraining},
      {"test_training_dropout_default_mask", kTraining},
      {"test_training_dropout_mask", kTraining},
  };
  return cases;
}

struct CaseResult {
  bool ran = false;
  bool passed = false;
  std::string message;
};

bool AllClose(const Tensor& got, const Tensor& want, std::string* why) {
  if (got.dtype() != want.dtype()) {
    *why = "dtype " + DTypeName(got.dtype()) + " vs expected " + DTypeName(want.dtype());
    return false;
  }
  if (got.shape() != want.shape()) {
    *why = "shape " + ShapeToString(got.shape()) + " vs expected " + ShapeToString(want.shape());
    return false;
  }
  if (IsFloatingPoint(got.dtype())) {
    std::vector<float> a = got.ToFloats(), b = want.ToFloats();
    // numpy.testing.assert_allclose defaults of the ONNX backend test runner.
    const double rtol = 1e-3, atol = 1e-7;
    for (size_t i = 0; i < a.size(); ++i) {
      if (std::isnan(a[i]) && std::isnan(b[i])) continue;
      if (std::isinf(a[i]) && a[i] == b[i]) continue;
      if (!(std::fabs(a[i] - b[i]) <= atol + rtol * std::fabs(b[i]))) {
        *why = "element " + std::to_string(i) + ": " + std::to_string(a[i]) + " vs expected " + std::to_string(b[i]);
        return false;
      }
    }
    return true;
  }
  if (!got.BitEqual(want)) {
    std::vector<int64_t> a = got.ToInt64s(), b = want.ToInt64s();
    for (size_t i = 0; i < a.size(); ++i)
      if (a[i] != b[i]) {
        *why = "element " + std::to_string(i) + ": " + std::to_string(a[i]) + " vs expected " + std::to_string(b[i]);
        return false;
      }
  }
  return true;
}

bool Claimed(const Graph& g) {
  for (const auto& n : g.nodes) {
    if (n.domain.empty() && n.op_type == "If") continue;
    if (!FindOpKernels(n.domain, n.op_type)) return false;
  }
  return true;
}

CaseResult RunCase(const fs::path& dir, const Model& model, bool reference) {
  CaseResult r;
  r.ran = true;
  SessionOptions options;
  options.use_reference_kernels = reference;
  auto session = Session::Create(model, options);
  if (!session.ok()) {
    r.message = session.status().message();
    return r;
  }
  for (const auto& set : fs::directory_iterator(dir)) {
    if (!set.is_directory() || set.path().filename().string().rfind("test_data_set", 0) != 0) continue;
    NamedTensors feeds;
    std::vector<Tensor> expected;
    const auto& inputs = (*session)->inputs();
    for (size_t i = 0;; ++i) {
      fs::path p = set.path() / ("input_" + std::to_string(i) + ".pb");
      if (!fs::exists(p)) break;
      auto t = ReadTensorProtoFile(p.string());
      if (!t.ok() || i >= inputs.size()) {
        r.message = t.ok() ? "more inputs than the graph declares" : t.status().message();
        return r;
      }
      feeds.emplace_back(inputs[i].name, *t);
    }
    for (size_t i = 0;; ++i) {
      fs::path p = set.path() / ("output_" + std::to_string(i) + ".pb");
      if (!fs::exists(p)) break;
      auto t = ReadTensorProtoFile(p.string());
      if (!t.ok()) {
        r.message = t.status().message();
        return r;
      }
      expected.push_back(*t);
    }
    auto outs = (*session)->Run(feeds);
    if (!outs.ok()) {
      r.message = outs.status().message();
      return r;
    }
    for (size_t i = 0; i < expected.size() && i < outs->size(); ++i) {
      std::string why;
      if (!AllClose((*outs)[i], expected[i], &why)) {
        r.message = "output " + std::to_string(i) + ": " + why;
        return r;
      }
    }
  }
  r.passed = true;
  return r;
}

void RunConformance(bool reference) {
  if (!fs::exists(kNodeTestDir)) GTEST_SKIP() << "libonnx-testdata is not installed";
  std::map<std::string, std::pair<int, int>> per_op;  // op -> (passed, total)
  std::vector<std::string> failures;
  std::vector<fs::path> dirs;
  for (const auto& e : fs::directory_iterator(kNodeTestDir)) dirs.push_back(e.path());
  std::sort(dirs.begin(), dirs.end());
  int skipped = 0, known = 0;
  for (const auto& dir : dirs) {
    auto model = ReadOnnxModel((dir / "model.onnx").string());
    if (!model.ok() || !Claimed(model->graph)) {
      ++skipped;
      continue;
    }
    const std::string name = dir.filename().string();
    if (KnownUnsupported().count(name)) {
      ++known;
      continue;
    }
    std::set<std::string> ops;
    for (const auto& n : model->graph.nodes) ops.insert(n.op_type);
    CaseResult r = RunCase(dir, *model, reference);
    for (const auto& op : ops) {
      per_op[op].second++;
      if (r.passed) per_op[op].first++;
    }
    if (!r.passed) failures.push_back(name + ": " + r.message);
  }
  std::printf("%-32s %7s\n", "op", "passed");
  int passed = 0, total = 0;
  for (const auto& [op, pt] : per_op) {
    std::printf("%-32s %3d/%-3d\n", op.c_str(), pt.first, pt.second);
  }
  for (const auto& f : failures) std::printf("FAIL %s\n", f.c_str());
  total = static_cast<int>(dirs.size()) - skipped - known;
  passed = total - static_cast<int>(failures.size());
  std::printf("node tests: %d of %d claimed cases passed, %d known unsupported (listed with reasons), %d skipped (op not claimed)\n",
              passed, total, known, skipped);
  EXPECT_TRUE(failures.empty()) << failures.size() << " node tests failed";
}

TEST(OnnxNodeConformance, FastKernels) { RunConformance(false); }
TEST(OnnxNodeConformance, ReferenceKernels) { RunConformance(true); }

}  // namespace
}  // namespace qc
