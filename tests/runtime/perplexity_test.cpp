// Perplexity scoring: the NextTokenNll kernels against a double-precision log-softmax written
// here, and a model scored in the graph (AddNextTokenNll) against the same model scored on the host.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "formats/model_builder.h"
#include "formats/synthetic_models.h"
#include "runtime/executor.h"
#include "runtime/perplexity.h"

namespace qc {
namespace {

Tensor RandomLogits(const Shape& shape, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-40.0f, 40.0f);
  std::vector<float> v(NumElements(shape));
  for (float& x : v) x = u(rng);
  return Tensor::FromVector<float>(v, shape);
}

// -log softmax(row)[target] in long double, the textbook way.
double Nll(const float* row, int64_t vocab, int64_t target) {
  long double mx = row[0];
  for (int64_t v = 1; v < vocab; ++v) mx = std::max<long double>(mx, row[v]);
  long double sum = 0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<long double>(row[v]) - mx);
  return static_cast<double>(std::log(sum) + mx - row[target]);
}

StatusOr<Model> NllModel() {
  GraphBuilder b(1);
  const std::string logits = b.AddInput("logits", DType::kFloat32, {Dim{-1, "b"}, Dim{-1, "s"}, Dim{-1, "v"}});
  const std::string targets = b.AddInput("targets", DType::kInt64, {Dim{-1, "b"}, Dim{-1, "s"}});
  for (const auto& o : b.AddNode("NextTokenNll", {logits, targets}, 1, {}, "qconvert.eval")) b.AddOutput(o, DType::kUndefined, {});
  return b.Build({{"", 17}, {"qconvert.eval", 1}});
}

TEST(NextTokenNll, BothKernelsMatchALongDoubleLogSoftmax) {
  const int64_t batch = 2, seq = 7, vocab = 1001;
  const Tensor logits = RandomLogits({batch, seq, vocab}, 1);
  std::vector<int64_t> ids(batch * seq);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int64_t>((i * 331) % vocab);
  StatusOr<Model> model = NllModel();
  ASSERT_TRUE(model.ok()) << model.status().message();
  for (bool reference : {true, false}) {
    SessionOptions options;
    options.use_reference_kernels = reference;
    auto session = Session::Create(*model, options);
    ASSERT_TRUE(session.ok()) << session.status().message();
    auto out = (*session)->Run({{"logits", logits}, {"targets", Tensor::FromVector<int64_t>(ids, {batch, seq})}});
    ASSERT_TRUE(out.ok()) << out.status().message();
    const Tensor& nll = (*out)[0];
    ASSERT_EQ(nll.dtype(), DType::kFloat64);
    ASSERT_EQ(nll.shape(), (Shape{batch, seq - 1}));
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = 0; t + 1 < seq; ++t)
        EXPECT_NEAR(nll.data<double>()[b * (seq - 1) + t], Nll(logits.data<float>() + (b * seq + t) * vocab, vocab, ids[b * seq + t + 1]), 1e-6)
            << (reference ? "reference" : "fast") << " b " << b << " t " << t;
  }
}

TEST(NextTokenNll, Negative_TargetOutsideTheVocabulary) {
  StatusOr<Model> model = NllModel();
  ASSERT_TRUE(model.ok());
  auto session = Session::Create(*model);
  ASSERT_TRUE(session.ok());
  auto out = (*session)->Run({{"logits", RandomLogits({1, 3, 10}, 2)}, {"targets", Tensor::FromVector<int64_t>({0, 4, 10}, {1, 3})}});
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("token id 10 is outside the model's vocabulary of 10"), std::string::npos) << out.status().message();
}

// Scoring in the graph changes nothing: the same per-position values, summed in the same order.
TEST(AddNextTokenNll, SamePerplexityAsScoringTheLogitsOnTheHost) {
  SyntheticConfig config;
  config.vocab = 301;
  config.hidden = 48;
  config.max_positions = 128;
  config.init_std = 0.2f;
  StatusOr<Model> plain = BuildSyntheticDecoder(config);
  ASSERT_TRUE(plain.ok()) << plain.status().message();
  StatusOr<Model> scored = BuildSyntheticDecoder(config);
  ASSERT_TRUE(scored.ok());
  ASSERT_TRUE(AddNextTokenNll(*scored).ok());
  EXPECT_EQ(scored->graph.outputs.back().name, kNllOutput);
  EXPECT_FALSE(AddNextTokenNll(*scored).ok()) << "a second scoring node must be refused";

  std::vector<int32_t> ids(5 * 40);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7 + i / 3) % config.vocab);
  PerplexityOptions po;
  po.seqlen = 40;
  auto a = Session::Create(*plain);
  auto b = Session::Create(*scored);
  ASSERT_TRUE(a.ok() && b.ok());
  StatusOr<PerplexityResult> on_host = EvaluatePerplexity(**a, ids, po);
  StatusOr<PerplexityResult> in_graph = EvaluatePerplexity(**b, ids, po);
  ASSERT_TRUE(on_host.ok()) << on_host.status().message();
  ASSERT_TRUE(in_graph.ok()) << in_graph.status().message();
  EXPECT_EQ(on_host->mean_nll, in_graph->mean_nll);
  EXPECT_EQ(in_graph->windows, 5);
  EXPECT_GT(in_graph->ppl, 1.0);
}

}  // namespace
}  // namespace qc
