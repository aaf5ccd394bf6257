// The float precision rewrite (runtime/float_precision.h) and the CPU's widening of float16 /
// bfloat16 inputs (runtime/cpu/half_widening.h): structure, saturation, the interface kept, and
// numerical equivalence within the 16-bit types' rounding.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>

#include "formats/model_builder.h"
#include "formats/npy.h"
#include "formats/onnx_reader.h"
#include "runtime/executor.h"
#include "runtime/float_precision.h"
#include "runtime/perplexity.h"
#include "tests/random_tensor.h"

namespace qc {
namespace {

const Node* FindNode(const Graph& g, const std::string& op, const std::string& output) {
  for (const Node& n : g.nodes)
    if (n.op_type == op && !n.outputs.empty() && n.outputs[0] == output) return &n;
  return nullptr;
}

int CountOps(const Graph& g, const std::string& op) {
  int n = 0;
  for (const Node& node : g.nodes) n += node.op_type == op;
  return n;
}

// x[4, 8] -> MatMul(W) -> Add(Cast<float>(ids)) -> Mul(Constant 0.5) -> Add(ConstantOfShape) -> y,
// plus an int64 initializer that must stay int64.
StatusOr<Model> SmallModel() {
  GraphBuilder b(1);
  const std::string x = b.AddInput("x", DType::kFloat32, {{4, ""}, {8, ""}});
  const std::string ids = b.AddInput("ids", DType::kInt64, {{4, ""}, {1, ""}});
  const std::string w = b.AddInitializer("w", Random({8, 6}, 2));
  const std::string mm = b.Op("MatMul", {x, w});
  const std::string pos = b.Op("Cast", {ids}, {{"to", AttrInt(static_cast<int64_t>(DType::kFloat32))}});
  const std::string half = b.AddConstantNode(Tensor::Scalar<float>(0.5f));
  const std::string zeros = b.Op("ConstantOfShape", {b.AddInt64s({4, 6})});
  const std::string y = b.Op("Add", {b.Op("Mul", {b.Op("Add", {mm, pos}), half}), zeros});
  b.AddOutput(y, DType::kFloat32, {{4, ""}, {6, ""}});
  return b.Build({{"", 17}});
}

TEST(FloatPrecisionTest, ConvertsConstantsCastsAndKeepsTheInterface) {
  auto model = SmallModel();
  ASSERT_TRUE(model.ok()) << model.status().message();
  EXPECT_EQ(ModelFloatDType(model->graph), DType::kFloat32);
  Graph g = model->graph;
  const int nodes = static_cast<int>(g.nodes.size());
  ASSERT_TRUE(ConvertFloatPrecision(g, DType::kFloat32, DType::kFloat16).ok());
  EXPECT_EQ(ModelFloatDType(g), DType::kFloat16);
  EXPECT_EQ(g.FindInitializer("w")->dtype(), DType::kFloat16);
  for (const std::string& name : g.initializer_names())
    if (model->graph.FindInitializer(name)->dtype() == DType::kInt64) EXPECT_EQ(g.FindInitializer(name)->dtype(), DType::kInt64) << name;
  // One Cast after x, one before y; ids (int64) gets none.
  EXPECT_EQ(static_cast<int>(g.nodes.size()), nodes + 2);
  EXPECT_EQ(g.inputs[0].dtype, DType::kFloat32);
  EXPECT_EQ(g.outputs[0].dtype, DType::kFloat32);
  const Node* in_cast = FindNode(g, "Cast", "x/float16");
  ASSERT_NE(in_cast, nullptr);
  EXPECT_EQ(in_cast->inputs[0], "x");
  EXPECT_EQ(in_cast->GetInt("to", 0), static_cast<int64_t>(DType::kFloat16));
  const Node* out_cast = FindNode(g, "Cast", g.outputs[0].name);
  ASSERT_NE(out_cast, nullptr);
  EXPECT_EQ(out_cast->GetInt("to", 0), static_cast<int64_t>(DType::kFloat32));
  for (const Node& n : g.nodes) {
    if (n.op_type == "MatMul") EXPECT_EQ(n.inputs[0], "x/float16");
    if (n.op_type == "Cast" && n.inputs[0] == "ids") EXPECT_EQ(n.GetInt("to", 0), static_cast<int64_t>(DType::kFloat16));
    if (n.op_type == "Constant") EXPECT_EQ(n.attributes.at("value").t.dtype(), DType::kFloat16);
    if (n.op_type == "ConstantOfShape") EXPECT_EQ(n.attributes.at("value").t.dtype(), DType::kFloat16);  // the default float32 zero
  }
}

TEST(FloatPrecisionTest, ConvertInterfaceChangesInputsAndOutputs) {
  auto model = SmallModel();
  ASSERT_TRUE(model.ok());
  Graph g = model->graph;
  const size_t nodes = g.nodes.size();
  ASSERT_TRUE(ConvertFloatPrecision(g, DType::kFloat32, DType::kBFloat16, FloatInterface::kConvert).ok());
  EXPECT_EQ(g.nodes.size(), nodes);
  EXPECT_EQ(g.inputs[0].dtype, DType::kBFloat16);
  EXPECT_EQ(g.inputs[1].dtype, DType::kInt64);
  EXPECT_EQ(g.outputs[0].dtype, DType::kBFloat16);
}

TEST(FloatPrecisionTest, ConstantsSaturateAtTheTargetsRange) {
  const float inf = INFINITY;
  const Tensor t = Tensor::FromVector<float>({-3.4028235e38f, 3.4028235e38f, 1e5f, -inf, inf, NAN, 1e-30f, 0.5f, -65519.0f}, {9});
  const std::vector<float> h = ConvertFloatTensor(t, DType::kFloat16).ToFloats();
  const std::vector<float> want_h = {-65504.0f, 65504.0f, 65504.0f, -inf, inf, NAN, 0.0f, 0.5f, -65504.0f};
  const std::vector<float> b = ConvertFloatTensor(t, DType::kBFloat16).ToFloats();
  const float bf16_max = 3.3895314e38f;
  const std::vector<float> want_b = {-bf16_max, bf16_max, 99840.0f, -inf, inf, NAN, 1.0000e-30f, 0.5f, -65536.0f};
  for (size_t i = 0; i < h.size(); ++i) {
    if (std::isnan(want_h[i])) {
      EXPECT_TRUE(std::isnan(h[i]) && std::isnan(b[i])) << i;
      continue;
    }
    EXPECT_EQ(h[i], want_h[i]) << i;
    if (std::isinf(want_b[i])) EXPECT_EQ(b[i], want_b[i]) << i;
    else EXPECT_NEAR(b[i], want_b[i], std::fabs(want_b[i]) * 4e-3f) << i;
  }
  EXPECT_FALSE(std::isinf(b[0]));
  // Back to float32: exact.
  const Tensor back = ConvertFloatTensor(ConvertFloatTensor(t, DType::kFloat16), DType::kFloat32);
  EXPECT_EQ(back.dtype(), DType::kFloat32);
  EXPECT_EQ(back.ToFloats()[0], -65504.0f);
}

TEST(FloatPrecisionTest, Negative_CpuSessionRejects16BitCompute) {
  auto model = SmallModel();
  ASSERT_TRUE(model.ok());
  for (DType t : {DType::kFloat16, DType::kBFloat16}) {
    SessionOptions options;
    options.compute_dtype = t;
    auto session = Session::Create(*model, options);
    ASSERT_FALSE(session.ok());
    EXPECT_EQ(session.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(session.status().message().find("--device cuda"), std::string::npos) << session.status().message();
  }
  SessionOptions f32;
  f32.compute_dtype = DType::kFloat32;  // the model's own: nothing to do
  EXPECT_TRUE(Session::Create(*model, f32).ok());
}

// A float16 model (as `model.half()` exports it) runs on the CPU: ops without a 16-bit kernel
// (MatMul, Softmax) widen their inputs; the result matches the float32 model within float16
// rounding. --dtype float32 on it converts it back to float32.
TEST(FloatPrecisionTest, Float16ModelRunsOnTheCpuByWidening) {
  GraphBuilder b(3);
  const std::string x = b.AddInput("x", DType::kFloat32, {{5, ""}, {16, ""}});
  const std::string h = b.Op("MatMul", {x, b.AddInitializer("w", Random({16, 12}, 4, -0.5f, 0.5f))});
  const std::string y = b.Op("Softmax", {b.Op("Add", {h, b.AddInitializer("bias", Random({12}, 5))})}, {{"axis", AttrInt(-1)}});
  b.AddOutput(y, DType::kFloat32, {{5, ""}, {12, ""}});
  auto model = b.Build({{"", 17}});
  ASSERT_TRUE(model.ok());
  Model half = *model;
  ASSERT_TRUE(ConvertFloatPrecision(half.graph, DType::kFloat32, DType::kFloat16, FloatInterface::kConvert).ok());
  const Tensor in = Random({5, 16}, 6);
  auto want = (*Session::Create(*model))->Run({{"x", in}});
  ASSERT_TRUE(want.ok());
  auto half_session = Session::Create(half);
  ASSERT_TRUE(half_session.ok()) << half_session.status().message();
  auto got = (*half_session)->Run({{"x", ConvertFloatTensor(in, DType::kFloat16)}});
  ASSERT_TRUE(got.ok()) << got.status().message();
  ASSERT_EQ((*got)[0].dtype(), DType::kFloat16);
  SessionOptions f32;
  f32.compute_dtype = DType::kFloat32;
  auto widened = Session::Create(half, f32);
  ASSERT_TRUE(widened.ok()) << widened.status().message();
  // The interface is the float16 model's: float16 in, float16 out; computed in float32 inside.
  auto got32 = (*widened)->Run({{"x", ConvertFloatTensor(in, DType::kFloat16)}});
  ASSERT_TRUE(got32.ok()) << got32.status().message();
  ASSERT_EQ((*got32)[0].dtype(), DType::kFloat16);
  const std::vector<float> w = (*want)[0].ToFloats(), g = (*got)[0].ToFloats(), g32 = (*got32)[0].ToFloats();
  for (size_t i = 0; i < w.size(); ++i) {
    EXPECT_NEAR(g[i], w[i], 4e-3f) << i;
    EXPECT_NEAR(g32[i], w[i], 4e-3f) << i;
  }
}

TEST(FloatPrecisionTest, Negative_MixedHalfTypesAreNotWidened) {
  GraphBuilder b(7);
  const std::string x = b.AddInput("x", DType::kFloat16, {{3, ""}, {4, ""}});
  const std::string w = b.AddInitializer("w", ConvertFloatTensor(Random({4, 2}, 8), DType::kBFloat16));
  b.AddOutput(b.Op("MatMul", {x, w}), DType::kUndefined, {});
  auto model = b.Build({{"", 17}});
  ASSERT_TRUE(model.ok());
  auto session = Session::Create(*model);
  ASSERT_TRUE(session.ok());
  auto out = (*session)->Run({{"x", ConvertFloatTensor(Random({3, 4}, 9), DType::kFloat16)}});
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("dtypes differ"), std::string::npos) << out.status().message();
}

// docs-llama-12m rewritten to float16 and bfloat16 and run on the CPU (widened kernels: the same
// products and float32 accumulation as the GPU's), against float32: what --dtype costs in perplexity.
TEST(FloatPrecisionTest, SharedLlamaPerplexityIn16BitTypes) {
  const char* env_shared = std::getenv("QC_SHARED_DIR");
  const std::string shared = env_shared ? env_shared : QC_SHARED_DIR;
  const std::string dir = shared + "/models/docs-llama-12m";
  if (!std::filesystem::exists(dir + "/model.onnx")) GTEST_SKIP() << "../shared not found";
  auto model = ReadOnnxModel(dir + "/model.onnx");
  ASSERT_TRUE(model.ok()) << model.status().message();
  auto ids_tensor = ReadNpy(dir + "/docs-val.ids.npy");
  ASSERT_TRUE(ids_tensor.ok());
  std::vector<int32_t> ids;
  for (int64_t v : ids_tensor->ToInt64s()) ids.push_back(static_cast<int32_t>(v));
  PerplexityOptions po;
  po.seqlen = 512;
  const char* windows = std::getenv("QC_PRECISION_WINDOWS");
  po.max_windows = windows ? std::atoi(windows) : 4;
  auto ppl = [&](DType t) -> double {
    Model m = *model;
    if (t != DType::kFloat32) EXPECT_TRUE(ConvertFloatPrecision(m.graph, DType::kFloat32, t).ok());
    auto session = Session::Create(m);
    EXPECT_TRUE(session.ok()) << session.status().message();
    auto r = EvaluatePerplexity(**session, ids, po);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? r->ppl : 0.0;
  };
  const double f32 = ppl(DType::kFloat32), f16 = ppl(DType::kFloat16), bf16 = ppl(DType::kBFloat16);
  std::printf("docs-llama-12m, %lld windows: float32 %.6f, float16 %.6f (%+.3f%%), bfloat16 %.6f (%+.3f%%)\n",
              static_cast<long long>(po.max_windows), f32, f16, 100 * (f16 / f32 - 1), bf16, 100 * (bf16 / f32 - 1));
  // 4 windows: float16 +0.001%, bfloat16 -0.11%; 48 windows: +0.002%, +0.015%.
  EXPECT_NEAR(f16, f32, 5e-4 * f32);
  EXPECT_NEAR(bf16, f32, 5e-3 * f32);
}

}  // namespace
}  // namespace qc
