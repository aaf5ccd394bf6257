// Runs the KV-cache decoder fixtures of tests/data/kv (torch.onnx dynamo exports of tiny random
// Llama and GPT-2 models, plain and Optimum-merged; tools/export_kv_fixtures.py) through
// BindInputs and the executor, against the logits PyTorch computed for them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "formats/graph.h"
#include "formats/npy.h"
#include "formats/onnx_reader.h"
#include "runtime/executor.h"
#include "runtime/input_binding.h"

namespace qc {
namespace {

const std::string kKvDir = std::string(QC_SOURCE_DIR) + "/tests/data/kv/";
// The bound for "matches PyTorch"; the fixtures' logits are O(1) (max |logit| ~4), and
// the executor lands within ~3e-6 of them, so this is loose only against float rounding.
constexpr double kTolerance = 1e-3;
constexpr int kLayers = 2;

struct KvFixture {
  std::string arch;
  bool has_position_ids;
  int64_t kv_heads;  // Llama uses GQA: 2 key/value heads for 4 query heads
  int64_t head_dim;
};

const KvFixture kFixtures[] = {{"llama", true, 2, 16}, {"gpt2", false, 4, 16}};

void PrintTo(const KvFixture& f, std::ostream* os) { *os << f.arch; }

std::string FixtureName(const ::testing::TestParamInfo<KvFixture>& info) { return info.param.arch; }

Model MustRead(const std::string& path) {
  StatusOr<Model> m = ReadOnnxModel(path);
  QC_CHECK(m.ok());
  return std::move(m).value();
}

Tensor MustReadNpy(const std::string& path) {
  StatusOr<Tensor> t = ReadNpy(path);
  QC_CHECK(t.ok());
  return std::move(t).value();
}

std::unique_ptr<Session> MustSession(const Model& model) {
  StatusOr<std::unique_ptr<Session>> s = Session::Create(model);
  EXPECT_TRUE(s.ok()) << s.status().message();
  return s.ok() ? std::move(s).value() : nullptr;
}

double MaxAbsDiff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(ShapeToString(a.shape()), ShapeToString(b.shape()));
  if (a.shape() != b.shape()) return INFINITY;
  const std::vector<float> x = a.ToFloats(), y = b.ToFloats();
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(static_cast<double>(x[i]) - y[i]));
  return m;
}

const Tensor* Find(const NamedTensors& feeds, const std::string& name) {
  for (const auto& [n, t] : feeds)
    if (n == name) return &t;
  return nullptr;
}

std::string PastName(int layer, const char* kv) { return "past_key_values." + std::to_string(layer) + "." + kv; }
std::string PresentName(int layer, const char* kv) { return "present." + std::to_string(layer) + "." + kv; }

// Runs `session` on `feeds` and returns outputs by name.
NamedTensors RunNamed(const Session& session, const NamedTensors& feeds) {
  StatusOr<std::vector<Tensor>> out = session.Run(feeds);
  EXPECT_TRUE(out.ok()) << out.status().message();
  NamedTensors named;
  if (!out.ok()) return named;
  for (size_t i = 0; i < out->size(); ++i) named.emplace_back(session.outputs()[i].name, (*out)[i]);
  return named;
}

// The feeds of one decode step after a prefill: the new token, a mask over past + new, its
// position, and every present.* of the prefill as past_key_values.*.
NamedTensors DecodeOverrides(const KvFixture& f, const NamedTensors& prefill_out, int64_t batch, int64_t past_len) {
  NamedTensors over;
  for (int l = 0; l < kLayers; ++l)
    for (const char* kv : {"key", "value"}) {
      const Tensor* present = Find(prefill_out, PresentName(l, kv));
      QC_CHECK(present != nullptr);
      over.emplace_back(PastName(l, kv), *present);
    }
  over.emplace_back("attention_mask", Tensor::FromVector(std::vector<int64_t>(batch * (past_len + 1), 1), {batch, past_len + 1}));
  if (f.has_position_ids)
    over.emplace_back("position_ids", Tensor::FromVector(std::vector<int64_t>(batch, past_len), {batch, 1}));
  return over;
}

class KvCacheTest : public ::testing::TestWithParam<KvFixture> {
 protected:
  std::string Dir() const { return kKvDir + GetParam().arch + "/"; }
  Tensor Ids() const { return MustReadNpy(Dir() + "input_ids.npy"); }
};

// The plain with-past export on an empty past is a prefill: BindInputs fills mask, positions and
// a zero-length cache; logits match PyTorch's and the presents hold the whole prompt.
TEST_P(KvCacheTest, EmptyPastPrefillMatchesPyTorch) {
  const KvFixture& f = GetParam();
  std::unique_ptr<Session> session = MustSession(MustRead(Dir() + "model.onnx"));
  ASSERT_NE(session, nullptr);
  const Tensor ids = Ids();
  const int64_t batch = ids.dim(0), seq = ids.dim(1);
  StatusOr<NamedTensors> feeds = BindInputs(*session, ids);
  ASSERT_TRUE(feeds.ok()) << feeds.status().message();
  EXPECT_EQ(feeds->size(), 2u + f.has_position_ids + 2 * kLayers);
  const Tensor* mask = Find(*feeds, "attention_mask");
  ASSERT_NE(mask, nullptr);
  EXPECT_EQ(mask->shape(), (Shape{batch, seq}));
  for (int64_t v : mask->ToInt64s()) EXPECT_EQ(v, 1);
  if (f.has_position_ids) {
    const Tensor* pos = Find(*feeds, "position_ids");
    ASSERT_NE(pos, nullptr);
    EXPECT_EQ(pos->ToInt64s()[seq + 5], 5);  // row 1, column 5
  }
  for (int l = 0; l < kLayers; ++l)
    for (const char* kv : {"key", "value"}) {
      const Tensor* past = Find(*feeds, PastName(l, kv));
      ASSERT_NE(past, nullptr) << PastName(l, kv);
      EXPECT_EQ(past->shape(), (Shape{batch, f.kv_heads, 0, f.head_dim}));
      EXPECT_EQ(past->dtype(), DType::kFloat32);
    }

  const int logits_index = LogitsOutputIndex(*session);
  EXPECT_EQ(session->outputs()[logits_index].name, "logits");
  StatusOr<std::vector<Tensor>> out = session->Run(*feeds);
  ASSERT_TRUE(out.ok()) << out.status().message();
  ASSERT_EQ(out->size(), 1u + 2 * kLayers);
  EXPECT_LE(MaxAbsDiff((*out)[logits_index], MustReadNpy(Dir() + "logits.npy")), kTolerance);
  for (size_t i = 0; i < out->size(); ++i)
    if (static_cast<int>(i) != logits_index) EXPECT_EQ((*out)[i].shape(), (Shape{batch, f.kv_heads, seq, f.head_dim}));
}

// A decode step fed the prefill's presents (through BindInputs overrides) matches PyTorch's
// decode with its own cache: the past really is read, not just accepted.
TEST_P(KvCacheTest, DecodeStepWithPrefillPastMatchesPyTorch) {
  const KvFixture& f = GetParam();
  std::unique_ptr<Session> session = MustSession(MustRead(Dir() + "model.onnx"));
  ASSERT_NE(session, nullptr);
  const Tensor ids = Ids();
  StatusOr<NamedTensors> feeds = BindInputs(*session, ids);
  ASSERT_TRUE(feeds.ok()) << feeds.status().message();
  const NamedTensors prefill = RunNamed(*session, *feeds);
  ASSERT_FALSE(prefill.empty());

  const NamedTensors over = DecodeOverrides(f, prefill, ids.dim(0), ids.dim(1));
  StatusOr<NamedTensors> step = BindInputs(*session, MustReadNpy(Dir() + "decode_input_ids.npy"), over);
  ASSERT_TRUE(step.ok()) << step.status().message();
  const NamedTensors decoded = RunNamed(*session, *step);
  const Tensor* logits = Find(decoded, "logits");
  ASSERT_NE(logits, nullptr);
  const Tensor expected = MustReadNpy(Dir() + "decode_logits.npy");
  EXPECT_LE(MaxAbsDiff(*logits, expected), kTolerance);
  // Without the past the same token gives other logits: a decode that ignored it would fail.
  StatusOr<NamedTensors> no_past = BindInputs(*session, MustReadNpy(Dir() + "decode_input_ids.npy"));
  ASSERT_TRUE(no_past.ok()) << no_past.status().message();
  EXPECT_GT(MaxAbsDiff(*Find(RunNamed(*session, *no_past), "logits"), expected), 100 * kTolerance);
}

// Logits are found by name wherever they sit among the outputs, never taken from present.*.
TEST_P(KvCacheTest, LogitsFoundByNameWhenNotFirstOutput) {
  Model model = MustRead(Dir() + "model.onnx");
  ASSERT_EQ(model.graph.outputs.front().name, "logits");
  std::rotate(model.graph.outputs.begin(), model.graph.outputs.begin() + 1, model.graph.outputs.end());
  std::unique_ptr<Session> session = MustSession(model);
  ASSERT_NE(session, nullptr);
  const int index = LogitsOutputIndex(*session);
  EXPECT_EQ(index, static_cast<int>(model.graph.outputs.size()) - 1);
  StatusOr<NamedTensors> feeds = BindInputs(*session, Ids());
  ASSERT_TRUE(feeds.ok()) << feeds.status().message();
  StatusOr<std::vector<Tensor>> out = session->Run(*feeds);
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_LE(MaxAbsDiff((*out)[index], MustReadNpy(Dir() + "logits.npy")), kTolerance);
}

// A raw torch.onnx dynamo export names its dims s0, s17, ...: the past's one symbolic axis after
// the batch is its sequence axis whatever it is called.
TEST_P(KvCacheTest, ExporterDimNamesStillGiveAnEmptyPast) {
  const KvFixture& f = GetParam();
  Model model = MustRead(Dir() + "model.onnx");
  int renamed = 0;
  for (ValueInfo& in : model.graph.inputs)
    if (in.name.rfind("past_key_values.", 0) == 0) {
      in.shape[0].param = "s14";
      in.shape[2].param = "s" + std::to_string(50 + renamed++);
    }
  ASSERT_EQ(renamed, 2 * kLayers);
  std::unique_ptr<Session> session = MustSession(model);
  ASSERT_NE(session, nullptr);
  const Tensor ids = Ids();
  StatusOr<NamedTensors> feeds = BindInputs(*session, ids);
  ASSERT_TRUE(feeds.ok()) << feeds.status().message();
  EXPECT_EQ(Find(*feeds, PastName(1, "value"))->shape(), (Shape{ids.dim(0), f.kv_heads, 0, f.head_dim}));
  StatusOr<std::vector<Tensor>> out = session->Run(*feeds);
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_LE(MaxAbsDiff((*out)[LogitsOutputIndex(*session)], MustReadNpy(Dir() + "logits.npy")), kTolerance);
}

// The merged decoder (one If on use_cache_branch): BindInputs picks the no-cache branch for a
// prefill; the cache branch on the prefill's presents is the decode step.
TEST_P(KvCacheTest, MergedDecoderRunsBothBranches) {
  const KvFixture& f = GetParam();
  const Model model = MustRead(Dir() + "model_merged.onnx");
  ASSERT_EQ(model.graph.nodes.size(), 1u);
  EXPECT_EQ(model.graph.nodes[0].op_type, "If");
  std::unique_ptr<Session> session = MustSession(model);
  ASSERT_NE(session, nullptr);
  const Tensor ids = Ids();
  StatusOr<NamedTensors> feeds = BindInputs(*session, ids);
  ASSERT_TRUE(feeds.ok()) << feeds.status().message();
  const Tensor* flag = Find(*feeds, "use_cache_branch");
  ASSERT_NE(flag, nullptr);
  EXPECT_EQ(flag->dtype(), DType::kBool);
  EXPECT_FALSE(flag->data<bool>()[0]);
  const NamedTensors prefill = RunNamed(*session, *feeds);
  ASSERT_FALSE(prefill.empty());
  EXPECT_EQ(session->outputs()[LogitsOutputIndex(*session)].name, "logits");
  EXPECT_LE(MaxAbsDiff(*Find(prefill, "logits"), MustReadNpy(Dir() + "logits.npy")), kTolerance);

  NamedTensors over = DecodeOverrides(f, prefill, ids.dim(0), ids.dim(1));
  over.emplace_back("use_cache_branch", Tensor::FromVector<bool>({true}, {1}));
  StatusOr<NamedTensors> step = BindInputs(*session, MustReadNpy(Dir() + "decode_input_ids.npy"), over);
  ASSERT_TRUE(step.ok()) << step.status().message();
  const NamedTensors decoded = RunNamed(*session, *step);
  ASSERT_FALSE(decoded.empty());
  EXPECT_LE(MaxAbsDiff(*Find(decoded, "logits"), MustReadNpy(Dir() + "decode_logits.npy")), kTolerance);
  EXPECT_EQ(Find(decoded, PresentName(0, "key"))->dim(2), ids.dim(1) + 1);

  // The cache branch with an empty past is a prefill too: both subgraphs compute the same model.
  NamedTensors cache_branch = {{"use_cache_branch", Tensor::FromVector<bool>({true}, {1})}};
  StatusOr<NamedTensors> both = BindInputs(*session, ids, cache_branch);
  ASSERT_TRUE(both.ok()) << both.status().message();
  EXPECT_LE(MaxAbsDiff(*Find(RunNamed(*session, *both), "logits"), MustReadNpy(Dir() + "logits.npy")), kTolerance);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, KvCacheTest, ::testing::ValuesIn(kFixtures), FixtureName);

class KvCacheBindingTest : public ::testing::Test {
 protected:
  static Model Llama() { return MustRead(kKvDir + "llama/model.onnx"); }
  static Tensor Ids() { return MustReadNpy(kKvDir + "llama/input_ids.npy"); }
  static ValueInfo& Input(Model& m, const std::string& name) {
    auto it = std::find_if(m.graph.inputs.begin(), m.graph.inputs.end(), [&](const ValueInfo& v) { return v.name == name; });
    QC_CHECK(it != m.graph.inputs.end());
    return *it;
  }
  // BindInputs' error on `model`, or "" if it succeeded.
  static std::string BindError(const Model& model, const NamedTensors& overrides = {}) {
    StatusOr<std::unique_ptr<Session>> s = Session::Create(model);
    if (!s.ok()) return "session: " + s.status().message();
    StatusOr<NamedTensors> feeds = BindInputs(**s, Ids(), overrides);
    return feeds.ok() ? "" : feeds.status().message();
  }
};

TEST_F(KvCacheBindingTest, Negative_UnknownRequiredInputIsNamed) {
  Model m = Llama();
  ValueInfo extra;
  extra.name = "encoder_hidden_states";
  extra.dtype = DType::kFloat32;
  extra.has_shape = true;
  extra.shape = {Dim{-1, "batch_size"}, Dim{-1, "encoder_sequence_length"}, Dim{64, ""}};
  m.graph.inputs.push_back(extra);
  const std::string err = BindError(m);
  EXPECT_NE(err.find("'encoder_hidden_states'"), std::string::npos) << err;
  EXPECT_NE(err.find("--input encoder_hidden_states=FILE.npy"), std::string::npos) << err;
  // An explicit value binds it.
  Tensor states(DType::kFloat32, {2, 3, 64});
  EXPECT_EQ(BindError(m, {{"encoder_hidden_states", states}}), "");
}

TEST_F(KvCacheBindingTest, Negative_PastWithoutDeclaredShapeIsNamed) {
  Model m = Llama();
  Input(m, "past_key_values.1.value").has_shape = false;
  Input(m, "past_key_values.1.value").shape.clear();
  const std::string err = BindError(m);
  EXPECT_NE(err.find("'past_key_values.1.value'"), std::string::npos) << err;
  EXPECT_NE(err.find("declares no shape"), std::string::npos) << err;
}

TEST_F(KvCacheBindingTest, Negative_PastWithSymbolicHeadsIsNamed) {
  Model m = Llama();
  Input(m, "past_key_values.0.key").shape[1] = Dim{-1, "num_key_value_heads"};
  const std::string err = BindError(m);
  EXPECT_NE(err.find("'past_key_values.0.key'"), std::string::npos) << err;
  EXPECT_NE(err.find("num_key_value_heads"), std::string::npos) << err;
}

TEST_F(KvCacheBindingTest, Negative_PastWithTwoUnnamedSymbolicAxes) {
  Model m = Llama();
  Input(m, "past_key_values.0.key").shape[1] = Dim{-1, "s3"};
  Input(m, "past_key_values.0.key").shape[2] = Dim{-1, "s4"};
  const std::string err = BindError(m);
  EXPECT_NE(err.find("'past_key_values.0.key'"), std::string::npos) << err;
  EXPECT_NE(err.find("cannot tell the sequence axis"), std::string::npos) << err;
}

TEST_F(KvCacheBindingTest, Negative_PastWithStaticSequenceAxis) {
  Model m = Llama();
  Input(m, "past_key_values.0.key").shape[2] = Dim{128, ""};  // a static cache
  const std::string err = BindError(m);
  EXPECT_NE(err.find("'past_key_values.0.key'"), std::string::npos) << err;
  EXPECT_NE(err.find("no symbolic sequence axis"), std::string::npos) << err;
}

TEST_F(KvCacheBindingTest, Negative_OverrideOfAbsentInput) {
  const std::string err = BindError(Llama(), {{"past_key_values.7.key", Tensor(DType::kFloat32, {2, 2, 0, 16})}});
  EXPECT_NE(err.find("past_key_values.7.key"), std::string::npos) << err;
}

TEST_F(KvCacheBindingTest, Negative_PastOfWrongHeadCountRejectedByRun) {
  StatusOr<std::unique_ptr<Session>> s = Session::Create(Llama());
  ASSERT_TRUE(s.ok()) << s.status().message();
  StatusOr<NamedTensors> feeds = BindInputs(**s, Ids(), {{"past_key_values.0.key", Tensor(DType::kFloat32, {2, 4, 0, 16})}});
  ASSERT_TRUE(feeds.ok()) << feeds.status().message();
  StatusOr<std::vector<Tensor>> out = (*s)->Run(*feeds);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("past_key_values.0.key"), std::string::npos) << out.status().message();
}

TEST_F(KvCacheBindingTest, Negative_FloatAttentionMaskDtype) {
  Model m = Llama();
  Input(m, "attention_mask").dtype = DType::kFloat32;
  const std::string err = BindError(m);
  EXPECT_NE(err.find("'attention_mask'"), std::string::npos) << err;
  EXPECT_NE(err.find("int32 or int64"), std::string::npos) << err;
}

}  // namespace
}  // namespace qc
