// Execution-only fusions: the fused graph computes what the written graph does.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "formats/model_builder.h"
#include "runtime/executor.h"
#include "runtime/graph_fusion.h"

namespace qc {
namespace {

int CountOps(const Graph& g, const std::string& op) {
  int n = 0;
  for (const Node& node : g.nodes) n += node.op_type == op;
  return n;
}

Tensor RandomInput(Shape shape, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  Tensor t(DType::kFloat32, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.mutable_data<float>()[i] = dist(rng);
  return t;
}

TEST(GraphFusionTest, SiluBecomesQuickGeluAndComputesTheSame) {
  GraphBuilder b;
  std::string x = b.AddInput("x", DType::kFloat32, {{-1, "s"}, {300, ""}});
  std::string silu_a = b.Op("Mul", {x, b.Op("Sigmoid", {x})});  // both operand orders
  std::string silu_b = b.Op("Mul", {b.Op("Sigmoid", {silu_a}), silu_a});
  b.AddOutput(silu_b, DType::kFloat32, {{-1, "s"}, {300, ""}});
  auto model = b.Build({{"", 18}});
  ASSERT_TRUE(model.ok()) << model.status().message();

  Graph fused = model->graph;
  EXPECT_EQ(FuseForExecution(fused), 2);
  EXPECT_EQ(CountOps(fused, "Sigmoid"), 0);
  EXPECT_EQ(CountOps(fused, "Mul"), 0);
  EXPECT_EQ(CountOps(fused, "QuickGelu"), 2);

  SessionOptions ref_options;
  ref_options.use_reference_kernels = true;
  auto fast = Session::Create(*model);
  auto ref = Session::Create(*model, ref_options);
  ASSERT_TRUE(fast.ok() && ref.ok());
  Tensor input = RandomInput({7, 300}, 3);
  auto a = (*fast)->Run({{"x", input}});
  auto r = (*ref)->Run({{"x", input}});
  ASSERT_TRUE(a.ok() && r.ok());
  std::vector<float> av = (*a)[0].ToFloats(), rv = (*r)[0].ToFloats();
  for (size_t i = 0; i < av.size(); ++i) ASSERT_NEAR(av[i], rv[i], 2e-6f * std::fabs(rv[i]) + 1e-30f) << i;
}

TEST(GraphFusionTest, Negative_SigmoidWithAnotherReaderIsKept) {
  GraphBuilder b;
  std::string x = b.AddInput("x", DType::kFloat32, {{4, ""}});
  std::string s = b.Op("Sigmoid", {x});
  std::string y = b.Op("Mul", {x, s});
  std::string z = b.Op("Add", {y, s});  // s read twice: fusing would drop it
  b.AddOutput(z, DType::kFloat32, {{4, ""}});
  auto model = b.Build({{"", 18}});
  ASSERT_TRUE(model.ok());
  Graph g = model->graph;
  EXPECT_EQ(FuseForExecution(g), 0);
  EXPECT_EQ(g.nodes.size(), model->graph.nodes.size());
}

TEST(GraphFusionTest, Negative_MulOfDifferentValueIsKept) {
  GraphBuilder b;
  std::string x = b.AddInput("x", DType::kFloat32, {{4, ""}});
  std::string w = b.AddInput("w", DType::kFloat32, {{4, ""}});
  std::string y = b.Op("Mul", {w, b.Op("Sigmoid", {x})});  // gate on another value: not SiLU
  b.AddOutput(y, DType::kFloat32, {{4, ""}});
  auto model = b.Build({{"", 18}});
  ASSERT_TRUE(model.ok());
  Graph g = model->graph;
  EXPECT_EQ(FuseForExecution(g), 0);
}

// Attention scores: Mul(scale) -> Add(mask) -> Softmax becomes one ScaledMaskedSoftmax that gives
// the unfused fast kernels' bits and agrees with the reference kernels.
TEST(GraphFusionTest, ScaledMaskedSoftmaxComputesTheSame) {
  GraphBuilder b;
  std::string x = b.AddInput("x", DType::kFloat32, {{2, ""}, {3, ""}, {-1, "s"}, {-1, "s"}});
  std::string mask = b.AddInput("mask", DType::kFloat32, {{1, ""}, {1, ""}, {-1, "s"}, {-1, "s"}});
  std::string c = b.AddInitializer("scale", Tensor::Scalar<float>(0.125f));
  std::string scores = b.Op("Add", {mask, b.Op("Mul", {c, x})});  // constant and mask on the left
  std::string probs = b.Op("Softmax", {scores}, {{"axis", AttrInt(-1)}});
  b.AddOutput(probs, DType::kFloat32, {{2, ""}, {3, ""}, {-1, "s"}, {-1, "s"}});
  auto model = b.Build({{"", 18}});
  ASSERT_TRUE(model.ok()) << model.status().message();
  Graph fused = model->graph;
  EXPECT_EQ(FuseForExecution(fused), 1);
  EXPECT_EQ(CountOps(fused, "ScaledMaskedSoftmax"), 1);
  EXPECT_EQ(fused.nodes.size(), 1u);

  SessionOptions unfused_options, ref_options;
  unfused_options.fuse_ops = false;
  ref_options.use_reference_kernels = true;
  auto fast = Session::Create(*model);
  auto unfused = Session::Create(*model, unfused_options);
  auto ref = Session::Create(*model, ref_options);
  ASSERT_TRUE(fast.ok() && unfused.ok() && ref.ok());
  Tensor input = RandomInput({2, 3, 37, 37}, 5);
  Tensor m = RandomInput({1, 1, 37, 37}, 6);
  for (int64_t i = 0; i < m.numel(); ++i)  // a causal mask: -inf above the diagonal
    if (i % 37 > i / 37) m.mutable_data<float>()[i] = -INFINITY;
  auto a = (*fast)->Run({{"x", input}, {"mask", m}});
  auto u = (*unfused)->Run({{"x", input}, {"mask", m}});
  auto r = (*ref)->Run({{"x", input}, {"mask", m}});
  ASSERT_TRUE(a.ok() && u.ok() && r.ok()) << a.status().message();
  std::vector<float> av = (*a)[0].ToFloats(), uv = (*u)[0].ToFloats(), rv = (*r)[0].ToFloats();
  ASSERT_EQ(av.size(), rv.size());
  for (size_t i = 0; i < av.size(); ++i) {
    ASSERT_EQ(av[i], uv[i]) << i;
    ASSERT_NEAR(av[i], rv[i], 2e-6f * std::fabs(rv[i]) + 1e-30f) << i;
  }
}

// Llama's exported RMSNorm becomes one SimplifiedLayerNormalization that agrees with the
// reference kernels on the written graph.
TEST(GraphFusionTest, RmsNormBecomesSimplifiedLayerNormalization) {
  GraphBuilder b(7);
  std::string x = b.AddInput("x", DType::kFloat32, {{-1, "s"}, {96, ""}});
  std::string w = b.AddRandomNormal("w", {96}, 1.0f, 0.1f);
  std::string mean = b.Op("ReduceMean", {b.Op("Pow", {x, b.AddScalar(2.0f)}), b.AddInt64s({-1})});
  std::string r = b.Op("Reciprocal", {b.Op("Sqrt", {b.Op("Add", {mean, b.AddScalar(1e-6f)})})});
  std::string y = b.Op("Mul", {w, b.Op("Mul", {x, r})});
  b.AddOutput(y, DType::kFloat32, {{-1, "s"}, {96, ""}});
  auto model = b.Build({{"", 18}});
  ASSERT_TRUE(model.ok()) << model.status().message();
  Graph fused = model->graph;
  EXPECT_EQ(FuseForExecution(fused), 1);
  ASSERT_EQ(fused.nodes.size(), 1u);
  EXPECT_EQ(fused.nodes[0].op_type, "SimplifiedLayerNormalization");
  EXPECT_FLOAT_EQ(fused.nodes[0].GetFloat("epsilon", 0), 1e-6f);

  SessionOptions ref_options;
  ref_options.use_reference_kernels = true;
  auto fast = Session::Create(*model);
  auto ref = Session::Create(*model, ref_options);
  ASSERT_TRUE(fast.ok() && ref.ok());
  Tensor input = RandomInput({13, 96}, 8);
  auto a = (*fast)->Run({{"x", input}});
  auto e = (*ref)->Run({{"x", input}});
  ASSERT_TRUE(a.ok() && e.ok()) << a.status().message();
  std::vector<float> av = (*a)[0].ToFloats(), ev = (*e)[0].ToFloats();
  for (size_t i = 0; i < av.size(); ++i) ASSERT_NEAR(av[i], ev[i], 1e-5f * std::fabs(ev[i]) + 1e-6f) << i;
}

TEST(GraphFusionTest, Negative_NormChainThatMustStay) {
  GraphBuilder b(7);
  std::string x = b.AddInput("x", DType::kFloat32, {{4, ""}, {8, ""}});
  std::string other = b.AddInput("o", DType::kFloat32, {{4, ""}, {8, ""}});
  std::string w = b.AddRandomNormal("w", {8}, 1.0f, 0.1f);
  // Squares of one tensor normalising another; a cube instead of a square; a mean over axis 0.
  auto norm = [&](const std::string& sq, float power, int64_t axis) {
    std::string mean = b.Op("ReduceMean", {b.Op("Pow", {sq, b.AddScalar(power)}), b.AddInt64s({axis})});
    std::string r = b.Op("Reciprocal", {b.Op("Sqrt", {b.Op("Add", {mean, b.AddScalar(1e-6f)})})});
    return b.Op("Mul", {w, b.Op("Mul", {x, r})});
  };
  for (const std::string& y : {norm(other, 2.0f, -1), norm(x, 3.0f, -1), norm(x, 2.0f, 0)})
    b.AddOutput(y, DType::kFloat32, {{4, ""}, {8, ""}});
  auto model = b.Build({{"", 18}});
  ASSERT_TRUE(model.ok()) << model.status().message();
  Graph g = model->graph;
  EXPECT_EQ(FuseForExecution(g), 0);
}

TEST(GraphFusionTest, Negative_SoftmaxChainsThatMustStay) {
  GraphBuilder b;
  std::string x = b.AddInput("x", DType::kFloat32, {{4, ""}, {8, ""}});
  std::string mask = b.AddInput("mask", DType::kFloat32, {{4, ""}, {8, ""}});
  std::string c = b.AddInitializer("c", Tensor::FromVector<float>({0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f}, {8}));
  // A per-column factor is not a scale; an Add read twice; a Softmax over axis 0.
  std::string y1 = b.Op("Softmax", {b.Op("Add", {b.Op("Mul", {x, c}), mask})}, {{"axis", AttrInt(-1)}});
  std::string k = b.AddInitializer("k", Tensor::Scalar<float>(2.0f));
  std::string s = b.Op("Add", {b.Op("Mul", {x, k}), mask});
  std::string y2 = b.Op("Add", {b.Op("Softmax", {s}, {{"axis", AttrInt(-1)}}), s});
  std::string y3 = b.Op("Softmax", {b.Op("Add", {b.Op("Mul", {x, k}), mask})}, {{"axis", AttrInt(0)}});
  for (const std::string& y : {y1, y2, y3}) b.AddOutput(y, DType::kFloat32, {{4, ""}, {8, ""}});
  auto model = b.Build({{"", 18}});
  ASSERT_TRUE(model.ok()) << model.status().message();
  Graph g = model->graph;
  EXPECT_EQ(FuseForExecution(g), 0);
}

}  // namespace
}  // namespace qc
