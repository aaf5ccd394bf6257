// Tests of SessionOptions::cuda_graphs (label gpu): runs replayed as a captured CUDA graph compute
// what the steps do, pick up each run's feeds, and fall back to the steps when a run cannot be
// captured or a feed the host reads changes. Every test skips when the machine has no CUDA device.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "formats/model_builder.h"
#include "runtime/cuda/device.h"
#include "runtime/executor.h"
#include "runtime/perplexity.h"
#include "tests/random_tensor.h"
#include "tests/shared_models.h"

namespace qc {
namespace {

#define SKIP_WITHOUT_DEVICE() \
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device"

std::string Joined(const std::vector<std::string>& lines) {
  std::string all;
  for (const std::string& line : lines) all += line + "\n";
  return all;
}

// y = Reshape(x) * 2 + Cast(k): x (128 KiB) is uploaded through a host view of the feed, k (small)
// is read on the host by the Cast, whose result the Add uploads.
Model FeedsModel() {
  GraphBuilder b(5);
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{64, ""}, Dim{512, ""}});
  const std::string k = b.AddInput("k", DType::kInt64, {Dim{1, ""}});
  const std::string flat = b.Op("Reshape", {x, b.AddInt64s({64 * 512})});
  const std::string twice = b.Op("Mul", {flat, b.AddScalar(2.0f)});
  const std::string y = b.Op("Add", {twice, b.Op("Cast", {k}, {{"to", AttrInt(static_cast<int64_t>(DType::kFloat32))}})});
  b.AddOutput(y, DType::kFloat32, {});
  auto model = b.Build({{"", 17}});
  QC_CHECK(model.ok());
  return std::move(model).value();
}

TEST(CudaGraphs, ReplaysTrackEveryRunsFeeds) {
  SKIP_WITHOUT_DEVICE();
  const Model model = FeedsModel();
  auto cpu = Session::Create(model);
  SessionOptions options;
  options.device = Device::kCuda;
  options.cuda_graphs = true;
  auto gpu = Session::Create(model, options);
  ASSERT_TRUE(cpu.ok() && gpu.ok());
  // Runs 1 (steps), 2 (captured), 3-5 (replayed) with new x each time and the same k; then k changes.
  for (uint32_t run = 0; run < 6; ++run) {
    SCOPED_TRACE("run " + std::to_string(run + 1));
    const NamedTensors feeds = {{"x", Random({64, 512}, 100 + run)}, {"k", Tensor::FromVector<int64_t>({run < 5 ? 3 : 7}, {1})}};
    auto want = (*cpu)->Run(feeds);
    auto got = (*gpu)->Run(feeds);
    ASSERT_TRUE(want.ok() && got.ok()) << (got.ok() ? want.status().message() : got.status().message());
    EXPECT_TRUE((*want)[0].BitEqual((*got)[0]));
    if (run == 4) EXPECT_NE(Joined((*gpu)->DeviceSummary()).find("cuda: 3 runs replayed as one CUDA graph"), std::string::npos)
        << Joined((*gpu)->DeviceSummary());
  }
  const std::string summary = Joined((*gpu)->DeviceSummary());
  EXPECT_NE(summary.find("CUDA graphs off: a feed the host steps read changed"), std::string::npos) << summary;
}

// A run with a CPU fallback (a device value copied to the host mid-run) cannot be captured: the
// session says so, naming the value, and runs the steps, with the right results.
TEST(CudaGraphs, AnUncapturableRunFallsBackToTheSteps) {
  SKIP_WITHOUT_DEVICE();
  GraphBuilder b(2);
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{4, ""}, Dim{33, ""}, Dim{129, ""}});
  const std::string floor = b.Op("Floor", {b.Op("Mul", {x, b.AddScalar(3.0f)})});  // Floor: no CUDA kernel
  b.AddOutput(b.Op("Add", {floor, x}), DType::kFloat32, {});
  auto model = b.Build({{"", 17}});
  ASSERT_TRUE(model.ok()) << model.status().message();
  auto cpu = Session::Create(*model);
  SessionOptions options;
  options.device = Device::kCuda;
  options.cuda_graphs = true;
  auto gpu = Session::Create(*model, options);
  ASSERT_TRUE(cpu.ok() && gpu.ok());
  for (uint32_t run = 0; run < 4; ++run) {
    const NamedTensors feeds = {{"x", Random({4, 33, 129}, 10 + run, -5.0f, 5.0f)}};
    auto want = (*cpu)->Run(feeds);
    auto got = (*gpu)->Run(feeds);
    ASSERT_TRUE(want.ok() && got.ok()) << (got.ok() ? want.status().message() : got.status().message());
    EXPECT_TRUE((*want)[0].BitEqual((*got)[0])) << "run " << run + 1;
  }
  const std::string summary = Joined((*gpu)->DeviceSummary());
  EXPECT_NE(summary.find("CUDA graphs off: the run could not be captured"), std::string::npos) << summary;
  EXPECT_EQ(summary.find("replayed"), std::string::npos) << summary;
  // Both name the value, its maker and its reader.
  EXPECT_NE(summary.find("(Floor) is needed on the host mid-run"), std::string::npos) << summary;
  EXPECT_NE(summary.find("cuda: read on the host mid-run: '"), std::string::npos) << summary;
  EXPECT_NE(summary.find("(made by Mul) for node '"), std::string::npos) << summary;
}

// docs-llama-12m scored in the graph (as `qconvert eval` does), 8 windows: replayed windows give
// the steps' perplexity bit for bit, each on its own ids.
TEST(CudaGraphs, SharedLlamaPerplexityIsTheSteps) {
  SKIP_WITHOUT_DEVICE();
  StatusOr<SharedModelAndIds> shared = LoadSharedModelAndIds("docs-llama-12m");
  if (shared.status().code() == StatusCode::kNotFound) GTEST_SKIP() << shared.status().message();
  ASSERT_TRUE(shared.ok()) << shared.status().message();
  Model& model = shared->model;
  const std::vector<int32_t>& ids = shared->ids;
  ASSERT_TRUE(AddNextTokenNll(model).ok());
  PerplexityOptions po;
  po.seqlen = 512;
  po.max_windows = 8;
  double ppl[2] = {0, 0};
  for (int graphs = 0; graphs < 2; ++graphs) {
    SessionOptions options;
    options.device = Device::kCuda;
    options.cuda_graphs = graphs == 1;
    auto session = Session::Create(model, options);
    ASSERT_TRUE(session.ok()) << session.status().message();
    auto r = EvaluatePerplexity(**session, ids, po);
    ASSERT_TRUE(r.ok()) << r.status().message();
    ppl[graphs] = r->ppl;
    const std::string summary = Joined((*session)->DeviceSummary());
    std::printf("graphs %s: ppl %.9f, %.0f tokens/s\n%s", graphs ? "on" : "off", r->ppl, r->tokens_per_second, summary.c_str());
    if (graphs == 1) EXPECT_NE(summary.find("cuda: 6 runs replayed as one CUDA graph"), std::string::npos) << summary;
  }
  EXPECT_EQ(ppl[0], ppl[1]);
}

}  // namespace
}  // namespace qc
