// Tests of runtime/cuda (label gpu): the MatMulNBits kernels against the CPU reference kernel over
// awkward shapes and every layout, the caching allocator, and the upload checks. Every test skips
// when the machine has no CUDA device.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "formats/graph.h"
#include "formats/model_builder.h"
#include "formats/tensor.h"
#include "runtime/cpu/kernel.h"
#include "runtime/cuda/allocator.h"
#include "runtime/cuda/device.h"
#include "runtime/cuda/matmul_nbits.h"
#include "runtime/cuda/matmul_nbits_stream.h"
#include "runtime/cuda/nbits_dequantize.h"
#include "runtime/cuda/nbits_weights.h"

namespace qc {
namespace {

using cuda::CachingAllocator;
using cuda::DeviceBuffer;
using cuda::NBitsKernel;
using cuda::NBitsOptions;
using cuda::NBitsWeights;
using cuda::NBitsWorkspace;
using cuda::StreamStaging;

#define SKIP_WITHOUT_DEVICE() \
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device"

#define ASSERT_OK(expr)                              \
  do {                                               \
    const ::qc::Status s_ = (expr);                  \
    ASSERT_TRUE(s_.ok()) << #expr << ": " << s_.message(); \
  } while (0)

// ---- building MatMulNBits inputs ---------------------------------------------------------------

// One MatMulNBits layer: the node and its inputs (A, B, scales, zero_points, g_idx, bias; an
// undefined Tensor where absent), plus the dequantised weight for error bounds.
struct Layer {
  Node node;
  std::vector<Tensor> inputs;
  std::vector<float> w;  // [N, K] dequantised, by this file's own reading of docs/FORMAT.md
  int64_t m = 0, k = 0, n = 0;
};

struct LayerSpec {
  int64_t m = 1, k = 64, n = 8;
  int bits = 4;          // code width; 3 is stored in 4-bit fields (docs/FORMAT.md, "Bit widths")
  int block_size = 32;   // 0: per channel (one scale per column, repeated over blocks of 256)
  bool zero_points = false;
  bool float_zero_points = false;
  bool g_idx = false;
  bool bias = false;
};

void SetBits(uint8_t* p, int64_t i, int bits, int v) {
  for (int b = 0; b < bits; ++b)
    if (v >> b & 1) p[(i * bits + b) / 8] |= static_cast<uint8_t>(1 << ((i * bits + b) % 8));
}

std::string Describe(const LayerSpec& s) {
  return "m=" + std::to_string(s.m) + " k=" + std::to_string(s.k) + " n=" + std::to_string(s.n) +
         " bits=" + std::to_string(s.bits) + " block=" + (s.block_size ? std::to_string(s.block_size) : "per-channel") +
         (s.zero_points ? (s.float_zero_points ? " zp=float" : " zp=packed") : "") + (s.g_idx ? " g_idx" : "") +
         (s.bias ? " bias" : "");
}

Layer MakeLayer(const LayerSpec& s, std::mt19937& rng) {
  const int storage = s.bits == 3 ? 4 : s.bits;
  int block = s.block_size;
  if (block == 0) {  // per channel: one block of the next power of two when K <= 256, else 256s
    block = 16;
    while (block < s.k && block < 256) block *= 2;
  }
  const int64_t kb = (s.k + block - 1) / block;
  const int64_t blob = block * storage / 8, zp_bytes = (kb * storage + 7) / 8;
  Layer L;
  L.m = s.m;
  L.k = s.k;
  L.n = s.n;
  L.node.name = "layer";
  L.node.op_type = "MatMulNBits";
  L.node.domain = "com.microsoft";
  L.node.attributes["K"] = AttrInt(s.k);
  L.node.attributes["N"] = AttrInt(s.n);
  L.node.attributes["bits"] = AttrInt(storage);
  L.node.attributes["block_size"] = AttrInt(block);

  Tensor b(DType::kUInt8, {s.n, kb, blob});
  Tensor scales(DType::kFloat32, {s.n * kb});
  Tensor zp_packed(DType::kUInt8, {s.n * zp_bytes});
  Tensor zp_float(DType::kFloat32, {s.n * kb});
  std::vector<int32_t> g(s.k);
  for (int64_t i = 0; i < s.k; ++i) g[i] = static_cast<int32_t>(i / block);
  if (s.g_idx) std::shuffle(g.begin(), g.end(), rng);  // act-order: rows visit blocks out of order

  std::uniform_int_distribution<int> code(0, (1 << s.bits) - 1), raw(0, 255);
  std::uniform_real_distribution<float> mag(0.002f, 0.05f);
  std::bernoulli_distribution neg(0.5);
  uint8_t* bp = b.mutable_data<uint8_t>();
  for (int64_t i = 0; i < b.numel(); ++i) bp[i] = static_cast<uint8_t>(raw(rng));  // padding rows stay garbage
  float* sp = scales.mutable_data<float>();
  float* zf = zp_float.mutable_data<float>();
  uint8_t* zpp = zp_packed.mutable_data<uint8_t>();
  const int default_zp = 1 << (storage - 1);
  for (int64_t c = 0; c < s.n; ++c) {
    float channel_scale = mag(rng) * (neg(rng) ? -1.0f : 1.0f);
    int channel_zp = code(rng);
    for (int64_t blk = 0; blk < kb; ++blk) {
      const bool fresh = s.block_size != 0;  // per channel: blocks repeat the column's parameters
      sp[c * kb + blk] = fresh ? mag(rng) * (neg(rng) ? -1.0f : 1.0f) : channel_scale;
      const int z = fresh ? code(rng) : channel_zp;
      zf[c * kb + blk] = static_cast<float>(z) + (s.float_zero_points ? 0.375f : 0.0f);
      SetBits(zpp + c * zp_bytes, blk, storage, z);
    }
    for (int64_t kk = 0; kk < s.k; ++kk) {
      int q = code(rng);
      // Symmetric 3-bit codes move with the implied zero point into the 4-bit field.
      const int stored = (s.bits == 3 && !s.zero_points) ? q - 4 + 8 : q;
      uint8_t* block_bytes = bp + (c * kb + kk / block) * blob;
      const int64_t pos = kk % block;
      for (int bit = 0; bit < storage; ++bit) {
        const int64_t at = pos * storage + bit;
        block_bytes[at / 8] = static_cast<uint8_t>((block_bytes[at / 8] & ~(1 << (at % 8))) | ((stored >> bit & 1) << (at % 8)));
      }
      const int64_t p = c * kb + g[kk];
      const float zp = s.zero_points ? zf[p] : static_cast<float>(default_zp);
      L.w.push_back((static_cast<float>(stored) - zp) * sp[p]);
    }
  }
  // Activations: uniform with one large outlier per row (hi/lo split must keep the small ones).
  Tensor a(DType::kFloat32, {s.m, s.k});
  std::uniform_real_distribution<float> ad(-1.0f, 1.0f);
  float* ap = a.mutable_data<float>();
  for (int64_t i = 0; i < a.numel(); ++i) ap[i] = ad(rng);
  for (int64_t r = 0; r < s.m; ++r) ap[r * s.k + (r * 7919) % s.k] = 300.0f;
  Tensor bias(DType::kFloat32, {s.n});
  for (int64_t i = 0; i < s.n; ++i) bias.mutable_data<float>()[i] = ad(rng);

  L.inputs = {a, b, scales};
  L.inputs.push_back(s.zero_points ? (s.float_zero_points ? zp_float : zp_packed) : Tensor());
  L.inputs.push_back(s.g_idx ? Tensor::FromVector<int32_t>(g, {s.k}) : Tensor());
  L.inputs.push_back(s.bias ? bias : Tensor());
  L.node.inputs.clear();
  for (size_t i = 0; i < L.inputs.size(); ++i)
    L.node.inputs.push_back(L.inputs[i].defined() ? "in" + std::to_string(i) : "");
  L.node.outputs = {"y"};
  return L;
}

std::vector<const Tensor*> InputPtrs(const Layer& L) {
  std::vector<const Tensor*> p;
  for (const Tensor& t : L.inputs) p.push_back(t.defined() ? &t : nullptr);
  return p;
}

// The CPU reference kernel (runtime/cpu/matmul_nbits.cpp, double accumulation): the spec.
std::vector<float> Reference(const Layer& L, const Tensor* a_override = nullptr) {
  const OpKernels* k = FindOpKernels("com.microsoft", "MatMulNBits");
  QC_CHECK(k != nullptr);
  KernelContext ctx{L.node, InputPtrs(L), std::vector<Tensor>(1), 1, nullptr};
  if (a_override) ctx.inputs[0] = a_override;
  const Status s = k->reference(ctx);
  EXPECT_TRUE(s.ok()) << s.message();
  if (!s.ok()) return {};
  const float* y = ctx.outputs[0].data<float>();
  return std::vector<float>(y, y + ctx.outputs[0].numel());
}

// sum_k |x[r, k] * w[c, k]|: the scale of float rounding in output (r, c).
std::vector<double> AbsProducts(const Layer& L, const float* x) {
  std::vector<double> out(L.m * L.n);
  for (int64_t r = 0; r < L.m; ++r)
    for (int64_t c = 0; c < L.n; ++c) {
      double s = 0;
      for (int64_t kk = 0; kk < L.k; ++kk) s += std::fabs(double(x[r * L.k + kk]) * L.w[c * L.k + kk]);
      out[r * L.n + c] = s;
    }
  return out;
}

template <typename T>
struct DeviceArray {
  DeviceBuffer buf;
  int64_t count = 0;
  static DeviceArray FromHost(const std::vector<T>& v) {
    DeviceArray d;
    d.count = static_cast<int64_t>(v.size());
    auto r = CachingAllocator::Default().Allocate(std::max<size_t>(1, v.size() * sizeof(T)));
    QC_CHECK(r.ok());
    d.buf = std::move(r).value();
    QC_CHECK(cudaMemcpy(d.buf.data(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
    return d;
  }
  static DeviceArray Poisoned(int64_t count) {  // NaN everywhere: an unwritten output shows
    DeviceArray d;
    d.count = count;
    auto r = CachingAllocator::Default().Allocate(std::max<size_t>(1, count * sizeof(T)));
    QC_CHECK(r.ok());
    d.buf = std::move(r).value();
    QC_CHECK(cudaMemset(d.buf.data(), 0xff, count * sizeof(T)) == cudaSuccess);
    return d;
  }
  std::vector<T> ToHost() const {
    std::vector<T> v(count);
    QC_CHECK(cudaMemcpy(v.data(), buf.data(), count * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return v;
  }
  T* get() const { return buf.as<T>(); }
};

// Runs the fp32 path with `options` and returns Y (the stream synchronised, errors checked). X
// starts `x_offset` elements into its device buffer (1: not 16-byte aligned).
std::vector<float> RunF32(const NBitsWeights& w, const Layer& L, NBitsWorkspace& ws, const NBitsOptions& options,
                          int x_offset = 0) {
  const float* ap = L.inputs[0].data<float>();
  std::vector<float> xv(x_offset, 0.0f);
  xv.insert(xv.end(), ap, ap + L.m * L.k);
  auto x = DeviceArray<float>::FromHost(xv);
  auto y = DeviceArray<float>::Poisoned(L.m * L.n);
  const Status s = cuda::MatMulNBits(w.view(), x.get() + x_offset, y.get(), L.m, ws, nullptr, options);
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return y.ToHost();
}

// |gpu - ref| <= rel_products * sum|x w| + rel_value * |ref| everywhere (NaN fails).
void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, const std::vector<double>& products,
                 double rel_products, double rel_value, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < got.size() && bad < 5; ++i) {
    const double tol = rel_products * products[i] + rel_value * std::fabs(want[i]) + 1e-30;
    const double err = std::fabs(double(got[i]) - want[i]);
    if (!(err <= tol)) {
      ++bad;
      ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << want[i] << " (error " << err
                    << ", tolerance " << tol << ")";
    }
  }
}

// fp32 activations: hi + lo fp16 halves keep ~22 bits, so 4e-6 of sum|x w| covers the fp32
// accumulation (tensor-core adds included); fp16-only activations would miss it by 50x.
constexpr double kF32Tol = 4e-6;

// kStream with `blocks` blocks (0: its own choice), `depth` steps in flight per warp (0: 4) and
// programmatic launch on or off.
NBitsOptions StreamOptions(int blocks = 0, int depth = 0, bool programmatic = true,
                           StreamStaging staging = StreamStaging::kAuto) {
  NBitsOptions o;
  o.kernel = NBitsKernel::kStream;
  o.gemv_blocks = blocks;
  o.ring_stages = depth;
  o.programmatic_launch = programmatic;
  o.stream_staging = staging;
  return o;
}

// Runs the fp16 path on L's activations rounded to fp16 and returns Y as floats (compare with the
// reference of RoundedToHalf(L)); X starts `x_offset` elements into its buffer.
std::vector<float> RunF16(const NBitsWeights& w, const Layer& L, NBitsWorkspace& ws, const NBitsOptions& options,
                          int x_offset = 0) {
  const float* ap = L.inputs[0].data<float>();
  std::vector<__half> xh(x_offset + L.m * L.k, __float2half(0.0f));
  for (int64_t i = 0; i < L.m * L.k; ++i) xh[x_offset + i] = __float2half(ap[i]);
  auto x = DeviceArray<__half>::FromHost(xh);
  auto y = DeviceArray<__half>::Poisoned(L.m * L.n);
  const Status s = cuda::MatMulNBits(w.view(), x.get() + x_offset, y.get(), L.m, ws, nullptr, options);
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> got;
  for (__half h : y.ToHost()) got.push_back(__half2float(h));
  return got;
}

// L with its activations rounded to fp16 (the input RunF16 gives the kernels).
Layer RoundedToHalf(Layer L) {
  L.inputs[0] = L.inputs[0].Clone();  // tensors share storage when copied
  float* ap = L.inputs[0].mutable_data<float>();
  for (int64_t i = 0; i < L.m * L.k; ++i) ap[i] = __half2float(__float2half(ap[i]));
  return L;
}

// What kAuto should pick for a layer the tensor-core kernels can read (docs/BENCHMARKS.md): the
// stream kernel for one row of 4-bit weights in blocks of a multiple of 128 with K >= 1024, else
// the GEMV kernel for one fp32 row of 4-bit weights, else kMma.
NBitsKernel ExpectedAuto(const cuda::NBitsWeightsView& w, int64_t m, bool half = false) {
  if (m == 1 && w.layout.bits == 4 && w.layout.block_size % 128 == 0 && w.layout.k >= 1024) return NBitsKernel::kStream;
  if (m == 1 && w.layout.bits == 4 && !half) return NBitsKernel::kGemv;
  return NBitsKernel::kMma;
}

// ---- kernels against the reference --------------------------------------------------------------

class CudaMatMulNBits : public ::testing::TestWithParam<std::tuple<int, int>> {};

// Every (bits, block) over m = 1, 3, 17, 118, K not a multiple of any tile (300, 1000), odd N,
// zero points on/off, g_idx on/off: the automatic kernel, and where auto picks a tensor-core one,
// the generic kernel and both tensor-core kernels (the GEMV kernel for m <= 16 also with split-K
// slices that end mid-block and with tile groups that run past N), so every kernel is checked on
// every layout it accepts.
TEST_P(CudaMatMulNBits, MatchesCpuReference) {
  SKIP_WITHOUT_DEVICE();
  const auto [bits, block] = GetParam();
  std::mt19937 rng(1000 * bits + block);
  NBitsWorkspace ws;
  int mma_runs = 0;
  for (int64_t m : {1, 3, 17, 118})
    for (auto [k, n] : {std::pair<int64_t, int64_t>{300, 33}, {1000, 77}})
      for (bool zp : {false, true})
        for (bool gidx : {false, true}) {
          LayerSpec spec;
          spec.m = m;
          spec.k = k;
          spec.n = n;
          spec.bits = bits;
          spec.block_size = block;
          spec.zero_points = zp;
          spec.float_zero_points = zp && gidx && (m % 2 == 1);  // ORT's g_idx form, and packed too
          spec.g_idx = gidx;
          spec.bias = (m + k) % 2 == 1;
          SCOPED_TRACE(Describe(spec));
          const Layer L = MakeLayer(spec, rng);
          auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
          ASSERT_TRUE(up.ok()) << up.status().message();
          const NBitsWeights& w = up.value();
          const std::vector<float> want = Reference(L);
          const std::vector<double> prod = AbsProducts(L, L.inputs[0].data<float>());
          const NBitsKernel chosen = cuda::SelectNBitsKernel(w.view(), m);
          ExpectClose(RunF32(w, L, ws, {}), want, prod, kF32Tol, 0, std::string("auto/") + cuda::NBitsKernelName(chosen));
          if (chosen != NBitsKernel::kGeneric) {
            ++mma_runs;
            EXPECT_EQ(chosen, ExpectedAuto(w.view(), m));
            ExpectClose(RunF32(w, L, ws, {NBitsKernel::kGeneric, 0}), want, prod, kF32Tol, 0, "generic");
            ExpectClose(RunF32(w, L, ws, {NBitsKernel::kMma, 1}), want, prod, kF32Tol, 0, "mma, no split-K");
            if (m <= 16) {
              ExpectClose(RunF32(w, L, ws, {NBitsKernel::kGemv, 3}), want, prod, kF32Tol, 0, "gemv, 3 slices");
              ExpectClose(RunF32(w, L, ws, {NBitsKernel::kGemv, 0, 4}), want, prod, kF32Tol, 0, "gemv, 4 tiles");
              ExpectClose(RunF32(w, L, ws, {NBitsKernel::kGemv, 2, 2, false}), want, prod, kF32Tol, 0,
                          "gemv, 2 slices, 2 tiles, no programmatic launch");
            }
          }
        }
  // The tensor-core kernel takes every layout without g_idx whose column blocks hold >= 16 bytes.
  const int storage = bits == 3 ? 4 : bits;
  const int eff_block = block == 0 ? 256 : block;
  if (eff_block * storage / 8 >= 16) EXPECT_EQ(mma_runs, 4 * 2 * 2);
  else EXPECT_EQ(mma_runs, 0);
}

INSTANTIATE_TEST_SUITE_P(BitsAndBlocks, CudaMatMulNBits,
                         ::testing::Combine(::testing::Values(2, 3, 4, 8), ::testing::Values(16, 32, 64, 128, 256, 0)),
                         [](const ::testing::TestParamInfo<std::tuple<int, int>>& info) {
                           const int block = std::get<1>(info.param);
                           return "W" + std::to_string(std::get<0>(info.param)) + "_" +
                                  (block ? "G" + std::to_string(block) : std::string("PerChannel"));
                         });

// A layer of real size: several staged chunks per K slice and a split-K reduction across many
// blocks, GEMV and GEMM tiles.
TEST(CudaMatMulNBitsLarge, RealSizeLayers) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(7);
  NBitsWorkspace ws;
  for (int bits : {4, 8})
    for (int64_t m : {1, 5, 16, 40}) {  // GEMV tiles of 4 and 16 rows, GEMM tiles of 32
      LayerSpec spec{m, 11008, 300, bits, 128, bits == 4, false, false, true};
      SCOPED_TRACE(Describe(spec));
      const Layer L = MakeLayer(spec, rng);
      auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
      ASSERT_TRUE(up.ok()) << up.status().message();
      ASSERT_EQ(cuda::SelectNBitsKernel(up->view(), m), ExpectedAuto(up->view(), m));
      const std::vector<float> want = Reference(L);
      const std::vector<double> prod = AbsProducts(L, L.inputs[0].data<float>());
      ExpectClose(RunF32(*up, L, ws, {}), want, prod, kF32Tol, 0, "auto");
      ExpectClose(RunF32(*up, L, ws, {NBitsKernel::kMma, 3}), want, prod, kF32Tol, 0, "split 3");
      if (m <= 16) {
        ExpectClose(RunF32(*up, L, ws, {NBitsKernel::kGemv, 1}), want, prod, kF32Tol, 0, "gemv, 1 slice");
        ExpectClose(RunF32(*up, L, ws, {NBitsKernel::kGemv, 7, 8}), want, prod, kF32Tol, 0, "gemv, 7 slices, 8 tiles");
      }
      if (m == 1 && bits == 4) {
        ExpectClose(RunF32(*up, L, ws, StreamOptions()), want, prod, kF32Tol, 0, "stream");
        ExpectClose(RunF32(*up, L, ws, StreamOptions(5, 8)), want, prod, kF32Tol, 0, "stream, 5 blocks, depth 8");
      }
    }
}

// Prefill batches of a 1B Llama (m = 1024 and 2048 rows, GEMM tiles, no split-K): every output
// finite, and sampled rows (both ends of each half) against the reference on those rows only.
TEST(CudaMatMulNBitsLarge, PrefillRowCounts) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(12);
  NBitsWorkspace ws;
  const LayerSpec shapes[] = {{2048, 2048, 5632, 4, 128, true}, {2048, 5632, 2048, 4, 128, true},
                              {2048, 2048, 32000, 8, 128, true}, {1024, 2048, 2048, 4, 128, true}};
  for (const LayerSpec& spec : shapes) {
    SCOPED_TRACE(Describe(spec));
    const Layer L = MakeLayer(spec, rng);
    auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
    ASSERT_TRUE(up.ok()) << up.status().message();
    const std::vector<float> got = RunF32(*up, L, ws, {});
    int64_t non_finite = 0;
    for (float v : got) non_finite += std::isfinite(v) ? 0 : 1;
    EXPECT_EQ(non_finite, 0);
    const int64_t rows[] = {0, 1, spec.m / 2 - 1, spec.m / 2, spec.m - 2, spec.m - 1};
    const int64_t picked = std::size(rows);
    Tensor a(DType::kFloat32, {picked, L.k});
    const float* ap = L.inputs[0].data<float>();
    for (int64_t i = 0; i < picked; ++i) std::copy_n(ap + rows[i] * L.k, L.k, a.mutable_data<float>() + i * L.k);
    Layer sub;
    sub.m = picked;
    sub.k = L.k;
    sub.n = L.n;
    sub.w = L.w;
    const std::vector<float> want = Reference(L, &a);
    const std::vector<double> prod = AbsProducts(sub, a.data<float>());
    std::vector<float> got_rows;
    for (int64_t r : rows) got_rows.insert(got_rows.end(), got.begin() + r * L.n, got.begin() + (r + 1) * L.n);
    ExpectClose(got_rows, want, prod, kF32Tol, 0, "auto");
  }
}

// Activations whose low bits matter: 1 + 2^-13 is not an fp16 value (its ulp at 1 is 2^-10), so
// a kernel that rounded activations to fp16 would be off by ~1e-4 relative; the hi/lo split is not.
TEST(CudaMatMulNBitsPrecision, Fp32ActivationsKeepTheirLowBits) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(3);
  LayerSpec spec{4, 512, 16, 4, 128, false, false, false, false};
  Layer L = MakeLayer(spec, rng);
  float* ap = L.inputs[0].mutable_data<float>();
  for (int64_t i = 0; i < L.m * L.k; ++i) ap[i] = 1.0f + std::ldexp(1.0f, -13) * static_cast<float>(1 + i % 3);
  auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
  ASSERT_TRUE(up.ok());
  NBitsWorkspace ws;
  const std::vector<float> want = Reference(L);
  ExpectClose(RunF32(*up, L, ws, {NBitsKernel::kMma, 0}), want, AbsProducts(L, ap), 1e-6, 0, "mma");
  ExpectClose(RunF32(*up, L, ws, {NBitsKernel::kGemv, 0}), want, AbsProducts(L, ap), 1e-6, 0, "gemv");
}

// Rows of very different magnitude (1e-20 .. 1e20) each get their own power-of-two scale.
TEST(CudaMatMulNBitsPrecision, RowsOfExtremeMagnitude) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(4);
  LayerSpec spec{4, 700, 40, 8, 64, true, false, false, false};
  Layer L = MakeLayer(spec, rng);
  float* ap = L.inputs[0].mutable_data<float>();
  const float row_scale[4] = {1e-20f, 1.0f, 7e4f, 1e20f};
  for (int64_t r = 0; r < 4; ++r)
    for (int64_t i = 0; i < L.k; ++i) ap[r * L.k + i] *= row_scale[r];
  auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
  ASSERT_TRUE(up.ok());
  NBitsWorkspace ws;
  const std::vector<float> want = Reference(L);
  ExpectClose(RunF32(*up, L, ws, {}), want, AbsProducts(L, ap), kF32Tol, 0, "auto");
}

// fp16 activations in, fp16 out (fp32 accumulation): within output rounding of the reference run
// on the same (fp16-representable) activations.
TEST(CudaMatMulNBitsHalf, MatchesCpuReference) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(11);
  NBitsWorkspace ws;
  for (int bits : {2, 4, 8})
    for (int block : {32, 64, 128})
      for (int64_t m : {1, 3, 12, 17, 118}) {  // GEMV tiles of 8 and 16 rows, GEMM tiles of 32
        LayerSpec spec{m, 1000, 77, bits, block, m % 2 == 1, false, false, m > 3};
        SCOPED_TRACE(Describe(spec));
        Layer L = MakeLayer(spec, rng);
        float* ap = L.inputs[0].mutable_data<float>();
        std::vector<__half> xh(L.m * L.k);
        for (int64_t i = 0; i < L.m * L.k; ++i) {
          xh[i] = __float2half(ap[i]);
          ap[i] = __half2float(xh[i]);
        }
        auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
        ASSERT_TRUE(up.ok());
        const std::vector<float> want = Reference(L);
        const std::vector<double> prod = AbsProducts(L, ap);
        if (cuda::SelectNBitsKernel(up->view(), L.m, true) != NBitsKernel::kGeneric)
          EXPECT_EQ(cuda::SelectNBitsKernel(up->view(), L.m, true), ExpectedAuto(up->view(), L.m, true));
        for (NBitsKernel kernel :
             {NBitsKernel::kAuto, NBitsKernel::kGeneric, NBitsKernel::kMma}) {
          if (kernel == NBitsKernel::kMma && cuda::SelectNBitsKernel(up->view(), L.m) == NBitsKernel::kGeneric) continue;
          auto x = DeviceArray<__half>::FromHost(xh);
          auto y = DeviceArray<__half>::Poisoned(L.m * L.n);
          const NBitsOptions options{kernel, 0};
          ASSERT_OK(cuda::MatMulNBits(up->view(), x.get(), y.get(), L.m, ws, nullptr, options));
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          std::vector<float> got;
          for (__half h : y.ToHost()) got.push_back(__half2float(h));
          ExpectClose(got, want, prod, kF32Tol, 1e-3, cuda::NBitsKernelName(kernel));
        }
      }
}

// The same launch twice gives bitwise the same output (the split-K reduction has a fixed order).
TEST(CudaMatMulNBits, Deterministic) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(5);
  LayerSpec spec{3, 4096, 100, 4, 128, true, false, false, false};
  const Layer L = MakeLayer(spec, rng);
  auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
  ASSERT_TRUE(up.ok());
  NBitsWorkspace ws;
  for (NBitsKernel kernel : {NBitsKernel::kMma, NBitsKernel::kGemv}) {
    const NBitsOptions options{kernel, 16};
    const std::vector<float> a = RunF32(*up, L, ws, options);
    const std::vector<float> b = RunF32(*up, L, ws, options);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << cuda::NBitsKernelName(kernel);
  }
  // kStream takes one row.
  const Layer L1 = MakeLayer(LayerSpec{1, 4096, 100, 4, 128, true, false, false, false}, rng);
  auto up1 = NBitsWeights::Upload(L1.node, InputPtrs(L1));
  ASSERT_TRUE(up1.ok());
  const std::vector<float> a = RunF32(*up1, L1, ws, StreamOptions(4));
  const std::vector<float> b = RunF32(*up1, L1, ws, StreamOptions(4));
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "stream";
  // Who converts a value (the block, its warp, a cluster pair) does not change it: the same bits,
  // fp32 and fp16 rows.
  const std::vector<float> c1 = RunF32(*up1, L1, ws, StreamOptions(4, 0, true, StreamStaging::kBlock));
  const Layer H1 = RoundedToHalf(L1);
  const std::vector<float> h1 = RunF16(*up1, H1, ws, StreamOptions(4, 0, true, StreamStaging::kBlock));
  for (StreamStaging staging : {StreamStaging::kWarp, StreamStaging::kClusterPair}) {
    const std::vector<float> c2 = RunF32(*up1, L1, ws, StreamOptions(4, 0, true, staging));
    EXPECT_EQ(std::memcmp(c1.data(), c2.data(), c1.size() * sizeof(float)), 0)
        << "stream, staging " << static_cast<int>(staging);
    const std::vector<float> h2 = RunF16(*up1, H1, ws, StreamOptions(4, 0, true, staging));
    EXPECT_EQ(std::memcmp(h1.data(), h2.data(), h1.size() * sizeof(float)), 0)
        << "stream fp16, staging " << static_cast<int>(staging);
  }
}

// Blocks longer than a K slice (ONNX Runtime's per-channel form: one block of the next power of
// two >= K): every slice of the GEMV kernel reads the same scale.
TEST(CudaMatMulNBits, GemvBlocksLongerThanASlice) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(13);
  NBitsWorkspace ws;
  for (int bits : {4, 8})
    for (auto [k, block] : {std::pair<int64_t, int>{1000, 1024}, {5000, 8192}})
      for (int64_t m : {1, 5}) {
        LayerSpec spec{m, k, 40, bits, block, m == 5, false, false, false};
        SCOPED_TRACE(Describe(spec));
        const Layer L = MakeLayer(spec, rng);
        auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
        ASSERT_TRUE(up.ok()) << up.status().message();
        ASSERT_NE(cuda::SelectNBitsKernel(up->view(), m), NBitsKernel::kGeneric);
        const std::vector<float> want = Reference(L);
        const std::vector<double> prod = AbsProducts(L, L.inputs[0].data<float>());
        ExpectClose(RunF32(*up, L, ws, {}), want, prod, kF32Tol, 0, "auto");
        ExpectClose(RunF32(*up, L, ws, {NBitsKernel::kGemv, 0}), want, prod, kF32Tol, 0, "gemv");
        ExpectClose(RunF32(*up, L, ws, {NBitsKernel::kGemv, 5}), want, prod, kF32Tol, 0, "gemv, 5 slices");
      }
}

// Back-to-back calls on one stream, each reading the previous one's output (programmatic
// dependent launch: a call starts copying its weights while the one before runs, and must not read
// its activations before that one has finished). Every intermediate starts as NaN, so a read too
// early shows.
TEST(CudaMatMulNBits, GemvChainedCallsReadFinishedInputs) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(14);
  NBitsWorkspace ws;
  for (int64_t m : {1, 3}) {
    const Layer L = MakeLayer(LayerSpec{m, 2048, 2048, 4, 128, false, false, false, true}, rng);
    auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
    ASSERT_TRUE(up.ok()) << up.status().message();
    ASSERT_NE(cuda::SelectNBitsKernel(up->view(), m), NBitsKernel::kGeneric);
    constexpr int kSteps = 12;
    std::vector<DeviceArray<float>> acts;
    const float* ap = L.inputs[0].data<float>();
    acts.push_back(DeviceArray<float>::FromHost(std::vector<float>(ap, ap + m * L.k)));
    for (int s = 0; s < kSteps; ++s) acts.push_back(DeviceArray<float>::Poisoned(m * L.n));
    for (int s = 0; s < kSteps; ++s) {  // queued back to back, no synchronisation in between
      // Odd steps: kStream (one row; the default, which is cluster pairs where the GPU has at
      // least 128 SMs, or 9 blocks staging by warp or in pairs) or kMma (its prologue and main
      // kernel).
      NBitsOptions options{NBitsKernel::kGemv, 2};
      if (s % 2)
        options = m == 1 ? (s % 4 == 1 ? StreamOptions()
                                       : StreamOptions(9, 0, true,
                                                       s % 8 == 3 ? StreamStaging::kWarp : StreamStaging::kClusterPair))
                         : NBitsOptions{NBitsKernel::kMma, 0};
      ASSERT_OK(cuda::MatMulNBits(up->view(), acts[s].get(), acts[s + 1].get(), m, ws, nullptr, options));
    }
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    for (int s = 0; s < kSteps; ++s) {
      SCOPED_TRACE("m=" + std::to_string(m) + " step " + std::to_string(s));
      Tensor a(DType::kFloat32, {m, L.k});
      const std::vector<float> in = acts[s].ToHost();
      std::copy(in.begin(), in.end(), a.mutable_data<float>());
      const std::vector<float> want = Reference(L, &a);
      ExpectClose(acts[s + 1].ToHost(), want, AbsProducts(L, in.data()), kF32Tol, 0, "gemv / stream / mma chain");
    }
  }
}

// The stream kernel on awkward shapes: K not a multiple of 128 (zeros staged past K) nor of the 8
// warps' steps (warps with different step counts), N not a multiple of 16 (1, 17, 100 columns),
// many tiles per block (700 columns on 1, 3 or 7 blocks), blocks of 128 and 256, zero points on and
// off, bias, every ring depth, with and without programmatic launch; fp32 and fp16 activations.
TEST(CudaMatMulNBits, StreamAwkwardShapes) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(18);
  NBitsWorkspace ws;
  int runs = 0;
  // 16384: the fp32 row takes 67 KB of shared memory (above the 48 KB default limit).
  for (auto [k, n] : {std::pair<int64_t, int64_t>{1024, 1}, {1100, 17}, {3000, 100}, {4096, 700}, {16384, 24}})
    for (int block : {128, 256})
      for (bool zp : {false, true}) {
        LayerSpec spec{1, k, n, 4, block, zp, false, false, (n + block / 128) % 2 == 1};
        SCOPED_TRACE(Describe(spec));
        const Layer L = MakeLayer(spec, rng);
        auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
        ASSERT_TRUE(up.ok()) << up.status().message();
        ASSERT_OK(cuda::StreamSupported(up->view(), 1, false));
        ASSERT_OK(cuda::StreamSupported(up->view(), 1, true));
        const std::vector<float> want = Reference(L);
        const std::vector<double> prod = AbsProducts(L, L.inputs[0].data<float>());
        ExpectClose(RunF32(*up, L, ws, StreamOptions()), want, prod, kF32Tol, 0, "stream");
        ExpectClose(RunF32(*up, L, ws, StreamOptions(1, 2)), want, prod, kF32Tol, 0, "stream, 1 block, depth 2");
        ExpectClose(RunF32(*up, L, ws, StreamOptions(3, 8, false)), want, prod, kF32Tol, 0,
                    "stream, 3 blocks, depth 8, no programmatic launch");
        ExpectClose(RunF32(*up, L, ws, StreamOptions(7, 4)), want, prod, kF32Tol, 0, "stream, 7 blocks");
        ExpectClose(RunF32(*up, L, ws, StreamOptions(), 1), want, prod, kF32Tol, 0, "stream, X not 16-byte aligned");
        // Every staging mode (N = 1: one block, so a cluster pair stages alone).
        ExpectClose(RunF32(*up, L, ws, StreamOptions(0, 0, true, StreamStaging::kBlock)), want, prod, kF32Tol, 0,
                    "stream, block staging");
        ExpectClose(RunF32(*up, L, ws, StreamOptions(0, 0, true, StreamStaging::kWarp)), want, prod, kF32Tol, 0,
                    "stream, warp staging");
        ExpectClose(RunF32(*up, L, ws, StreamOptions(0, 0, true, StreamStaging::kClusterPair)), want, prod, kF32Tol, 0,
                    "stream, cluster pairs");
        ExpectClose(RunF32(*up, L, ws, StreamOptions(7, 2, false, StreamStaging::kClusterPair), 1), want, prod,
                    kF32Tol, 0, "stream, 7 blocks asked in cluster pairs, depth 2, X not aligned, no PDL");
        ExpectClose(RunF32(*up, L, ws, StreamOptions(3, 8, true, StreamStaging::kWarp), 1), want, prod, kF32Tol, 0,
                    "stream, 3 blocks, depth 8, warp staging, X not aligned");
        const Layer H = RoundedToHalf(L);
        const std::vector<float> want_h = Reference(H);
        const std::vector<double> prod_h = AbsProducts(H, H.inputs[0].data<float>());
        ExpectClose(RunF16(*up, H, ws, StreamOptions()), want_h, prod_h, kF32Tol, 1e-3, "stream fp16");
        ExpectClose(RunF16(*up, H, ws, StreamOptions(5, 2, false)), want_h, prod_h, kF32Tol, 1e-3,
                    "stream fp16, 5 blocks, depth 2");
        ExpectClose(RunF16(*up, H, ws, StreamOptions(), 3), want_h, prod_h, kF32Tol, 1e-3,
                    "stream fp16, X not 16-byte aligned");
        ExpectClose(RunF16(*up, H, ws, StreamOptions(0, 0, true, StreamStaging::kClusterPair), 3), want_h, prod_h,
                    kF32Tol, 1e-3, "stream fp16, cluster pairs, X not 16-byte aligned");
        ExpectClose(RunF16(*up, H, ws, StreamOptions(3, 8, true, StreamStaging::kClusterPair)), want_h, prod_h,
                    kF32Tol, 1e-3, "stream fp16, 3 blocks in cluster pairs, depth 8");
        ExpectClose(RunF16(*up, H, ws, StreamOptions(0, 0, true, StreamStaging::kBlock)), want_h, prod_h, kF32Tol,
                    1e-3, "stream fp16, block staging");
        ExpectClose(RunF16(*up, H, ws, StreamOptions(5, 2, false, StreamStaging::kWarp), 3), want_h, prod_h, kF32Tol,
                    1e-3, "stream fp16, 5 blocks, depth 2, warp staging, X not aligned, no PDL");
        ++runs;
      }
  EXPECT_EQ(runs, 5 * 2 * 2);
  // A block much longer than K (ONNX Runtime's per-channel form): only K's steps are read.
  for (bool zp : {false, true}) {
    LayerSpec spec{1, 1100, 40, 4, 2048, zp, false, false, false};
    SCOPED_TRACE(Describe(spec));
    const Layer L = MakeLayer(spec, rng);
    auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
    ASSERT_TRUE(up.ok()) << up.status().message();
    EXPECT_EQ(cuda::SelectNBitsKernel(up->view(), 1), NBitsKernel::kStream);
    ExpectClose(RunF32(*up, L, ws, StreamOptions()), Reference(L), AbsProducts(L, L.inputs[0].data<float>()), kF32Tol,
                0, "stream, one block of 2048 over K = 1100");
  }
}

// Steps of very different magnitude in one row: each step of 128 inputs gets its own power-of-two
// exponent before the fp16 split, so steps of 1e-20 (which fp16 would flush to zero) and of 7e4
// and 1e20 (which it would overflow) keep fp32 accuracy, alone and beside steps of zeros.
TEST(CudaMatMulNBitsPrecision, StreamStepsOfExtremeMagnitude) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(19);
  const Layer base = MakeLayer(LayerSpec{1, 2048, 40, 4, 128, true, false, false, false}, rng);
  auto up = NBitsWeights::Upload(base.node, InputPtrs(base));
  ASSERT_TRUE(up.ok());
  NBitsWorkspace ws;
  for (float magnitude : {1e-20f, 7e4f, 1e20f}) {
    SCOPED_TRACE("steps of " + std::to_string(magnitude));
    Layer L = base;
    L.inputs[0] = base.inputs[0].Clone();
    float* ap = L.inputs[0].mutable_data<float>();
    for (int64_t i = 0; i < L.k; ++i) ap[i] = (i / 128) % 2 == 0 ? ap[i] * magnitude : 0.0f;
    for (StreamStaging staging : {StreamStaging::kBlock, StreamStaging::kWarp, StreamStaging::kClusterPair})
      ExpectClose(RunF32(*up, L, ws, StreamOptions(0, 0, true, staging)), Reference(L), AbsProducts(L, ap), kF32Tol, 0,
                  "stream, staging " + std::to_string(static_cast<int>(staging)));
  }
}

// An infinite input gives what the reference gives on every fp32 kernel: +-Inf in columns whose
// weight there is not zero, NaN where it is (Inf x 0), not NaN everywhere (Inf - Inf in the lo
// half), and the other rows stay finite.
TEST(CudaMatMulNBitsPrecision, InfiniteInputGivesInfinityOnEveryKernel) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(21);
  // kStream takes one row; kGemv and kMma also three (an infinite x in row 1 only).
  for (int64_t m : {1, 3})
    for (NBitsKernel kernel : {NBitsKernel::kStream, NBitsKernel::kGemv, NBitsKernel::kMma}) {
      if (m > 1 && kernel == NBitsKernel::kStream) continue;
      SCOPED_TRACE("m = " + std::to_string(m) + ", kernel " + std::to_string(static_cast<int>(kernel)));
      Layer L = MakeLayer(LayerSpec{m, 1024, 48, 4, 128, false, false, false, false}, rng);
      L.inputs[0] = L.inputs[0].Clone();
      L.inputs[0].mutable_data<float>()[(m - 1) / 2 * L.k + 300] = std::numeric_limits<float>::infinity();
      auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
      ASSERT_TRUE(up.ok());
      NBitsWorkspace ws;
      const std::vector<float> want = Reference(L);
      // kStream in each staging mode (staging means nothing to the others).
      for (StreamStaging staging : {StreamStaging::kBlock, StreamStaging::kWarp, StreamStaging::kClusterPair}) {
        if (kernel != NBitsKernel::kStream && staging != StreamStaging::kBlock) continue;
        SCOPED_TRACE("staging " + std::to_string(static_cast<int>(staging)));
        NBitsOptions options = StreamOptions(0, 0, true, staging);
        options.kernel = kernel;
        const std::vector<float> got = RunF32(*up, L, ws, options);
        ASSERT_EQ(got.size(), want.size());
        int infinite = 0;
        for (size_t i = 0; i < got.size(); ++i) {
          EXPECT_EQ(std::isnan(got[i]), std::isnan(want[i])) << "y " << i << ": got " << got[i] << " want " << want[i];
          if (std::isinf(want[i])) {
            ++infinite;
            EXPECT_EQ(got[i], want[i]) << "y " << i;
          } else if (!std::isnan(want[i])) {
            EXPECT_TRUE(std::isfinite(got[i])) << "y " << i << ": got " << got[i];
          }
        }
        EXPECT_GT(infinite, 0);
      }
    }
}

// DequantizeNBits (the prefill path's dense weights) on every layout: float32 output equals this
// file's own dequantisation bit for bit ((code - zp) * scale in float), the 16-bit outputs are
// that value rounded once; a column range starting inside the matrix writes just those columns.
TEST(CudaDequantizeNBits, EveryLayoutMatchesTheHostDequantisation) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(13);
  // K = 296 (a multiple of 8, without g_idx): the eight-codes-per-thread kernel; K = 300: per code.
  for (int64_t k : {300, 296})
  for (int bits : {2, 3, 4, 8})
    for (int block : {16, 32, 128, 0})
      for (int zp = 0; zp < 3; ++zp)
        for (bool g_idx : {false, true}) {
          LayerSpec spec{1, k, 37, bits, block, zp > 0, zp == 2, g_idx, false};
          SCOPED_TRACE(Describe(spec));
          const Layer L = MakeLayer(spec, rng);
          auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
          ASSERT_TRUE(up.ok()) << up.status().message();
          const int64_t col0 = 5, cols = 31;  // columns 5..35 of 37
          auto f32 = DeviceArray<float>::Poisoned(cols * L.k);
          auto f16 = DeviceArray<__half>::Poisoned(cols * L.k);
          auto b16 = DeviceArray<__nv_bfloat16>::Poisoned(cols * L.k);
          ASSERT_OK(cuda::DequantizeNBits(up->view(), col0, cols, f32.get(), nullptr));
          ASSERT_OK(cuda::DequantizeNBits(up->view(), col0, cols, f16.get(), nullptr));
          ASSERT_OK(cuda::DequantizeNBits(up->view(), col0, cols, b16.get(), nullptr));
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          const std::vector<float> g32 = f32.ToHost();
          const std::vector<__half> g16 = f16.ToHost();
          const std::vector<__nv_bfloat16> gb = b16.ToHost();
          int bad = 0;
          for (int64_t c = 0; c < cols && bad < 5; ++c)
            for (int64_t kk = 0; kk < L.k && bad < 5; ++kk) {
              const int64_t i = c * L.k + kk;
              const float want = L.w[(col0 + c) * L.k + kk];
              if (g32[i] != want || __half2float(g16[i]) != __half2float(__float2half_rn(want)) ||
                  __bfloat162float(gb[i]) != __bfloat162float(__float2bfloat16_rn(want))) {
                ++bad;
                ADD_FAILURE() << "column " << col0 + c << " input " << kk << ": want " << want << ", got " << g32[i] << " / "
                              << __half2float(g16[i]) << " / " << __bfloat162float(gb[i]);
              }
            }
        }
}

TEST(CudaDequantizeNBits, Negative_ColumnsOutsideTheMatrix) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(14);
  const Layer L = MakeLayer(LayerSpec{1, 64, 8, 4, 32}, rng);
  auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
  ASSERT_TRUE(up.ok());
  auto out = DeviceArray<float>::Poisoned(8 * 64);
  const Status past = cuda::DequantizeNBits(up->view(), 4, 5, out.get(), nullptr);
  EXPECT_FALSE(past.ok());
  EXPECT_NE(past.message().find("outside [0, 8)"), std::string::npos) << past.message();
  EXPECT_FALSE(cuda::DequantizeNBits(up->view(), -1, 2, out.get(), nullptr).ok());
  EXPECT_TRUE(cuda::DequantizeNBits(up->view(), 8, 0, out.get(), nullptr).ok());  // empty: nothing to do
}

// The cache hands a block back out while work queued on its stream may still write it (reuse is
// ordered by that stream). The upload must land after that work: a plain cudaMemcpy, on the legacy
// stream, raced it, and a pending activation write corrupted the weights (the float32 w4 1.1B
// model's NaN logits at 2048 tokens on the H200, when the GPU lagged furthest behind the host).
TEST(CudaMatMulNBits, UploadLandsAfterPendingWorkOnItsStream) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(9);
  Layer L = MakeLayer(LayerSpec{1, 4096, 512, 4, 128, true, false, false, false}, rng);
  const Tensor& b = L.inputs[1];
  const size_t bytes = static_cast<size_t>(b.nbytes());
  cudaStream_t raw_stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&raw_stream, cudaStreamNonBlocking), cudaSuccess);
  std::unique_ptr<CUstream_st, void (*)(cudaStream_t)> stream(raw_stream, [](cudaStream_t s) { (void)cudaStreamDestroy(s); });
  CachingAllocator alloc;
  {
    auto pending = alloc.Allocate(bytes);
    ASSERT_TRUE(pending.ok());
    // Still queued when the block goes back to the cache: 300 ms of host callback, then a write.
    auto sleep = [](void*) { std::this_thread::sleep_for(std::chrono::milliseconds(300)); };
    ASSERT_EQ(cudaLaunchHostFunc(stream.get(), sleep, nullptr), cudaSuccess);
    ASSERT_EQ(cudaMemsetAsync(pending->data(), 0xab, bytes, stream.get()), cudaSuccess);
  }
  auto up = NBitsWeights::Upload(L.node, InputPtrs(L), stream.get(), alloc);
  ASSERT_TRUE(up.ok()) << up.status().message();
  EXPECT_EQ(alloc.stats().cache_hits, 1);  // B got the pending block
  ASSERT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
  std::vector<uint8_t> got(bytes);
  ASSERT_EQ(cudaMemcpy(got.data(), up->view().b, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(std::memcmp(got.data(), b.raw(), bytes), 0) << "the weights were overwritten by the stream's pending write";
}

TEST(CudaMatMulNBits, ZeroRowsIsANoOp) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(6);
  const Layer L = MakeLayer(LayerSpec{}, rng);
  auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
  ASSERT_TRUE(up.ok());
  NBitsWorkspace ws;
  ASSERT_OK(cuda::MatMulNBits(up->view(), static_cast<const float*>(nullptr), static_cast<float*>(nullptr), 0, ws,
                              nullptr));
}

// ---- named negative cases ---------------------------------------------------------------------

TEST(CudaMatMulNBits, Negative_ForcedGemvOnTooManyRows) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(15);
  const Layer L = MakeLayer(LayerSpec{17, 256, 8, 4, 128, false, false, false, false}, rng);
  auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
  ASSERT_TRUE(up.ok());
  NBitsWorkspace ws;
  auto x = DeviceArray<float>::Poisoned(L.m * L.k);
  auto y = DeviceArray<float>::Poisoned(L.m * L.n);
  const Status s = cuda::MatMulNBits(up->view(), x.get(), y.get(), L.m, ws, nullptr, {NBitsKernel::kGemv, 0});
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("rows"), std::string::npos) << s.message();
}

// The stream kernel says which limit a forced call broke: rows, bit width, block size, K, staging
// mode.
TEST(CudaMatMulNBits, Negative_ForcedStreamOutsideItsLayouts) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(20);
  NBitsWorkspace ws;
  const std::pair<LayerSpec, const char*> cases[] = {
      {LayerSpec{3, 2048, 8, 4, 128, false, false, false, false}, "one row"},
      {LayerSpec{1, 2048, 8, 8, 128, false, false, false, false}, "4-bit"},
      {LayerSpec{1, 2048, 8, 4, 64, false, false, false, false}, "multiple of 128"},
      {LayerSpec{1, 512, 8, 4, 128, false, false, false, false}, "K >= 1024"},
  };
  for (const auto& [spec, why] : cases) {
    SCOPED_TRACE(Describe(spec));
    const Layer L = MakeLayer(spec, rng);
    auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
    ASSERT_TRUE(up.ok());
    auto x = DeviceArray<float>::Poisoned(L.m * L.k);
    auto y = DeviceArray<float>::Poisoned(L.m * L.n);
    const Status s = cuda::MatMulNBits(up->view(), x.get(), y.get(), L.m, ws, nullptr, StreamOptions());
    EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
    EXPECT_NE(s.message().find(why), std::string::npos) << s.message();
  }
  // A layout it takes, with a staging mode that does not exist.
  const Layer L = MakeLayer(LayerSpec{1, 2048, 64, 4, 128, false, false, false, false}, rng);
  auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
  ASSERT_TRUE(up.ok());
  auto x = DeviceArray<float>::Poisoned(L.k);
  auto y = DeviceArray<float>::Poisoned(L.n);
  const Status s = cuda::MatMulNBits(up->view(), x.get(), y.get(), 1, ws, nullptr,
                                     StreamOptions(0, 0, true, static_cast<StreamStaging>(9)));
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("staging mode"), std::string::npos) << s.message();
}

TEST(CudaMatMulNBits, Negative_ForcedMmaOnGIdx) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(8);
  LayerSpec spec{1, 256, 8, 4, 128, false, false, true, false};
  const Layer L = MakeLayer(spec, rng);
  auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
  ASSERT_TRUE(up.ok());
  NBitsWorkspace ws;
  auto x = DeviceArray<float>::Poisoned(L.k);
  auto y = DeviceArray<float>::Poisoned(L.n);
  const Status s = cuda::MatMulNBits(up->view(), x.get(), y.get(), 1, ws, nullptr, {NBitsKernel::kMma, 0});
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("g_idx"), std::string::npos) << s.message();
}

TEST(CudaMatMulNBits, Negative_UploadWrongBShape) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(9);
  Layer L = MakeLayer(LayerSpec{1, 64, 4, 4, 32, false, false, false, false}, rng);
  L.inputs[1] = Tensor(DType::kUInt8, {4, 2, 8});  // blob 16 expected
  auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
  ASSERT_FALSE(up.ok());
  EXPECT_EQ(up.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(up.status().message().find("B must have shape"), std::string::npos) << up.status().message();
}

TEST(CudaMatMulNBits, Negative_UploadGIdxOutOfRange) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(10);
  Layer L = MakeLayer(LayerSpec{1, 64, 4, 4, 32, false, false, true, false}, rng);
  L.inputs[4].mutable_data<int32_t>()[5] = 2;  // k_blocks = 2
  auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
  ASSERT_FALSE(up.ok());
  EXPECT_NE(up.status().message().find("g_idx[5]"), std::string::npos) << up.status().message();
}

TEST(CudaMatMulNBits, Negative_BadBlockSize) {
  SKIP_WITHOUT_DEVICE();
  std::mt19937 rng(12);
  Layer L = MakeLayer(LayerSpec{}, rng);
  L.node.attributes["block_size"] = AttrInt(24);
  auto up = NBitsWeights::Upload(L.node, InputPtrs(L));
  ASSERT_FALSE(up.ok());
  EXPECT_NE(up.status().message().find("block_size"), std::string::npos) << up.status().message();
}

// ---- allocator ----------------------------------------------------------------------------------

TEST(CudaAllocator, ReusesFreedBlocks) {
  SKIP_WITHOUT_DEVICE();
  CachingAllocator alloc;
  void* first = nullptr;
  {
    auto a = alloc.Allocate(1000);
    ASSERT_TRUE(a.ok()) << a.status().message();
    first = a->data();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(first) % 256, 0u);
    EXPECT_EQ(alloc.stats().bytes_in_use, CachingAllocator::RoundSize(1000));
  }
  EXPECT_EQ(alloc.stats().bytes_in_use, 0u);
  EXPECT_EQ(alloc.stats().bytes_cached, CachingAllocator::RoundSize(1000));
  auto b = alloc.Allocate(900);  // same 512-byte size class
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->data(), first);
  EXPECT_EQ(alloc.stats().cache_hits, 1);
  EXPECT_EQ(alloc.stats().device_allocations, 1);
  auto big = alloc.Allocate(size_t{64} << 20);  // a different class: a new device block
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(alloc.stats().device_allocations, 2);
  big->Reset();
  auto small = alloc.Allocate(size_t{1} << 20);  // must not take the 64 MiB block
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(alloc.stats().device_allocations, 3);
  ASSERT_OK(alloc.EmptyCache());
  EXPECT_EQ(alloc.stats().bytes_cached, 0u);
}

// set_poison: reused and new blocks both come out as 0xFF bytes (NaN floats); off again, a
// reused block keeps what it held.
TEST(CudaAllocator, PoisonFillsReusedAndNewBlocks) {
  SKIP_WITHOUT_DEVICE();
  CachingAllocator alloc;
  auto bytes_of = [](const DeviceBuffer& b, size_t n) {
    std::vector<uint8_t> v(n);
    QC_CHECK(cudaMemcpy(v.data(), b.data(), n, cudaMemcpyDeviceToHost) == cudaSuccess);
    return v;
  };
  {
    auto a = alloc.Allocate(4096);
    ASSERT_TRUE(a.ok());
    ASSERT_EQ(cudaMemset(a->data(), 0, 4096), cudaSuccess);
  }
  alloc.set_poison(true);
  auto reused = alloc.Allocate(4096);
  ASSERT_TRUE(reused.ok());
  EXPECT_EQ(alloc.stats().cache_hits, 1);
  for (uint8_t v : bytes_of(*reused, 4096)) ASSERT_EQ(v, 0xff);
  auto fresh = alloc.Allocate(size_t{3} << 20);
  ASSERT_TRUE(fresh.ok());
  for (uint8_t v : bytes_of(*fresh, size_t{3} << 20)) ASSERT_EQ(v, 0xff);
  float f = 0;
  ASSERT_EQ(cudaMemcpy(&f, fresh->data(), sizeof f, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_TRUE(std::isnan(f));
  alloc.set_poison(false);
  ASSERT_EQ(cudaMemset(reused->data(), 0, 4096), cudaSuccess);
  reused->Reset();
  auto again = alloc.Allocate(4096);
  ASSERT_TRUE(again.ok());
  for (uint8_t v : bytes_of(*again, 4096)) ASSERT_EQ(v, 0);
}

// A reservation keeps the blocks handed out while it recorded: freed, they go back to it (and to
// its next recording), not to others; dissolved, they are the cache's again.
TEST(CudaAllocator, ReservationKeepsItsBlocksUntilDestroyed) {
  SKIP_WITHOUT_DEVICE();
  CachingAllocator alloc;
  auto reservation = alloc.BeginReserving();
  ASSERT_TRUE(reservation.ok()) << reservation.status().message();
  EXPECT_FALSE(alloc.BeginReserving().ok());  // one records at a time
  void* kept = nullptr;
  {
    auto a = alloc.Allocate(4096);
    ASSERT_TRUE(a.ok());
    kept = a->data();
    auto b = alloc.Allocate(4096);  // a second block of the class while `a` is live
    ASSERT_TRUE(b.ok());
  }
  alloc.EndReserving();
  EXPECT_EQ((*reservation)->bytes(), 2 * CachingAllocator::RoundSize(4096));
  auto other = alloc.Allocate(4096);  // not recording: the reserved free blocks are not handed out
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->data(), kept);
  other->Reset();  // not recorded: back to the cache
  reservation->reset();  // dissolved: its two free blocks join the cache
  EXPECT_EQ(alloc.stats().bytes_cached, 3 * CachingAllocator::RoundSize(4096));
  EXPECT_EQ(alloc.stats().bytes_in_use, 0u);
  ASSERT_OK(alloc.EmptyCache());
}

TEST(CudaAllocator, Negative_OutOfMemoryIsAStatus) {
  SKIP_WITHOUT_DEVICE();
  CachingAllocator alloc;
  auto r = alloc.Allocate(size_t{1} << 50);  // 1 PiB
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kOutOfRange);
  EXPECT_NE(r.status().message().find("cudaMalloc"), std::string::npos) << r.status().message();
  auto ok = alloc.Allocate(4096);  // the failure left no sticky error behind
  EXPECT_TRUE(ok.ok()) << ok.status().message();
}

// Runs everywhere: on a machine without a device, DeviceCount is 0 and nothing fails.
TEST(CudaDevice, CountIsZeroOrInfoReadable) {
  const int n = cuda::DeviceCount();
  EXPECT_GE(n, 0);
  if (n == 0) GTEST_SKIP() << "no CUDA device";
  auto info = cuda::CurrentDeviceInfo();
  ASSERT_TRUE(info.ok()) << info.status().message();
  EXPECT_GT(info->sm_count, 0);
  std::printf("device: %s, sm_%d%d, %d SMs, %.1f GiB\n", info->name.c_str(), info->major, info->minor,
              info->sm_count, info->global_memory_bytes / 1073741824.0);
}

}  // namespace
}  // namespace qc
