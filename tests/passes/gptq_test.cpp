// Tests of GPTQ (passes/gptq_solver.cpp and passes/gptq.cpp): an identity Hessian gives
// round-to-nearest exactly, correlated inputs give less output error than round-to-nearest,
// act-order encodings are consistent, damping escalates and fails loudly, and the pass turns a
// synthetic decoder and docs-llama-12m into runnable MatMulNBits artifacts.
#include "passes/gptq.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "calibrate/calibration_data.h"
#include "calibrate/calibrator.h"
#include "formats/linear_layers.h"
#include "formats/model_builder.h"
#include "formats/npy.h"
#include "formats/onnx_reader.h"
#include "formats/onnx_writer.h"
#include "formats/synthetic_models.h"
#include "formats/tokenizer.h"
#include "passes/registry.h"
#include "passes/weight_quant.h"
#include "runtime/executor.h"
#include "runtime/input_binding.h"
#include "runtime/perplexity.h"
#include "tests/gptq_inputs.h"
#include "tests/passes/pass_test_support.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

// Groups formed in act-order when act_order (g_idx), GptqSpec's default.
GptqSpec Spec(int bits, int64_t group_size, bool sym, bool act_order = false) {
  return SolverSpec(bits, group_size, sym, act_order, /*static_groups=*/false);
}

// ||X (W - W~)||_F computed directly.
double DirectOutputError(const std::vector<float>& x, int64_t rows, int64_t k, const std::vector<float>& w,
                   const std::vector<float>& w_hat, int64_t n) {
  double sum = 0;
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t j = 0; j < n; ++j) {
      double y = 0;
      for (int64_t i = 0; i < k; ++i) y += static_cast<double>(x[t * k + i]) * (w[i * n + j] - w_hat[i * n + j]);
      sum += y * y;
    }
  return std::sqrt(sum);
}

std::vector<double> Identity(int64_t k, double scale = 1.0) {
  std::vector<double> h(k * k, 0.0);
  for (int64_t i = 0; i < k; ++i) h[i * k + i] = scale;
  return h;
}

// ---------------------------------------------------------------------------------------------
// The solver.

TEST(GptqSolver, UpperCholeskyOfInverseIsTheFactorOfHInverse) {
  constexpr int64_t k = 40;
  const std::vector<float> x = CorrelatedInputs(200, k, 11);
  std::vector<double> h = HessianOf(x, 200, k), u;
  for (int64_t i = 0; i < k; ++i) h[i * k + i] += 0.01;
  ASSERT_TRUE(UpperCholeskyOfInverse(h, k, &u));
  for (int64_t i = 0; i < k; ++i) {
    EXPECT_GT(u[i * k + i], 0.0);
    for (int64_t j = 0; j < i; ++j) EXPECT_EQ(u[i * k + j], 0.0) << "U is upper triangular";
  }
  // Uᵀ U H = I.
  double max_err = 0;
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) {
      double v = 0;
      for (int64_t a = 0; a < k; ++a) {
        double utu = 0;
        for (int64_t b = 0; b <= std::min(i, a); ++b) utu += u[b * k + i] * u[b * k + a];
        v += utu * h[a * k + j];
      }
      max_err = std::max(max_err, std::fabs(v - (i == j ? 1.0 : 0.0)));
    }
  EXPECT_LT(max_err, 1e-8);
  std::vector<double> indefinite = Identity(k);
  indefinite[3 * k + 3] = -1;
  EXPECT_FALSE(UpperCholeskyOfInverse(indefinite, k, &u));
}

TEST(GptqSolver, IdentityHessianEqualsRoundToNearest) {
  // N = 80 spans two column chunks; K = 96 is not a multiple of the block size 40 below.
  constexpr int64_t k = 96, n = 80;
  const std::vector<float> w = RandomNormal(k * n, 7);
  for (bool sym : {true, false})
    for (int64_t group : {int64_t{16}, int64_t{32}, int64_t{-1}})
      for (bool search : {false, true})
        for (bool act_order : {false, true}) {
          SCOPED_TRACE(testing::Message() << "sym " << sym << " group " << group << " search " << search
                                          << " act_order " << act_order);
          GptqSpec spec = Spec(4, group, sym, act_order);
          spec.quant.scale_search = search;
          spec.block_size = 40;  // group starts fall inside blocks too
          StatusOr<GptqResult> gptq = GptqQuantize(w, k, n, Identity(k, 2.0), spec);
          ASSERT_TRUE(gptq.ok()) << gptq.status().message();
          StatusOr<QuantizedWeight> rtn = QuantizeRtn(w, k, n, spec.quant);
          ASSERT_TRUE(rtn.ok());
          EXPECT_EQ(gptq->weight.q, rtn->q);
          EXPECT_EQ(gptq->weight.scales, rtn->scales);
          EXPECT_EQ(gptq->weight.zero_points, rtn->zero_points);
          EXPECT_TRUE(gptq->weight.g_idx.empty()) << "equal diag(H) keeps input order";
          EXPECT_EQ(gptq->w_hat, rtn->Dequantize());
          EXPECT_DOUBLE_EQ(gptq->percdamp, 0.01);
          EXPECT_TRUE(gptq->notes.empty());
        }
}

TEST(GptqSolver, LessOutputErrorThanRoundToNearestOnCorrelatedInputs) {
  constexpr int64_t rows = 1024, k = 64, n = 48;
  const std::vector<float> x = CorrelatedInputs(rows, k, 21);
  const std::vector<double> h = HessianOf(x, rows, k);
  const std::vector<float> w = RandomNormal(k * n, 22);
  for (bool sym : {true, false})
    for (int64_t group : {int64_t{16}, int64_t{-1}})
      for (bool act_order : {false, true})
        for (int bits : {3, 4}) {
          SCOPED_TRACE(testing::Message() << "sym " << sym << " group " << group << " act_order " << act_order
                                          << " bits " << bits);
          const GptqSpec spec = Spec(bits, group, sym, act_order);
          StatusOr<GptqResult> gptq = GptqQuantize(w, k, n, h, spec);
          ASSERT_TRUE(gptq.ok()) << gptq.status().message();
          StatusOr<QuantizedWeight> rtn = QuantizeRtn(w, k, n, spec.quant);
          ASSERT_TRUE(rtn.ok());
          const double e_gptq = DirectOutputError(x, rows, k, w, gptq->w_hat, n);
          const double e_rtn = DirectOutputError(x, rows, k, w, rtn->Dequantize(), n);
          EXPECT_LT(e_gptq, 0.75 * e_rtn);
          // The report's Hessian-based error agrees with the direct one.
          const OutputError from_h = OutputErrorFromHessian(h, k, w, gptq->w_hat, n);
          const double signal = DirectOutputError(x, rows, k, w, std::vector<float>(w.size(), 0.0f), n);
          EXPECT_NEAR(from_h.rel_error, e_gptq / signal, 1e-6);
        }
}

TEST(GptqSolver, ActOrderGroupsAreConsistent) {
  constexpr int64_t rows = 512, k = 64, n = 24;
  const std::vector<float> x = CorrelatedInputs(rows, k, 31);
  const std::vector<double> h = HessianOf(x, rows, k);
  const std::vector<float> w = RandomNormal(k * n, 32);
  for (bool sym : {true, false}) {
    SCOPED_TRACE(sym ? "sym" : "asym");
    GptqSpec spec = Spec(4, 16, sym, /*act_order=*/true);
    StatusOr<GptqResult> reordered = GptqQuantize(w, k, n, h, spec);
    ASSERT_TRUE(reordered.ok()) << reordered.status().message();
    const QuantizedWeight& qw = reordered->weight;
    ASSERT_TRUE(qw.Validate().ok()) << qw.Validate().message();
    ASSERT_EQ(qw.g_idx.size(), static_cast<size_t>(k));
    EXPECT_TRUE(reordered->reordered_groups);
    // g_idx is a permutation of the input rows into groups of 16 by decreasing diag(H).
    std::map<int32_t, int> per_group;
    for (int64_t r = 0; r < k; ++r) per_group[qw.g_idx[r]]++;
    EXPECT_EQ(per_group, (std::map<int32_t, int>{{0, 16}, {1, 16}, {2, 16}, {3, 16}}));
    for (int64_t r = 0; r < k; ++r)
      for (int64_t s = 0; s < k; ++s)
        if (qw.g_idx[r] < qw.g_idx[s]) EXPECT_GE(h[r * k + r], h[s * k + s]);
    // The encoding dequantizes to exactly what the solver propagated errors against.
    EXPECT_EQ(qw.Dequantize(), reordered->w_hat);
    EXPECT_TRUE(PackMatMulNBits(qw).ok());

    spec.static_groups = true;
    StatusOr<GptqResult> fixed = GptqQuantize(w, k, n, h, spec);
    ASSERT_TRUE(fixed.ok());
    EXPECT_TRUE(fixed->weight.g_idx.empty());
    EXPECT_FALSE(fixed->reordered_groups);
    EXPECT_EQ(fixed->weight.Dequantize(), fixed->w_hat);
    // Act-order did reorder something: the codes differ from input-order GPTQ.
    StatusOr<GptqResult> plain = GptqQuantize(w, k, n, h, Spec(4, 16, sym));
    ASSERT_TRUE(plain.ok());
    EXPECT_NE(plain->weight.q, fixed->weight.q);
  }
}

TEST(GptqSolver, DeadInputsAreZeroed) {
  constexpr int64_t rows = 256, k = 32, n = 16;
  std::vector<float> x = CorrelatedInputs(rows, k, 41);
  for (int64_t t = 0; t < rows; ++t) x[t * k + 5] = 0.0f;  // channel 5 never fires
  const std::vector<float> w = RandomNormal(k * n, 42);
  StatusOr<GptqResult> r = GptqQuantize(w, k, n, HessianOf(x, rows, k), Spec(4, 16, true));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->dead_inputs, 1);
  for (int64_t j = 0; j < n; ++j) EXPECT_EQ(r->w_hat[5 * n + j], 0.0f);
  ASSERT_EQ(r->notes.size(), 1u);
  EXPECT_NE(r->notes[0].find("never active"), std::string::npos);
}

TEST(GptqSolver, DampingEscalatesOnAnIndefiniteHessian) {
  // Rank 4, then shifted down by 5% of the mean diagonal: eigenvalues of -0.05 mean(diag H), so
  // percdamp 0.01 fails and 0.1 succeeds.
  constexpr int64_t k = 32, n = 16;
  const std::vector<double> h = IndefiniteHessian(k, 51);
  const std::vector<float> w = RandomNormal(k * n, 52);
  StatusOr<GptqResult> r = GptqQuantize(w, k, n, h, Spec(4, 16, true));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_NEAR(r->percdamp, 0.1, 1e-12);
  ASSERT_EQ(r->notes.size(), 1u);
  EXPECT_NE(r->notes[0].find("damping raised from 0.01 to 0.1"), std::string::npos) << r->notes[0];
  EXPECT_EQ(r->weight.Dequantize(), r->w_hat);
}

TEST(GptqSolver, Negative_NonFiniteHessian) {
  constexpr int64_t k = 16, n = 8;
  std::vector<double> h = Identity(k);
  h[2 * k + 7] = h[7 * k + 2] = std::nan("");
  StatusOr<GptqResult> r = GptqQuantize(RandomNormal(k * n, 61), k, n, h, Spec(4, 16, true));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("non-finite"), std::string::npos) << r.status().message();
}

TEST(GptqSolver, Negative_HessianNeverPositiveDefinite) {
  constexpr int64_t k = 16, n = 8;
  StatusOr<GptqResult> r = GptqQuantize(RandomNormal(k * n, 62), k, n, Identity(k, -1.0), Spec(4, 16, true));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("not positive definite even with dampening 10"), std::string::npos)
      << r.status().message();
}

// PrepareGptq (shared by the CPU and CUDA solvers) hands the factorisation the damped H in
// processing order and raises the damping tenfold while it reports failure.
TEST(GptqSolver, PrepareGptqDampsAroundTheFactorisation) {
  constexpr int64_t k = 8, n = 3;
  std::vector<double> h(k * k, 0.0);
  for (int64_t i = 0; i < k; ++i) h[i * k + i] = 1.0 + static_cast<double>(i);  // act-order reverses the rows
  h[0 * k + 1] = h[1 * k + 0] = 0.5;
  std::vector<std::vector<double>> seen;
  CholeskyOfInverse factor = [&](std::vector<double> d) -> StatusOr<bool> {
    seen.push_back(std::move(d));
    return seen.size() == 3;  // fails twice
  };
  GptqSpec spec = Spec(4, -1, true, /*act_order=*/true);
  StatusOr<GptqPlan> plan = PrepareGptq(RandomNormal(k * n, 71), k, n, h, spec, factor);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_NEAR(plan->result.percdamp, 1.0, 1e-12);  // 0.01 -> 0.1 -> 1
  ASSERT_FALSE(plan->result.notes.empty());
  EXPECT_NE(plan->result.notes.back().find("damping raised"), std::string::npos);
  for (int64_t a = 0; a < k; ++a) EXPECT_EQ(plan->perm[a], k - 1 - a);
  const double mean_diag = 4.5;  // mean of 1..8
  for (size_t attempt = 0; attempt < seen.size(); ++attempt) {
    const double damp = 0.01 * std::pow(10.0, static_cast<double>(attempt));
    for (int64_t a = 0; a < k; ++a) {
      EXPECT_NEAR(seen[attempt][a * k + a], h[plan->perm[a] * (k + 1)] + damp * mean_diag, 1e-12);
      for (int64_t b = 0; b < k; ++b)
        if (a != b) EXPECT_EQ(seen[attempt][a * k + b], h[plan->perm[a] * k + plan->perm[b]]);
    }
  }
  EXPECT_EQ(plan->members.size(), 1u);
  EXPECT_EQ(plan->w0.size(), static_cast<size_t>(k * n));
}

TEST(GptqSolver, Negative_PrepareGptqPassesFactorisationErrors) {
  constexpr int64_t k = 4, n = 2;
  CholeskyOfInverse factor = [](std::vector<double>) -> StatusOr<bool> { return Internal("device lost"); };
  StatusOr<GptqPlan> plan = PrepareGptq(RandomNormal(k * n, 72), k, n, Identity(k), Spec(4, -1, true), factor);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("device lost"), std::string::npos);
}

TEST(GptqSolver, Negative_BadArguments) {
  constexpr int64_t k = 16, n = 8;
  const std::vector<float> w = RandomNormal(k * n, 63);
  EXPECT_FALSE(GptqQuantize(w, k, n, Identity(k - 1), Spec(4, 16, true)).ok());
  EXPECT_FALSE(GptqQuantize(w, k, n + 1, Identity(k), Spec(4, 16, true)).ok());
  EXPECT_FALSE(GptqQuantize(w, k, n, Identity(k), Spec(9, 16, true)).ok());
  GptqSpec spec = Spec(4, 16, true);
  spec.block_size = 0;
  EXPECT_FALSE(GptqQuantize(w, k, n, Identity(k), spec).ok());
  spec = Spec(4, 16, true);
  spec.percdamp = -1;
  EXPECT_FALSE(GptqQuantize(w, k, n, Identity(k), spec).ok());
}

TEST(GptqSolver, ResultDoesNotDependOnThreadCount) {
  constexpr int64_t rows = 256, k = 64, n = 200;
  const std::vector<float> x = CorrelatedInputs(rows, k, 71);
  const std::vector<double> h = HessianOf(x, rows, k);
  const std::vector<float> w = RandomNormal(k * n, 72);
  const GptqSpec spec = Spec(3, 16, false, /*act_order=*/true);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  StatusOr<GptqResult> one = GptqQuantize(w, k, n, h, spec);
  omp_set_num_threads(std::max(threads, 3));
  StatusOr<GptqResult> many = GptqQuantize(w, k, n, h, spec);
  omp_set_num_threads(threads);
  ASSERT_TRUE(one.ok() && many.ok());
  EXPECT_EQ(one->w_hat, many->w_hat);
  EXPECT_EQ(one->weight.q, many->weight.q);
  EXPECT_EQ(one->weight.scales, many->weight.scales);
}

// ---------------------------------------------------------------------------------------------
// The pass.

PassRun RunGptq(Model& model, const QuantOptions& options, Calibrator* calibrator) {
  StatusOr<std::vector<std::unique_ptr<Pass>>> pipeline = CreatePipeline("gptq");
  QC_CHECK(pipeline.ok() && pipeline->size() == 1);
  PassRun run;
  PassContext context{options};
  context.layers = &run.layers;
  context.calibrator = calibrator;
  run.status = (*pipeline)[0]->Run(model, context);
  return run;
}

std::vector<Tensor> RandomWindows(int count, int64_t seqlen, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Tensor> windows;
  for (int w = 0; w < count; ++w) {
    Tensor t(DType::kInt64, {1, seqlen});
    for (int64_t i = 0; i < seqlen; ++i) t.mutable_data<int64_t>()[i] = static_cast<int64_t>(rng() % vocab);
    windows.push_back(t);
  }
  return windows;
}

TEST(Gptq, IsRegisteredAndNeedsCalibration) {
  bool found = false;
  for (const PassInfo& p : AllPasses()) found |= std::string(p.name) == "gptq";
  EXPECT_TRUE(found);
  EXPECT_TRUE(GptqPass().NeedsCalibration());
  EXPECT_FALSE(GptqPass().CanDeferQuantization());
}

TEST(Gptq, Negative_NoCalibrator) {
  SyntheticConfig config;
  StatusOr<Model> model = BuildSyntheticDecoder(config);
  ASSERT_TRUE(model.ok());
  const Model before = *model;
  PassRun run = RunGptq(*model, QuantOptions{}, nullptr);
  EXPECT_EQ(run.status.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(run.status.message().find("--calib"), std::string::npos) << run.status.message();
  EXPECT_EQ(OpCounts(*model), OpCounts(before)) << "the model is untouched";
}

// Every linear layer of synthetic decoders (MatMul and Gemm exports) becomes a MatMulNBits, the
// artifact runs, reports are complete, and the bytes do not depend on the thread count.
TEST(Gptq, SyntheticDecoderEndToEnd) {
  struct Case {
    SyntheticArch arch;
    ExportStyle style;
    int bits;
    int64_t group_size;
    bool sym, act_order, static_groups;
    std::string scheme;
  };
  const std::vector<Case> cases = {
      {SyntheticArch::kLlama, ExportStyle::kDynamo, 4, 16, true, true, false, "w4-g16-sym+act-order"},
      {SyntheticArch::kLlama, ExportStyle::kTorchScript, 3, -1, false, false, true, "w3-perchannel-asym"},
      {SyntheticArch::kGpt2, ExportStyle::kDynamo, 4, 16, false, true, true, "w4-g16-asym+act-order"},
      {SyntheticArch::kGpt2, ExportStyle::kTorchScript, 3, 32, true, false, true, "w3-g32-sym"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(SyntheticArchName(c.arch)) + " " + ExportStyleName(c.style) + " " + c.scheme);
    SyntheticConfig config;
    config.arch = c.arch;
    config.export_style = c.style;
    config.hidden = 32;
    config.intermediate = 64;
    config.init_std = 0.1f;
    config.seed = 5;
    StatusOr<Model> original = BuildSyntheticDecoder(config);
    ASSERT_TRUE(original.ok()) << original.status().message();
    const size_t linear = FindLinearLayers(original->graph).size();
    Calibrator calibrator(RandomWindows(4, 24, config.vocab, 9));
    QuantOptions o;
    o.bits = c.bits;
    o.group_size = c.group_size;
    o.sym = c.sym;
    o.act_order = c.act_order;
    o.static_groups = c.static_groups;
    std::string bytes[2];
    for (int attempt = 0; attempt < 2; ++attempt) {
      const int threads = omp_get_max_threads();
      if (attempt == 1) omp_set_num_threads(1);
      Model model = *original;
      PassRun run = RunGptq(model, o, &calibrator);
      omp_set_num_threads(threads);
      ASSERT_TRUE(run.status.ok()) << run.status.message();
      ASSERT_EQ(run.layers.size(), linear);
      for (const LayerReport& r : run.layers) {
        EXPECT_EQ(r.bits, c.bits) << r.name;
        EXPECT_EQ(r.pass, "gptq");
        EXPECT_EQ(r.scheme, c.scheme);
        EXPECT_GE(r.damping, 0.01);
        EXPECT_TRUE(std::isfinite(r.output_rel_error) && r.output_rel_error > 0) << r.name;
        EXPECT_TRUE(std::isfinite(r.sqnr_db)) << r.name;
        EXPECT_GT(r.weight_rel_error, 0);
      }
      EXPECT_TRUE(FindLinearLayers(model.graph).empty());
      EXPECT_EQ(OpCounts(model)["com.microsoft.MatMulNBits"], static_cast<int>(linear));
      for (const Node& node : model.graph.nodes)
        if (node.op_type == "MatMulNBits") {
          const bool has_g_idx = node.inputs.size() >= 5 && !node.inputs[4].empty();
          EXPECT_EQ(has_g_idx, c.act_order && !c.static_groups) << "act-order records its groups unless static";
          EXPECT_EQ(node.inputs.size() >= 4 && !node.inputs[3].empty(), !c.sym) << "zero points iff asymmetric";
        }
      StatusOr<std::unique_ptr<Session>> session = Session::Create(model);
      ASSERT_TRUE(session.ok()) << session.status().message();
      StatusOr<NamedTensors> feeds = BindInputs(**session, calibrator.windows()[0]);
      ASSERT_TRUE(feeds.ok());
      StatusOr<std::vector<Tensor>> out = (*session)->Run(*feeds);
      ASSERT_TRUE(out.ok()) << out.status().message();
      for (float v : (*out)[0].ToFloats()) ASSERT_TRUE(std::isfinite(v));
      StatusOr<std::string> serialized = SerializeOnnxModel(model);
      ASSERT_TRUE(serialized.ok());
      bytes[attempt] = *serialized;
    }
    EXPECT_EQ(bytes[0], bytes[1]) << "same input, same bytes, whatever the thread count";
  }
}

TEST(Gptq, Negative_ExcludedLayersStayFloat) {
  SyntheticConfig config;
  config.hidden = 32;
  config.intermediate = 64;
  StatusOr<Model> model = BuildSyntheticDecoder(config);
  ASSERT_TRUE(model.ok());
  const std::vector<LinearLayer> layers = FindLinearLayers(model->graph);
  QuantOptions o;
  o.group_size = 16;
  o.exclude_regex = "^(" + layers[0].node_name + "|" + layers[2].weight + ")$";  // by node, by weight name
  Calibrator calibrator(RandomWindows(2, 16, config.vocab, 3));
  PassRun run = RunGptq(*model, o, &calibrator);
  ASSERT_TRUE(run.status.ok()) << run.status.message();
  ASSERT_EQ(run.layers.size(), layers.size() - 2) << "excluded layers are not reported, as in absmax";
  EXPECT_EQ(run.layers[0].name, layers[1].node_name);
  const std::vector<LinearLayer> left = FindLinearLayers(model->graph);
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(left[0].node_name, layers[0].node_name);
  EXPECT_EQ(left[1].node_name, layers[2].node_name);
}

// ---------------------------------------------------------------------------------------------
// docs-llama-12m from ../shared: a small calibration, perplexity on a few windows near or below
// round-to-nearest's.

const std::string kShared = QC_SHARED_DIR;

TEST(GptqRealModel, DocsLlamaBeatsRoundToNearest) {
  const std::string dir = kShared + "/models/docs-llama-12m";
  const std::string calib_text = kShared + "/data/docs-calib/docs-calib.txt";
  if (!fs::exists(dir + "/model.onnx") || !fs::exists(calib_text)) GTEST_SKIP() << "../shared is absent";
  StatusOr<Model> original = ReadOnnxModel(dir + "/model.onnx");
  ASSERT_TRUE(original.ok()) << original.status().message();
  StatusOr<Tokenizer> tokenizer = Tokenizer::FromFile(dir + "/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok());
  std::ifstream in(calib_text);
  std::stringstream text;
  text << in.rdbuf();
  StatusOr<std::vector<int32_t>> calib_ids = tokenizer->Encode(text.str());
  ASSERT_TRUE(calib_ids.ok());
  // 16 x 256 tokens: fewer make the 1024-wide Hessians too rank-deficient for GPTQ to beat
  // rounding reliably.
  StatusOr<std::vector<Tensor>> windows = SampleCalibrationWindows(*calib_ids, 16, 256, 0);
  ASSERT_TRUE(windows.ok());
  StatusOr<Tensor> val = ReadNpy(dir + "/docs-val.ids.npy");
  ASSERT_TRUE(val.ok());
  std::vector<int32_t> val_ids;
  for (float v : val->ToFloats()) val_ids.push_back(static_cast<int32_t>(v));
  auto perplexity = [&](const Model& m) {
    StatusOr<std::unique_ptr<Session>> session = Session::Create(m);
    EXPECT_TRUE(session.ok());
    PerplexityOptions po;
    po.seqlen = 512;
    po.max_windows = 3;
    StatusOr<PerplexityResult> r = EvaluatePerplexity(**session, val_ids, po);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? r->ppl : -1.0;
  };

  QuantOptions o;
  o.bits = 4;
  o.group_size = 128;
  o.scale_search = true;  // the command line's default
  Model rtn = *original;
  std::vector<LayerReport> rtn_reports;
  ASSERT_TRUE(RunRoundToNearest(rtn, "absmax", SpecFromOptions(o, true), "", &rtn_reports).ok());
  Model gptq = *original;
  Calibrator calibrator(*windows);
  o.act_order = true;
  PassRun run = RunGptq(gptq, o, &calibrator);
  ASSERT_TRUE(run.status.ok()) << run.status.message();
  const double ppl_float = perplexity(*original), ppl_rtn = perplexity(rtn), ppl_gptq = perplexity(gptq);
  std::cout << "docs-llama-12m, 3 windows: float " << ppl_float << ", rtn w4 g128 " << ppl_rtn << ", gptq " << ppl_gptq
            << "\n";
  EXPECT_TRUE(std::isfinite(ppl_gptq));
  EXPECT_GT(ppl_gptq, 0.99 * ppl_float);
  EXPECT_LT(ppl_gptq, 1.005 * ppl_rtn);
}

}  // namespace
}  // namespace qc
