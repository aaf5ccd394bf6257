// Execution-only fusions: the fused graph computes what the written graph does.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "formats/model_builder.h"
#include "runtime/executor.h"
#include "runtime/float_precision.h"
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

// The 16-bit exports' forms (torch.onnx dynamo of a float16 Llama): Cast to float32 around the
// RMSNorm chain and the softmax. Fused, they run as one 16-bit op each (float32 inside, one
// rounding on store), within a float16 rounding of the written graph on the CPU.
constexpr int64_t kFloat = static_cast<int64_t>(DType::kFloat32);

// x is a graph input of `x_type`, or (from_table) an embedding lookup in a `x_type` table, whose
// type the fusion must infer (no value_info).
Model HalfRmsNorm(DType half, DType x_type, int extra_x32_readers, bool from_table = false) {
  GraphBuilder b(7);
  std::string x = from_table ? b.Op("Gather", {b.AddInitializer("table", ConvertFloatTensor(RandomInput({50, 96}, 10), x_type)),
                                               b.AddInput("ids", DType::kInt64, {{-1, "s"}})})
                             : b.AddInput("x", x_type, {{-1, "s"}, {96, ""}});
  std::string w = b.AddInitializer("w", ConvertFloatTensor(RandomInput({96}, 9), half));
  std::string x32 = b.Op("Cast", {x}, {{"to", AttrInt(kFloat)}});
  std::string mean = b.Op("ReduceMean", {b.Op("Pow", {x32, b.AddScalar(2.0f)}), b.AddInt64s({-1})});
  std::string r = b.Op("Reciprocal", {b.Op("Sqrt", {b.Op("Add", {mean, b.AddScalar(1e-6f)})})});
  std::string normalised = b.Op("Cast", {b.Op("Mul", {x32, r})}, {{"to", AttrInt(static_cast<int64_t>(half))}});
  b.AddOutput(b.Op("Mul", {normalised, w}), half, {{-1, "s"}, {96, ""}});
  for (int i = 0; i < extra_x32_readers; ++i) b.AddOutput(b.Op("Neg", {x32}), DType::kFloat32, {});
  auto model = b.Build({{"", 18}});
  QC_CHECK(model.ok());
  return std::move(model).value();
}

// Runs `model` fused and unfused on the CPU; the largest |difference| over max(1, |unfused|).
double FusedVsUnfused(const Model& model, const NamedTensors& feeds) {
  SessionOptions unfused_options;
  unfused_options.fuse_ops = false;
  auto fast = Session::Create(model);
  auto unfused = Session::Create(model, unfused_options);
  EXPECT_TRUE(fast.ok() && unfused.ok());
  if (!fast.ok() || !unfused.ok()) return INFINITY;
  auto a = (*fast)->Run(feeds);
  auto u = (*unfused)->Run(feeds);
  EXPECT_TRUE(a.ok() && u.ok()) << (a.ok() ? u.status().message() : a.status().message());
  if (!a.ok() || !u.ok()) return INFINITY;
  EXPECT_EQ((*a)[0].dtype(), (*u)[0].dtype());
  const std::vector<float> av = (*a)[0].ToFloats(), uv = (*u)[0].ToFloats();
  double worst = 0;
  for (size_t i = 0; i < av.size(); ++i)
    worst = std::max(worst, std::fabs(double(av[i]) - uv[i]) / std::max(1.0, std::fabs(double(uv[i]))));
  return worst;
}

TEST(GraphFusionTest, HalfRmsNormWithCastsBecomesOneNode) {
  for (DType half : {DType::kFloat16, DType::kBFloat16}) {
    SCOPED_TRACE(DTypeName(half));
    const Model model = HalfRmsNorm(half, half, 0);
    Graph fused = model.graph;
    EXPECT_EQ(FuseForExecution(fused), 1);
    ASSERT_EQ(fused.nodes.size(), 1u);
    EXPECT_EQ(fused.nodes[0].op_type, "SimplifiedLayerNormalization");
    EXPECT_EQ(fused.nodes[0].inputs, (std::vector<std::string>{"x", "w"}));
    const Tensor x = ConvertFloatTensor(RandomInput({13, 96}, 8), half);
    // One rounding fewer than the written graph: within one unit in the last place of the type.
    EXPECT_LE(FusedVsUnfused(model, {{"x", x}}), half == DType::kFloat16 ? 2e-3 : 1.6e-2);
  }
}

TEST(GraphFusionTest, HalfRmsNormInfersTheTypeOfAnEmbeddingLookup) {
  Graph fused = HalfRmsNorm(DType::kFloat16, DType::kFloat16, 0, /*from_table=*/true).graph;
  EXPECT_EQ(FuseForExecution(fused), 1);
  EXPECT_EQ(CountOps(fused, "SimplifiedLayerNormalization"), 1);
  Graph mixed = HalfRmsNorm(DType::kFloat16, DType::kBFloat16, 0, /*from_table=*/true).graph;
  EXPECT_EQ(FuseForExecution(mixed), 0);
}

TEST(GraphFusionTest, Negative_HalfRmsNormThatMustStay) {
  // x is bfloat16 while w is float16 (the Casts make the written graph valid; the fused op would
  // not be); x32 read outside the chain.
  Graph mixed = HalfRmsNorm(DType::kFloat16, DType::kBFloat16, 0).graph;
  EXPECT_EQ(FuseForExecution(mixed), 0);
  Graph shared = HalfRmsNorm(DType::kFloat16, DType::kFloat16, 1).graph;
  EXPECT_EQ(FuseForExecution(shared), 0);
}

// Without `casts`, the plain chain in `half` (the float16 dynamo export's attention).
Model HalfSoftmax(DType half, DType scale_type, int64_t inner_to, bool casts = true) {
  GraphBuilder b;
  const std::vector<Dim> dims = {{2, ""}, {3, ""}, {-1, "s"}, {-1, "s"}};
  std::string x = b.AddInput("x", half, dims);
  std::string mask = b.AddInput("mask", half, {{1, ""}, {1, ""}, {-1, "s"}, {-1, "s"}});
  std::string c = b.AddInitializer("scale", ConvertFloatTensor(Tensor::Scalar<float>(0.125f), scale_type));
  std::string scores = b.Op("Add", {b.Op("Mul", {x, c}), mask});
  if (!casts) {
    b.AddOutput(b.Op("Softmax", {scores}, {{"axis", AttrInt(-1)}}), half, dims);
  } else {
    std::string wide = b.Op("Cast", {scores}, {{"to", AttrInt(inner_to)}});
    std::string probs = b.Op("Softmax", {wide}, {{"axis", AttrInt(-1)}});
    b.AddOutput(b.Op("Cast", {probs}, {{"to", AttrInt(static_cast<int64_t>(half))}}), half, dims);
  }
  auto model = b.Build({{"", 18}});
  QC_CHECK(model.ok());
  return std::move(model).value();
}

TEST(GraphFusionTest, HalfSoftmaxWithOrWithoutCastsBecomesOneNode) {
  for (DType half : {DType::kFloat16, DType::kBFloat16})
  for (bool casts : {true, false}) {
    SCOPED_TRACE(DTypeName(half) + (casts ? " with casts" : " plain"));
    const Model model = HalfSoftmax(half, half, kFloat, casts);
    Graph fused = model.graph;
    EXPECT_EQ(FuseForExecution(fused), 1);
    ASSERT_EQ(fused.nodes.size(), 1u);
    EXPECT_EQ(fused.nodes[0].op_type, "ScaledMaskedSoftmax");
    EXPECT_EQ(fused.nodes[0].inputs, (std::vector<std::string>{"x", "mask"}));
    EXPECT_EQ(fused.nodes[0].outputs, model.graph.nodes.back().outputs);
    Tensor m = RandomInput({1, 1, 29, 29}, 6);
    for (int64_t i = 0; i < m.numel(); ++i)  // a causal mask as the 16-bit exports make it
      if (i % 29 > i / 29) m.mutable_data<float>()[i] = half == DType::kFloat16 ? -65504.0f : -3.0e38f;
    const NamedTensors feeds = {{"x", ConvertFloatTensor(RandomInput({2, 3, 29, 29}, 5), half)},
                                {"mask", ConvertFloatTensor(m, half)}};
    // Probabilities in [0, 1]: the scores' float16 roundings are skipped, one store rounding kept.
    EXPECT_LE(FusedVsUnfused(model, feeds), half == DType::kFloat16 ? 2e-3 : 1.6e-2);
  }
}

TEST(GraphFusionTest, Negative_HalfSoftmaxThatMustStay) {
  // A float32 scale in a float16 chain (invalid for Mul, never fused); the softmax in float16
  // itself (the inner Cast not to float32).
  Graph wrong_scale = HalfSoftmax(DType::kFloat16, DType::kFloat32, kFloat).graph;
  EXPECT_EQ(FuseForExecution(wrong_scale), 0);
  Graph no_widen = HalfSoftmax(DType::kFloat16, DType::kFloat16, static_cast<int64_t>(DType::kFloat16)).graph;
  EXPECT_EQ(FuseForExecution(no_widen), 0);
}

// The W8A8 per-token activation quantization as passes/int8_linear.cpp writes it (opset 18:
// ReduceMax's axes as an input), of x or (gather) of its rest channels; q and s are then read as a
// layer reads them. `round_readers` extra readers of Round's output keep the chain apart.
constexpr int64_t kUInt8 = static_cast<int64_t>(DType::kUInt8);
Model TokenQuantization(bool gather, float max_code = 127.0f, int64_t cast_to = kUInt8, int round_readers = 0) {
  GraphBuilder b(11);
  const std::string x = b.AddInput("x", DType::kFloat32, {{-1, "t"}, {96, ""}});
  std::string src = x;
  if (gather) {
    std::vector<int64_t> rest;
    for (int64_t k = 0; k < 96; ++k)
      if (k % 7 != 3) rest.push_back(k);  // every channel but the "outliers" 3, 10, 17, ...
    src = b.Op("Gather", {x, b.AddInitializer("rest", Tensor::FromVector<int64_t>(rest, {static_cast<int64_t>(rest.size())}))},
               {{"axis", AttrInt(-1)}});
  }
  const std::string absmax = b.Op("ReduceMax", {b.Op("Abs", {src}), b.AddInt64s({-1})}, {{"keepdims", AttrInt(1)}});
  const std::string s = b.Op("Div", {b.Op("Max", {absmax, b.AddScalar(1e-30f)}), b.AddScalar(max_code)});
  const std::string rounded = b.Op("Round", {b.Op("Div", {src, s})});
  const std::string q = b.Op("Cast", {b.Op("Add", {rounded, b.AddScalar(128.0f)})}, {{"to", AttrInt(cast_to)}});
  b.AddOutput(q, static_cast<DType>(cast_to), {});
  b.AddOutput(b.Op("Mul", {s, b.AddScalar(2.0f)}), DType::kFloat32, {});
  for (int i = 0; i < round_readers; ++i) b.AddOutput(b.Op("Neg", {rounded}), DType::kFloat32, {});
  auto model = b.Build({{"", 18}});
  QC_CHECK(model.ok());
  return std::move(model).value();
}

TEST(GraphFusionTest, TokenQuantizationBecomesOneNodeWithTheSameBits) {
  for (bool gather : {false, true}) {
    SCOPED_TRACE(gather ? "rest channels" : "every channel");
    const Model model = TokenQuantization(gather);
    Graph fused = model.graph;
    EXPECT_EQ(FuseForExecution(fused), 1);
    ASSERT_EQ(fused.nodes.size(), 2u);  // the fused node and the reader of s
    EXPECT_EQ(fused.nodes[0].op_type, "QuantizeTokensUint8");
    EXPECT_EQ(fused.nodes[0].inputs.size(), gather ? 2u : 1u);
    // Random tokens, a token of zeros, and ties: a token whose max is 127 (s = 1) holding k + 0.5.
    Tensor x = RandomInput({5, 96}, 12);
    float* xp = x.mutable_data<float>();
    for (int64_t k = 0; k < 96; ++k) {
      xp[96 + k] = 0.0f;
      xp[2 * 96 + k] = k == 0 ? 127.0f : static_cast<float>(k % 9) - 4.5f;
    }
    SessionOptions unfused_options;
    unfused_options.fuse_ops = false;
    auto fast = Session::Create(model);
    auto unfused = Session::Create(model, unfused_options);
    ASSERT_TRUE(fast.ok() && unfused.ok());
    auto a = (*fast)->Run({{"x", x}});
    auto u = (*unfused)->Run({{"x", x}});
    ASSERT_TRUE(a.ok() && u.ok()) << (a.ok() ? u.status().message() : a.status().message());
    ASSERT_EQ(a->size(), 2u);
    EXPECT_TRUE((*a)[0].BitEqual((*u)[0]));  // the codes
    EXPECT_TRUE((*a)[1].BitEqual((*u)[1]));  // the scales (times 2)
    const int64_t width = (*a)[0].dim(-1);  // 82 rest channels, or 96
    EXPECT_EQ(width, gather ? 82 : 96);
    EXPECT_EQ((*a)[0].data<uint8_t>()[width], 128);          // zeros: code 0, no NaN
    EXPECT_EQ((*a)[0].data<uint8_t>()[2 * width + 1], 124);  // -3.5 rounds to -4 (even); channel 1 is a rest channel
  }
}

// In float16 and bfloat16 (a 16-bit export, or --dtype rewriting a float32 one after fusing) the
// fused op rounds each step to the type as the chain's ops do: same codes and scales, bit for bit.
// Tokens: random, zeros and a tiny one (float16: eps and max/127 underflow, s = 0, x/s is NaN or
// infinite; the codes convert as Cast does), and ties.
TEST(GraphFusionTest, TokenQuantizationInHalfTypesKeepsTheChainsBits) {
  Tensor x = RandomInput({6, 96}, 13);
  float* xp = x.mutable_data<float>();
  for (int64_t k = 0; k < 96; ++k) {
    xp[96 + k] = 0.0f;
    xp[2 * 96 + k] = k == 0 ? 127.0f : static_cast<float>(k % 9) - 4.5f;
    xp[3 * 96 + k] = (k % 5 - 2) * 1e-6f;
  }
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    for (bool gather : {false, true}) {
      SCOPED_TRACE(DTypeName(dtype) + (gather ? ", rest channels" : ", every channel"));
      Model native = TokenQuantization(gather);
      ASSERT_TRUE(ConvertFloatPrecision(native.graph, DType::kFloat32, dtype).ok());
      Graph fused = native.graph;
      EXPECT_EQ(FuseForExecution(fused), 1);
      // --dtype's order: the float32 graph fused, then rewritten to 16 bits.
      Model widened_model = TokenQuantization(gather);
      EXPECT_EQ(FuseForExecution(widened_model.graph), 1);
      ASSERT_TRUE(ConvertFloatPrecision(widened_model.graph, DType::kFloat32, dtype).ok());
      SessionOptions unfused_options;
      unfused_options.fuse_ops = false;
      auto fast = Session::Create(native);
      auto unfused = Session::Create(native, unfused_options);
      auto widened = Session::Create(widened_model, unfused_options);
      ASSERT_TRUE(fast.ok() && unfused.ok() && widened.ok())
          << (!fast.ok() ? fast.status().message() : !unfused.ok() ? unfused.status().message() : widened.status().message());
      auto a = (*fast)->Run({{"x", x}});
      auto u = (*unfused)->Run({{"x", x}});
      auto w = (*widened)->Run({{"x", x}});
      ASSERT_TRUE(a.ok() && u.ok() && w.ok()) << (!a.ok() ? a.status().message() : !u.ok() ? u.status().message() : w.status().message());
      for (size_t i = 0; i < 2; ++i) {
        EXPECT_TRUE((*a)[i].BitEqual((*u)[i])) << "output " << i;
        EXPECT_TRUE((*w)[i].BitEqual((*u)[i])) << "output " << i;
      }
      const int64_t width = (*a)[0].dim(-1);
      EXPECT_EQ((*a)[0].data<uint8_t>()[2 * width + 1], 124);  // -3.5 rounds to -4 (even)
    }
  }
}

TEST(GraphFusionTest, Negative_TokenQuantizationThatMustStay) {
  Graph other_code = TokenQuantization(false, 126.0f).graph;  // not the int8 code range
  EXPECT_EQ(FuseForExecution(other_code), 0);
  Graph signed_codes = TokenQuantization(false, 127.0f, static_cast<int64_t>(DType::kInt8)).graph;
  EXPECT_EQ(FuseForExecution(signed_codes), 0);
  Graph shared_round = TokenQuantization(true, 127.0f, kUInt8, 1).graph;  // Round's output read elsewhere
  EXPECT_EQ(FuseForExecution(shared_round), 0);
}

}  // namespace
}  // namespace qc
