// Test helpers shared by the pass tests: op counts of a model, running a model on the CPU
// executor, the relative difference of two outputs, what one pass run returned, and token windows
// and cases for the synthetic decoders.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "formats/graph.h"
#include "formats/report.h"
#include "formats/status.h"
#include "formats/synthetic_models.h"
#include "formats/tensor.h"
#include "runtime/executor.h"

namespace qc {

/// How many nodes of each op the graph holds, keyed "domain.op_type" ("op_type" in the default domain).
inline std::map<std::string, int> OpCounts(const Model& m) {
  std::map<std::string, int> counts;
  for (const Node& n : m.graph.nodes) counts[(n.domain.empty() ? "" : n.domain + ".") + n.op_type]++;
  return counts;
}

/// The model's graph outputs on `feeds`; a failed session or run is a test failure and gives {}.
inline std::vector<Tensor> RunModel(const Model& model, const NamedTensors& feeds) {
  StatusOr<std::unique_ptr<Session>> session = Session::Create(model);
  EXPECT_TRUE(session.ok()) << session.status().message();
  if (!session.ok()) return {};
  StatusOr<std::vector<Tensor>> out = (*session)->Run(feeds);
  EXPECT_TRUE(out.ok()) << out.status().message();
  return out.ok() ? *out : std::vector<Tensor>{};
}

/// max |got - want| / max(1e-3, max |want|); infinite where `got` holds a non-finite value.
inline double MaxRelDiff(const Tensor& got, const Tensor& want) {
  const std::vector<float> a = got.ToFloats(), b = want.ToFloats();
  EXPECT_EQ(a.size(), b.size());
  double diff = 0, ref = 1e-3;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    ref = std::max(ref, std::fabs(static_cast<double>(b[i])));
  }
  return diff / ref;
}

/// What one pass run gave: its status and the per-layer reports it wrote.
struct PassRun {
  Status status;
  std::vector<LayerReport> layers;
};

/// `count` windows of `seqlen` token ids below `vocab`, a fixed pattern shifted by `salt`
/// (calibration data for the synthetic decoders).
inline std::vector<Tensor> TokenWindows(int64_t vocab, int count, int64_t seqlen, int64_t salt) {
  std::vector<Tensor> windows;
  for (int w = 0; w < count; ++w) {
    std::vector<int64_t> ids;
    for (int64_t i = 0; i < seqlen; ++i) ids.push_back((i * 29 + w * 11 + salt) % vocab);
    windows.push_back(Tensor::FromVector<int64_t>(ids, {1, seqlen}));
  }
  return windows;
}

/// One 9-token input_ids feed below `vocab`.
inline NamedTensors TokenFeeds(int64_t vocab) {
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 9; ++i) ids.push_back((i * 37 + 5) % vocab);
  return {{"input_ids", Tensor::FromVector<int64_t>(ids, {1, 9})}};
}

/// One synthetic architecture in one exporter's style.
struct ArchStyleCase {
  SyntheticArch arch;
  ExportStyle style;
};

/// A parameterised test's name for one case: "llama_dynamo".
inline std::string ArchStyleCaseName(const ::testing::TestParamInfo<ArchStyleCase>& info) {
  return std::string(SyntheticArchName(info.param.arch)) + "_" + ExportStyleName(info.param.style);
}

/// Every synthetic architecture in every export style.
inline std::vector<ArchStyleCase> ArchStyleCases() {
  std::vector<ArchStyleCase> cases;
  for (SyntheticArch arch : AllSyntheticArchs())
    for (ExportStyle style : {ExportStyle::kDynamo, ExportStyle::kTorchScript, ExportStyle::kOrtFused})
      cases.push_back({arch, style});
  return cases;
}

}  // namespace qc
