// Tests of the `zeropoint` pass specifics (the shared round-to-nearest behaviour is tested for
// both passes in absmax_test.cpp): zero points in the artifact, and where asymmetric wins.
#include "passes/zeropoint.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "formats/linear_layers.h"
#include "formats/model_builder.h"
#include "passes/weight_quant.h"
#include "runtime/executor.h"

namespace qc {
namespace {

// y = x W with W [k, n] given.
Model MatMulModel(const std::vector<float>& w, int64_t k, int64_t n) {
  GraphBuilder b(1);
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{2}, Dim{k}});
  b.AddInitializer("w", Tensor::FromVector<float>(w, {k, n}));
  b.AddNodeWithOutputs("MatMul", {x, "w"}, {"y"});
  b.AddOutput("y", DType::kFloat32, {Dim{2}, Dim{n}});
  StatusOr<Model> m = b.Build({{"", 17}});
  QC_CHECK(m.ok());
  return std::move(m).value();
}

std::vector<LayerReport> RunOnce(Pass& pass, Model& model, int bits, int64_t group_size) {
  QuantOptions o;
  o.bits = bits;
  o.group_size = group_size;
  std::vector<LayerReport> layers;
  PassContext context{o};
  context.layers = &layers;
  Status s = pass.Run(model, context);
  EXPECT_TRUE(s.ok()) << s.message();
  return layers;
}

TEST(ZeroPoint, ArtifactCarriesPackedZeroPoints) {
  std::mt19937 rng(3);
  const std::vector<float> w = RandomNormalTensor({96 * 8}, 0.0f, 0.1f, rng).ToFloats();
  Model model = MatMulModel(w, 96, 8);
  ZeroPointPass pass;
  std::vector<LayerReport> layers = RunOnce(pass, model, 4, 32);
  ASSERT_EQ(layers.size(), 1u);
  EXPECT_EQ(layers[0].scheme, "w4-g32-asym");
  const Node& node = model.graph.nodes[0];
  ASSERT_EQ(node.op_type, "MatMulNBits");
  ASSERT_GE(node.inputs.size(), 4u);
  const Tensor* zp = model.graph.FindInitializer(node.inputs[3]);
  ASSERT_NE(zp, nullptr);
  EXPECT_EQ(zp->dtype(), DType::kUInt8);
  EXPECT_EQ(zp->numel(), 8 * 2);  // 3 blocks of 4 bits per column: ceil(12 / 8) = 2 bytes
}

TEST(ZeroPoint, BeatsSymmetricOnOneSidedWeights) {
  // Post-ReLU-like weights in [0, 0.2]: symmetric spends half its levels on negatives.
  std::mt19937 rng(4);
  std::vector<float> w(128 * 16);
  for (float& v : w) v = static_cast<float>(rng() % 1000) / 5000.0f;
  WeightQuantSpec sym, asym;
  sym.group_size = asym.group_size = 32;
  asym.sym = false;
  const double e_sym = RelativeError(w, QuantizeRtn(w, 128, 16, sym)->Dequantize());
  const double e_asym = RelativeError(w, QuantizeRtn(w, 128, 16, asym)->Dequantize());
  EXPECT_LT(e_asym, 0.6 * e_sym);
}

TEST(ZeroPoint, ZeroIsExactlyRepresentable) {
  // A zero weight dequantizes to exactly zero in every group (zero point = round(-min / scale)).
  std::mt19937 rng(5);
  std::vector<float> w = RandomNormalTensor({64 * 4}, 0.3f, 0.1f, rng).ToFloats();
  for (int64_t j = 0; j < 4; ++j) w[10 * 4 + j] = 0.0f;
  WeightQuantSpec spec;
  spec.group_size = 16;
  spec.sym = false;
  StatusOr<QuantizedWeight> qw = QuantizeRtn(w, 64, 4, spec);
  ASSERT_TRUE(qw.ok());
  const std::vector<float> dq = qw->Dequantize();
  for (int64_t j = 0; j < 4; ++j) EXPECT_EQ(dq[10 * 4 + j], 0.0f);
}

TEST(ZeroPoint, IsRegisteredAndNeedsNoCalibration) {
  ZeroPointPass pass;
  EXPECT_STREQ(pass.Name(), "zeropoint");
  EXPECT_FALSE(pass.NeedsCalibration());
  EXPECT_FALSE(pass.CanDeferQuantization());
}

}  // namespace
}  // namespace qc
