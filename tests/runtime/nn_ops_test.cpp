// Tests of the NN kernels (runtime/cpu/ops_nn.def): hand-checked cases, named negative cases, and
// randomized fast-vs-reference comparisons over awkward shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "formats/graph.h"
#include "formats/model_builder.h"
#include "formats/tensor.h"
#include "runtime/cpu/gemm_core.h"
#include "runtime/cpu/kernel.h"

namespace qc {
namespace {

// ---- helpers ---------------------------------------------------------------------------------

// One node plus its inputs; runs the registered reference or fast kernel.
struct OpCase {
  Node node;
  std::vector<Tensor> inputs;  // undefined Tensor = omitted optional input
  int64_t opset = 21;

  OpCase(std::string op, std::string domain = "") {
    node.name = "n";
    node.op_type = std::move(op);
    node.domain = std::move(domain);
  }
  OpCase& In(Tensor t) {
    inputs.push_back(std::move(t));
    return *this;
  }
  OpCase& NoInput() { return In(Tensor()); }
  OpCase& Attr(const std::string& k, Attribute a) {
    node.attributes[k] = std::move(a);
    return *this;
  }
  OpCase& Opset(int64_t v) {
    opset = v;
    return *this;
  }

  StatusOr<std::vector<Tensor>> Run(bool fast, int num_outputs = 1) {
    const OpKernels* k = FindOpKernels(node.domain, node.op_type);
    QC_CHECK(k != nullptr);
    node.inputs.clear();
    for (size_t i = 0; i < inputs.size(); ++i) node.inputs.push_back(inputs[i].defined() ? "in" + std::to_string(i) : "");
    node.outputs.clear();
    for (int i = 0; i < num_outputs; ++i) node.outputs.push_back("out" + std::to_string(i));
    KernelContext ctx{node, {}, std::vector<Tensor>(num_outputs), opset, nullptr};
    for (const Tensor& t : inputs) ctx.inputs.push_back(t.defined() ? &t : nullptr);
    KernelFn fn = (fast && k->fast) ? k->fast : k->reference;
    Status s = fn(ctx);
    if (!s.ok()) return s;
    return std::move(ctx.outputs);
  }
  Tensor Ok(bool fast, int num_outputs = 1, int index = 0) {
    auto r = Run(fast, num_outputs);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? (*r)[index] : Tensor();
  }
};

Tensor F32(std::vector<float> v, Shape s) { return Tensor::FromVector<float>(v, std::move(s)); }
Tensor I64(std::vector<int64_t> v, Shape s) { return Tensor::FromVector<int64_t>(v, std::move(s)); }

Tensor RandomF32(std::mt19937& rng, Shape s, float lo = -1.0f, float hi = 1.0f) {
  Tensor t(DType::kFloat32, std::move(s));
  std::uniform_real_distribution<float> d(lo, hi);
  float* p = t.mutable_data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = d(rng);
  return t;
}
Tensor RandomF64(std::mt19937& rng, Shape s) {
  Tensor t(DType::kFloat64, std::move(s));
  std::uniform_real_distribution<double> d(-1, 1);
  double* p = t.mutable_data<double>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = d(rng);
  return t;
}

// Elementwise |got - want| <= atol + rtol * |want| (NaNs must match).
void ExpectClose(const Tensor& got, const Tensor& want, double rtol, double atol, const std::string& what = "") {
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  ASSERT_EQ(got.shape(), want.shape()) << what << " got " << ShapeToString(got.shape());
  std::vector<float> a = got.ToFloats(), b = want.ToFloats();
  if (got.dtype() == DType::kFloat64) {
    for (int64_t i = 0; i < got.numel(); ++i) {
      const double x = got.data<double>()[i], y = want.data<double>()[i];
      ASSERT_LE(std::fabs(x - y), atol + rtol * std::fabs(y)) << what << " element " << i;
    }
    return;
  }
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(b[i])) {
      ASSERT_TRUE(std::isnan(a[i])) << what << " element " << i;
      continue;
    }
    if (std::isinf(b[i])) {
      ASSERT_EQ(a[i], b[i]) << what << " element " << i;
      continue;
    }
    ASSERT_LE(std::fabs(a[i] - b[i]), atol + rtol * std::fabs(b[i]))
        << what << " element " << i << ": " << a[i] << " vs " << b[i];
  }
}

void ExpectFloats(const Tensor& got, const std::vector<float>& want, Shape shape, double tol = 1e-5) {
  ExpectClose(got, F32(want, std::move(shape)), tol, tol);
}

// Runs both kernels, checks they agree and returns the reference result.
Tensor BothAgree(OpCase& c, double rtol = 1e-5, double atol = 1e-6, int num_outputs = 1, int index = 0) {
  Tensor ref = c.Ok(false, num_outputs, index);
  Tensor fast = c.Ok(true, num_outputs, index);
  if (ref.defined() && fast.defined()) ExpectClose(fast, ref, rtol, atol, c.node.op_type + " fast vs ref");
  return ref;
}

void ExpectError(OpCase& c, const std::string& fragment, int num_outputs = 1) {
  for (bool fast : {false, true}) {
    auto r = c.Run(fast, num_outputs);
    ASSERT_FALSE(r.ok()) << c.node.op_type << (fast ? " fast" : " ref") << " accepted bad input";
    EXPECT_NE(r.status().message().find(fragment), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find("node 'n'"), std::string::npos) << r.status().message();
  }
}

// ---- MatMul ----------------------------------------------------------------------------------

TEST(NnOps, MatMul_Hand2x2) {
  OpCase c("MatMul");
  c.In(F32({1, 2, 3, 4}, {2, 2})).In(F32({5, 6, 7, 8}, {2, 2}));
  ExpectFloats(BothAgree(c), {19, 22, 43, 50}, {2, 2});
}

TEST(NnOps, MatMul_VectorOperands) {
  {
    OpCase c("MatMul");  // [K] x [K, N] -> [N]
    c.In(F32({1, 2}, {2})).In(F32({1, 2, 3, 4, 5, 6}, {2, 3}));
    ExpectFloats(BothAgree(c), {9, 12, 15}, {3});
  }
  {
    OpCase c("MatMul");  // [M, K] x [K] -> [M]
    c.In(F32({1, 2, 3, 4, 5, 6}, {3, 2})).In(F32({1, 1}, {2}));
    ExpectFloats(BothAgree(c), {3, 7, 11}, {3});
  }
  {
    OpCase c("MatMul");  // [K] x [K] -> scalar
    c.In(F32({1, 2, 3}, {3})).In(F32({4, 5, 6}, {3}));
    ExpectFloats(BothAgree(c), {32}, {});
  }
  {
    OpCase c("MatMul");  // [2, 3, K] x [K] -> [2, 3]
    c.In(F32({1, 0, 0, 1, 1, 1, 2, 0, 0, 2, 2, 2}, {2, 3, 2})).In(F32({1, 2}, {2}));
    ExpectFloats(BothAgree(c), {1, 2, 3, 2, 4, 6}, {2, 3});
  }
}

TEST(NnOps, MatMul_Int64AndInt32) {
  OpCase c("MatMul");
  c.In(I64({1, 2, 3, 4}, {2, 2})).In(I64({-1, 0, 2, 1}, {2, 2}));
  Tensor y = c.Ok(false);
  EXPECT_EQ(y.ToInt64s(), (std::vector<int64_t>{3, 2, 5, 4}));
  EXPECT_TRUE(c.Ok(true).BitEqual(y));
  OpCase d("MatMul");
  d.In(Tensor::FromVector<int32_t>({2, 3}, {1, 2})).In(Tensor::FromVector<int32_t>({4, 5}, {2, 1}));
  EXPECT_EQ(d.Ok(true).ToInt64s(), (std::vector<int64_t>{23}));
}

TEST(NnOps, MatMul_FastMatchesRefAwkwardShapes) {
  std::mt19937 rng(1234);
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{1, 5}, {5, 7}},           {{3, 13}, {13, 9}},         {{17, 37}, {37, 33}},
      {{2, 1, 3, 4}, {5, 4, 6}},  {{2, 3, 5, 7}, {2, 3, 7, 4}}, {{4, 7}, {3, 7, 2}},
      {{2, 17, 100}, {100, 65}},  {{3, 1, 9}, {1, 9, 3}},       {{1, 6, 17, 8}, {1, 6, 8, 17}},
      {{5, 1, 1, 11}, {1, 4, 11, 3}}, {{0, 4}, {4, 3}},         {{3, 0}, {0, 5}},
      {{70, 129}, {129, 257}},
      // Several K slices, M blocks and N panels of the packed GEMM.
      {{150, 520}, {520, 3100}},
  };
  for (const auto& [as, bs] : cases) {
    OpCase c("MatMul");
    c.In(RandomF32(rng, as)).In(RandomF32(rng, bs));
    // Float accumulation error grows with K (cancellation makes some outputs tiny).
    BothAgree(c, 1e-5, std::max(1e-5, 2e-7 * static_cast<double>(as.back())));
    OpCase d("MatMul");
    d.In(RandomF64(rng, as)).In(RandomF64(rng, bs));
    BothAgree(d, 1e-12, 1e-12);
  }
}

// Every float32 GEMM kernel this CPU can run, against a double-precision loop, over all
// transpose combinations, alpha/beta, padded leading dimensions and edge-tile sizes.
TEST(NnOps, GemmF32_EveryKernelMatchesNaive) {
  std::mt19937 rng(77);
  std::uniform_real_distribution<float> d(-1, 1);
  struct Dims {
    int64_t m, n, k;
  };
  const std::vector<Dims> dims = {{1, 1, 1},   {2, 5, 3},     {13, 33, 17},   {12, 32, 256}, {25, 70, 300},
                                  {3, 600, 9}, {150, 40, 520}, {61, 1000, 33}, {7, 17, 1}};
  for (const char* kernel : {"avx512", "avx2", "eigen"}) {
    if (!ForceGemmKernelForTesting(kernel)) continue;
    SCOPED_TRACE(kernel);
    for (const Dims& dm : dims)
      for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb)
          for (float beta : {0.0f, 0.5f}) {
            const int64_t lda = (ta ? dm.m : dm.k) + 3, ldb = (tb ? dm.k : dm.n) + 1, ldc = dm.n + 2;
            std::vector<float> a((ta ? dm.k : dm.m) * lda), b((tb ? dm.n : dm.k) * ldb), c(dm.m * ldc);
            for (auto& v : a) v = d(rng);
            for (auto& v : b) v = d(rng);
            for (auto& v : c) v = d(rng);
            std::vector<float> c0 = c;
            GemmF32(ta, tb, dm.m, dm.n, dm.k, 0.75f, a.data(), lda, b.data(), ldb, beta, c.data(), ldc, true);
            for (int64_t i = 0; i < dm.m; ++i)
              for (int64_t j = 0; j < dm.n; ++j) {
                double s = 0;
                for (int64_t p = 0; p < dm.k; ++p)
                  s += double(ta ? a[p * lda + i] : a[i * lda + p]) * double(tb ? b[j * ldb + p] : b[p * ldb + j]);
                const double want = 0.75 * s + beta * c0[i * ldc + j];
                ASSERT_NEAR(c[i * ldc + j], want, 1e-5 + 2e-7 * dm.k)
                    << dm.m << "x" << dm.n << "x" << dm.k << " ta=" << ta << " tb=" << tb << " (" << i << "," << j << ")";
              }
            // Padding columns of C are never written.
            for (int64_t i = 0; i < dm.m; ++i)
              for (int64_t j = dm.n; j < ldc; ++j) ASSERT_EQ(c[i * ldc + j], c0[i * ldc + j]);
          }
  }
  ASSERT_TRUE(ForceGemmKernelForTesting("auto"));
}

TEST(NnOps, MatMul_BroadcastShape) {
  std::mt19937 rng(5);
  OpCase c("MatMul");
  c.In(RandomF32(rng, {2, 1, 3, 4})).In(RandomF32(rng, {5, 4, 6}));
  EXPECT_EQ(c.Ok(true).shape(), (Shape{2, 5, 3, 6}));
}

TEST(NnOps, Negative_MatMulInnerMismatch) {
  OpCase c("MatMul");
  c.In(F32({1, 2, 3, 4, 5, 6}, {2, 3})).In(F32({1, 2, 3, 4}, {2, 2}));
  ExpectError(c, "inner dimensions");
}

TEST(NnOps, Negative_MatMulBatchMismatch) {
  std::mt19937 rng(1);
  OpCase c("MatMul");
  c.In(RandomF32(rng, {2, 3, 4})).In(RandomF32(rng, {3, 4, 5}));
  ExpectError(c, "broadcast");
}

TEST(NnOps, Negative_MatMulDTypeMismatch) {
  OpCase c("MatMul");
  c.In(F32({1}, {1, 1})).In(I64({1}, {1, 1}));
  ExpectError(c, "dtypes differ");
}

TEST(NnOps, Negative_MatMulScalarOperand) {
  OpCase c("MatMul");
  c.In(F32({1}, {})).In(F32({1}, {1}));
  ExpectError(c, "rank");
}

// ---- Gemm ------------------------------------------------------------------------------------

TEST(NnOps, Gemm_HandAllAttributes) {
  // A^T = [[1,2],[3,4]] (A stored transposed), B^T = I, C = [10, 20] broadcast over rows.
  OpCase c("Gemm");
  c.In(F32({1, 3, 2, 4}, {2, 2})).In(F32({1, 0, 0, 1}, {2, 2})).In(F32({10, 20}, {2}));
  c.Attr("transA", AttrInt(1)).Attr("transB", AttrInt(1)).Attr("alpha", AttrFloat(2.0f)).Attr("beta", AttrFloat(0.5f));
  ExpectFloats(BothAgree(c), {7, 14, 11, 18}, {2, 2});
}

TEST(NnOps, Gemm_NoC) {
  OpCase c("Gemm");
  c.In(F32({1, 2, 3, 4}, {2, 2})).In(F32({5, 6, 7, 8}, {2, 2}));
  ExpectFloats(BothAgree(c), {19, 22, 43, 50}, {2, 2});
}

TEST(NnOps, Gemm_FastMatchesRefAllLayouts) {
  std::mt19937 rng(7);
  const int64_t m = 17, n = 33, k = 13;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (const Shape& cs : std::vector<Shape>{{}, {1}, {n}, {m, 1}, {1, n}, {m, n}}) {
        OpCase c("Gemm");
        c.In(RandomF32(rng, ta ? Shape{k, m} : Shape{m, k})).In(RandomF32(rng, tb ? Shape{n, k} : Shape{k, n}));
        c.In(RandomF32(rng, cs));
        c.Attr("transA", AttrInt(ta)).Attr("transB", AttrInt(tb)).Attr("alpha", AttrFloat(0.7f)).Attr("beta",
                                                                                                      AttrFloat(1.3f));
        Tensor y = BothAgree(c, 1e-5, 1e-5);
        EXPECT_EQ(y.shape(), (Shape{m, n}));
      }
}

TEST(NnOps, Negative_GemmBadC) {
  std::mt19937 rng(1);
  OpCase c("Gemm");
  c.In(RandomF32(rng, {2, 3})).In(RandomF32(rng, {3, 4})).In(RandomF32(rng, {3}));
  ExpectError(c, "does not broadcast");
}

TEST(NnOps, Negative_GemmRank) {
  std::mt19937 rng(1);
  OpCase c("Gemm");
  c.In(RandomF32(rng, {2, 3, 1})).In(RandomF32(rng, {3, 4}));
  ExpectError(c, "2-D");
}

// ---- Softmax / LogSoftmax ----------------------------------------------------------------------

TEST(NnOps, Softmax_Hand) {
  OpCase c("Softmax");
  c.In(F32({1, 2, 3, 1, 1, 1}, {2, 3}));
  const double e1 = std::exp(1.0), e2 = std::exp(2.0), e3 = std::exp(3.0), s = e1 + e2 + e3;
  ExpectFloats(BothAgree(c), {float(e1 / s), float(e2 / s), float(e3 / s), 1 / 3.f, 1 / 3.f, 1 / 3.f}, {2, 3});
  OpCase l("LogSoftmax");
  l.In(F32({1, 2, 3}, {3}));
  ExpectFloats(BothAgree(l), {float(1 - std::log(s)), float(2 - std::log(s)), float(3 - std::log(s))}, {3});
}

TEST(NnOps, Softmax_LargeNumbersStable) {
  OpCase c("Softmax");
  c.In(F32({10000, 10001, 10002}, {1, 3}));
  Tensor y = BothAgree(c);
  EXPECT_NEAR(y.data<float>()[2], 0.66524096f, 1e-6);
}

TEST(NnOps, Softmax_AxisAndLegacyOpset) {
  // Opset 13: softmax along axis 0 only.
  OpCase c("Softmax");
  c.In(F32({0, 1, 0, 1}, {2, 2})).Attr("axis", AttrInt(0));
  ExpectFloats(BothAgree(c), {0.5f, 0.5f, 0.5f, 0.5f}, {2, 2});
  // Opset 11: axis 0 flattens everything into one row of 4.
  OpCase d("Softmax");
  d.In(F32({0, 0, 0, 0}, {2, 2})).Attr("axis", AttrInt(0)).Opset(11);
  ExpectFloats(BothAgree(d), {0.25f, 0.25f, 0.25f, 0.25f}, {2, 2});
}

TEST(NnOps, Softmax_FastMatchesRef) {
  std::mt19937 rng(11);
  for (const Shape& s : std::vector<Shape>{{1, 1}, {3, 17}, {2, 6, 5, 33}, {4, 1000}, {2, 3, 4}}) {
    for (int64_t axis : {int64_t{-1}, int64_t{1}}) {
      for (const char* op : {"Softmax", "LogSoftmax"}) {
        OpCase c(op);
        c.In(RandomF32(rng, s, -8, 8)).Attr("axis", AttrInt(axis));
        BothAgree(c, 1e-5, 1e-6);
      }
    }
  }
}

TEST(NnOps, Negative_SoftmaxAxisOutOfRange) {
  OpCase c("Softmax");
  c.In(F32({1, 2}, {1, 2})).Attr("axis", AttrInt(2));
  ExpectError(c, "out of range");
}

// ---- LayerNormalization family -----------------------------------------------------------------

TEST(NnOps, LayerNorm_HandWithStats) {
  OpCase c("LayerNormalization");
  c.In(F32({1, 2, 3, 4, -1, 1}, {2, 3})).In(F32({1, 1, 2}, {3})).In(F32({0, 1, 0}, {3}));
  c.Attr("epsilon", AttrFloat(0.0f));
  const float r0 = std::sqrt(1.5f);            // 1 / std of {1, 2, 3}
  const float r1 = 1.0f / std::sqrt(38.0f / 9);  // 1 / std of {4, -1, 1} (mean 4/3)
  Tensor y = BothAgree(c, 1e-5, 1e-6, 3, 0);
  ExpectFloats(y, {-r0, 1, 2 * r0, 8.0f / 3 * r1, 1 - 7.0f / 3 * r1, -2.0f / 3 * r1}, {2, 3});
  ExpectFloats(BothAgree(c, 1e-5, 1e-6, 3, 1), {2, 4.0f / 3}, {2, 1});
  ExpectFloats(BothAgree(c, 1e-5, 1e-6, 3, 2), {r0, r1}, {2, 1});
}

TEST(NnOps, LayerNorm_AxisZeroAndBroadcastScale) {
  std::mt19937 rng(3);
  OpCase c("LayerNormalization");
  c.In(RandomF32(rng, {2, 3, 4})).In(RandomF32(rng, {1, 4})).Attr("axis", AttrInt(1));
  EXPECT_EQ(BothAgree(c).shape(), (Shape{2, 3, 4}));
  OpCase d("LayerNormalization");
  d.In(RandomF32(rng, {2, 3, 4})).In(RandomF32(rng, {2, 3, 4})).In(RandomF32(rng, {2, 3, 4})).Attr("axis", AttrInt(0));
  Tensor mean = BothAgree(d, 1e-5, 1e-6, 2, 1);
  EXPECT_EQ(mean.shape(), (Shape{1, 1, 1}));
}

TEST(NnOps, Norms_FastMatchesRef) {
  std::mt19937 rng(21);
  for (const Shape& s : std::vector<Shape>{{1, 1}, {3, 384}, {2, 5, 77}, {64, 1000}}) {
    const Shape h{s.back()};
    OpCase ln("LayerNormalization");
    ln.In(RandomF32(rng, s, -3, 5)).In(RandomF32(rng, h)).In(RandomF32(rng, h));
    BothAgree(ln, 1e-5, 1e-5, 3, 0);
    BothAgree(ln, 1e-5, 1e-5, 3, 2);
    OpCase rms("RMSNormalization");
    rms.In(RandomF32(rng, s, -3, 5)).In(RandomF32(rng, h));
    BothAgree(rms, 1e-5, 1e-5);
    OpCase sln("SimplifiedLayerNormalization");
    sln.In(RandomF32(rng, s, -3, 5)).In(RandomF32(rng, h));
    BothAgree(sln, 1e-5, 1e-5, 2, 1);
  }
}

TEST(NnOps, RMSNorm_Hand) {
  for (const char* domain : {"", "com.microsoft"}) {
    OpCase c("SimplifiedLayerNormalization", domain);
    c.In(F32({3, 4}, {1, 2})).In(F32({1, 2}, {2})).Attr("epsilon", AttrFloat(0.0f));
    // rms = sqrt((9 + 16) / 2)
    const float rms = std::sqrt(12.5f);
    ExpectFloats(BothAgree(c), {3 / rms, 8 / rms}, {1, 2});
  }
  OpCase r("RMSNormalization");
  r.In(F32({3, 4}, {1, 2})).In(F32({1, 2}, {2})).Attr("epsilon", AttrFloat(0.0f));
  ExpectFloats(BothAgree(r), {3 / std::sqrt(12.5f), 8 / std::sqrt(12.5f)}, {1, 2});
}

TEST(NnOps, SkipLayerNorm_MatchesComposition) {
  std::mt19937 rng(8);
  const Shape xs{2, 3, 8};
  for (const Shape& ss : std::vector<Shape>{{2, 3, 8}, {1, 3, 8}, {3, 8}}) {
    Tensor x = RandomF32(rng, xs), skip = RandomF32(rng, ss), gamma = RandomF32(rng, {8}), beta = RandomF32(rng, {8}),
           bias = RandomF32(rng, {8});
    OpCase c("SkipLayerNormalization", "com.microsoft");
    c.In(x).In(skip).In(gamma).In(beta).In(bias).Attr("epsilon", AttrFloat(1e-5f));
    Tensor y = BothAgree(c, 1e-5, 1e-5, 4, 0);
    Tensor sum = BothAgree(c, 1e-6, 1e-6, 4, 3);
    // The sum output is input + skip (broadcast) + bias; y is LayerNorm of it.
    std::vector<float> sv(x.numel());
    for (int64_t i = 0; i < x.numel(); ++i)
      sv[i] = x.data<float>()[i] + skip.data<float>()[i % skip.numel()] + bias.data<float>()[i % 8];
    ExpectFloats(sum, sv, xs, 1e-6);
    OpCase ln("LayerNormalization");
    ln.In(F32(sv, xs)).In(gamma).In(beta).Attr("epsilon", AttrFloat(1e-5f));
    ExpectClose(y, ln.Ok(false), 1e-5, 1e-5);
    // Simplified: same with RMS.
    OpCase s("SkipSimplifiedLayerNormalization", "com.microsoft");
    s.In(x).In(skip).In(gamma).In(bias).Attr("epsilon", AttrFloat(1e-5f));
    Tensor ys = BothAgree(s, 1e-5, 1e-5, 4, 0);
    OpCase rms("SimplifiedLayerNormalization");
    rms.In(F32(sv, xs)).In(gamma).Attr("epsilon", AttrFloat(1e-5f));
    ExpectClose(ys, rms.Ok(false), 1e-5, 1e-5);
  }
}

TEST(NnOps, Negative_LayerNormScaleShape) {
  std::mt19937 rng(1);
  OpCase c("LayerNormalization");
  c.In(RandomF32(rng, {2, 4})).In(RandomF32(rng, {3}));
  ExpectError(c, "does not broadcast");
}

TEST(NnOps, Negative_SkipLayerNormSkipShape) {
  std::mt19937 rng(1);
  OpCase c("SkipLayerNormalization", "com.microsoft");
  c.In(RandomF32(rng, {2, 3, 4})).In(RandomF32(rng, {2, 4})).In(RandomF32(rng, {4}));
  ExpectError(c, "skip");
}

// ---- Reductions ------------------------------------------------------------------------------

Tensor Reduce(const std::string& op, Tensor x, std::vector<int64_t> axes, int keepdims, bool axes_as_input,
              bool fast = false, int noop = 0) {
  OpCase c(op);
  c.In(x).Attr("keepdims", AttrInt(keepdims));
  if (noop) c.Attr("noop_with_empty_axes", AttrInt(noop));
  if (axes_as_input) {
    c.In(I64(axes, {static_cast<int64_t>(axes.size())}));
  } else if (!axes.empty()) {
    c.Attr("axes", AttrInts(axes));
  }
  return c.Ok(fast);
}

TEST(NnOps, Reduce_HandAllKinds) {
  const Tensor x = F32({1, 2, 3, 4, 5, 6}, {2, 3});
  struct Want {
    const char* op;
    std::vector<float> rows;  // over axis 1
    std::vector<float> cols;  // over axis 0
  };
  const std::vector<Want> wants = {
      {"ReduceSum", {6, 15}, {5, 7, 9}},
      {"ReduceMean", {2, 5}, {2.5f, 3.5f, 4.5f}},
      {"ReduceMax", {3, 6}, {4, 5, 6}},
      {"ReduceMin", {1, 4}, {1, 2, 3}},
      {"ReduceProd", {6, 120}, {4, 10, 18}},
      {"ReduceL1", {6, 15}, {5, 7, 9}},
      {"ReduceL2", {std::sqrt(14.0f), std::sqrt(77.0f)}, {std::sqrt(17.0f), std::sqrt(29.0f), std::sqrt(45.0f)}},
      {"ReduceSumSquare", {14, 77}, {17, 29, 45}},
      {"ReduceLogSum", {std::log(6.0f), std::log(15.0f)}, {std::log(5.0f), std::log(7.0f), std::log(9.0f)}},
      {"ReduceLogSumExp",
       {float(std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0))),
        float(std::log(std::exp(4.0) + std::exp(5.0) + std::exp(6.0)))},
       {float(std::log(std::exp(1.0) + std::exp(4.0))), float(std::log(std::exp(2.0) + std::exp(5.0))),
        float(std::log(std::exp(3.0) + std::exp(6.0)))}},
  };
  for (const Want& w : wants) {
    for (bool fast : {false, true}) {
      for (bool as_input : {false, true}) {
        SCOPED_TRACE(std::string(w.op) + (fast ? " fast" : " ref") + (as_input ? " axes input" : " axes attr"));
        ExpectFloats(Reduce(w.op, x, {1}, 1, as_input, fast), w.rows, {2, 1});
        ExpectFloats(Reduce(w.op, x, {-1}, 0, as_input, fast), w.rows, {2});
        ExpectFloats(Reduce(w.op, x, {0}, 0, as_input, fast), w.cols, {3});
      }
    }
  }
}

TEST(NnOps, Reduce_AllAxesAndNoop) {
  const Tensor x = F32({1, 2, 3, 4}, {2, 2});
  ExpectFloats(Reduce("ReduceSum", x, {}, 1, false), {10}, {1, 1});
  ExpectFloats(Reduce("ReduceMean", x, {}, 0, false, true), {2.5f}, {});
  Tensor same = Reduce("ReduceSum", x, {}, 1, true, false, /*noop=*/1);
  EXPECT_TRUE(same.BitEqual(x));
}

TEST(NnOps, Reduce_Integers) {
  Tensor x = I64({1, -2, 3, 4}, {2, 2});
  EXPECT_EQ(Reduce("ReduceSum", x, {1}, 0, true).ToInt64s(), (std::vector<int64_t>{-1, 7}));
  EXPECT_EQ(Reduce("ReduceMax", x, {0}, 0, false, true).ToInt64s(), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(Reduce("ReduceProd", x, {}, 0, false).ToInt64s(), (std::vector<int64_t>{-24}));
}

TEST(NnOps, Reduce_FastMatchesRef) {
  std::mt19937 rng(31);
  const std::vector<std::pair<Shape, std::vector<int64_t>>> cases = {
      {{3, 17}, {-1}}, {{2, 5, 7}, {1, 2}}, {{2, 5, 7}, {0, 2}}, {{4, 3, 2, 5}, {1}}, {{6, 512}, {1}}, {{5}, {0}}};
  for (const char* op : {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                         "ReduceSumSquare", "ReduceLogSumExp"}) {
    for (const auto& [s, axes] : cases) {
      SCOPED_TRACE(op);
      Tensor x = RandomF32(rng, s, 0.5f, 1.5f);
      ExpectClose(Reduce(op, x, axes, 1, true, true), Reduce(op, x, axes, 1, true, false), 1e-5, 1e-6);
      ExpectClose(Reduce(op, x, axes, 0, false, true), Reduce(op, x, axes, 0, false, false), 1e-5, 1e-6);
    }
  }
}

TEST(NnOps, Negative_ReduceAxisOutOfRange) {
  OpCase c("ReduceMean");
  c.In(F32({1, 2}, {1, 2})).Attr("axes", AttrInts({2}));
  ExpectError(c, "out of range");
}

TEST(NnOps, Negative_ReduceRepeatedAxis) {
  OpCase c("ReduceSum");
  c.In(F32({1, 2}, {1, 2})).In(I64({1, -1}, {2}));
  ExpectError(c, "repeated");
}

// ---- RotaryEmbedding -------------------------------------------------------------------------

// Straightforward RoPE: out[..] for one head vector given cos/sin rows.
std::vector<float> Rope(const float* x, const float* cos, const float* sin, int64_t head, int64_t rot,
                        bool interleaved) {
  std::vector<float> y(x, x + head);
  const int64_t half = rot / 2;
  for (int64_t i = 0; i < half; ++i) {
    const int64_t a = interleaved ? 2 * i : i;
    const int64_t b = interleaved ? 2 * i + 1 : i + half;
    y[a] = x[a] * cos[i] - x[b] * sin[i];
    y[b] = x[b] * cos[i] + x[a] * sin[i];
  }
  return y;
}

TEST(NnOps, Rotary_MatchesFormula) {
  std::mt19937 rng(17);
  const int64_t batch = 2, seq = 3, heads = 2, head = 8, max_seq = 10;
  for (bool interleaved : {false, true}) {
    for (int64_t rot : {int64_t{8}, int64_t{4}}) {
      for (bool four_d : {false, true}) {
        for (bool per_token : {false, true}) {
          SCOPED_TRACE(std::to_string(interleaved) + std::to_string(rot) + std::to_string(four_d) +
                       std::to_string(per_token));
          Tensor x = four_d ? RandomF32(rng, {batch, heads, seq, head}) : RandomF32(rng, {batch, seq, heads * head});
          Tensor cos = RandomF32(rng, {max_seq, rot / 2}), sin = RandomF32(rng, {max_seq, rot / 2});
          Tensor pos = per_token ? I64({5, 1, 0, 9, 2, 3}, {batch, seq}) : I64({4}, {1});
          OpCase c("RotaryEmbedding", "com.microsoft");
          c.In(x).In(pos).In(cos).In(sin).Attr("interleaved", AttrInt(interleaved));
          if (rot != head) c.Attr("rotary_embedding_dim", AttrInt(rot)).Attr("num_heads", AttrInt(heads));
          Tensor y = BothAgree(c, 1e-6, 1e-6);
          std::vector<float> want(x.numel());
          for (int64_t b = 0; b < batch; ++b)
            for (int64_t s = 0; s < seq; ++s)
              for (int64_t h = 0; h < heads; ++h) {
                const int64_t off = four_d ? ((b * heads + h) * seq + s) * head : ((b * seq + s) * heads + h) * head;
                const int64_t p = per_token ? pos.data<int64_t>()[b * seq + s] : 4 + s;
                auto v = Rope(x.data<float>() + off, cos.data<float>() + p * rot / 2, sin.data<float>() + p * rot / 2,
                              head, rot, interleaved);
                std::copy(v.begin(), v.end(), want.begin() + off);
              }
          ExpectFloats(y, want, x.shape(), 1e-6);
        }
      }
    }
  }
}

TEST(NnOps, Negative_RotaryPositionOutOfRange) {
  std::mt19937 rng(1);
  OpCase c("RotaryEmbedding", "com.microsoft");
  c.In(RandomF32(rng, {1, 4, 8})).In(I64({7}, {1})).In(RandomF32(rng, {10, 4})).In(RandomF32(rng, {10, 4}));
  ExpectError(c, "outside the cos/sin cache");
}

// ---- MatMulNBits -----------------------------------------------------------------------------

// Quantises W^T ([N, K], row n = output column n) the way ONNX Runtime's quantiser lays it out.
struct NBitsWeight {
  Tensor b, scales, zp_packed, zp_float;
  std::vector<float> deq;  // [N, K] dequantised
};

NBitsWeight QuantizeNBits(std::mt19937& rng, int64_t n, int64_t k, int64_t bits, int64_t block, bool float_zp,
                          const std::vector<int32_t>* g_idx = nullptr) {
  const int64_t kb = (k + block - 1) / block, blob = block * bits / 8, zp_bytes = (kb * bits + 7) / 8;
  NBitsWeight w;
  w.b = Tensor(DType::kUInt8, {n, kb, blob});
  w.scales = Tensor(DType::kFloat32, {n, kb});
  w.zp_packed = Tensor(DType::kUInt8, {n, zp_bytes});
  w.zp_float = Tensor(DType::kFloat32, {n, kb});
  w.deq.assign(n * k, 0);
  std::uniform_int_distribution<int> qd(0, (1 << bits) - 1);
  std::uniform_real_distribution<float> sd(0.01f, 0.1f);
  uint8_t* bp = w.b.mutable_data<uint8_t>();
  uint8_t* zp = w.zp_packed.mutable_data<uint8_t>();
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t blk = 0; blk < kb; ++blk) {
      w.scales.mutable_data<float>()[r * kb + blk] = sd(rng);
      const int z = qd(rng);
      w.zp_float.mutable_data<float>()[r * kb + blk] = static_cast<float>(z) + (float_zp ? 0.25f : 0.0f);
      for (int bit = 0; bit < bits; ++bit)
        if (z >> bit & 1) zp[r * zp_bytes + (blk * bits + bit) / 8] |= 1 << ((blk * bits + bit) % 8);
    }
    for (int64_t kk = 0; kk < k; ++kk) {
      const int q = qd(rng);
      const int64_t blk = kk / block, pos = kk % block;
      for (int bit = 0; bit < bits; ++bit)
        if (q >> bit & 1) bp[(r * kb + blk) * blob + (pos * bits + bit) / 8] |= 1 << ((pos * bits + bit) % 8);
      const int64_t g = g_idx ? (*g_idx)[kk] : blk;
      w.deq[r * k + kk] = (q - w.zp_float.data<float>()[r * kb + g]) * w.scales.data<float>()[r * kb + g];
    }
  }
  return w;
}

TEST(NnOps, MatMulNBits_MatchesDequantizedMatMul) {
  std::mt19937 rng(99);
  struct Cfg {
    int64_t m, n, k, bits, block;
    bool float_zp, with_zp, bias, gidx;
  };
  const std::vector<Cfg> cfgs = {
      {1, 8, 32, 4, 16, false, true, false, false},   {3, 24, 80, 4, 32, false, true, true, false},
      {17, 9, 64, 8, 16, false, true, false, false},  {5, 16, 48, 2, 16, false, true, false, false},
      {4, 7, 40, 3, 16, false, true, true, false},    {2, 12, 64, 4, 32, true, true, false, false},
      {6, 10, 64, 4, 16, false, false, false, false}, {3, 8, 64, 4, 16, false, true, false, true},
      {2, 5, 100, 5, 32, false, true, true, false},
  };
  for (const Cfg& cf : cfgs) {
    SCOPED_TRACE("bits " + std::to_string(cf.bits) + " k " + std::to_string(cf.k));
    const int64_t kb = (cf.k + cf.block - 1) / cf.block;
    std::vector<int32_t> g;
    if (cf.gidx)
      for (int64_t i = 0; i < cf.k; ++i) g.push_back(static_cast<int32_t>((i * 7) % kb));
    NBitsWeight w = QuantizeNBits(rng, cf.n, cf.k, cf.bits, cf.block, cf.float_zp, cf.gidx ? &g : nullptr);
    if (!cf.with_zp) {
      // Default zero point 2^(bits-1).
      const float def = static_cast<float>(1 << (cf.bits - 1));
      for (int64_t r = 0; r < cf.n; ++r)
        for (int64_t kk = 0; kk < cf.k; ++kk) {
          const int64_t p = r * kb + kk / cf.block;
          w.deq[r * cf.k + kk] += (w.zp_float.data<float>()[p] - def) * w.scales.data<float>()[p];
        }
    }
    Tensor a = RandomF32(rng, {cf.m, cf.k});
    Tensor bias = RandomF32(rng, {cf.n});
    OpCase c("MatMulNBits", "com.microsoft");
    c.In(a).In(w.b).In(w.scales);
    if (cf.with_zp) c.In(cf.float_zp ? w.zp_float : w.zp_packed);
    else if (cf.gidx || cf.bias) c.NoInput();
    if (cf.gidx) c.In(Tensor::FromVector<int32_t>(g, {cf.k}));
    else if (cf.bias) c.NoInput();
    if (cf.bias) c.In(bias);
    c.Attr("K", AttrInt(cf.k)).Attr("N", AttrInt(cf.n)).Attr("bits", AttrInt(cf.bits)).Attr("block_size",
                                                                                              AttrInt(cf.block));
    Tensor y = BothAgree(c, 1e-5, 1e-5);
    std::vector<float> want(cf.m * cf.n);
    for (int64_t i = 0; i < cf.m; ++i)
      for (int64_t j = 0; j < cf.n; ++j) {
        double s = cf.bias ? bias.data<float>()[j] : 0.0;
        for (int64_t kk = 0; kk < cf.k; ++kk) s += double(a.data<float>()[i * cf.k + kk]) * w.deq[j * cf.k + kk];
        want[i * cf.n + j] = static_cast<float>(s);
      }
    ExpectFloats(y, want, {cf.m, cf.n}, 1e-4);
  }
}

TEST(NnOps, MatMulNBits_BatchedInputAndLargeSlabs) {
  std::mt19937 rng(5);
  NBitsWeight w = QuantizeNBits(rng, 3000, 64, 4, 32, false);
  OpCase c("MatMulNBits", "com.microsoft");
  c.In(RandomF32(rng, {2, 3, 64})).In(w.b).In(w.scales).In(w.zp_packed);
  c.Attr("K", AttrInt(64)).Attr("N", AttrInt(3000)).Attr("block_size", AttrInt(32));
  EXPECT_EQ(BothAgree(c, 1e-4, 1e-5).shape(), (Shape{2, 3, 3000}));
}

TEST(NnOps, Negative_MatMulNBitsBadBlockSize) {
  std::mt19937 rng(1);
  OpCase c("MatMulNBits", "com.microsoft");
  c.In(RandomF32(rng, {1, 24})).In(Tensor(DType::kUInt8, {2, 1, 12})).In(RandomF32(rng, {2, 1}));
  c.Attr("K", AttrInt(24)).Attr("N", AttrInt(2)).Attr("block_size", AttrInt(24));
  ExpectError(c, "block_size");
}

TEST(NnOps, Negative_MatMulNBitsWrongBShape) {
  std::mt19937 rng(1);
  OpCase c("MatMulNBits", "com.microsoft");
  c.In(RandomF32(rng, {1, 32})).In(Tensor(DType::kUInt8, {2, 1, 8})).In(RandomF32(rng, {2, 1}));
  c.Attr("K", AttrInt(32)).Attr("N", AttrInt(2)).Attr("block_size", AttrInt(32));
  ExpectError(c, "B must have shape");
}

// ---- Quantisation ----------------------------------------------------------------------------

TEST(NnOps, QuantizeLinear_PerTensorHand) {
  // The ONNX operator documentation's example.
  OpCase c("QuantizeLinear");
  c.In(F32({0, 2, 3, 1000, -254, -1000}, {6})).In(F32({2}, {})).In(Tensor::Scalar<uint8_t>(128));
  Tensor y = c.Ok(false);
  EXPECT_EQ(y.dtype(), DType::kUInt8);
  EXPECT_EQ(y.ToInt64s(), (std::vector<int64_t>{128, 129, 130, 255, 1, 0}));
  // Ties round to even: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2.
  OpCase d("QuantizeLinear");
  d.In(F32({2.5f, 3.5f, -2.5f}, {3})).In(F32({1}, {})).In(Tensor::Scalar<int8_t>(0));
  EXPECT_EQ(d.Ok(false).ToInt64s(), (std::vector<int64_t>{2, 4, -2}));
}

TEST(NnOps, QuantizeLinear_PerAxisAndBlocked) {
  OpCase c("QuantizeLinear");
  c.In(F32({1, 2, 3, 4, 5, 6}, {2, 3})).In(F32({1, 2, 3}, {3})).In(Tensor::FromVector<int8_t>({0, 1, -1}, {3}));
  c.Attr("axis", AttrInt(1));
  EXPECT_EQ(c.Ok(false).ToInt64s(), (std::vector<int64_t>{1, 2, 0, 4, 3, 1}));  // 5/2 = 2.5 rounds to 2
  // Blocked along axis 1 with block 2: scales [2, 2].
  OpCase b("QuantizeLinear");
  b.In(F32({2, 4, 6, 8, 10, 12, 14, 16}, {2, 4})).In(F32({2, 4, 1, 8}, {2, 2})).Attr("axis", AttrInt(1));
  b.Attr("block_size", AttrInt(2)).Attr("output_dtype", AttrInt(static_cast<int64_t>(DType::kInt8)));
  Tensor y = b.Ok(false);
  EXPECT_EQ(y.dtype(), DType::kInt8);
  EXPECT_EQ(y.ToInt64s(), (std::vector<int64_t>{1, 2, 2, 2, 10, 12, 2, 2}));
}

TEST(NnOps, QuantizeDequantize_Int4RoundTrip) {
  for (DType t : {DType::kInt4, DType::kUInt4}) {
    SCOPED_TRACE(DTypeName(t));
    const float zp = t == DType::kInt4 ? 0.0f : 8.0f;
    Tensor zpt(t, {});
    static_cast<uint8_t*>(zpt.mutable_raw())[0] = static_cast<uint8_t>(zp);
    OpCase q("QuantizeLinear");
    q.In(F32({-4, -1, 0, 1.5f, 3, 100, -100}, {7})).In(F32({0.5f}, {})).In(zpt);
    Tensor y = q.Ok(false);
    EXPECT_EQ(y.dtype(), t);
    EXPECT_EQ(y.nbytes(), 4);
    std::vector<int64_t> want = t == DType::kInt4 ? std::vector<int64_t>{-8, -2, 0, 3, 6, 7, -8}
                                                  : std::vector<int64_t>{0, 6, 8, 11, 14, 15, 0};
    EXPECT_EQ(y.ToInt64s(), want);
    OpCase d("DequantizeLinear");
    d.In(y).In(F32({0.5f}, {})).In(zpt);
    std::vector<float> back = t == DType::kInt4 ? std::vector<float>{-4, -1, 0, 1.5f, 3, 3.5f, -4}
                                                : std::vector<float>{-4, -1, 0, 1.5f, 3, 3.5f, -4};
    ExpectFloats(d.Ok(false), back, {7});
  }
}

TEST(NnOps, DequantizeLinear_PerAxisBlockedAndInt32) {
  OpCase c("DequantizeLinear");
  c.In(Tensor::FromVector<uint8_t>({10, 20, 30, 40}, {2, 2})).In(F32({1, 0.5f}, {2}));
  c.In(Tensor::FromVector<uint8_t>({10, 20}, {2})).Attr("axis", AttrInt(0));
  ExpectFloats(c.Ok(false), {0, 10, 5, 10}, {2, 2});
  OpCase b("DequantizeLinear");
  b.In(Tensor::FromVector<int8_t>({1, 2, 3, 4, 5, 6}, {1, 6})).In(F32({1, 10}, {1, 2}));
  b.Attr("axis", AttrInt(1)).Attr("block_size", AttrInt(4));
  ExpectFloats(b.Ok(false), {1, 2, 3, 4, 50, 60}, {1, 6});
  OpCase i("DequantizeLinear");
  i.In(Tensor::FromVector<int32_t>({-5, 7}, {2})).In(F32({2}, {}));
  ExpectFloats(i.Ok(false), {-10, 14}, {2});
}

TEST(NnOps, DynamicQuantizeLinear_Hand) {
  // The ONNX operator documentation's example.
  OpCase c("DynamicQuantizeLinear");
  c.In(F32({0, 2, -3, -2.5f, 1.34f, 0.5f}, {6}));
  auto r = c.Run(false, 3);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ((*r)[0].ToInt64s(), (std::vector<int64_t>{153, 255, 0, 26, 221, 179}));
  EXPECT_NEAR((*r)[1].data<float>()[0], 0.0196078438f, 1e-8);
  EXPECT_EQ((*r)[2].data<uint8_t>()[0], 153);
}

TEST(NnOps, Negative_QuantizeLinearScaleShape) {
  OpCase c("QuantizeLinear");
  c.In(F32({1, 2, 3, 4}, {2, 2})).In(F32({1, 2, 3}, {3}));
  ExpectError(c, "per-axis scale");
}

TEST(NnOps, Negative_DequantizeLinearZeroPointType) {
  OpCase c("DequantizeLinear");
  c.In(Tensor::FromVector<uint8_t>({1}, {1})).In(F32({1}, {})).In(Tensor::Scalar<int8_t>(0));
  ExpectError(c, "zero_point");
}

TEST(NnOps, MatMulInteger_HandAndRandom) {
  // The ONNX operator documentation's example.
  OpCase c("MatMulInteger");
  c.In(Tensor::FromVector<uint8_t>({11, 7, 3, 10, 6, 2, 9, 5, 1, 8, 4, 0}, {4, 3}));
  c.In(Tensor::FromVector<uint8_t>({1, 4, 2, 5, 3, 6}, {3, 2}));
  c.In(Tensor::Scalar<uint8_t>(12)).In(Tensor::Scalar<uint8_t>(0));
  Tensor y = c.Ok(false);
  EXPECT_EQ(y.dtype(), DType::kInt32);
  EXPECT_EQ(y.ToInt64s(), (std::vector<int64_t>{-38, -83, -44, -98, -50, -113, -56, -128}));
  EXPECT_TRUE(c.Ok(true).BitEqual(y));
  std::mt19937 rng(4);
  std::uniform_int_distribution<int> d(-128, 127);
  const int64_t m = 5, k = 37, n = 6;
  std::vector<int8_t> av(2 * m * k), bv(k * n), azp(m), bzp(n);
  for (auto& v : av) v = static_cast<int8_t>(d(rng));
  for (auto& v : bv) v = static_cast<int8_t>(d(rng));
  for (auto& v : azp) v = static_cast<int8_t>(d(rng));
  for (auto& v : bzp) v = static_cast<int8_t>(d(rng));
  OpCase r("MatMulInteger");
  r.In(Tensor::FromVector<int8_t>(av, {2, m, k})).In(Tensor::FromVector<int8_t>(bv, {k, n}));
  r.In(Tensor::FromVector<int8_t>(azp, {m})).In(Tensor::FromVector<int8_t>(bzp, {n}));
  Tensor ref = r.Ok(false);
  EXPECT_TRUE(r.Ok(true).BitEqual(ref));
  // Spot-check one element by hand.
  int64_t s = 0;
  for (int64_t q = 0; q < k; ++q) s += (av[m * k + 2 * k + q] - azp[2]) * (bv[q * n + 3] - bzp[3]);
  EXPECT_EQ(ref.ToInt64s()[(m + 2) * n + 3], s);
}

TEST(NnOps, Negative_MatMulIntegerZeroPointShape) {
  OpCase c("MatMulInteger");
  c.In(Tensor(DType::kUInt8, {2, 3})).In(Tensor(DType::kUInt8, {3, 4})).In(Tensor(DType::kUInt8, {3}));
  ExpectError(c, "a_zero_point");
}

// ---- Einsum ----------------------------------------------------------------------------------

Tensor Einsum(const std::string& eq, std::vector<Tensor> ins) {
  OpCase c("Einsum");
  for (auto& t : ins) c.In(t);
  c.Attr("equation", AttrString(eq));
  return c.Ok(false);
}

TEST(NnOps, Einsum_CommonForms) {
  std::mt19937 rng(2);
  Tensor a = RandomF32(rng, {3, 4}), b = RandomF32(rng, {4, 5});
  OpCase mm("MatMul");
  mm.In(a).In(b);
  ExpectClose(Einsum("ij,jk->ik", {a, b}), mm.Ok(false), 1e-6, 1e-6);
  ExpectClose(Einsum("ij,jk", {a, b}), mm.Ok(false), 1e-6, 1e-6);  // implicit output "ik"
  Tensor q = RandomF32(rng, {2, 3, 5, 4}), k = RandomF32(rng, {2, 3, 6, 4});
  Tensor s = Einsum("bhqd,bhkd->bhqk", {q, k});
  EXPECT_EQ(s.shape(), (Shape{2, 3, 5, 6}));
  double want = 0;
  for (int d = 0; d < 4; ++d) want += double(q.data<float>()[((1 * 3 + 2) * 5 + 4) * 4 + d]) * k.data<float>()[((1 * 3 + 2) * 6 + 1) * 4 + d];
  EXPECT_NEAR(s.data<float>()[((1 * 3 + 2) * 5 + 4) * 6 + 1], want, 1e-5);
  ExpectFloats(Einsum("ii->i", {F32({1, 2, 3, 4}, {2, 2})}), {1, 4}, {2});
  ExpectFloats(Einsum("ij->", {F32({1, 2, 3, 4}, {2, 2})}), {10}, {});
  ExpectFloats(Einsum("ij->ji", {F32({1, 2, 3, 4, 5, 6}, {2, 3})}), {1, 4, 2, 5, 3, 6}, {3, 2});
  Tensor x = RandomF32(rng, {2, 3, 4}), y = RandomF32(rng, {2, 4, 5});
  OpCase bmm("MatMul");
  bmm.In(x).In(y);
  ExpectClose(Einsum("...ij,...jk->...ik", {x, y}), bmm.Ok(false), 1e-6, 1e-6);
}

TEST(NnOps, Negative_EinsumTermCount) {
  OpCase c("Einsum");
  c.In(F32({1}, {1})).Attr("equation", AttrString("i,i->i"));
  ExpectError(c, "terms");
}

}  // namespace
}  // namespace qc
