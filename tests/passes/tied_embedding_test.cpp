// Tests of passes/tied_embedding: a tied head's embedding Gathers read the head's packed codes
// through GatherBlockQuantized (rows padded to whole blocks, a Gemm head's alpha, zero points),
// the float table goes, the named cases that keep it, and ONNX Runtime runs the result.
#include "passes/tied_embedding.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "formats/linear_layers.h"
#include "formats/model_builder.h"
#include "formats/npy.h"
#include "formats/onnx_writer.h"
#include "passes/registry.h"
#include "passes/weight_quant.h"
#include "runtime/executor.h"
#include "tests/ort_batch.h"
#include "tests/passes/pass_test_support.h"
#include "tests/temp_dir.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kVocab = 40;

// ids -> Gather(emb) = "embeds" -> x + embeds -> head(emb) = "logits", with the head either
// MatMul(h, Transpose(emb)) or Gemm(h, emb, transB=1, alpha); `hidden` need not be a block multiple.
Model TiedModel(int64_t hidden, bool gemm_head, float alpha = 1.0f) {
  GraphBuilder b(11);
  const std::string ids = b.AddInput("ids", DType::kInt64, {Dim{2}, Dim{3}});
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{2}, Dim{3}, Dim{hidden}});
  const std::string emb = b.AddRandomNormal("emb", {kVocab, hidden}, 0.0f, 0.5f);
  b.AddNodeWithOutputs("Gather", {emb, ids}, {"embeds"});
  const std::string h = b.Op("Add", {x, "embeds"});
  if (gemm_head) {
    const std::string flat = b.Op("Reshape", {h, b.AddInt64s({6, hidden})});
    const std::string y = b.Op("Gemm", {flat, emb}, {{"transB", AttrInt(1)}, {"alpha", AttrFloat(alpha)}});
    b.AddNodeWithOutputs("Reshape", {y, b.AddInt64s({2, 3, kVocab})}, {"logits"});
  } else {
    b.AddNodeWithOutputs("MatMul", {h, b.Op("Transpose", {emb}, {{"perm", AttrInts({1, 0})}})}, {"logits"});
  }
  b.AddOutput("logits", DType::kFloat32, {Dim{2}, Dim{3}, Dim{kVocab}});
  b.AddOutput("embeds", DType::kFloat32, {Dim{2}, Dim{3}, Dim{hidden}});
  StatusOr<Model> m = b.Build({{"", 17}});
  QC_CHECK(m.ok());
  return std::move(m).value();
}

const std::vector<int64_t> kIds = {1, 7, 39, 0, 3, 22};

NamedTensors Feeds(int64_t hidden) {
  std::mt19937 rng(5);
  return {{"ids", Tensor::FromVector<int64_t>(kIds, {2, 3})}, {"x", RandomNormalTensor({2, 3, hidden}, 0.0f, 1.0f, rng)}};
}

bool HasNote(const LayerReport& r, const std::string& text) {
  for (const std::string& note : r.notes)
    if (note.find(text) != std::string::npos) return true;
  return false;
}

QuantOptions Options(int bits, int64_t group_size) {
  QuantOptions o;
  o.bits = bits;
  o.group_size = group_size;
  return o;
}

Status RunPass(const std::string& name, Model& model, const QuantOptions& o, std::vector<LayerReport>* layers) {
  StatusOr<std::vector<std::unique_ptr<Pass>>> pipeline = CreatePipeline(name);
  QC_CHECK(pipeline.ok() && pipeline->size() == 1);
  PassContext context{o};
  context.layers = layers;
  return (*pipeline)[0]->Run(model, context);
}

// Fetches "logits" and "embeds" by name (the shared RunModel returns the graph outputs in order).
std::vector<Tensor> RunLogitsAndEmbeds(const Model& model, const NamedTensors& feeds) {
  StatusOr<std::unique_ptr<Session>> session = Session::Create(model);
  EXPECT_TRUE(session.ok()) << session.status().message();
  if (!session.ok()) return {};
  StatusOr<std::vector<Tensor>> out = (*session)->Run(feeds, {"logits", "embeds"});
  EXPECT_TRUE(out.ok()) << out.status().message();
  return out.ok() ? *out : std::vector<Tensor>{};
}

// The embeddings the artifact must give: rows of the head's dequantized weight (round to nearest
// of the table with the pass's spec; the head reads it transposed, so table row v is column v).
std::vector<float> DequantizedRows(const Model& original, const WeightQuantSpec& spec, int64_t hidden) {
  const LinearLayer head = FindLinearLayers(original.graph).back();
  StatusOr<std::vector<float>> w = ReadLinearWeight(original.graph, head);
  QC_CHECK(w.ok());
  StatusOr<QuantizedWeight> qw = QuantizeRtn(*w, hidden, kVocab, spec);
  QC_CHECK(qw.ok());
  const std::vector<float> dq = qw->Dequantize();  // [hidden, vocab]
  std::vector<float> rows;
  for (int64_t id : kIds)
    for (int64_t c = 0; c < hidden; ++c) rows.push_back(dq[c * kVocab + id]);
  return rows;
}

struct Case {
  std::string pass;
  int bits;
  int64_t group_size, hidden;
  bool gemm_head;
  float alpha;
  std::string Name() const {
    return pass + "_w" + std::to_string(bits) + "_g" + std::to_string(group_size) + "_h" + std::to_string(hidden) +
           (gemm_head ? "_gemm" : "_matmul");
  }
};

// Embedding lookups share the head's codes at 8 bits only (TiedTableStaysFloat).
const std::vector<Case> kCases = {
    {"absmax", 8, 16, 32, false, 1.0f},     // whole blocks: the head's bytes as they are
    {"absmax", 8, 16, 40, false, 1.0f},     // 3 blocks of 16 for 40 columns: Slice off the padding
    {"zeropoint", 8, 32, 40, false, 1.0f},  // codes and zero points, padded
    {"zeropoint", 8, 16, 40, true, 0.5f},   // Gemm head: alpha scales the head's scales only
};

TEST(TiedEmbedding, GatherReadsTheHeadsCodesAndTheTableGoes) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.Name());
    const Model original = TiedModel(c.hidden, c.gemm_head, c.alpha);
    ASSERT_TRUE(FindLinearLayers(original.graph).back().tied);
    Model model = original;
    std::vector<LayerReport> layers;
    ASSERT_TRUE(RunPass(c.pass, model, Options(c.bits, c.group_size), &layers).ok());
    const std::map<std::string, int> ops = OpCounts(model);
    EXPECT_EQ(ops.count("Gather"), 0u);
    EXPECT_EQ(ops.at("com.microsoft.GatherBlockQuantized"), 1);
    EXPECT_EQ(ops.count("Slice") ? ops.at("Slice") : 0, c.hidden % c.group_size != 0 ? 1 : 0);
    EXPECT_EQ(model.graph.FindInitializer("emb"), nullptr) << "the float table is stored no more";
    ASSERT_EQ(layers.size(), 1u);
    EXPECT_TRUE(HasNote(layers[0], "now reads this layer's packed codes"));

    // The GatherBlockQuantized reads the MatMulNBits' own codes, not a copy.
    const Node* gbq = nullptr;
    const Node* head = nullptr;
    std::map<std::string, const Node*> producer;
    for (const Node& n : model.graph.nodes) {
      if (n.op_type == "GatherBlockQuantized") gbq = &n;
      if (n.op_type == "MatMulNBits") head = &n;
      for (const std::string& o : n.outputs) producer[o] = &n;
    }
    ASSERT_TRUE(gbq && head);
    EXPECT_EQ(gbq->GetInt("bits", 0), head->GetInt("bits", 0));
    EXPECT_EQ(gbq->GetInt("block_size", 0), head->GetInt("block_size", 0));
    const Node* data = producer.at(gbq->inputs[0]);
    if (data->op_type == "Slice") data = producer.at(data->inputs[0]);
    ASSERT_EQ(data->op_type, "Reshape");
    EXPECT_EQ(data->inputs[0], head->inputs[1]);
    const std::string& scales = producer.at(gbq->inputs[2])->inputs[0];
    if (c.alpha == 1.0f) EXPECT_EQ(scales, head->inputs[2]);
    else EXPECT_NE(scales, head->inputs[2]) << "alpha is folded into the head's scales, not the rows'";
    ASSERT_EQ(gbq->inputs.size(), c.pass == "zeropoint" ? 4u : 3u);
    if (c.pass == "zeropoint") EXPECT_EQ(producer.at(gbq->inputs[3])->inputs[0], head->inputs[3]);

    // The rows are exactly the head's dequantized weight.
    const std::vector<Tensor> out = RunLogitsAndEmbeds(model, Feeds(c.hidden));
    ASSERT_EQ(out.size(), 2u);
    EXPECT_EQ(out[1].shape(), (Shape{2, 3, c.hidden}));
    EXPECT_EQ(out[1].ToFloats(), DequantizedRows(original, SpecFromOptions(Options(c.bits, c.group_size),
                                                                           c.pass == "absmax"),
                                                 c.hidden));
  }
}

TEST(TiedEmbedding, Negative_UntransposedTableStaysFloat) {
  // The head reads the table as stored ([in, out] = [vocab, hidden]): its blocks run down the
  // columns of the table, not along the rows the Gather reads.
  GraphBuilder b(12);
  const std::string ids = b.AddInput("ids", DType::kInt64, {Dim{4}});
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{4}, Dim{kVocab}});
  const std::string emb = b.AddRandomNormal("emb", {kVocab, 32});
  b.AddNodeWithOutputs("Gather", {emb, ids}, {"embeds"});
  b.AddNodeWithOutputs("MatMul", {x, emb}, {"logits"});
  b.AddOutput("logits", DType::kFloat32, {Dim{4}, Dim{32}});
  b.AddOutput("embeds", DType::kFloat32, {Dim{4}, Dim{32}});
  StatusOr<Model> model = b.Build({{"", 17}});
  ASSERT_TRUE(model.ok());
  std::vector<LayerReport> layers;
  ASSERT_TRUE(RunPass("absmax", *model, Options(8, 16), &layers).ok());
  EXPECT_EQ(OpCounts(*model), (std::map<std::string, int>{{"Gather", 1}, {"com.microsoft.MatMulNBits", 1}}));
  EXPECT_NE(model->graph.FindInitializer("emb"), nullptr);
  ASSERT_EQ(layers.size(), 1u);
  EXPECT_TRUE(HasNote(layers[0], "keeps reading the float table: the head reads the table as stored"));
}

TEST(TiedEmbedding, Negative_ActOrderGroupsKeepTheFloatTable) {
  // GatherBlockQuantized has no g_idx: reordered groups cannot be read row by row.
  Model model = TiedModel(32, false);
  const LinearLayer head = FindLinearLayers(model.graph).back();
  StatusOr<std::vector<float>> w = ReadLinearWeight(model.graph, head);
  ASSERT_TRUE(w.ok());
  WeightQuantSpec spec;
  spec.group_size = 16;
  StatusOr<QuantizedWeight> qw = QuantizeRtn(*w, head.k, head.n, spec);
  ASSERT_TRUE(qw.ok());
  qw->g_idx.resize(head.k);
  for (int64_t r = 0; r < head.k; ++r) qw->g_idx[r] = static_cast<int32_t>((r * 3) % 2);
  MatMulNBitsRewriter rewriter(model);
  ASSERT_TRUE(rewriter.Replace(head, *qw, "g_idx").ok());
  rewriter.Finish();
  EXPECT_EQ(OpCounts(model)["Gather"], 1);
  EXPECT_EQ(OpCounts(model)["com.microsoft.GatherBlockQuantized"], 0);
  EXPECT_NE(model.graph.FindInitializer("emb"), nullptr);
}

TEST(TiedEmbedding, Negative_ColumnGatherKeepsTheTable) {
  // A Gather along axis 1 is no embedding lookup: it keeps the float table; the row Gather
  // still reads the codes.
  Model model = TiedModel(32, false);
  Node column;
  column.name = "columns";
  column.op_type = "Gather";
  model.graph.SetInitializer("column_ids", Tensor::FromVector<int64_t>({0, 5}, {2}));
  column.inputs = {"emb", "column_ids"};
  column.outputs = {"columns_out"};
  column.attributes["axis"] = AttrInt(1);
  model.graph.nodes.insert(model.graph.nodes.begin() + 1, column);
  ValueInfo out;
  out.name = "columns_out";
  out.dtype = DType::kFloat32;
  model.graph.outputs.push_back(out);
  EXPECT_FALSE(OnlyRowGathersRead(model.graph, "emb"));
  std::vector<LayerReport> layers;
  ASSERT_TRUE(RunPass("absmax", model, Options(8, 16), &layers).ok());
  EXPECT_EQ(OpCounts(model)["Gather"], 1);
  EXPECT_EQ(OpCounts(model)["com.microsoft.GatherBlockQuantized"], 1);
  EXPECT_NE(model.graph.FindInitializer("emb"), nullptr);
  StatusOr<std::unique_ptr<Session>> session = Session::Create(model);
  ASSERT_TRUE(session.ok()) << session.status().message();
  EXPECT_TRUE((*session)->Run(Feeds(32)).ok());
}

TEST(TiedEmbedding, NotesSayWhyTheTableStays) {
  LinearLayer l;
  l.tied = true;
  l.transposed = true;
  l.k = 41;
  EXPECT_FALSE(TiedTableStaysFloat(l, 8));
  // Narrower heads keep the lookups in float: sharing 4-bit codes cost +0.75% perplexity.
  EXPECT_NE(TiedTableStaysFloat(l, 4).value_or("").find("only at 8 bits"), std::string::npos);
  EXPECT_TRUE(TiedTableStaysFloat(l, 3));
  l.transposed = false;
  EXPECT_TRUE(TiedTableStaysFloat(l, 8));
  l.transposed = true;
  l.tied = false;
  EXPECT_TRUE(TiedTableStaysFloat(l, 8));
}

// ---- ONNX Runtime ------------------------------------------------------------------------------

TEST(TiedEmbedding, OnnxRuntimeAgrees) {
  if (std::system("node --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "node is not installed";
  const TempDir dir("tied_ort");
  std::vector<std::pair<Case, Model>> jobs;
  for (const Case& c : kCases) {
    Model model = TiedModel(c.hidden, c.gemm_head, c.alpha);
    std::vector<LayerReport> layers;
    ASSERT_TRUE(RunPass(c.pass, model, Options(c.bits, c.group_size), &layers).ok());
    jobs.emplace_back(c, std::move(model));
  }
  std::vector<OrtJob> ort_jobs;
  for (const auto& [c, model] : jobs) ort_jobs.push_back({c.Name(), &model, Feeds(c.hidden)});
  StatusOr<OrtBatch> ran = RunOrtBatch(dir.string(), ort_jobs);
  ASSERT_TRUE(ran.ok()) << ran.status().message();
  if (*ran == OrtBatch::kUnavailable) {
    GTEST_SKIP() << "onnxruntime-node not found; set QC_ORT_NODE_MODULES to its node_modules directory";
  }
  for (const auto& [c, model] : jobs) {
    SCOPED_TRACE(c.Name());
    const std::string out_dir = OrtOutputDir(dir.string(), c.Name());
    const std::string error = OrtJobError(dir.string(), c.Name());
    ASSERT_TRUE(error.empty()) << "ONNX Runtime rejected the artifact: " << error;
    const std::vector<Tensor> ours = RunLogitsAndEmbeds(model, Feeds(c.hidden));
    ASSERT_EQ(ours.size(), 2u);
    StatusOr<Tensor> embeds = ReadNpy(out_dir + "/embeds.npy");
    ASSERT_TRUE(embeds.ok()) << embeds.status().message();
    EXPECT_EQ(ours[1].ToFloats(), embeds->ToFloats()) << "(q - zp) * scale in float32 on both sides";
    StatusOr<Tensor> logits = ReadNpy(out_dir + "/logits.npy");
    ASSERT_TRUE(logits.ok()) << logits.status().message();
    const std::vector<float> a = ours[0].ToFloats(), b = logits->ToFloats();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-4 * std::max(1.0f, std::fabs(b[i])));
  }
}

}  // namespace
}  // namespace qc
