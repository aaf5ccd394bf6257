// GPU tests of calibration statistics (calibrate/device_stats.h), the GPTQ solver on the device
// (passes/gptq_solver_cuda.h) and `--pass gptq --device cuda` end to end, each against the CPU
// path, which is the spec. Labelled gpu; every test skips without a CUDA device.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "calibrate/calibrator.h"
#include "calibrate/device_stats.h"
#include "converter/commands.h"
#include "converter/pipeline.h"
#include "formats/linear_layers.h"
#include "formats/model_builder.h"
#include "formats/synthetic_models.h"
#include "passes/gptq_solver.h"
#include "passes/gptq_solver_cuda.h"
#include "passes/hessian_product_cuda.h"
#include "passes/weight_quant.h"
#include "runtime/cpu/gemm_core.h"
#include "runtime/cuda/context.h"
#include "runtime/float_precision.h"
#include "tests/gptq_inputs.h"
#include "runtime/cuda/device.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

#define REQUIRE_DEVICE() \
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device"

double MaxRelDiff(const std::vector<double>& a, const std::vector<double>& b) {
  double scale = 0, diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::fabs(a[i]));
    diff = std::max(diff, std::fabs(a[i] - b[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

// ---------------------------------------------------------------------------------------------
// Statistics.

TEST(CudaDeviceStats, MatchTheCpuAccumulatorOverWindows) {
  REQUIRE_DEVICE();
  constexpr int64_t k = 96, rows = 300;  // 300 rows: two row chunks, one partial
  auto ctx = cuda::Context::Create();
  ASSERT_TRUE(ctx.ok()) << ctx.status().ToString();
  StatsRequest request;
  request.hessian = true;
  request.outlier_threshold = 1.5;
  auto acc = DeviceStatsAccumulator::Create(**ctx, "x", k, request);
  ASSERT_TRUE(acc.ok()) << acc.status().ToString();
  std::vector<float> all;
  for (uint32_t w = 0; w < 3; ++w) {
    std::vector<float> x = CorrelatedInputs(rows, k, 100 + w);
    all.insert(all.end(), x.begin(), x.end());
    Tensor host = Tensor::FromVector(x, {1, rows, k});
    if (w == 1) {  // a device tensor, as Execution::Value gives
      auto dev = (*ctx)->Upload(host);
      ASSERT_TRUE(dev.ok());
      ASSERT_TRUE((*acc)->Add(*dev).ok());
    } else {
      ASSERT_TRUE((*acc)->Add(host).ok());
    }
  }
  auto stats = (*acc)->Finish();
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->rows, 3 * rows);
  const std::vector<double> h = HessianOf(all, 3 * rows, k);
  EXPECT_LT(MaxRelDiff(stats->hessian, h), 1e-5);
  for (int64_t j = 0; j < k; ++j) {
    float mx = 0;
    double sum = 0;
    int64_t count = 0;
    for (int64_t t = 0; t < 3 * rows; ++t) {
      const float a = std::fabs(all[t * k + j]);
      mx = std::max(mx, a);
      sum += a;
      count += a > 1.5f;
    }
    EXPECT_EQ(stats->abs_max[j], mx) << j;
    EXPECT_NEAR(stats->abs_mean[j], sum / (3 * rows), 1e-9 * sum) << j;
    EXPECT_EQ(stats->outlier_count[j], count) << j;
  }
}

// A float16/bfloat16 model's activations (as the GPU calibration run hands them over, on the
// device) give exactly the statistics of their float32 widening: the device widens them exactly.
TEST(CudaDeviceStats, SixteenBitActivationsAreWidenedExactly) {
  REQUIRE_DEVICE();
  constexpr int64_t k = 80, rows = 200;
  auto ctx = cuda::Context::Create();
  ASSERT_TRUE(ctx.ok()) << ctx.status().ToString();
  StatsRequest request;
  request.hessian = true;
  request.outlier_threshold = 1.0;
  for (DType half : {DType::kFloat16, DType::kBFloat16}) {
    SCOPED_TRACE(DTypeName(half));
    const Tensor narrow = ConvertFloatTensor(Tensor::FromVector(CorrelatedInputs(rows, k, 7), {1, rows, k}), half);
    const Tensor wide = Tensor::FromVector(narrow.ToFloats(), narrow.shape());
    auto on_device = (*ctx)->Upload(narrow);
    ASSERT_TRUE(on_device.ok());
    auto from_half = DeviceStatsAccumulator::Create(**ctx, "x", k, request);
    auto from_float = DeviceStatsAccumulator::Create(**ctx, "x", k, request);
    ASSERT_TRUE(from_half.ok() && from_float.ok());
    ASSERT_TRUE((*from_half)->Add(*on_device).ok());
    ASSERT_TRUE((*from_half)->Add(narrow).ok());  // a host 16-bit tensor: uploaded, then widened
    ASSERT_TRUE((*from_float)->Add(wide).ok());
    ASSERT_TRUE((*from_float)->Add(wide).ok());
    auto a = (*from_half)->Finish();
    auto b = (*from_float)->Finish();
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->hessian, b->hessian);
    EXPECT_EQ(a->abs_max, b->abs_max);
    EXPECT_EQ(a->abs_mean, b->abs_mean);
    EXPECT_EQ(a->outlier_count, b->outlier_count);
    EXPECT_EQ(a->rows, 2 * rows);
  }
}

TEST(CudaDeviceStats, Negative_NonFiniteActivation) {
  REQUIRE_DEVICE();
  auto ctx = cuda::Context::Create();
  ASSERT_TRUE(ctx.ok());
  auto acc = DeviceStatsAccumulator::Create(**ctx, "x", 4, StatsRequest{true, 0});
  ASSERT_TRUE(acc.ok());
  ASSERT_TRUE((*acc)->Add(Tensor::FromVector<float>({1, 2, NAN, 4}, {1, 4})).ok());
  auto stats = (*acc)->Finish();
  ASSERT_FALSE(stats.ok());
  EXPECT_NE(stats.status().message().find("non-finite"), std::string::npos);
}

// RunSequential on the device gives every group the statistics the CPU run gives (the visitor
// hands back the same replacement weights on both).
TEST(CudaCalibrator, SequentialStatisticsMatchTheCpu) {
  REQUIRE_DEVICE();
  SyntheticConfig config;
  config.hidden = 64;
  config.layers = 2;
  config.heads = 4;
  config.kv_heads = 2;
  config.vocab = 101;
  config.max_positions = 128;
  auto model = BuildSyntheticDecoder(config);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  std::vector<Tensor> windows;
  std::mt19937 rng(5);
  for (int w = 0; w < 4; ++w) {
    Tensor t(DType::kInt64, {1, 48});
    for (int i = 0; i < 48; ++i) t.mutable_data<int64_t>()[i] = static_cast<int64_t>(rng() % 101);
    windows.push_back(t);
  }
  const std::vector<LinearLayer> layers = FindLinearLayers(model->graph);
  StatsRequest request;
  request.hessian = true;
  auto collect = [&](Device device, int64_t budget) {
    std::vector<InputStats> out;
    Calibrator calibrator(windows);
    calibrator.set_device(device, budget);
    // Replacement weights: each layer's weight scaled by 0.9, so later groups see changed inputs.
    SequentialVisitor visit = [&](const LayerGroup& group, const InputStats& stats,
                                  const std::vector<const Tensor*>&) -> StatusOr<GroupWeights> {
      out.push_back(stats);
      GroupWeights weights;
      for (const LinearLayer& l : group.layers) {
        QC_ASSIGN_OR_RETURN(std::vector<float> w, ReadLinearWeight(model->graph, l));
        for (float& v : w) v *= 0.9f;
        weights.push_back(std::move(w));
      }
      return weights;
    };
    const Status s = calibrator.RunSequential(*model, layers, request, visit);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return out;
  };
  const std::vector<InputStats> cpu = collect(Device::kCpu, 0);
  // Budget 0 parks every window at every boundary; a large one keeps them all on the device.
  for (int64_t budget : {int64_t{0}, int64_t{1} << 30}) {
    const std::vector<InputStats> gpu = collect(Device::kCuda, budget);
    ASSERT_EQ(gpu.size(), cpu.size());
    for (size_t g = 0; g < cpu.size(); ++g) {
      EXPECT_EQ(gpu[g].input, cpu[g].input);
      EXPECT_EQ(gpu[g].rows, cpu[g].rows);
      EXPECT_LT(MaxRelDiff(gpu[g].hessian, cpu[g].hessian), 1e-4) << cpu[g].input;
      std::vector<double> gmax(gpu[g].abs_max.begin(), gpu[g].abs_max.end()), cmax(cpu[g].abs_max.begin(), cpu[g].abs_max.end());
      EXPECT_LT(MaxRelDiff(gmax, cmax), 1e-4) << cpu[g].input;
      EXPECT_LT(MaxRelDiff(gpu[g].abs_mean, cpu[g].abs_mean), 1e-4) << cpu[g].input;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The solver.

struct Comparison {
  double equal_codes = 0;  // fraction of codes equal to the CPU solver's
  double err_cpu = 0, err_gpu = 0;  // relative output error from H
};

Comparison CompareSolvers(GptqCudaSolver& gpu, int64_t k, int64_t n, const GptqSpec& spec, uint32_t seed) {
  const int64_t rows = 4 * k;
  const std::vector<float> x = CorrelatedInputs(rows, k, seed);
  const std::vector<double> h = HessianOf(x, rows, k);
  const std::vector<float> w = RandomNormal(k * n, seed + 1);
  StatusOr<GptqResult> a = GptqQuantize(w, k, n, h, spec);
  StatusOr<GptqResult> b = gpu.Quantize(w, k, n, h, spec);
  Comparison c;
  EXPECT_TRUE(a.ok() && b.ok()) << a.status().ToString() << " / " << b.status().ToString();
  if (!a.ok() || !b.ok()) return c;
  EXPECT_EQ(a->weight.g_idx, b->weight.g_idx);
  EXPECT_EQ(a->percdamp, b->percdamp);
  EXPECT_EQ(b->weight.Dequantize(), b->w_hat) << "w_hat is the dequantized weight, bit for bit";
  int64_t equal = 0;
  for (size_t i = 0; i < a->weight.q.size(); ++i) equal += a->weight.q[i] == b->weight.q[i];
  c.equal_codes = static_cast<double>(equal) / static_cast<double>(a->weight.q.size());
  c.err_cpu = OutputErrorFromHessian(h, k, w, a->w_hat, n).rel_error;
  c.err_gpu = OutputErrorFromHessian(h, k, w, b->w_hat, n).rel_error;
  auto energies = gpu.OutputEnergies(h, k, w, b->w_hat, n);
  EXPECT_TRUE(energies.ok());
  if (energies.ok()) {
    const OutputError e = OutputErrorFromEnergies(energies->first, energies->second);
    EXPECT_NEAR(e.rel_error, c.err_gpu, 1e-6 * std::max(1.0, c.err_gpu));
  }
  // Bit-reproducible on one device.
  StatusOr<GptqResult> again = gpu.Quantize(w, k, n, h, spec);
  EXPECT_TRUE(again.ok());
  if (again.ok()) {
    EXPECT_EQ(again->weight.q, b->weight.q);
    EXPECT_EQ(again->weight.scales, b->weight.scales);
    EXPECT_EQ(again->w_hat, b->w_hat);
  }
  return c;
}

TEST(CudaGptqSolver, MatchesTheCpuSolver) {
  REQUIRE_DEVICE();
  auto gpu = GptqCudaSolver::Create();
  ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
  struct Case {
    const char* name;
    int64_t k, n;
    GptqSpec spec;
  };
  GptqSpec search = SolverSpec(4, 32, true);
  search.quant.scale_search = true;
  GptqSpec small_block = SolverSpec(3, 32, false);
  small_block.block_size = 24;  // blocks that cut groups
  const Case cases[] = {
      {"w4 g32 sym", 256, 300, SolverSpec(4, 32, true)},
      {"w4 g32 asym", 256, 300, SolverSpec(4, 32, false)},
      {"w4 per-channel", 192, 130, SolverSpec(4, -1, true)},
      {"w3 g32 asym block 24", 160, 96, small_block},
      {"w4 g32 act-order static", 256, 200, SolverSpec(4, 32, false, true, true)},
      {"w4 g32 act-order g_idx", 256, 200, SolverSpec(4, 32, false, true, false)},
      {"w4 g32 sym scale search", 128, 64, search},
      {"w8 g64", 256, 64, SolverSpec(8, 64, true)},
  };
  uint32_t seed = 300;
  for (const Case& c : cases) {
    const Comparison r = CompareSolvers(**gpu, c.k, c.n, c.spec, seed += 10);
    SCOPED_TRACE(c.name);
    EXPECT_GE(r.equal_codes, 0.98) << c.name;
    EXPECT_NEAR(r.err_gpu, r.err_cpu, 0.02 * r.err_cpu) << c.name;
  }
}

// AWQ's products with the Hessian on the GPU: D·H against the host GEMM, and Σ d_r H d_rᵀ
// against the host's float64 sum, on a K that is no multiple of any tile (and a second H
// replacing the first).
TEST(HessianProductCuda, MatchesTheHostProducts) {
  REQUIRE_DEVICE();
  auto gpu = HessianProductCuda::Create();
  ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
  for (const int64_t k : {97, 300}) {
    SCOPED_TRACE(k);
    const int64_t rows = 131;
    const std::vector<double> h64 = HessianOf(CorrelatedInputs(400, k, 11 + static_cast<uint32_t>(k)), 400, k);
    const std::vector<float> h(h64.begin(), h64.end());
    const std::vector<float> d = CorrelatedInputs(rows, k, 5);
    ASSERT_TRUE((*gpu)->SetHessian(h, k).ok());
    std::vector<float> want(rows * k), got(rows * k);
    GemmF32(false, false, rows, k, k, 1.0f, d.data(), k, h.data(), k, 0.0f, want.data(), k, /*threaded=*/false);
    ASSERT_TRUE((*gpu)->Multiply(d.data(), rows, got.data()).ok());
    float scale = 0, diff = 0;
    for (int64_t i = 0; i < rows * k; ++i) {
      scale = std::max(scale, std::fabs(want[i]));
      diff = std::max(diff, std::fabs(want[i] - got[i]));
    }
    EXPECT_LE(diff, 1e-4f * scale);
    double quadratic = 0;
    for (int64_t i = 0; i < rows * k; ++i) quadratic += static_cast<double>(d[i]) * want[i];
    auto q = (*gpu)->Quadratic(d.data(), rows);
    ASSERT_TRUE(q.ok()) << q.status().ToString();
    EXPECT_NEAR(*q, quadratic, 1e-4 * std::fabs(quadratic));
    auto again = (*gpu)->Quadratic(d.data(), rows);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *q) << "the same sum on every run";
  }
  EXPECT_FALSE((*gpu)->SetHessian(std::vector<float>(10), 4).ok());
}

TEST(CudaGptqSolver, IdentityHessianGivesTheCpuCodesExactly) {
  REQUIRE_DEVICE();
  auto gpu = GptqCudaSolver::Create();
  ASSERT_TRUE(gpu.ok());
  constexpr int64_t k = 128, n = 64;
  std::vector<double> h(k * k, 0.0);
  for (int64_t i = 0; i < k; ++i) h[i * k + i] = 1.0;
  const std::vector<float> w = RandomNormal(k * n, 9);
  for (bool sym : {true, false}) {
    auto a = GptqQuantize(w, k, n, h, SolverSpec(4, 32, sym));
    auto b = (*gpu)->Quantize(w, k, n, h, SolverSpec(4, 32, sym));
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->weight.q, b->weight.q);
    EXPECT_EQ(a->weight.scales, b->weight.scales);
    EXPECT_EQ(a->weight.zero_points, b->weight.zero_points);
    EXPECT_EQ(a->w_hat, b->w_hat);
  }
}

TEST(CudaGptqSolver, DampingEscalatesAsOnTheCpu) {
  REQUIRE_DEVICE();
  auto gpu = GptqCudaSolver::Create();
  ASSERT_TRUE(gpu.ok());
  constexpr int64_t k = 32, n = 8;
  // H = B Bᵀ - 0.05 mean-diag I: indefinite until the damping exceeds 0.05.
  const std::vector<double> h = IndefiniteHessian(k, 51);
  const std::vector<float> w = RandomNormal(k * n, 52);
  auto a = GptqQuantize(w, k, n, h, SolverSpec(4, 16, true));
  auto r = (*gpu)->Quantize(w, k, n, h, SolverSpec(4, 16, true));
  ASSERT_TRUE(a.ok() && r.ok()) << a.status().ToString() << " / " << r.status().ToString();
  EXPECT_EQ(r->percdamp, a->percdamp);
  EXPECT_EQ(r->notes, a->notes);
}

TEST(CudaGptqSolver, Negative_HessianNeverPositiveDefinite) {
  REQUIRE_DEVICE();
  auto gpu = GptqCudaSolver::Create();
  ASSERT_TRUE(gpu.ok());
  constexpr int64_t k = 16, n = 4;
  std::vector<double> h(k * k, 0.0);
  for (int64_t i = 0; i < k; ++i) h[i * k + i] = -1.0;
  auto r = (*gpu)->Quantize(RandomNormal(k * n, 62), k, n, h, SolverSpec(4, 16, true));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not positive definite"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// docs-llama-12m end to end: --device cuda gives the CPU's perplexity, and the same artifact twice.

// QC_SHARED_DIR in the environment overrides the build's (the device machine has its own copy).
std::string SharedDir() {
  const char* env = std::getenv("QC_SHARED_DIR");
  return env && *env ? env : QC_SHARED_DIR;
}

class DocsLlamaConversion {
 public:
  DocsLlamaConversion()
      : dir_(SharedDir() + "/models/docs-llama-12m"),
        calib_(SharedDir() + "/data/docs-calib/docs-calib.txt"),
        out_(fs::temp_directory_path() / ("qc_cuda_convert_" + std::to_string(::getpid()))) {
    fs::create_directories(out_);
  }
  ~DocsLlamaConversion() { fs::remove_all(out_); }
  bool available() const { return fs::exists(dir_ + "/model.onnx") && fs::exists(calib_); }

  StatusOr<QuantReport> Convert(const std::string& passes, const std::string& device, const std::string& name,
                                  int64_t nsamples, int64_t seqlen, int64_t eval_windows) const {
    ConvertOptions o;
    o.model = dir_ + "/model.onnx";
    o.passes = passes;
    o.output = (out_ / name).string();
    o.calib = calib_;
    o.tokenizer = dir_ + "/tokenizer.json";
    o.eval = dir_ + "/docs-val.ids.npy";
    o.eval_windows = eval_windows;
    o.nsamples = nsamples;
    o.seqlen = seqlen;
    o.quant.bits = 4;
    // The CLI's defaults (QuantOptions' own differ): scale search on, the output head in 8 bits.
    // With a 4-bit head and no scale search, GPTQ's solutions on the GPU and on the CPU differ as
    // much as two equally good solutions do (docs-llama-12m, the H200, 2026-11-30). Per-layer
    // errors stay within 5%, but perplexity is -0.45% (gptq) and -1.4% (smoothquant,gptq) apart.
    // With the CLI's settings, which the 0.2% bound is about, the gaps are +0.145% and -0.097%.
    o.quant.scale_search = true;
    o.quant.head_bits = kCliHeadBits;
    o.device = device;
    return RunConvertPipeline(o, nullptr);
  }

 private:
  std::string dir_, calib_;
  fs::path out_;
};

// Per layer, the GPU run's output error is the CPU's within `tolerance` (relative).
void ExpectSameLayerErrors(const QuantReport& cpu, const QuantReport& gpu, double tolerance) {
  ASSERT_EQ(gpu.layers.size(), cpu.layers.size());
  for (size_t i = 0; i < cpu.layers.size(); ++i) {
    EXPECT_EQ(gpu.layers[i].name, cpu.layers[i].name);
    if (cpu.layers[i].output_rel_error > 0)
      EXPECT_NEAR(gpu.layers[i].output_rel_error, cpu.layers[i].output_rel_error, tolerance * cpu.layers[i].output_rel_error)
          << cpu.layers[i].name;
  }
}

TEST(CudaGptqPipeline, DocsLlamaMatchesTheCpu) {
  REQUIRE_DEVICE();
  const DocsLlamaConversion docs;
  if (!docs.available()) GTEST_SKIP() << "../shared is absent";
  auto cpu = docs.Convert("gptq", "cpu", "cpu.onnx", 32, 512, 48);
  ASSERT_TRUE(cpu.ok()) << cpu.status().ToString();
  auto gpu = docs.Convert("gptq", "cuda", "gpu.onnx", 32, 512, 48);
  ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
  auto gpu2 = docs.Convert("gptq", "cuda", "gpu2.onnx", 32, 512, 48);
  ASSERT_TRUE(gpu2.ok()) << gpu2.status().ToString();
  std::cout << "docs-llama-12m gptq w4: cpu ppl " << cpu->ppl_after << ", cuda ppl " << gpu->ppl_after << std::endl;
  EXPECT_NEAR(gpu->ppl_after, cpu->ppl_after, 0.002 * cpu->ppl_after);
  EXPECT_EQ(gpu->output_sha256, gpu2->output_sha256) << "the same inputs give the same artifact on one device";
  ExpectSameLayerErrors(*cpu, *gpu, 0.05);
}

// The other passes calibrate on the GPU too (statistics, Hessians and the W8A8 error windows come
// from the GPU run; their searches and rounding stay on the CPU): same perplexity within 0.2%,
// same per-layer errors within 5%, the same artifact twice.
TEST(CudaPassPipeline, EveryCalibratingPassMatchesTheCpu) {
  REQUIRE_DEVICE();
  const DocsLlamaConversion docs;
  if (!docs.available()) GTEST_SKIP() << "../shared is absent";
  for (const std::string passes : {"absmax", "awq", "smoothquant", "outlier-split", "smoothquant,gptq"}) {
    SCOPED_TRACE(passes);
    auto cpu = docs.Convert(passes, "cpu", "cpu.onnx", 16, 256, 16);
    ASSERT_TRUE(cpu.ok()) << cpu.status().ToString();
    auto gpu = docs.Convert(passes, "cuda", "gpu.onnx", 16, 256, 16);
    ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
    auto gpu2 = docs.Convert(passes, "cuda", "gpu2.onnx", 16, 256, 16);
    ASSERT_TRUE(gpu2.ok()) << gpu2.status().ToString();
    std::cout << "docs-llama-12m " << passes << ": cpu ppl " << cpu->ppl_after << ", cuda ppl " << gpu->ppl_after << std::endl;
    EXPECT_NEAR(gpu->ppl_after, cpu->ppl_after, 0.002 * cpu->ppl_after);
    EXPECT_EQ(gpu->output_sha256, gpu2->output_sha256);
    ExpectSameLayerErrors(*cpu, *gpu, 0.05);
  }
}

}  // namespace
}  // namespace qc
