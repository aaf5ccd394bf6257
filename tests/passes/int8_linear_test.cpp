// Tests of the W8A8 encoding (passes/int8_linear): the subgraph equals the scalar reference of
// per-token x per-channel int8 quantization, the outlier decomposition, activation sharing, Gemm
// handling, opsets, the fast MatMulInteger kernel against the reference one, and ONNX Runtime.
#include "passes/int8_linear.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "calibrate/calibrator.h"
#include "formats/linear_layers.h"
#include "formats/model_builder.h"
#include "formats/npy.h"
#include "formats/onnx_writer.h"
#include "formats/synthetic_models.h"
#include "passes/registry.h"
#include "passes/weight_quant.h"
#include "runtime/cpu/kernel.h"
#include "runtime/executor.h"
#include "tests/ort_batch.h"
#include "tests/passes/pass_test_support.h"
#include "tests/temp_dir.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

std::vector<float> RandomFloats(int64_t count, float stddev, std::mt19937& rng) {
  return RandomNormalTensor({count}, 0.0f, stddev, rng).ToFloats();
}

// max |a - b| <= tol * max(1, max |b|), and every value finite.
void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  double max_diff = 0, max_ref = 1;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << i;
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(got[i]) - want[i]));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(want[i])));
  }
  EXPECT_LE(max_diff, tol * max_ref);
}

TEST(Int8Weight, PerOutputChannelSymmetric) {
  // Column 0: max |w| = 2 -> scale 2/127, the extreme maps to -127; column 1 all zero.
  const std::vector<float> w = {1.0f, 0.0f, -2.0f, 0.0f, 0.5f, 0.0f};
  const Int8Weight q = QuantizeWeightInt8(w, 3, 2);
  ASSERT_EQ(q.scale.size(), 2u);
  EXPECT_FLOAT_EQ(q.scale[0], 2.0f / 127.0f);
  EXPECT_EQ(q.scale[1], 0.0f);
  EXPECT_EQ(q.q[2 * 2 + 0], 32) << "0.5 / (2/127) = 31.75 rounds to 32";
  EXPECT_EQ(q.q[1 * 2 + 0], -127);
  EXPECT_EQ(q.q[0 * 2 + 0], 64) << "63.5 rounds half to even";
  for (int r = 0; r < 3; ++r) EXPECT_EQ(q.q[r * 2 + 1], 0);
  const std::vector<float> dq = q.Dequantize();
  EXPECT_FLOAT_EQ(dq[1 * 2 + 0], -2.0f);
  EXPECT_EQ(dq[1], 0.0f);
  // Round-to-nearest error is at most half a step.
  std::mt19937 rng(3);
  const std::vector<float> big = RandomFloats(64 * 9, 1.0f, rng);
  const Int8Weight qb = QuantizeWeightInt8(big, 64, 9);
  const std::vector<float> dqb = qb.Dequantize();
  for (int64_t r = 0; r < 64; ++r)
    for (int64_t j = 0; j < 9; ++j) {
      EXPECT_LE(std::abs(static_cast<int>(qb.q[r * 9 + j])), 127);
      EXPECT_LE(std::fabs(dqb[r * 9 + j] - big[r * 9 + j]), 0.5f * qb.scale[j] * 1.0001f);
    }
}

TEST(Int8Token, ZeroTokenGivesZeroCodesAndNoNaN) {
  std::vector<float> x(10, 0.0f);
  std::vector<int8_t> q(10, 99);
  const float s = QuantizeTokenInt8(x.data(), 10, q.data());
  EXPECT_GT(s, 0.0f);
  EXPECT_TRUE(std::isfinite(s));
  for (int8_t v : q) EXPECT_EQ(v, 0);
  x = {0.5f, -1.0f, 0.25f};
  const float s2 = QuantizeTokenInt8(x.data(), 3, q.data());
  EXPECT_FLOAT_EQ(s2, 1.0f / 127.0f);
  EXPECT_EQ(q[1], -127);
  EXPECT_EQ(q[0], 64) << "63.5 rounds half to even";
  EXPECT_EQ(q[2], 32);
}

// y = x W1 (MatMul, weight [K, N]), z = Gemm(x2d, W2 [N2, K], C, transB, alpha, beta) and a second
// MatMul reading x (shares x's quantization with the first).
struct LinearGraph {
  Model model;
  int64_t k = 0;
};

LinearGraph MakeLinearGraph(int64_t opset, int64_t k = 48) {
  GraphBuilder b(11);
  const int64_t n1 = 20, n2 = 12, n3 = 7, rows = 6;
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{2}, Dim{3}, Dim{k}});
  b.AddNodeWithOutputs("MatMul", {x, b.AddRandomNormal("w1", {k, n1}, 0.0f, 0.3f)}, {"y1"});
  b.AddNodeWithOutputs("MatMul", {x, b.AddRandomNormal("w3", {k, n3}, 0.0f, 0.3f)}, {"y3"});
  const std::string x2 = b.Op("Reshape", {x, b.AddInt64s({rows, k})});
  b.AddNodeWithOutputs("Gemm", {x2, b.AddRandomNormal("w2", {n2, k}, 0.0f, 0.3f), b.AddRandomNormal("c2", {n2})},
                       {"y2"}, {{"transB", AttrInt(1)}, {"alpha", AttrFloat(0.5f)}, {"beta", AttrFloat(2.0f)}});
  b.AddOutput("y1", DType::kFloat32, {Dim{2}, Dim{3}, Dim{n1}});
  b.AddOutput("y2", DType::kFloat32, {Dim{rows}, Dim{n2}});
  b.AddOutput("y3", DType::kFloat32, {Dim{2}, Dim{3}, Dim{n3}});
  StatusOr<Model> m = b.Build({{"", opset}});
  QC_CHECK(m.ok());
  return {std::move(m).value(), k};
}

// Row 2 is an all-zero token; row 4 has one large value (an outlier that sets its token's scale).
Tensor LinearFeed(int64_t k) {
  std::mt19937 rng(7);
  std::vector<float> x = RandomFloats(6 * k, 1.0f, rng);
  for (int64_t j = 0; j < k; ++j) x[2 * k + j] = 0.0f;
  x[4 * k + 5] = 40.0f;
  return Tensor::FromVector<float>(x, {2, 3, k});
}

TEST(W8A8Rewriter, SubgraphEqualsScalarReference) {
  for (int64_t opset : {13, 17, 18, 21}) {
    SCOPED_TRACE("opset " + std::to_string(opset));
    LinearGraph g = MakeLinearGraph(opset);
    const Model original = g.model;
    const std::vector<LinearLayer> layers = FindLinearLayers(g.model.graph);
    ASSERT_EQ(layers.size(), 3u);
    StatusOr<W8A8Rewriter> rewriter = W8A8Rewriter::Create(g.model);
    ASSERT_TRUE(rewriter.ok()) << rewriter.status().message();
    std::map<std::string, Int8Weight> weights;
    for (const LinearLayer& l : layers) {
      StatusOr<std::vector<float>> w = ReadLinearWeight(original.graph, l);
      ASSERT_TRUE(w.ok());
      weights[l.weight] = QuantizeWeightInt8(*w, l.k, l.n);
      ASSERT_TRUE(rewriter->Replace(l, weights[l.weight], "test").ok());
    }
    rewriter->Finish();
    // One activation quantization for x (read by two MatMuls), one for the reshaped x of the Gemm.
    std::map<std::string, int> ops = OpCounts(g.model);
    EXPECT_EQ(ops["MatMulInteger"], 3);
    EXPECT_EQ(ops["Abs"], 2);
    EXPECT_EQ(ops["ReduceMax"], 2);
    EXPECT_EQ(ops["MatMul"], 0);
    EXPECT_EQ(ops["Gemm"], 0);
    for (const char* w : {"w1", "w2", "w3", "c2"}) EXPECT_EQ(g.model.graph.FindInitializer(w), nullptr) << w;
    EXPECT_TRUE(FindLinearLayers(g.model.graph).empty());

    const Tensor x = LinearFeed(g.k);
    const std::vector<Tensor> got = RunModel(g.model, {{"x", x}});
    ASSERT_EQ(got.size(), 3u);
    const std::vector<float> xs = x.ToFloats();
    // y1, y3: the scalar reference bit for bit (same operations in the same order).
    const std::vector<float> y1 = W8A8Reference(xs, 6, weights["w1"]);
    const std::vector<float> y3 = W8A8Reference(xs, 6, weights["w3"]);
    EXPECT_EQ(got[0].ToFloats(), y1);
    EXPECT_EQ(got[2].ToFloats(), y3);
    // The zero token gives exact zeros, not NaN.
    for (int64_t j = 0; j < 20; ++j) EXPECT_EQ(got[0].ToFloats()[2 * 20 + j], 0.0f);
    // y2 = alpha * W8A8 + beta * c: alpha folded into the weight scale, beta into the bias.
    Int8Weight w2 = weights["w2"];
    for (float& s : w2.scale) s *= 0.5f;
    std::vector<float> y2 = W8A8Reference(xs, 6, w2);
    const std::vector<float> c2 = original.graph.FindInitializer("c2")->ToFloats();
    for (int64_t t = 0; t < 6; ++t)
      for (int64_t j = 0; j < 12; ++j) y2[t * 12 + j] += 2.0f * c2[j];
    EXPECT_EQ(got[1].ToFloats(), y2);
    // And W8A8 is close to the float layer (the outlier token loses most of its small values).
    const std::vector<Tensor> want = RunModel(original, {{"x", x}});
    std::vector<float> a = got[0].ToFloats(), f = want[0].ToFloats();
    for (int64_t t : {0, 1, 3, 5})
      for (int64_t j = 0; j < 20; ++j) EXPECT_NEAR(a[t * 20 + j], f[t * 20 + j], 0.05 * (1 + std::fabs(f[t * 20 + j])));
  }
}

TEST(W8A8Rewriter, OutlierSplitEqualsFloatOutliersPlusInt8Rest) {
  LinearGraph g = MakeLinearGraph(18);
  const Model original = g.model;
  const std::vector<LinearLayer> layers = FindLinearLayers(g.model.graph);
  StatusOr<W8A8Rewriter> rewriter = W8A8Rewriter::Create(g.model);
  ASSERT_TRUE(rewriter.ok());
  const std::vector<int64_t> outliers = {0, 5, 17, 47};
  std::vector<int64_t> rest;
  for (int64_t c = 0; c < g.k; ++c)
    if (std::find(outliers.begin(), outliers.end(), c) == outliers.end()) rest.push_back(c);
  struct Split {
    std::vector<float> w, w_o, w_r;
    Int8Weight q;
    int64_t n = 0;
  };
  std::map<std::string, Split> splits;
  for (const LinearLayer& l : layers) {
    Split& s = splits[l.weight];
    s.w = *ReadLinearWeight(original.graph, l);
    s.n = l.n;
    for (int64_t c : outliers) s.w_o.insert(s.w_o.end(), s.w.begin() + c * l.n, s.w.begin() + (c + 1) * l.n);
    for (int64_t c : rest) s.w_r.insert(s.w_r.end(), s.w.begin() + c * l.n, s.w.begin() + (c + 1) * l.n);
    s.q = QuantizeWeightInt8(s.w_r, static_cast<int64_t>(rest.size()), l.n);
    // The first layer keeps no outliers: plain W8A8 beside the split ones.
    if (l.weight == "w3") {
      s.q = QuantizeWeightInt8(s.w, l.k, l.n);
      ASSERT_TRUE(rewriter->ReplaceWithOutliers(l, {}, {}, s.q, "test").ok());
    } else {
      ASSERT_TRUE(rewriter->ReplaceWithOutliers(l, outliers, s.w_o, s.q, "test").ok());
    }
  }
  rewriter->Finish();
  std::map<std::string, int> ops = OpCounts(g.model);
  EXPECT_EQ(ops["MatMulInteger"], 3);
  EXPECT_EQ(ops["MatMul"], 2) << "the float outlier products";
  EXPECT_EQ(ops["Gather"], 4 + 0) << "x: rest and outliers; reshaped x: rest and outliers";
  EXPECT_EQ(ops["Abs"], 3) << "x rest (w1), x whole (w3), reshaped x rest (Gemm)";

  const Tensor x = LinearFeed(g.k);
  const std::vector<float> xs = x.ToFloats();
  const std::vector<Tensor> got = RunModel(g.model, {{"x", x}});
  ASSERT_EQ(got.size(), 3u);
  std::vector<float> x_o, x_r;
  for (int64_t t = 0; t < 6; ++t) {
    for (int64_t c : outliers) x_o.push_back(xs[t * g.k + c]);
    for (int64_t c : rest) x_r.push_back(xs[t * g.k + c]);
  }
  auto expected = [&](const Split& s, float alpha) {
    Int8Weight q = s.q;
    for (float& v : q.scale) v *= alpha;
    std::vector<float> y = W8A8Reference(x_r, 6, q);
    for (int64_t t = 0; t < 6; ++t)
      for (int64_t j = 0; j < s.n; ++j) {
        double acc = 0;
        for (size_t i = 0; i < outliers.size(); ++i) acc += static_cast<double>(x_o[t * outliers.size() + i]) * s.w_o[i * s.n + j];
        y[t * s.n + j] += alpha * static_cast<float>(acc);
      }
    return y;
  };
  ExpectClose(got[0].ToFloats(), expected(splits["w1"], 1.0f), 1e-5);
  std::vector<float> y2 = expected(splits["w2"], 0.5f);
  const std::vector<float> c2 = original.graph.FindInitializer("c2")->ToFloats();
  for (int64_t t = 0; t < 6; ++t)
    for (int64_t j = 0; j < 12; ++j) y2[t * 12 + j] += 2.0f * c2[j];
  ExpectClose(got[1].ToFloats(), y2, 1e-5);
  EXPECT_EQ(got[2].ToFloats(), W8A8Reference(xs, 6, splits["w3"].q));
  // The token with the 40.0 outlier in channel 5 keeps its small values once channel 5 is float.
  const std::vector<Tensor> want = RunModel(original, {{"x", x}});
  const std::vector<float> a = got[0].ToFloats(), f = want[0].ToFloats();
  for (int64_t j = 0; j < 20; ++j) EXPECT_NEAR(a[4 * 20 + j], f[4 * 20 + j], 0.03 * (1 + std::fabs(f[4 * 20 + j])));
}

// The decomposition is the identity before rounding: with integer-valued inputs whose per-token
// max is 127 and integer weights whose column max is 127, both scales are 1 and the int8 part is
// exact, so the whole split layer equals the float layer.
TEST(W8A8Rewriter, OutlierSplitIsExactWhenNothingRounds) {
  const int64_t k = 40, n = 9, rows = 5;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> code(-126, 126);
  std::vector<float> w(k * n), xs(rows * k);
  for (float& v : w) v = static_cast<float>(code(rng));
  for (int64_t j = 0; j < n; ++j) w[((j * 7) % k) * n + j] = (j % 2) ? 127.0f : -127.0f;
  for (float& v : xs) v = static_cast<float>(code(rng));
  const std::vector<int64_t> outliers = {3, 11};
  for (int64_t t = 0; t < rows; ++t) {
    xs[t * k + 20 + t] = (t % 2) ? -127.0f : 127.0f;  // the max of the rest
    xs[t * k + 3] = 1000.5f + t;                        // outliers: anything, they stay float
    xs[t * k + 11] = -0.37f * t;
  }
  GraphBuilder b(1);
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{rows}, Dim{k}});
  b.AddInitializer("w", Tensor::FromVector<float>(w, {k, n}));
  b.AddNodeWithOutputs("MatMul", {x, "w"}, {"y"});
  b.AddOutput("y", DType::kFloat32, {Dim{rows}, Dim{n}});
  StatusOr<Model> model = b.Build({{"", 18}});
  ASSERT_TRUE(model.ok());
  const Model original = *model;
  std::vector<float> w_o, w_r;
  for (int64_t c = 0; c < k; ++c)
    (c == 3 || c == 11 ? w_o : w_r).insert((c == 3 || c == 11 ? w_o : w_r).end(), w.begin() + c * n, w.begin() + (c + 1) * n);
  const Int8Weight q = QuantizeWeightInt8(w_r, k - 2, n);
  for (float s : q.scale) ASSERT_EQ(s, 1.0f);
  StatusOr<W8A8Rewriter> rewriter = W8A8Rewriter::Create(*model);
  ASSERT_TRUE(rewriter.ok());
  ASSERT_TRUE(rewriter->ReplaceWithOutliers(FindLinearLayers(model->graph)[0], outliers, w_o, q, "exact").ok());
  rewriter->Finish();
  const Tensor feed = Tensor::FromVector<float>(xs, {rows, k});
  const std::vector<Tensor> got = RunModel(*model, {{"x", feed}}), want = RunModel(original, {{"x", feed}});
  ASSERT_EQ(got.size(), 1u);
  ExpectClose(got[0].ToFloats(), want[0].ToFloats(), 1e-6);
}

TEST(W8A8Rewriter, TiedHeadKeepsTheEmbeddingTable) {
  GraphBuilder b(2);
  const std::string ids = b.AddInput("ids", DType::kInt64, {Dim{1}, Dim{4}});
  const std::string emb = b.AddRandomNormal("emb", {30, 16}, 0.0f, 0.5f);
  const std::string h = b.Op("Gather", {emb, ids});
  b.AddNodeWithOutputs("MatMul", {h, b.Op("Transpose", {emb}, {{"perm", AttrInts({1, 0})}})}, {"logits"});
  b.AddOutput("logits", DType::kFloat32, {Dim{1}, Dim{4}, Dim{30}});
  StatusOr<Model> model = b.Build({{"", 18}});
  ASSERT_TRUE(model.ok());
  const LinearLayer head = FindLinearLayers(model->graph)[0];
  ASSERT_TRUE(head.tied);
  StatusOr<W8A8Rewriter> rewriter = W8A8Rewriter::Create(*model);
  ASSERT_TRUE(rewriter.ok());
  ASSERT_TRUE(rewriter->Replace(head, QuantizeWeightInt8(*ReadLinearWeight(model->graph, head), 16, 30), "t").ok());
  rewriter->Finish();
  EXPECT_NE(model->graph.FindInitializer("emb"), nullptr);
  EXPECT_EQ(OpCounts(*model)["Transpose"], 0) << "the head's Transpose fed only the weight";
  EXPECT_EQ(RunModel(*model, {{"ids", Tensor::FromVector<int64_t>({1, 2, 3, 29}, {1, 4})}}).size(), 1u);
}

TEST(W8A8Rewriter, Negative_OldOpsetAndStaleLayers) {
  LinearGraph old = MakeLinearGraph(10);
  StatusOr<W8A8Rewriter> r = W8A8Rewriter::Create(old.model);
  EXPECT_EQ(r.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(r.status().message().find("opset"), std::string::npos);

  LinearGraph g = MakeLinearGraph(18);
  std::vector<LinearLayer> layers = FindLinearLayers(g.model.graph);
  StatusOr<W8A8Rewriter> rewriter = W8A8Rewriter::Create(g.model);
  ASSERT_TRUE(rewriter.ok());
  const Int8Weight q = QuantizeWeightInt8(*ReadLinearWeight(g.model.graph, layers[0]), layers[0].k, layers[0].n);
  ASSERT_TRUE(rewriter->Replace(layers[0], q, "t").ok());
  EXPECT_EQ(rewriter->Replace(layers[0], q, "t").code(), StatusCode::kInternal) << "replaced twice";
  LinearLayer stale = layers[1];
  stale.node_index = layers[0].node_index;
  EXPECT_EQ(rewriter->Replace(stale, q, "t").code(), StatusCode::kInternal);
  EXPECT_EQ(rewriter->Replace(layers[1], q, "t").code(), StatusCode::kInternal) << "wrong shape";
  EXPECT_EQ(rewriter->ReplaceWithOutliers(layers[1], {3, 2}, std::vector<float>(2 * layers[1].n), q, "t").code(),
            StatusCode::kInternal)
      << "unsorted outliers";
}

// ---------------------------------------------------------------------------------------------
// The fast MatMulInteger kernel (runtime/cpu/matmul_quantize.cpp) against the reference kernel.

Tensor RunMatMulInteger(const std::vector<Tensor>& inputs, bool fast) {
  const OpKernels* k = FindOpKernels("", "MatMulInteger");
  QC_CHECK(k != nullptr && k->fast != nullptr);
  Node node;
  node.name = "mmi";
  node.op_type = "MatMulInteger";
  for (size_t i = 0; i < inputs.size(); ++i) node.inputs.push_back(inputs[i].defined() ? "in" + std::to_string(i) : "");
  node.outputs = {"out"};
  KernelContext ctx{node, {}, {Tensor()}, 18, nullptr};
  for (const Tensor& t : inputs) ctx.inputs.push_back(t.defined() ? &t : nullptr);
  const Status s = (fast ? k->fast : k->reference)(ctx);
  EXPECT_TRUE(s.ok()) << s.message();
  return ctx.outputs[0];
}

Tensor RandomQuant(DType t, const Shape& shape, int lo, int hi, std::mt19937& rng) {
  Tensor out(t, shape);
  std::uniform_int_distribution<int> d(lo, hi);
  uint8_t* p = static_cast<uint8_t*>(out.mutable_raw());
  for (int64_t i = 0; i < out.numel(); ++i) p[i] = static_cast<uint8_t>(d(rng));
  return out;
}

TEST(MatMulIntegerFast, EqualsReferenceOnAwkwardShapes) {
  std::mt19937 rng(17);
  struct TypeCase {
    DType a, b;
    int lo_a, hi_a, lo_b, hi_b;  // raw value ranges (uint8 as 0..255, int8 as -128..127)
    int zp_a, zp_b;              // -1: no zero point input; -2: per row / per column
  };
  const std::vector<TypeCase> types = {
      {DType::kUInt8, DType::kUInt8, 1, 255, 1, 255, 128, 128},  // the W8A8 encoding
      {DType::kInt8, DType::kInt8, -128, 127, -128, 127, -1, -1},
      {DType::kUInt8, DType::kInt8, 0, 255, -128, 127, 7, -1},
      {DType::kUInt8, DType::kUInt8, 0, 255, 0, 255, -1, -1},   // raw uint8: K chunks of 258
      {DType::kInt8, DType::kUInt8, -128, 127, 0, 255, -2, -2},  // per-row / per-column zero points
  };
  for (const TypeCase& tc : types)
    for (int64_t m : {1, 3, 17, 118})
      for (int64_t k : {5, 100, 1041, 2500}) {
        const int64_t n = m == 118 ? 33 : 7;
        SCOPED_TRACE(DTypeName(tc.a) + "x" + DTypeName(tc.b) + " m=" + std::to_string(m) + " k=" + std::to_string(k));
        const Tensor a = RandomQuant(tc.a, {m, k}, tc.lo_a, tc.hi_a, rng);
        const Tensor b = RandomQuant(tc.b, {k, n}, tc.lo_b, tc.hi_b, rng);
        auto zero_point = [&](DType t, int zp, int64_t len) {
          if (zp == -1) return Tensor();
          if (zp == -2) return RandomQuant(t, {len}, t == DType::kInt8 ? -20 : 100, t == DType::kInt8 ? 20 : 140, rng);
          Tensor z(t, {});
          *static_cast<uint8_t*>(z.mutable_raw()) = static_cast<uint8_t>(zp);
          return z;
        };
        const Tensor za = zero_point(tc.a, tc.zp_a, m), zb = zero_point(tc.b, tc.zp_b, n);
        std::vector<Tensor> inputs = {a, b};
        if (za.defined() || zb.defined()) inputs.push_back(za);
        if (zb.defined()) inputs.push_back(zb);
        const Tensor ref = RunMatMulInteger(inputs, false), fast = RunMatMulInteger(inputs, true);
        ASSERT_EQ(ref.shape(), fast.shape());
        ASSERT_EQ(fast.dtype(), DType::kInt32);
        const int32_t* r = ref.data<int32_t>();
        const int32_t* f = fast.data<int32_t>();
        int64_t mismatches = 0;
        for (int64_t i = 0; i < ref.numel(); ++i) mismatches += r[i] != f[i];
        EXPECT_EQ(mismatches, 0);
      }
}

TEST(MatMulIntegerFast, EqualsReferenceBatchedAndExtremes) {
  std::mt19937 rng(4);
  // Batched A with a shared B (the activation case), batched B, and 1-D A.
  const std::vector<std::pair<Shape, Shape>> shapes = {
      {{2, 3, 1100}, {1100, 5}}, {{2, 4, 37}, {2, 37, 6}}, {{1, 2, 64}, {3, 64, 2}}, {{300}, {300, 4}}};
  for (const auto& [sa, sb] : shapes) {
    const Tensor a = RandomQuant(DType::kUInt8, sa, 0, 255, rng), b = RandomQuant(DType::kUInt8, sb, 0, 255, rng);
    Tensor z(DType::kUInt8, {});
    *z.mutable_data<uint8_t>() = 128;
    for (const std::vector<Tensor>& inputs : {std::vector<Tensor>{a, b}, std::vector<Tensor>{a, b, z, z}}) {
      const Tensor ref = RunMatMulInteger(inputs, false), fast = RunMatMulInteger(inputs, true);
      ASSERT_EQ(ref.shape(), fast.shape());
      EXPECT_TRUE(ref.BitEqual(fast)) << ShapeToString(sa) << " x " << ShapeToString(sb);
    }
  }
  // Every product at its extreme (-128 * -128) with K = 4096: the float32 chunks must not round.
  Tensor a(DType::kInt8, {2, 4096}), b(DType::kInt8, {4096, 3});
  std::fill(a.mutable_data<int8_t>(), a.mutable_data<int8_t>() + a.numel(), static_cast<int8_t>(-128));
  std::fill(b.mutable_data<int8_t>(), b.mutable_data<int8_t>() + b.numel(), static_cast<int8_t>(-128));
  b.mutable_data<int8_t>()[5] = 127;
  const Tensor ref = RunMatMulInteger({a, b}, false), fast = RunMatMulInteger({a, b}, true);
  EXPECT_TRUE(ref.BitEqual(fast));
  EXPECT_EQ(fast.data<int32_t>()[0], 4096 * 16384);
}

// ---------------------------------------------------------------------------------------------
// ONNX Runtime runs the W8A8 and outlier-split artifacts of synthetic decoders (MatMul and Gemm
// layers) with our numbers. Skips when node or onnxruntime-node is missing.

TEST(W8A8Ort, OnnxRuntimeAgrees) {
  if (std::system("node --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "node is not installed";
  if (!std::getenv("QC_ORT_NODE_MODULES") && fs::exists("/tmp/ortnode/node_modules"))
    ::setenv("QC_ORT_NODE_MODULES", "/tmp/ortnode/node_modules", 1);
  const TempDir dir("w8a8_ort");
  struct Job {
    std::string name;
    Model model;
    NamedTensors feeds;
    Model float_model;
  };
  std::vector<Job> jobs;
  for (SyntheticArch arch : {SyntheticArch::kLlama, SyntheticArch::kGpt2, SyntheticArch::kPhi})
    for (ExportStyle style : {ExportStyle::kDynamo, ExportStyle::kTorchScript}) {
      SyntheticConfig config;
      config.arch = arch;
      config.export_style = style;
      config.init_std = 0.1f;
      config.seed = 40 + static_cast<uint32_t>(arch);
      StatusOr<Model> model = BuildSyntheticDecoder(config);
      ASSERT_TRUE(model.ok());
      std::vector<Tensor> windows;
      for (int w = 0; w < 2; ++w) {
        std::vector<int64_t> ids;
        for (int64_t i = 0; i < 16; ++i) ids.push_back((i * 31 + w * 7 + 3) % config.vocab);
        windows.push_back(Tensor::FromVector<int64_t>(ids, {1, 16}));
      }
      Calibrator calibrator(windows);
      for (const char* pass : {"smoothquant", "outlier-split"}) {
        Job job{std::string(SyntheticArchName(arch)) + "_" + ExportStyleName(style) + "_" + pass, *model, {}, *model};
        std::vector<int64_t> ids;
        for (int64_t i = 0; i < 11; ++i) ids.push_back((i * 13 + 1) % config.vocab);
        job.feeds = {{"input_ids", Tensor::FromVector<int64_t>(ids, {1, 11})}};
        QuantOptions o;
        o.threshold = 0.3;  // small enough that the random-weight models have outlier channels
        std::vector<LayerReport> reports;
        PassContext context{o};
        context.calibrator = &calibrator;
        context.layers = &reports;
        StatusOr<std::vector<std::unique_ptr<Pass>>> pipeline = CreatePipeline(pass);
        ASSERT_TRUE(pipeline.ok());
        const Status s = (*pipeline)[0]->Run(job.model, context);
        ASSERT_TRUE(s.ok()) << job.name << ": " << s.message();
        jobs.push_back(std::move(job));
      }
    }
  std::vector<OrtJob> ort_jobs;
  for (const Job& job : jobs) ort_jobs.push_back({job.name, &job.model, job.feeds});
  StatusOr<OrtBatch> ran = RunOrtBatch(dir.string(), ort_jobs);
  ASSERT_TRUE(ran.ok()) << ran.status().message();
  if (*ran == OrtBatch::kUnavailable) {
    GTEST_SKIP() << "onnxruntime-node not found; set QC_ORT_NODE_MODULES to its node_modules directory";
  }
  for (const Job& job : jobs) {
    SCOPED_TRACE(job.name);
    const std::string out_dir = OrtOutputDir(dir.string(), job.name);
    const std::string error = OrtJobError(dir.string(), job.name);
    EXPECT_TRUE(error.empty()) << "ONNX Runtime rejected the artifact: " << error;
    if (!error.empty()) continue;
    StatusOr<Tensor> ort = ReadNpy(out_dir + "/" + job.model.graph.outputs[0].name + ".npy");
    ASSERT_TRUE(ort.ok()) << ort.status().message();
    const std::vector<Tensor> ours = RunModel(job.model, job.feeds), float_out = RunModel(job.float_model, job.feeds);
    ASSERT_FALSE(ours.empty());
    ASSERT_FALSE(float_out.empty());
    // The integer products are exact in both runtimes, but float rounding differences upstream
    // (ORT's own LayerNorm, Gelu, Softmax kernels) can move an activation across a rounding
    // boundary, changing one int8 code by one step, and that propagates. So the runtimes agree
    // far more closely than either agrees with the float model, not bit for bit.
    const std::vector<float> a = ours[0].ToFloats(), b = ort->ToFloats(), f = float_out[0].ToFloats();
    ASSERT_EQ(a.size(), b.size());
    double runtime_diff = 0, quant_diff = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_TRUE(std::isfinite(b[i]));
      runtime_diff += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
      quant_diff += (static_cast<double>(a[i]) - f[i]) * (static_cast<double>(a[i]) - f[i]);
    }
    // Measured: 1e-7 RMS for most artifacts (no flip), 0.25 of the quantization error for one.
    EXPECT_LT(std::sqrt(runtime_diff), 0.5 * std::sqrt(quant_diff));
    ExpectClose(a, b, 2e-2);
  }
}

}  // namespace
}  // namespace qc
