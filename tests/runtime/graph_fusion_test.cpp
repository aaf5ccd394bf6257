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

}  // namespace
}  // namespace qc
