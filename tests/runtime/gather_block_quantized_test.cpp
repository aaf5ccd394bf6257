// Tests of com.microsoft.GatherBlockQuantized (runtime/cpu/gather_block_quantized.cpp): against a
// dequantize-then-gather computed here from unpacked codes, named negative cases, and against ONNX
// Runtime on small hand-built models (skipped without onnxruntime-node).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "formats/graph.h"
#include "formats/model_builder.h"
#include "formats/npy.h"
#include "formats/onnx_writer.h"
#include "formats/tensor.h"
#include "runtime/cpu/kernel.h"
#include "runtime/executor.h"
#include "tests/ort_batch.h"
#include "tests/temp_dir.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

// A table of `rows` x `cols` random codes with per-block scales and zero points, unpacked, and
// its packed GatherBlockQuantized tensors (written here independently of passes/weight_quant).
struct Table {
  int bits = 4;
  int64_t rows = 0, cols = 0, block_size = 16;
  bool with_zp = false;
  std::vector<int> q;        // [rows][cols]
  std::vector<float> scale;  // [rows][n_blocks]
  std::vector<int> zp;       // [rows][n_blocks]
  Tensor data, scales, zero_points;

  int64_t n_blocks() const { return (cols + block_size - 1) / block_size; }
  float Value(int64_t row, int64_t col) const {
    const int64_t b = row * n_blocks() + col / block_size;
    return static_cast<float>(q[row * cols + col] - zp[b]) * scale[b];
  }
};

// Packs `values` (each < 2^bits) low bits first into rows of `row_bytes`.
std::vector<uint8_t> Pack(const std::vector<int>& values, int64_t per_row, int bits, int64_t row_bytes) {
  const int64_t rows = static_cast<int64_t>(values.size()) / per_row;
  std::vector<uint8_t> out(rows * row_bytes, 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < per_row; ++i) {
      const int64_t bit = i * bits;
      out[r * row_bytes + bit / 8] |= static_cast<uint8_t>(values[r * per_row + i] << (bit % 8));
    }
  return out;
}

Table MakeTable(int bits, int64_t rows, int64_t cols, int64_t block_size, bool with_zp, uint32_t seed) {
  Table t;
  t.bits = bits;
  t.rows = rows;
  t.cols = cols;
  t.block_size = block_size;
  t.with_zp = with_zp;
  std::mt19937 rng(seed);
  const int max_code = (1 << bits) - 1;
  std::uniform_int_distribution<int> code(0, max_code);
  std::uniform_real_distribution<float> scale(0.01f, 0.1f);
  const int64_t nb = t.n_blocks();
  for (int64_t i = 0; i < rows * cols; ++i) t.q.push_back(code(rng));
  for (int64_t i = 0; i < rows * nb; ++i) {
    t.scale.push_back(scale(rng));
    t.zp.push_back(with_zp ? code(rng) : 1 << (bits - 1));
  }
  const int64_t row_bytes = cols * bits / 8;
  t.data = Tensor::FromVector<uint8_t>(Pack(t.q, cols, bits, row_bytes), {rows, row_bytes});
  t.scales = Tensor::FromVector<float>(t.scale, {rows, nb});
  if (with_zp) {
    const int64_t zp_bytes = (nb * bits + 7) / 8;
    t.zero_points = Tensor::FromVector<uint8_t>(Pack(t.zp, nb, bits, zp_bytes), {rows, zp_bytes});
  }
  return t;
}

Node GbqNode(const Table& t, bool with_zp) {
  Node n;
  n.name = "gbq";
  n.op_type = "GatherBlockQuantized";
  n.domain = "com.microsoft";
  n.inputs = {"data", "indices", "scales"};
  if (with_zp) n.inputs.push_back("zero_points");
  n.outputs = {"out"};
  n.attributes["bits"] = AttrInt(t.bits);
  n.attributes["block_size"] = AttrInt(t.block_size);
  n.attributes["gather_axis"] = AttrInt(0);
  n.attributes["quantize_axis"] = AttrInt(1);
  return n;
}

StatusOr<Tensor> RunNode(const Node& node, const std::vector<const Tensor*>& inputs) {
  const OpKernels* k = FindOpKernels(node.domain, node.op_type);
  QC_CHECK(k != nullptr);
  KernelContext ctx{node, inputs, std::vector<Tensor>(1), 1, nullptr};
  QC_RETURN_IF_ERROR(k->reference(ctx));
  return ctx.outputs[0];
}

StatusOr<Tensor> RunTable(const Table& t, const Tensor& indices) {
  return RunNode(GbqNode(t, t.with_zp), {&t.data, &indices, &t.scales, t.with_zp ? &t.zero_points : nullptr});
}

void ExpectRows(const Table& t, const Tensor& out, const std::vector<int64_t>& ids) {
  ASSERT_EQ(out.dtype(), DType::kFloat32);
  ASSERT_EQ(out.numel(), static_cast<int64_t>(ids.size()) * t.cols);
  const float* o = out.data<float>();
  for (size_t j = 0; j < ids.size(); ++j) {
    const int64_t row = ids[j] < 0 ? ids[j] + t.rows : ids[j];
    for (int64_t c = 0; c < t.cols; ++c) ASSERT_EQ(o[j * t.cols + c], t.Value(row, c)) << "index " << j << " col " << c;
  }
}

// ---- against the unpacked table ---------------------------------------------------------------

TEST(GatherBlockQuantized, BitsZeroPointsAndIndexTypes) {
  const std::vector<int64_t> ids = {3, 0, 6, 3, -1, -7};
  for (int bits : {2, 4, 8})
    for (bool with_zp : {false, true})
      for (int64_t cols : {int64_t{64}, int64_t{40}}) {  // 40: the last block is partial
        SCOPED_TRACE("bits " + std::to_string(bits) + " zp " + std::to_string(with_zp) + " cols " +
                     std::to_string(cols));
        const Table t = MakeTable(bits, 7, cols, 16, with_zp, 10 + bits);
        StatusOr<Tensor> a = RunTable(t, Tensor::FromVector<int64_t>(ids, {6}));
        ASSERT_TRUE(a.ok()) << a.status().message();
        EXPECT_EQ(a->shape(), (Shape{6, cols}));
        ExpectRows(t, *a, ids);
        std::vector<int32_t> ids32(ids.begin(), ids.end());
        StatusOr<Tensor> b = RunTable(t, Tensor::FromVector<int32_t>(ids32, {6}));
        ASSERT_TRUE(b.ok()) << b.status().message();
        ExpectRows(t, *b, ids);
      }
}

TEST(GatherBlockQuantized, IndicesOfRankTwoAndScalar) {
  const Table t = MakeTable(4, 9, 32, 16, true, 3);
  const std::vector<int64_t> ids = {1, 8, 0, 4, 4, 2};
  StatusOr<Tensor> out = RunTable(t, Tensor::FromVector<int64_t>(ids, {2, 3}));
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_EQ(out->shape(), (Shape{2, 3, 32}));
  ExpectRows(t, *out, ids);
  StatusOr<Tensor> scalar = RunTable(t, Tensor::Scalar<int64_t>(5));
  ASSERT_TRUE(scalar.ok()) << scalar.status().message();
  EXPECT_EQ(scalar->shape(), (Shape{32}));
  ExpectRows(t, *scalar, {5});
}

TEST(GatherBlockQuantized, Float16ScalesGiveFloat16Output) {
  const Table t = MakeTable(8, 4, 32, 16, false, 5);
  Tensor half(DType::kFloat16, t.scales.shape());
  for (int64_t i = 0; i < half.numel(); ++i)
    static_cast<uint16_t*>(half.mutable_raw())[i] = FloatToHalf(t.scale[i]);
  const Tensor ids = Tensor::FromVector<int64_t>({2, 0}, {2});
  StatusOr<Tensor> out = RunNode(GbqNode(t, false), {&t.data, &ids, &half});
  ASSERT_TRUE(out.ok()) << out.status().message();
  ASSERT_EQ(out->dtype(), DType::kFloat16);
  const std::vector<float> got = out->ToFloats();
  for (int64_t c = 0; c < t.cols; ++c) {
    const float s = HalfToFloat(FloatToHalf(t.scale[2 * t.n_blocks() + c / 16]));
    EXPECT_EQ(got[c], HalfToFloat(FloatToHalf(static_cast<float>(t.q[2 * t.cols + c] - 128) * s)));
  }
}

TEST(GatherBlockQuantized, DataOfRankThree) {
  // [rows, 2, packed]: each gathered row is two quantized lines with their own scales.
  const Table t = MakeTable(4, 6, 32, 16, true, 7);  // 6 lines = 3 rows of 2
  const Tensor data = t.data.Reshaped({3, 2, 16});
  const Tensor scales = t.scales.Reshaped({3, 2, 2});
  const Tensor zp = t.zero_points.Reshaped({3, 2, 1});
  const Tensor ids = Tensor::FromVector<int64_t>({2, 0}, {2});
  Node node = GbqNode(t, true);
  node.attributes["quantize_axis"] = AttrInt(-1);
  StatusOr<Tensor> out = RunNode(node, {&data, &ids, &scales, &zp});
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_EQ(out->shape(), (Shape{2, 2, 32}));
  ExpectRows(t, *out, {4, 5, 0, 1});
}

// ---- named negative cases ------------------------------------------------------------------

TEST(GatherBlockQuantized, Negative_IndexOutOfRange) {
  const Table t = MakeTable(4, 5, 32, 16, false, 1);
  for (int64_t bad : {int64_t{5}, int64_t{-6}, int64_t{1} << 40}) {
    StatusOr<Tensor> out = RunTable(t, Tensor::FromVector<int64_t>({0, bad}, {2}));
    ASSERT_FALSE(out.ok());
    EXPECT_NE(out.status().message().find("out of range"), std::string::npos) << out.status().message();
  }
}

TEST(GatherBlockQuantized, Negative_BadShapesAndAttributes) {
  const Table t = MakeTable(4, 5, 32, 16, true, 2);
  const Tensor ids = Tensor::FromVector<int64_t>({1}, {1});
  auto fails = [&](Node node, std::vector<const Tensor*> inputs, const std::string& expect) {
    StatusOr<Tensor> out = RunNode(node, inputs);
    ASSERT_FALSE(out.ok()) << expect;
    EXPECT_NE(out.status().message().find(expect), std::string::npos) << out.status().message();
  };
  const Node good = GbqNode(t, true);
  const Tensor wrong_scales = Tensor::FromVector<float>(std::vector<float>(15, 1.0f), {5, 3});
  fails(good, {&t.data, &ids, &wrong_scales, &t.zero_points}, "scales must have shape [5, 2]");
  const Tensor wrong_zp = Tensor::FromVector<uint8_t>(std::vector<uint8_t>(10, 0), {5, 2});
  fails(good, {&t.data, &ids, &t.scales, &wrong_zp}, "zero_points must have shape [5, 1]");
  const Tensor flat_scales = t.scales.Reshaped({10});
  fails(good, {&t.data, &ids, &flat_scales, &t.zero_points}, "scales must have shape");
  const Tensor float_data = Tensor::FromVector<float>(std::vector<float>(80, 0.0f), {5, 16});
  fails(good, {&float_data, &ids, &t.scales, &t.zero_points}, "unsupported input dtype");
  const Tensor vector_data = t.data.Reshaped({80});
  fails(good, {&vector_data, &ids, &t.scales, &t.zero_points}, "rank >= 2");
  const Tensor float_ids = Tensor::FromVector<float>({1.0f}, {1});
  fails(good, {&t.data, &float_ids, &t.scales, &t.zero_points}, "indices must be int64 or int32");
  fails(good, {&t.data, &ids, nullptr, &t.zero_points}, "scales are required");
  Node node = good;
  node.attributes["gather_axis"] = AttrInt(1);
  fails(node, {&t.data, &ids, &t.scales, &t.zero_points}, "gather_axis must be 0");
  node = good;
  node.attributes["quantize_axis"] = AttrInt(0);
  fails(node, {&t.data, &ids, &t.scales, &t.zero_points}, "quantize_axis must be the last axis");
  node = good;
  node.attributes["bits"] = AttrInt(3);
  fails(node, {&t.data, &ids, &t.scales, &t.zero_points}, "bits must be 2, 4 or 8");
  node = good;
  node.attributes["block_size"] = AttrInt(24);
  fails(node, {&t.data, &ids, &t.scales, &t.zero_points}, "block_size must be a power of two");
}

// ---- against ONNX Runtime ------------------------------------------------------------------

// A model computing GatherBlockQuantized(table, indices) with the table as initializers; with
// `reshaped`, data and scales come in MatMulNBits' shapes ([rows, n_blocks, blob], [rows *
// n_blocks]) through Reshape nodes, the form qconvert writes for a tied embedding.
StatusOr<Model> GbqModel(const Table& t, DType index_dtype, const Shape& index_shape, bool reshaped) {
  GraphBuilder b(1);
  std::vector<Dim> dims;
  for (int64_t d : index_shape) dims.push_back(Dim{d, ""});
  const std::string ids = b.AddInput("indices", index_dtype, dims);
  std::string data = b.AddInitializer("data", t.data);
  std::string scales = b.AddInitializer("scales", t.scales);
  if (reshaped) {
    const int64_t nb = t.n_blocks();
    const std::string d3 = b.AddInitializer("data3", t.data.Reshaped({t.rows, nb, t.data.dim(1) / nb}));
    const std::string s1 = b.AddInitializer("scales1", t.scales.Reshaped({t.rows * nb}));
    data = b.Op("Reshape", {d3, b.AddInt64s({t.rows, t.data.dim(1)})});
    scales = b.Op("Reshape", {s1, b.AddInt64s({t.rows, nb})});
  }
  std::vector<std::string> inputs = {data, ids, scales};
  if (t.with_zp) inputs.push_back(b.AddInitializer("zero_points", t.zero_points));
  const std::string out = b.Op("GatherBlockQuantized", inputs,
                               {{"bits", AttrInt(t.bits)}, {"block_size", AttrInt(t.block_size)},
                                {"gather_axis", AttrInt(0)}, {"quantize_axis", AttrInt(1)}},
                               "com.microsoft");
  b.AddOutput(out, DType::kFloat32, {});
  return b.Build({{"", 18}, {"com.microsoft", 1}});
}

TEST(GatherBlockQuantized, MatchesOnnxRuntime) {
  if (std::system("node --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "node is not installed";
  const TempDir dir("gbq");
  struct Job {
    std::string name;
    Model model;
    Tensor indices;
  };
  std::vector<Job> jobs;
  const std::vector<int64_t> ids = {5, 0, -1, 3, 5, -8};
  int seed = 100;
  // ONNX Runtime 1.30's uint8 kernel reads 2-bit codes too; 4 and 8 are what qconvert writes.
  for (int bits : {2, 4, 8})
    for (bool with_zp : {false, true})
      for (int64_t cols : {int64_t{64}, int64_t{48}})
        for (bool rank2 : {false, true}) {
          const Table t = MakeTable(bits, 8, cols, 32, with_zp, ++seed);
          const Shape shape = rank2 ? Shape{2, 3} : Shape{6};
          const DType dtype = rank2 ? DType::kInt32 : DType::kInt64;
          Tensor indices = dtype == DType::kInt64 ? Tensor::FromVector<int64_t>(ids, shape)
                                                  : Tensor::FromVector<int32_t>({5, 0, -1, 3, 5, -8}, shape);
          const bool reshaped = cols == 64;  // whole blocks, like a head whose K is a block multiple
          StatusOr<Model> m = GbqModel(t, dtype, shape, reshaped);
          ASSERT_TRUE(m.ok()) << m.status().message();
          jobs.push_back({"b" + std::to_string(bits) + (with_zp ? "_zp" : "") + "_c" + std::to_string(cols) +
                              (rank2 ? "_r2" : "") + (reshaped ? "_reshaped" : ""),
                          std::move(*m), std::move(indices)});
        }
  // An index past the table: ONNX Runtime 1.30 fails ("indices element out of data bounds"), as we do.
  {
    const Table t = MakeTable(4, 8, 32, 16, false, 99);
    StatusOr<Model> m = GbqModel(t, DType::kInt64, {2}, false);
    ASSERT_TRUE(m.ok()) << m.status().message();
    jobs.push_back({"out_of_range", std::move(*m), Tensor::FromVector<int64_t>({1, 8}, {2})});
  }
  std::vector<OrtJob> ort_jobs;
  for (const Job& job : jobs) ort_jobs.push_back({job.name, &job.model, {{"indices", job.indices}}});
  StatusOr<OrtBatch> ran = RunOrtBatch(dir.path(), ort_jobs);
  ASSERT_TRUE(ran.ok()) << ran.status().message();
  if (*ran == OrtBatch::kUnavailable)
    GTEST_SKIP() << "onnxruntime-node not found; set QC_ORT_NODE_MODULES to its node_modules directory";
  for (const Job& job : jobs) {
    SCOPED_TRACE(job.name);
    const std::string error = OrtJobError(dir.string(), job.name);
    if (job.name == "out_of_range") {
      EXPECT_NE(error.find("out of data bounds"), std::string::npos) << error;
      StatusOr<std::unique_ptr<Session>> session = Session::Create(job.model);
      ASSERT_TRUE(session.ok()) << session.status().message();
      EXPECT_FALSE((*session)->Run({{"indices", job.indices}}).ok());
      continue;
    }
    ASSERT_TRUE(error.empty()) << "ONNX Runtime rejected the model: " << error;
    StatusOr<Tensor> ort = ReadNpy(OrtOutputDir(dir.path(), job.name) + "/" + job.model.graph.outputs[0].name + ".npy");
    ASSERT_TRUE(ort.ok()) << ort.status().message();
    StatusOr<std::unique_ptr<Session>> session = Session::Create(job.model);
    ASSERT_TRUE(session.ok()) << session.status().message();
    StatusOr<std::vector<Tensor>> ours = (*session)->Run({{"indices", job.indices}});
    ASSERT_TRUE(ours.ok()) << ours.status().message();
    const Tensor& a = (*ours)[0];
    ASSERT_EQ(a.shape(), ort->shape());
    const float* x = a.data<float>();
    const float* y = ort->data<float>();
    // Both compute (q - zp) * scale in float32: bit-identical.
    for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(x[i], y[i]) << "element " << i;
  }
}

}  // namespace
}  // namespace qc
