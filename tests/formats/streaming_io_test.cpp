// Weights as mapped files: mapped tensors and their page release, the streaming writer, inline
// raw_data read in place, the spill store, and the generator writing through it (docs/MEMORY.md).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "formats/model_builder.h"
#include "formats/onnx_reader.h"
#include "formats/onnx_wire.h"
#include "formats/onnx_writer.h"
#include "formats/spill_store.h"
#include "formats/synthetic_models.h"
#include "tests/resident_memory.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

class StreamingIoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qc_streaming_io_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& n) const { return (dir_ / n).string(); }
  fs::path dir_;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A small Llama in the dynamo pattern whose larger weights (embedding, head, MLP) exceed the
// 4 KiB view threshold and the 256 KiB spill threshold, next to small norm and shape constants.
SyntheticConfig SmallLlama() {
  SyntheticConfig c;
  c.arch = SyntheticArch::kLlama;
  c.vocab = 512;
  c.hidden = 128;
  c.intermediate = 512;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = 2;
  c.seed = 11;
  return c;
}

int64_t BytesAtLeast(const Graph& g, int64_t min_bytes, bool* all_mapped, bool* small_owned) {
  int64_t count = 0;
  *all_mapped = true;
  *small_owned = true;
  for (const std::string& name : g.initializer_names()) {
    const Tensor& t = *g.FindInitializer(name);
    if (t.nbytes() >= min_bytes) {
      ++count;
      *all_mapped &= t.mapped();
    } else if (t.nbytes() < 1024) {
      *small_owned &= !t.mapped();
    }
  }
  return count;
}

TEST_F(StreamingIoTest, InlineFileIsTheOneMessageSerialization) {
  StatusOr<Model> m = BuildSyntheticDecoder(SmallLlama());
  ASSERT_TRUE(m.ok()) << m.status().message();
  ASSERT_TRUE(WriteOnnxModel(*m, Path("a.onnx")).ok());
  StatusOr<std::string> one_message = SerializeOnnxModel(*m);
  ASSERT_TRUE(one_message.ok());
  // The streamed file splices initializers into protobuf's own field order: identical bytes.
  EXPECT_TRUE(ReadFile(Path("a.onnx")) == *one_message);
  EXPECT_FALSE(fs::exists(Path("a.onnx.data")));
}

TEST_F(StreamingIoTest, InlineWeightsAreReadInPlace) {
  StatusOr<Model> m = BuildSyntheticDecoder(SmallLlama());
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(WriteOnnxModel(*m, Path("a.onnx")).ok());
  StatusOr<Model> back = ReadOnnxModel(Path("a.onnx"));
  ASSERT_TRUE(back.ok()) << back.status().message();
  for (const std::string& name : m->graph.initializer_names())
    EXPECT_TRUE(back->graph.FindInitializer(name)->BitEqual(*m->graph.FindInitializer(name))) << name;
  // raw_data of 4 KiB and more (when aligned for its dtype) is a view of the mapped .onnx.
  int64_t views = 0;
  for (const std::string& name : back->graph.initializer_names()) {
    const Tensor& t = *back->graph.FindInitializer(name);
    if (t.nbytes() >= 4096 && Tensor::IsAlignedFor(t.dtype(), t.raw())) views += t.mapped();
    if (t.nbytes() < 4096) EXPECT_FALSE(t.mapped()) << name;
  }
  EXPECT_GT(views, 0);
  // Reading without mapping gives the same model, all owned.
  OnnxReadOptions copy;
  copy.map_external_data = false;
  StatusOr<Model> copied = ReadOnnxModel(Path("a.onnx"), copy);
  ASSERT_TRUE(copied.ok());
  for (const std::string& name : m->graph.initializer_names()) {
    EXPECT_FALSE(copied->graph.FindInitializer(name)->mapped());
    EXPECT_TRUE(copied->graph.FindInitializer(name)->BitEqual(*m->graph.FindInitializer(name))) << name;
  }
}

TEST_F(StreamingIoTest, ExternalDataStreamsAlignedAndRoundTrips) {
  StatusOr<Model> m = BuildSyntheticDecoder(SmallLlama());
  ASSERT_TRUE(m.ok());
  OnnxWriteOptions wo;
  wo.external_data = true;
  EXPECT_TRUE(WritesExternalData(*m, wo));
  EXPECT_FALSE(WritesExternalData(*m, OnnxWriteOptions{}));
  ASSERT_TRUE(WriteOnnxModel(*m, Path("x.onnx"), wo).ok());
  ASSERT_TRUE(fs::exists(Path("x.onnx.data")));
  StatusOr<Model> back = ReadOnnxModel(Path("x.onnx"));
  ASSERT_TRUE(back.ok()) << back.status().message();
  bool all_mapped = false, small_owned = false;
  EXPECT_GT(BytesAtLeast(back->graph, 1024, &all_mapped, &small_owned), 0);
  EXPECT_TRUE(all_mapped);
  EXPECT_TRUE(small_owned);
  for (const std::string& name : m->graph.initializer_names()) {
    const Tensor& t = *back->graph.FindInitializer(name);
    EXPECT_TRUE(t.BitEqual(*m->graph.FindInitializer(name))) << name;
    if (t.mapped()) EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 64, 0u) << name;
  }
  // Writing the mapped model again (external data from external data) is byte-identical.
  ASSERT_TRUE(WriteOnnxModel(*back, Path("y.onnx"), wo).ok());
  EXPECT_TRUE(ReadFile(Path("x.onnx.data")) == ReadFile(Path("y.onnx.data")));
}

TEST_F(StreamingIoTest, ReleasePagesDropsResidentPagesOfMappedWeights) {
  GraphBuilder b;
  std::mt19937 rng(3);
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{1, ""}, Dim{512, ""}});
  const std::string w = b.AddInitializer("w", RandomNormalTensor({512, 1024}, 0.0f, 1.0f, rng));  // 2 MiB
  b.AddNodeWithOutputs("MatMul", {x, w}, {"y"});
  b.AddOutput("y", DType::kFloat32, {Dim{1, ""}, Dim{1024, ""}});
  StatusOr<Model> m = b.Build({{"", 18}});
  ASSERT_TRUE(m.ok());
  OnnxWriteOptions wo;
  wo.external_data = true;
  ASSERT_TRUE(WriteOnnxModel(*m, Path("r.onnx"), wo).ok());
  StatusOr<Model> back = ReadOnnxModel(Path("r.onnx"));
  ASSERT_TRUE(back.ok());
  const Tensor& t = *back->graph.FindInitializer("w");
  ASSERT_TRUE(t.mapped());
  TouchBytes(t.raw(), t.nbytes());
  EXPECT_GE(ResidentBytesOfMapping(t.raw()), t.nbytes() - 8192);
  t.ReleasePages();
  EXPECT_LE(ResidentBytesOfMapping(t.raw()), 8192);  // at most the boundary pages
  // The values are still there, read back from the page cache.
  EXPECT_TRUE(t.BitEqual(*m->graph.FindInitializer("w")));
  // Dropping the last tensor of a view releases its pages too (the mapping lives on).
  TouchBytes(t.raw(), t.nbytes());
  const void* address = t.raw();
  back->graph.RemoveInitializer("w");
  EXPECT_LE(ResidentBytesOfMapping(address), 8192);
}

TEST(OnnxWire, StripCutsLargeRawDataAndKeepsTheRest) {
  StatusOr<Model> m = BuildSyntheticDecoder(SmallLlama());
  ASSERT_TRUE(m.ok());
  StatusOr<std::string> bytes = SerializeOnnxModel(*m);
  ASSERT_TRUE(bytes.ok());
  std::optional<StrippedModel> s = StripInitializerData(*bytes, 4096);
  ASSERT_TRUE(s.has_value());
  ASSERT_EQ(s->raw_data.size(), m->graph.num_initializers());
  EXPECT_LT(s->skeleton.size(), bytes->size() / 4);
  for (size_t i = 0; i < s->raw_data.size(); ++i) {
    const Tensor& t = *m->graph.FindInitializer(m->graph.initializer_names()[i]);
    ASSERT_EQ(s->raw_data[i].has_value(), t.nbytes() >= 4096) << i;
    if (!s->raw_data[i]) continue;
    EXPECT_EQ(s->raw_data[i]->size, static_cast<size_t>(t.nbytes()));
    EXPECT_EQ(0, std::memcmp(bytes->data() + s->raw_data[i]->offset, t.raw(), t.nbytes()));
  }
  // Nothing to cut: the skeleton is the message itself.
  std::optional<StrippedModel> none = StripInitializerData(*bytes, bytes->size() + 1);
  ASSERT_TRUE(none.has_value());
  EXPECT_TRUE(none->skeleton == *bytes);
}

TEST(OnnxWire, Negative_MalformedBytesAreLeftToProtobuf) {
  StatusOr<Model> m = BuildSyntheticDecoder(SmallLlama());
  ASSERT_TRUE(m.ok());
  StatusOr<std::string> bytes = SerializeOnnxModel(*m);
  ASSERT_TRUE(bytes.ok());
  // Truncated inside a weight, a length running past the end, an unterminated varint, a group.
  EXPECT_FALSE(StripInitializerData(bytes->substr(0, bytes->size() / 2), 4096).has_value());
  EXPECT_FALSE(StripInitializerData(std::string("\x3a\xff\xff\x03", 4), 0).has_value());
  EXPECT_FALSE(StripInitializerData(std::string("\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 11), 0).has_value());
  EXPECT_FALSE(StripInitializerData(std::string("\x0b\x0c", 2), 0).has_value());
  EXPECT_TRUE(StripInitializerData("", 0).has_value());
}

TEST_F(StreamingIoTest, Negative_TruncatedInlineModelStillReportsTheParseError) {
  StatusOr<Model> m = BuildSyntheticDecoder(SmallLlama());
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(WriteOnnxModel(*m, Path("a.onnx")).ok());
  const std::string bytes = ReadFile(Path("a.onnx"));
  std::ofstream(Path("t.onnx"), std::ios::binary) << bytes.substr(0, bytes.size() - 1000);
  StatusOr<Model> back = ReadOnnxModel(Path("t.onnx"));
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.status().message().find("protobuf parse failed"), std::string::npos) << back.status().message();
}

TEST_F(StreamingIoTest, SpillStoreMapsLargeTensorsBackAndLeavesNoFile) {
  StatusOr<std::shared_ptr<SpillStore>> store = SpillStore::Create(dir_.string());
  ASSERT_TRUE(store.ok()) << store.status().message();
  std::mt19937 rng(5);
  const Tensor big = RandomNormalTensor({300, 1000}, 0.0f, 1.0f, rng);  // 1.2 MB
  const Tensor small = RandomNormalTensor({10, 10}, 0.0f, 1.0f, rng);
  StatusOr<Tensor> spilled = (*store)->Spill(big);
  ASSERT_TRUE(spilled.ok());
  EXPECT_TRUE(spilled->mapped());
  EXPECT_TRUE(spilled->BitEqual(big));
  EXPECT_NE(spilled->raw(), big.raw());
  StatusOr<Tensor> kept = (*store)->Spill(small);
  ASSERT_TRUE(kept.ok());
  EXPECT_FALSE(kept->mapped());
  EXPECT_EQ(kept->raw(), small.raw());
  EXPECT_GE((*store)->bytes_written(), big.nbytes());
  // Graph::SetInitializer moves large tensors into the graph's store.
  Graph g;
  g.set_spill_store(*store);
  g.SetInitializer("big", big);
  g.SetInitializer("small", small);
  EXPECT_TRUE(g.FindInitializer("big")->mapped());
  EXPECT_TRUE(g.FindInitializer("big")->BitEqual(big));
  EXPECT_FALSE(g.FindInitializer("small")->mapped());
  EXPECT_TRUE((*store)->status().ok());
  // The scratch file has no name: the directory holds nothing.
  EXPECT_TRUE(fs::is_empty(dir_));
  // A spilled tensor outlives its store.
  Tensor survivor = *spilled;
  store->reset();
  g = Graph();
  EXPECT_TRUE(survivor.BitEqual(big));
}

TEST_F(StreamingIoTest, Negative_SpillStoreInMissingDirectory) {
  StatusOr<std::shared_ptr<SpillStore>> store = SpillStore::Create(Path("no/such/dir"));
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find("no/such/dir"), std::string::npos) << store.status().message();
}

TEST_F(StreamingIoTest, GeneratorThroughSpillStoreWritesTheSameModel) {
  SyntheticConfig c = SmallLlama();
  StatusOr<Model> in_memory = BuildSyntheticDecoder(c);
  ASSERT_TRUE(in_memory.ok());
  StatusOr<std::shared_ptr<SpillStore>> store = SpillStore::Create(dir_.string(), /*min_bytes=*/4096);
  ASSERT_TRUE(store.ok());
  StatusOr<Model> spilled = BuildSyntheticDecoder(c, *store);
  ASSERT_TRUE(spilled.ok()) << spilled.status().message();
  bool all_mapped = false, small_owned = false;
  EXPECT_GT(BytesAtLeast(spilled->graph, 4096, &all_mapped, &small_owned), 0);
  EXPECT_TRUE(all_mapped);
  OnnxWriteOptions wo;
  wo.external_data = true;
  ASSERT_TRUE(WriteOnnxModel(*in_memory, Path("m.onnx"), wo).ok());
  ASSERT_TRUE(WriteOnnxModel(*spilled, Path("s.onnx"), wo).ok());
  EXPECT_TRUE(ReadFile(Path("m.onnx.data")) == ReadFile(Path("s.onnx.data")));
  // The .onnx differs only in the side file's name.
  StatusOr<Model> a = ReadOnnxModel(Path("m.onnx")), b = ReadOnnxModel(Path("s.onnx"));
  ASSERT_TRUE(a.ok() && b.ok());
  StatusOr<std::string> sa = SerializeOnnxModel(*a), sb = SerializeOnnxModel(*b);
  ASSERT_TRUE(sa.ok() && sb.ok());
  EXPECT_TRUE(*sa == *sb);
}

}  // namespace
}  // namespace qc
