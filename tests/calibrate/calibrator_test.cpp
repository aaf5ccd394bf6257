// Calibrator: statistics equal a direct computation on the same activations; sequential mode
// feeds replaced weights to later groups; output error from the Hessian equals the direct one.
#include "calibrate/calibrator.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "formats/model_builder.h"

namespace qc {
namespace {

constexpr int64_t kVocab = 32, kHidden = 8, kOut = 6, kSeq = 12;

// ids -> Gather(embedding) = X -> {MatMul W_a, MatMul W_b} ; W_a output -> MatMul W_c = logits.
Model BuildModel() {
  GraphBuilder b(7);
  const std::string ids = b.AddInput("input_ids", DType::kInt64, {Dim{1, ""}, Dim{-1, "seq"}});
  const std::string table = b.AddRandomNormal("embed", {kVocab, kHidden}, 0.0f, 1.0f);
  const std::string x = b.Op("Gather", {table, ids});
  const std::string wa = b.AddRandomNormal("w_a", {kHidden, kHidden}, 0.0f, 0.5f);
  const std::string wb = b.AddRandomNormal("w_b", {kHidden, kOut}, 0.0f, 0.5f);
  const std::string wc = b.AddRandomNormal("w_c", {kHidden, kOut}, 0.0f, 0.5f);
  const std::string ya = b.Op("MatMul", {x, wa});
  const std::string yb = b.Op("MatMul", {x, wb});
  const std::string yc = b.Op("MatMul", {ya, wc});
  const std::string logits = b.Op("Add", {yb, yc});
  b.AddOutput(logits, DType::kFloat32, {});
  auto model = b.Build({{"", 17}});
  QC_CHECK(model.ok());
  return std::move(model).value();
}

std::vector<Tensor> Windows(int count) {
  std::mt19937 rng(3);
  std::vector<Tensor> windows;
  for (int w = 0; w < count; ++w) {
    Tensor t(DType::kInt64, {1, kSeq});
    for (int64_t i = 0; i < kSeq; ++i) t.mutable_data<int64_t>()[i] = rng() % kVocab;
    windows.push_back(t);
  }
  return windows;
}

TEST(CalibratorTest, GroupsLayersReadingTheSameValue) {
  const Model model = BuildModel();
  const auto groups = GroupLayersByInput(FindLinearLayers(model.graph));
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0].layers.size(), 2u);  // W_a and W_b read X
  EXPECT_EQ(groups[1].layers.size(), 1u);
  EXPECT_EQ(groups[1].layers[0].weight, "w_c");
}

TEST(CalibratorTest, StatsEqualDirectComputation) {
  const Model model = BuildModel();
  const std::vector<Tensor> windows = Windows(3);
  Calibrator calibrator(windows);
  StatsRequest request;
  request.hessian = true;
  request.outlier_threshold = 1.0;
  auto stats = calibrator.CollectStats(model, FindLinearLayers(model.graph), request);
  ASSERT_TRUE(stats.ok()) << stats.status().message();
  ASSERT_EQ(stats->size(), 2u);
  const InputStats& s = (*stats)[0];
  EXPECT_EQ(s.rows, 3 * kSeq);

  const float* table = model.graph.FindInitializer("embed")->data<float>();
  std::vector<double> h(kHidden * kHidden, 0.0), mean(kHidden, 0.0);
  std::vector<float> max(kHidden, 0.0f);
  std::vector<int64_t> outliers(kHidden, 0);
  for (const Tensor& w : windows)
    for (int64_t t = 0; t < kSeq; ++t) {
      const float* x = table + w.data<int64_t>()[t] * kHidden;
      for (int64_t i = 0; i < kHidden; ++i) {
        mean[i] += std::fabs(x[i]) / (3.0 * kSeq);
        max[i] = std::max(max[i], std::fabs(x[i]));
        outliers[i] += std::fabs(x[i]) > 1.0f;
        for (int64_t j = 0; j < kHidden; ++j) h[i * kHidden + j] += 2.0 * x[i] * x[j] / (3.0 * kSeq);
      }
    }
  for (int64_t i = 0; i < kHidden; ++i) {
    EXPECT_FLOAT_EQ(s.abs_max[i], max[i]);
    EXPECT_NEAR(s.abs_mean[i], mean[i], 1e-6);
    EXPECT_EQ(s.outlier_count[i], outliers[i]);
    for (int64_t j = 0; j < kHidden; ++j) EXPECT_NEAR(s.hessian[i * kHidden + j], h[i * kHidden + j], 1e-5);
  }
}

TEST(CalibratorTest, SequentialSeesReplacedWeights) {
  const Model model = BuildModel();
  const std::vector<LinearLayer> layers = FindLinearLayers(model.graph);
  Calibrator calibrator(Windows(2));
  StatsRequest request;
  request.hessian = true;
  auto float_stats = calibrator.CollectStats(model, layers, request);
  ASSERT_TRUE(float_stats.ok());

  // Doubling W_a doubles the input of W_c (the second group); the first group is unaffected.
  int visits = 0;
  Status status = calibrator.RunSequential(
      model, layers, request, [&](const LayerGroup& group, const InputStats& stats,
                                         const std::vector<const Tensor*>& inputs) -> StatusOr<GroupWeights> {
        const InputStats& expected = (*float_stats)[visits];
        const double factor = visits == 0 ? 1.0 : 2.0;
        for (int64_t i = 0; i < stats.k; ++i) EXPECT_NEAR(stats.abs_max[i], factor * expected.abs_max[i], 1e-5);
        for (size_t i = 0; i < stats.hessian.size(); ++i)
          EXPECT_NEAR(stats.hessian[i], factor * factor * expected.hessian[i], 1e-4);
        // The visitor also sees X itself, one tensor per window, which the statistics summarise.
        EXPECT_EQ(inputs.size(), 2u);
        std::vector<float> abs_max(stats.k, 0.0f);
        for (const Tensor* x : inputs) {
          if (x == nullptr || x->dim(-1) != stats.k) return Internal("unexpected input tensor");
          for (int64_t i = 0; i < x->numel(); ++i)
            abs_max[i % stats.k] = std::max(abs_max[i % stats.k], std::fabs(x->data<float>()[i]));
        }
        for (int64_t i = 0; i < stats.k; ++i) EXPECT_EQ(abs_max[i], stats.abs_max[i]);
        GroupWeights weights(group.layers.size());
        if (visits == 0) {
          EXPECT_EQ(group.layers[0].weight, "w_a");
          std::vector<float> wa = model.graph.FindInitializer("w_a")->ToFloats();
          for (float& v : wa) v *= 2.0f;
          weights[0] = wa;
        }
        ++visits;
        return weights;
      });
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(visits, 2);
}

// Passes put each quantized layer in place from the visitor (docs/MEMORY.md): RunSequential
// must not read the model after the first visit.
TEST(CalibratorTest, SequentialVisitorMayRewriteTheModel) {
  Model model = BuildModel();
  const std::vector<LinearLayer> layers = FindLinearLayers(model.graph);
  Calibrator calibrator(Windows(2));
  StatsRequest request;
  request.hessian = true;
  auto float_stats = calibrator.CollectStats(model, layers, request);
  ASSERT_TRUE(float_stats.ok());
  const std::vector<float> wa = model.graph.FindInitializer("w_a")->ToFloats();
  int visits = 0;
  Status status = calibrator.RunSequential(
      model, layers, request, [&](const LayerGroup& group, const InputStats& stats,
                                         const std::vector<const Tensor*>&) -> StatusOr<GroupWeights> {
        const double factor = visits == 0 ? 1.0 : 2.0;
        for (int64_t i = 0; i < stats.k; ++i)
          EXPECT_NEAR(stats.abs_max[i], factor * (*float_stats)[visits].abs_max[i], 1e-5);
        GroupWeights weights(group.layers.size());
        if (visits == 0) {
          weights[0] = wa;
          for (float& v : weights[0]) v *= 2.0f;
          // What a pass does once a group is solved: rewrite the graph it was given.
          for (Node& node : model.graph.nodes) node.inputs.assign(node.inputs.size(), "gone");
          for (const std::string& name : std::vector<std::string>(model.graph.initializer_names()))
            model.graph.RemoveInitializer(name);
        }
        ++visits;
        return weights;
      });
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(visits, 2);
}

TEST(CalibratorTest, OutputErrorFromHessianEqualsDirect) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  const int64_t rows = 40, k = 5, n = 3;
  std::vector<float> x(rows * k), w(k * n), w_hat(k * n);
  for (float& v : x) v = normal(rng);
  for (size_t i = 0; i < w.size(); ++i) {
    w[i] = normal(rng);
    w_hat[i] = w[i] + 0.1f * normal(rng);
  }
  std::vector<double> h(k * k, 0.0);
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) h[i * k + j] += 2.0 * x[t * k + i] * x[t * k + j] / rows;
  double signal = 0, noise = 0;
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t c = 0; c < n; ++c) {
      double y = 0, y_hat = 0;
      for (int64_t i = 0; i < k; ++i) {
        y += double(x[t * k + i]) * w[i * n + c];
        y_hat += double(x[t * k + i]) * w_hat[i * n + c];
      }
      signal += y * y;
      noise += (y - y_hat) * (y - y_hat);
    }
  const OutputError e = OutputErrorFromHessian(h, k, w, w_hat, n);
  // H M is a float32 product (traces in float64): ~1e-7 relative, far below the reports' digits.
  const double want = std::sqrt(noise / signal);
  EXPECT_NEAR(e.rel_error, want, 1e-6 * want);
  EXPECT_NEAR(e.sqnr_db, 10 * std::log10(signal / noise), 1e-5);
  EXPECT_EQ(OutputErrorFromHessian(h, k, w, w, n).rel_error, 0.0);
}

// RunSequential on the GPU: where a CUDA session cannot start (no GPU, or a build without CUDA)
// it fails as the session does, before any visit; elsewhere it gives the CPU's statistics
// (tests/passes/cuda_gptq_test.cpp checks them in detail).
TEST(CalibratorTest, SequentialOnTheDeviceFailsCleanlyOrMatchesTheCpu) {
  const Model model = BuildModel();
  const std::vector<LinearLayer> layers = FindLinearLayers(model.graph);
  StatsRequest request;
  request.hessian = true;
  auto collect = [&](Device device, std::vector<InputStats>* out) {
    Calibrator calibrator(Windows(3));
    calibrator.set_device(device, /*activation_budget_bytes=*/0);
    EXPECT_EQ(calibrator.device(), device);
    EXPECT_EQ(calibrator.FirstWindows(1).device(), device);
    return calibrator.RunSequential(model, layers, request,
                                    [&](const LayerGroup& group, const InputStats& stats,
                                        const std::vector<const Tensor*>&) -> StatusOr<GroupWeights> {
                                      out->push_back(stats);
                                      return GroupWeights(group.layers.size());
                                    });
  };
  std::vector<InputStats> cpu, gpu;
  ASSERT_TRUE(collect(Device::kCpu, &cpu).ok());
  SessionOptions options;
  options.device = Device::kCuda;
  const auto probe = Session::Create(model, options);
  const Status status = collect(Device::kCuda, &gpu);
  if (!probe.ok()) {
    EXPECT_EQ(status.code(), probe.status().code()) << status.ToString();
    EXPECT_TRUE(gpu.empty());
    return;
  }
  ASSERT_TRUE(status.ok()) << status.ToString();
  ASSERT_EQ(gpu.size(), cpu.size());
  for (size_t g = 0; g < cpu.size(); ++g)
    for (size_t i = 0; i < cpu[g].hessian.size(); ++i) EXPECT_NEAR(gpu[g].hessian[i], cpu[g].hessian[i], 1e-4);
}

TEST(CalibratorTest, Negative_NoWindows) {
  const Model model = BuildModel();
  Calibrator calibrator({});
  EXPECT_FALSE(calibrator.CollectStats(model, FindLinearLayers(model.graph), {}).ok());
}

}  // namespace
}  // namespace qc
