// FindFirstNonFinite (runtime/non_finite.h): names the node that made the first NaN/Inf.
#include "runtime/non_finite.h"

#include <gtest/gtest.h>

#include <limits>

#include "formats/model_builder.h"

namespace qc {
namespace {

// x -> Neg -> Sqrt -> Add(x) -> Mul(2) -> y: with a positive x, Sqrt is where NaN starts (and Add
// and Mul carry it on); with |x| taken first, every value is finite.
Model SqrtChain(bool abs_first) {
  GraphBuilder g;
  const std::string x = g.AddInput("x", DType::kFloat32, {Dim{2, ""}, Dim{3, ""}});
  std::string v = g.Op("Neg", {abs_first ? g.Op("Neg", {g.Op("Abs", {x})}) : x});
  const std::string root = g.Op("Sqrt", {v});
  const std::string y = g.Op("Mul", {g.Op("Add", {root, x}), g.AddScalar(2.0f)});
  g.AddOutput(y, DType::kFloat32, {Dim{2, ""}, Dim{3, ""}});
  StatusOr<Model> m = g.Build({{"", 18}});
  QC_CHECK(m.ok());
  return std::move(m).value();
}

NamedTensors Feeds(std::vector<float> x) { return {{"x", Tensor::FromVector<float>(x, {2, 3})}}; }

TEST(FindFirstNonFinite, NamesTheNodeWhereNaNStarts) {
  const Model model = SqrtChain(false);
  auto session = Session::Create(model);
  ASSERT_TRUE(session.ok()) << session.status().message();
  auto site = FindFirstNonFinite(**session, model.graph, Feeds({1, 2, 0, 4, -1, 0}));
  ASSERT_TRUE(site.ok()) << site.status().message();
  ASSERT_TRUE(site->has_value());
  EXPECT_EQ((*site)->op_type, "Sqrt");
  EXPECT_EQ((*site)->output, model.graph.nodes[1].outputs[0]);
  EXPECT_EQ((*site)->node, model.graph.nodes[1].name);
  EXPECT_EQ((*site)->count, 3);  // sqrt(-1), sqrt(-2), sqrt(-4)
  EXPECT_EQ((*site)->numel, 6);
  EXPECT_NE((*site)->Describe().find("3 of 6 values are NaN or Inf"), std::string::npos) << (*site)->Describe();
}

TEST(FindFirstNonFinite, InfCountsToo) {
  const Model model = SqrtChain(true);
  auto session = Session::Create(model);
  ASSERT_TRUE(session.ok());
  const float inf = std::numeric_limits<float>::infinity();
  auto site = FindFirstNonFinite(**session, model.graph, Feeds({1, 2, 3, 4, 5, inf}));
  ASSERT_TRUE(site.ok());
  ASSERT_TRUE(site->has_value());
  EXPECT_EQ((*site)->op_type, "Abs");  // the input's Inf first shows in the first node's output
  EXPECT_EQ((*site)->count, 1);
}

TEST(FindFirstNonFinite, NothingWhenEveryValueIsFinite) {
  const Model model = SqrtChain(true);
  auto session = Session::Create(model);
  ASSERT_TRUE(session.ok());
  auto site = FindFirstNonFinite(**session, model.graph, Feeds({1, -2, 0, 4, -1, 0}));
  ASSERT_TRUE(site.ok()) << site.status().message();
  EXPECT_FALSE(site->has_value());
}

TEST(FindFirstNonFinite, Negative_BadFeedsAreAnError) {
  const Model model = SqrtChain(false);
  auto session = Session::Create(model);
  ASSERT_TRUE(session.ok());
  EXPECT_FALSE(FindFirstNonFinite(**session, model.graph, {{"x", Tensor::FromVector<float>({1, 2}, {2})}}).ok());
}

TEST(CountNonFinite, DoublesAreCheckedAsDoubles) {
  // 1e300 is finite as a double and Inf as a float.
  EXPECT_EQ(CountNonFinite(Tensor::FromVector<double>({1e300, -1e300, std::nan("")}, {3})), 1);
  EXPECT_EQ(CountNonFinite(Tensor::FromVector<float>({1.0f, -std::numeric_limits<float>::infinity()}, {2})), 1);
}

}  // namespace
}  // namespace qc
