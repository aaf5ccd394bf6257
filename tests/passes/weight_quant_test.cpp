// Tests of passes/weight_quant: the group quantization math, the MatMulNBits encoding, and the
// rewrite, checked against x * Dequant(W) computed directly.
#include "passes/weight_quant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "formats/model_builder.h"
#include "runtime/executor.h"

namespace qc {
namespace {

std::vector<float> RandomNormal(int64_t count, uint32_t seed, float stddev = 0.02f) {
  std::mt19937 rng(seed);
  Tensor t = RandomNormalTensor({count}, 0.0f, stddev, rng);
  return t.ToFloats();
}

WeightQuantSpec Spec(int bits, int64_t group_size, bool sym, bool search = false) {
  WeightQuantSpec s;
  s.bits = bits;
  s.group_size = group_size;
  s.sym = sym;
  s.scale_search = search;
  return s;
}

// ---------------------------------------------------------------------------------------------
// Scale and zero point of one group.

TEST(GroupParams, SymmetricMapsSignedExtremeToCodeZero) {
  // ONNX Runtime's convention: the extreme (here +1.0) lands on -2^(b-1), so the scale is negative.
  const GroupParams p = ParamsFromRange(-0.5f, 1.0f, 4, /*sym=*/true);
  EXPECT_FLOAT_EQ(p.scale, -0.125f);
  EXPECT_EQ(p.zero_point, 8);
  EXPECT_EQ(QuantizeValue(1.0f, p, 4), 0);
  EXPECT_FLOAT_EQ(DequantizeValue(0, p), 1.0f);
  EXPECT_EQ(QuantizeValue(-0.5f, p, 4), 12);  // -0.5 / -0.125 = 4, + 8
  EXPECT_EQ(QuantizeValue(0.0f, p, 4), 8);
}

TEST(GroupParams, SymmetricNegativeExtremeGivesPositiveScale) {
  const GroupParams p = ParamsFromRange(-2.0f, 1.0f, 3, /*sym=*/true);
  EXPECT_FLOAT_EQ(p.scale, 0.5f);
  EXPECT_EQ(p.zero_point, 4);
  EXPECT_EQ(QuantizeValue(-2.0f, p, 3), 0);
  EXPECT_EQ(QuantizeValue(1.0f, p, 3), 6);
  EXPECT_EQ(QuantizeValue(5.0f, p, 3), 7);  // clamped to 2^b - 1
}

TEST(GroupParams, AsymmetricRangeContainsZero) {
  GroupParams p = ParamsFromRange(-1.0f, 3.0f, 4, /*sym=*/false);
  EXPECT_FLOAT_EQ(p.scale, 4.0f / 15.0f);
  EXPECT_EQ(p.zero_point, 4);  // round(3.75)
  EXPECT_EQ(QuantizeValue(-1.0f, p, 4), 0);
  EXPECT_EQ(QuantizeValue(3.0f, p, 4), 15);
  // An all-positive group still represents 0 exactly: the range is widened to [0, max].
  p = ParamsFromRange(0.5f, 1.5f, 4, /*sym=*/false);
  EXPECT_EQ(p.zero_point, 0);
  EXPECT_FLOAT_EQ(DequantizeValue(QuantizeValue(0.0f, p, 4), p), 0.0f);
}

TEST(GroupParams, ZeroGroupQuantizesToZero) {
  for (bool sym : {true, false}) {
    const GroupParams p = ParamsFromRange(0.0f, 0.0f, 4, sym);
    EXPECT_EQ(p.scale, 0.0f);
    EXPECT_EQ(DequantizeValue(QuantizeValue(0.0f, p, 4), p), 0.0f);
  }
}

TEST(GroupParams, ScaleSearchNeverIncreasesTheGroupError) {
  std::vector<float> w = RandomNormal(128, 3);
  w[17] = 0.2f;  // an outlier makes shrinking the range worthwhile
  for (bool sym : {true, false})
    for (int bits : {2, 3, 4}) {
      const WeightQuantSpec plain = Spec(bits, 128, sym), search = Spec(bits, 128, sym, true);
      const double e_plain = QuantizeGroup(w.data(), 128, 1, ComputeGroupParams(w.data(), 128, 1, plain), bits, nullptr, nullptr);
      const double e_search = QuantizeGroup(w.data(), 128, 1, ComputeGroupParams(w.data(), 128, 1, search), bits, nullptr, nullptr);
      EXPECT_LE(e_search, e_plain) << "bits " << bits << " sym " << sym;
    }
}

// The search's vectorised error (the scale search does not call QuantizeGroup per candidate) picks
// the candidate a search written with QuantizeGroup picks: every bit width, both modes, group
// lengths that are not a multiple of the vector width, strided groups (GPTQ's columns), values
// that round to exact halves and that clamp at both ends.
TEST(GroupParams, ScaleSearchPicksTheLeastQuantizeGroupError) {
  std::mt19937 rng(9);
  for (int64_t count : {1, 7, 13, 128, 300})
    for (int64_t stride : {1, 3})
      for (bool sym : {true, false})
        for (int bits : {2, 3, 4, 8}) {
          SCOPED_TRACE("count " + std::to_string(count) + " stride " + std::to_string(stride) + " sym " +
                       std::to_string(sym) + " bits " + std::to_string(bits));
          std::vector<float> w = RandomNormal(count * stride, static_cast<uint32_t>(rng()));
          if (count > 5) w[5 * stride] = 0.25f;  // an outlier: shrinking pays
          const WeightQuantSpec spec = Spec(bits, 128, sym, true);
          float lo = INFINITY, hi = -INFINITY;
          for (int64_t i = 0; i < count; ++i) lo = std::min(lo, w[i * stride]), hi = std::max(hi, w[i * stride]);
          GroupParams want = ParamsFromRange(lo, hi, bits, sym);
          double best = QuantizeGroup(w.data(), count, stride, want, bits, nullptr, nullptr);
          for (int i = 1; i < spec.search_steps; ++i) {
            const float shrink = 1.0f - spec.search_span * static_cast<float>(i) / static_cast<float>(spec.search_steps);
            const GroupParams p = ParamsFromRange(lo * shrink, hi * shrink, bits, sym);
            const double err = QuantizeGroup(w.data(), count, stride, p, bits, nullptr, nullptr);
            if (err < best) best = err, want = p;
          }
          const GroupParams got = ComputeGroupParams(w.data(), count, stride, spec);
          EXPECT_EQ(got.scale, want.scale);
          EXPECT_EQ(got.zero_point, want.zero_point);
        }
}

// ---------------------------------------------------------------------------------------------
// Quantize-dequantize error per bit width: N(0, 0.02) weights, groups of 128.

// ||W - Q(W)|| / ||W||, measured values ~ 2 bits 0.40 / 3 bits 0.20 / 4 bits 0.10 / 8 bits 0.006
// (sym); the budgets leave ~15% headroom. Asymmetric is at most as good per group here.
const std::map<int, double> kRelErrorBudget = {{2, 0.50}, {3, 0.24}, {4, 0.12}, {5, 0.06}, {6, 0.03}, {8, 0.008}};

TEST(QuantizeRtn, RelativeErrorPerBitWidthStaysUnderBudget) {
  const int64_t k = 256, n = 64;
  const std::vector<float> w = RandomNormal(k * n, 11);
  for (bool sym : {true, false}) {
    double previous = 1e9;
    for (const auto& [bits, budget] : kRelErrorBudget) {
      StatusOr<QuantizedWeight> qw = QuantizeRtn(w, k, n, Spec(bits, 128, sym));
      ASSERT_TRUE(qw.ok()) << qw.status().message();
      const double err = RelativeError(w, qw->Dequantize());
      EXPECT_LT(err, budget) << "bits " << bits << (sym ? " sym" : " asym");
      EXPECT_LT(err, previous) << "more bits must not be worse";
      previous = err;
    }
  }
}

TEST(QuantizeRtn, SmallerGroupsAndScaleSearchReduceError) {
  const int64_t k = 256, n = 32;
  const std::vector<float> w = RandomNormal(k * n, 5);
  auto err = [&](const WeightQuantSpec& s) {
    StatusOr<QuantizedWeight> qw = QuantizeRtn(w, k, n, s);
    EXPECT_TRUE(qw.ok());
    return RelativeError(w, qw->Dequantize());
  };
  EXPECT_LT(err(Spec(4, 32, true)), err(Spec(4, 128, true)));
  EXPECT_LT(err(Spec(4, 128, true)), err(Spec(4, -1, true)));
  EXPECT_LT(err(Spec(4, 128, true, true)), err(Spec(4, 128, true)));
}

TEST(QuantizeRtn, PerChannelWiderThanABlockRepeatsItsScale) {
  // K = 320 per channel: MatMulNBits blocks are at most 256 rows, so two blocks share the scale.
  const int64_t k = 320, n = 8;
  const std::vector<float> w = RandomNormal(k * n, 9);
  StatusOr<QuantizedWeight> qw = QuantizeRtn(w, k, n, Spec(4, -1, false));
  ASSERT_TRUE(qw.ok());
  EXPECT_EQ(qw->block_size, 256);
  EXPECT_EQ(qw->n_blocks(), 2);
  for (int64_t j = 0; j < n; ++j) {
    EXPECT_EQ(qw->scales[j * 2], qw->scales[j * 2 + 1]);
    EXPECT_EQ(qw->zero_points[j * 2], qw->zero_points[j * 2 + 1]);
    // The scale covers the whole column.
    float lo = 0, hi = 0;
    for (int64_t r = 0; r < k; ++r) lo = std::min(lo, w[r * n + j]), hi = std::max(hi, w[r * n + j]);
    EXPECT_FLOAT_EQ(qw->scales[j * 2], (hi - lo) / 15.0f);
  }
  EXPECT_EQ(BlockSizeFor(-1, 100), 128);
  EXPECT_EQ(BlockSizeFor(-1, 8), 16);
  EXPECT_EQ(BlockSizeFor(512, 1024), 256);
  EXPECT_EQ(BlockSizeFor(64, 1024), 64);
}

TEST(QuantizeRtn, MatchesQuantizeValuePerGroup) {
  // The building blocks GPTQ uses (ComputeGroupParams + QuantizeValue) give the same codes.
  const int64_t k = 64, n = 3;
  const std::vector<float> w = RandomNormal(k * n, 21);
  const WeightQuantSpec spec = Spec(4, 32, true);
  StatusOr<QuantizedWeight> qw = QuantizeRtn(w, k, n, spec);
  ASSERT_TRUE(qw.ok());
  for (int64_t j = 0; j < n; ++j)
    for (int64_t g = 0; g < 2; ++g) {
      const GroupParams p = ComputeGroupParams(&w[g * 32 * n + j], 32, n, spec);
      EXPECT_EQ(p.scale, qw->Params(j, g).scale);
      for (int64_t r = g * 32; r < (g + 1) * 32; ++r) EXPECT_EQ(qw->q[j * k + r], QuantizeValue(w[r * n + j], p, 4));
    }
}

TEST(QuantizeRtn, Negative_BadSpec) {
  const std::vector<float> w(64 * 4, 0.0f);
  EXPECT_EQ(QuantizeRtn(w, 64, 4, Spec(9, 128, true)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeRtn(w, 64, 4, Spec(1, 128, true)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeRtn(w, 64, 4, Spec(4, 100, true)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeRtn(w, 64, 4, Spec(4, 8, true)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeRtn(w, 63, 4, Spec(4, 128, true)).status().code(), StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// The MatMulNBits encoding.

QuantizedWeight HandMade(int bits, bool sym) {
  QuantizedWeight qw;
  qw.bits = bits;
  qw.k = 20;  // two blocks of 16, the second padded
  qw.n = 2;
  qw.block_size = 16;
  qw.group_size = 16;
  for (int64_t j = 0; j < 2; ++j)
    for (int64_t r = 0; r < 20; ++r) qw.q.push_back(static_cast<uint8_t>((r + 3 * j) % (1 << bits)));
  qw.scales = {0.5f, -0.25f, 1.0f, 2.0f};
  if (!sym) qw.zero_points = {1, static_cast<uint8_t>((1 << bits) - 1), 0, 2};
  return qw;
}

TEST(PackMatMulNBits, FourBitsLowNibbleFirst) {
  StatusOr<MatMulNBitsTensors> t = PackMatMulNBits(HandMade(4, /*sym=*/false));
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(t->storage_bits, 4);
  EXPECT_EQ(t->b.shape(), (Shape{2, 2, 8}));
  const uint8_t* b = t->b.data<uint8_t>();
  EXPECT_EQ(b[0], 0x10);  // codes 0 (low nibble), 1 (high nibble)
  EXPECT_EQ(b[1], 0x32);
  // Column 0, block 1: codes 16..19 -> 0, 1, 2, 3, then 12 padding codes equal to the zero point 15.
  EXPECT_EQ(b[8], 0x10);
  EXPECT_EQ(b[9], 0x32);
  EXPECT_EQ(b[10], 0xff);
  // Zero points: [N, ceil(2 * 4 / 8)] = one byte per column, block 0 in the low nibble.
  ASSERT_EQ(t->zero_points.shape(), (Shape{2}));
  EXPECT_EQ(t->zero_points.data<uint8_t>()[0], 0xf1);
  EXPECT_EQ(t->zero_points.data<uint8_t>()[1], 0x20);
  EXPECT_EQ(t->scales.shape(), (Shape{4}));
  EXPECT_FALSE(t->g_idx.defined());
}

TEST(PackMatMulNBits, TwoAndEightBits) {
  StatusOr<MatMulNBitsTensors> t2 = PackMatMulNBits(HandMade(2, /*sym=*/true));
  ASSERT_TRUE(t2.ok());
  EXPECT_EQ(t2->b.shape(), (Shape{2, 2, 4}));
  EXPECT_EQ(t2->b.data<uint8_t>()[0], 0xe4);  // codes 0,1,2,3 from the low bits up: 11 10 01 00
  EXPECT_FALSE(t2->zero_points.defined());
  StatusOr<MatMulNBitsTensors> t8 = PackMatMulNBits(HandMade(8, /*sym=*/false));
  ASSERT_TRUE(t8.ok());
  EXPECT_EQ(t8->b.shape(), (Shape{2, 2, 16}));
  EXPECT_EQ(t8->b.data<uint8_t>()[5], 5);
  EXPECT_EQ(t8->zero_points.shape(), (Shape{4}));
}

TEST(PackMatMulNBits, ThreeBitCodesUseFourBitFieldsWithTheSameValues) {
  QuantizedWeight sym = HandMade(3, /*sym=*/true);
  StatusOr<MatMulNBitsTensors> t = PackMatMulNBits(sym);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->storage_bits, 4);
  // Symmetric code q (zero point 4) is stored as q + 4 (zero point 8): same (q - zp) * scale.
  EXPECT_EQ(t->b.data<uint8_t>()[0] & 0xf, 0 + 4);
  EXPECT_EQ(t->b.data<uint8_t>()[0] >> 4, 1 + 4);
  QuantizedWeight asym = HandMade(3, /*sym=*/false);
  t = PackMatMulNBits(asym);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->b.data<uint8_t>()[0], 0x10);  // explicit zero points: codes unchanged
  EXPECT_EQ(StorageBits(5), 8);
  EXPECT_EQ(StorageBits(2), 2);
}

TEST(PackMatMulNBits, Negative_InvalidWeight) {
  QuantizedWeight qw = HandMade(4, true);
  qw.q[3] = 16;  // exceeds 4 bits
  EXPECT_FALSE(PackMatMulNBits(qw).ok());
  qw = HandMade(4, true);
  qw.g_idx.assign(20, 2);  // only blocks 0 and 1 exist
  EXPECT_FALSE(PackMatMulNBits(qw).ok());
  qw = HandMade(4, true);
  qw.block_size = 24;
  EXPECT_FALSE(PackMatMulNBits(qw).ok());
}

// ---------------------------------------------------------------------------------------------
// Rewrite + our runtime: the artifact computes x * Dequant(W) (+ bias).

struct MatMulCase {
  int bits;
  int64_t group_size;
  bool sym;
  bool act_order;
};

// y = x W for x [m, k]; returns the model and its weight.
Model SingleMatMul(int64_t m, int64_t k, int64_t n, uint32_t seed, std::vector<float>* w) {
  GraphBuilder b(seed);
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{m}, Dim{k}});
  const std::string wn = b.AddRandomNormal("w", {k, n});
  *w = b.graph().FindInitializer(wn)->ToFloats();
  b.AddNodeWithOutputs("MatMul", {x, wn}, {"y"});
  b.AddOutput("y", DType::kFloat32, {Dim{m}, Dim{n}});
  StatusOr<Model> model = b.Build({{"", 17}});
  QC_CHECK(model.ok());
  return std::move(model).value();
}

TEST(MatMulNBitsRewriter, ArtifactComputesXTimesDequantizedWeight) {
  const int64_t m = 5, k = 96, n = 40;
  for (const MatMulCase& c : std::vector<MatMulCase>{{4, 32, true, false}, {4, 64, false, false}, {3, 16, true, false},
                                                     {2, 32, false, false}, {8, -1, true, false}, {5, -1, false, false},
                                                     {4, 32, true, true}, {4, 16, false, true}}) {
    SCOPED_TRACE("bits " + std::to_string(c.bits) + " group " + std::to_string(c.group_size) +
                 (c.sym ? " sym" : " asym") + (c.act_order ? " g_idx" : ""));
    std::vector<float> w;
    Model model = SingleMatMul(m, k, n, 42, &w);
    StatusOr<QuantizedWeight> qw = QuantizeRtn(w, k, n, Spec(c.bits, c.group_size, c.sym));
    ASSERT_TRUE(qw.ok());
    if (c.act_order) {
      // A reordered grouping, as GPTQ's act-order produces: row r belongs to block (r * 7) % n_blocks.
      qw->g_idx.resize(k);
      for (int64_t r = 0; r < k; ++r) qw->g_idx[r] = static_cast<int32_t>((r * 7) % qw->n_blocks());
    }
    const std::vector<float> w_hat = qw->Dequantize();
    std::vector<LinearLayer> layers = FindLinearLayers(model.graph);
    ASSERT_EQ(layers.size(), 1u);
    MatMulNBitsRewriter rewriter(model);
    ASSERT_TRUE(rewriter.Replace(layers[0], *qw, "test").ok());
    rewriter.Finish();
    ASSERT_EQ(model.graph.nodes.size(), 1u);
    EXPECT_EQ(model.graph.nodes[0].op_type, "MatMulNBits");
    EXPECT_EQ(model.graph.FindInitializer("w"), nullptr) << "the float weight must be gone";

    std::mt19937 rng(7);
    Tensor x = RandomNormalTensor({m, k}, 0.0f, 1.0f, rng);
    for (bool reference : {false, true}) {
      SessionOptions so;
      so.use_reference_kernels = reference;
      StatusOr<std::unique_ptr<Session>> session = Session::Create(model, so);
      ASSERT_TRUE(session.ok()) << session.status().message();
      StatusOr<std::vector<Tensor>> y = (*session)->Run({{"x", x}});
      ASSERT_TRUE(y.ok()) << y.status().message();
      const std::vector<float> got = (*y)[0].ToFloats(), xs = x.ToFloats();
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
          double want = 0, mag = 0;
          for (int64_t r = 0; r < k; ++r) {
            want += static_cast<double>(xs[i * k + r]) * w_hat[r * n + j];
            mag += std::fabs(static_cast<double>(xs[i * k + r]) * w_hat[r * n + j]);
          }
          ASSERT_NEAR(got[i * n + j], want, 1e-5 * mag + 1e-7) << "row " << i << " col " << j;
        }
    }
  }
}

TEST(MatMulNBitsRewriter, AddsTheMicrosoftOpsetOnce) {
  std::vector<float> w;
  Model model = SingleMatMul(2, 32, 16, 1, &w);
  MatMulNBitsRewriter first(model);
  first.Finish();
  MatMulNBitsRewriter second(model);
  second.Finish();
  int count = 0;
  for (const auto& o : model.opset_imports)
    if (o.domain == "com.microsoft") {
      ++count;
      EXPECT_EQ(o.version, 1);
    }
  EXPECT_EQ(count, 1);
}

// A Gemm whose C is a full [M, N] matrix gets its Add after the MatMulNBits in Finish(). Passes
// that scale and quantize group by group (awq) insert nodes between Replace and Finish: the Add
// must still land right after its MatMulNBits.
TEST(MatMulNBitsRewriter, GemmAddFollowsItsNodeWhenNodesAreInsertedBeforeFinish) {
  const int64_t m = 3, k = 32, n = 8;
  GraphBuilder b(5);
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{m}, Dim{k}});
  const std::string wn = b.AddRandomNormal("w", {k, n});
  const std::string cn = b.AddRandomNormal("c", {m, n});
  const std::vector<float> w = b.graph().FindInitializer(wn)->ToFloats(), c = b.graph().FindInitializer(cn)->ToFloats();
  b.AddNodeWithOutputs("Gemm", {x, wn, cn}, {"y"});
  b.AddOutput("y", DType::kFloat32, {Dim{m}, Dim{n}});
  StatusOr<Model> built = b.Build({{"", 17}});
  ASSERT_TRUE(built.ok());
  Model model = std::move(built).value();
  const std::vector<LinearLayer> layers = FindLinearLayers(model.graph);
  ASSERT_EQ(layers.size(), 1u);
  StatusOr<QuantizedWeight> qw = QuantizeRtn(w, k, n, Spec(4, 32, true));
  ASSERT_TRUE(qw.ok());
  const std::vector<float> w_hat = qw->Dequantize();
  MatMulNBitsRewriter rewriter(model);
  ASSERT_TRUE(rewriter.Replace(layers[0], *qw, "test").ok());
  Node scale;  // what channel scaling inserts in front of a later group
  scale.name = "x_scaled";
  scale.op_type = "Identity";
  scale.inputs = {x};
  scale.outputs = {"x_id"};
  model.graph.nodes.insert(model.graph.nodes.begin(), scale);
  rewriter.NoteGraphNames();
  rewriter.Finish();
  ASSERT_EQ(model.graph.nodes.size(), 3u);
  EXPECT_EQ(model.graph.nodes[0].op_type, "Identity");
  EXPECT_EQ(model.graph.nodes[1].op_type, "MatMulNBits");
  EXPECT_EQ(model.graph.nodes[2].op_type, "Add");
  EXPECT_EQ(model.graph.nodes[2].inputs[0], model.graph.nodes[1].outputs[0]);

  std::mt19937 rng(3);
  Tensor xt = RandomNormalTensor({m, k}, 0.0f, 1.0f, rng);
  StatusOr<std::unique_ptr<Session>> session = Session::Create(model);
  ASSERT_TRUE(session.ok()) << session.status().message();
  StatusOr<std::vector<Tensor>> y = (*session)->Run({{"x", xt}});
  ASSERT_TRUE(y.ok()) << y.status().message();
  const std::vector<float> got = (*y)[0].ToFloats(), xs = xt.ToFloats();
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double want = c[i * n + j];
      for (int64_t r = 0; r < k; ++r) want += static_cast<double>(xs[i * k + r]) * w_hat[r * n + j];
      EXPECT_NEAR(got[i * n + j], want, 1e-4);
    }
}

TEST(MatMulNBitsRewriter, Negative_StaleLayer) {
  std::vector<float> w;
  Model model = SingleMatMul(2, 32, 16, 1, &w);
  LinearLayer layer = FindLinearLayers(model.graph)[0];
  StatusOr<QuantizedWeight> qw = QuantizeRtn(w, 32, 16, Spec(4, 32, true));
  ASSERT_TRUE(qw.ok());
  layer.node_name = "somebody_else";
  MatMulNBitsRewriter rewriter(model);
  EXPECT_EQ(rewriter.Replace(layer, *qw, "").code(), StatusCode::kInternal);
  layer = FindLinearLayers(model.graph)[0];
  qw->n = 15;
  EXPECT_FALSE(rewriter.Replace(layer, *qw, "").ok());
}

TEST(LayerFilter, MatchesNodeOrWeightName) {
  LinearLayer l;
  l.node_name = "node_linear_42";
  l.weight = "m.lm_head.weight";
  StatusOr<LayerFilter> f = LayerFilter::Create("lm_head");
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(f->Excluded(l));
  f = LayerFilter::Create("linear_4[0-9]$");
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(f->Excluded(l));
  f = LayerFilter::Create("mlp");
  EXPECT_FALSE(f->Excluded(l));
  f = LayerFilter::Create("");
  EXPECT_FALSE(f->Excluded(l));
}

TEST(LayerFilter, HeadBitsApplyToTheOutputHeadOnly) {
  LinearLayer body, head;
  head.output_head = true;
  WeightQuantSpec base;
  base.bits = 3;
  StatusOr<LayerFilter> f = LayerFilter::Create("", 8);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->SpecFor(head, base).bits, 8);
  EXPECT_EQ(f->SpecFor(body, base).bits, 3);
  EXPECT_FALSE(f->Excluded(head));
  f = LayerFilter::Create("", kHeadFloat);
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(f->Excluded(head));
  EXPECT_FALSE(f->Excluded(body));
  f = LayerFilter::Create("", kHeadLikeOthers);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->SpecFor(head, base).bits, 3);
  EXPECT_FALSE(LayerFilter::Create("", 9).ok());
  EXPECT_FALSE(LayerFilter::Create("", 1).ok());
}

TEST(LayerFilter, Negative_InvalidRegex) {
  StatusOr<LayerFilter> f = LayerFilter::Create("lm_head(");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(f.status().message().find("--exclude"), std::string::npos);
}

}  // namespace
}  // namespace qc
