// Test helpers shared by the pass tests: op counts of a model, running a model on the CPU
// executor, the relative difference of two outputs, and what one pass run returned.
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

}  // namespace qc
