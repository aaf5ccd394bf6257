// The CUDA GPTQ solver's column loop (passes/cuda/gptq_block.h) run on the host: its block step
// per column, its lazy-batch GEMM through a reference column-major GEMM with the arguments cuBLAS
// gets, and its factorisation's index mapping (J H J, L^-1 column-major, U = J L^-1 J) give what
// GptqQuantize gives. Checks the device solver's indexing without a GPU.
#include "passes/cuda/gptq_block.h"

#include <gtest/gtest.h>

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "calibrate/calibrator.h"
#include "formats/model_builder.h"
#include "passes/gptq_solver.h"
#include "tests/gptq_inputs.h"

namespace qc {
namespace {

using gptq_block::GemmCall;

// cuBLAS's column-major GEMM: C = alpha op(A) op(B) + beta C, op(A) m x k, op(B) k x n.
template <typename T>
void GemmReference(const GemmCall<T>& g) {
  for (int j = 0; j < g.n; ++j)
    for (int i = 0; i < g.m; ++i) {
      T acc = 0;
      for (int p = 0; p < g.k; ++p) {
        const T a = g.trans_a ? g.a[p + static_cast<int64_t>(i) * g.lda] : g.a[i + static_cast<int64_t>(p) * g.lda];
        const T b = g.trans_b ? g.b[j + static_cast<int64_t>(p) * g.ldb] : g.b[p + static_cast<int64_t>(j) * g.ldb];
        acc += a * b;
      }
      T& c = g.c[i + static_cast<int64_t>(j) * g.ldc];
      c = g.alpha * acc + g.beta * c;
    }
}

// GptqCudaSolver::Quantize with every device step run on the host.
StatusOr<GptqResult> EmulatedDeviceSolve(const std::vector<float>& w, int64_t k, int64_t n,
                                         const std::vector<double>& hessian, const GptqSpec& spec) {
  std::vector<float> u;
  CholeskyOfInverse factor = [&](std::vector<double> h) -> StatusOr<bool> {
    // Factor(): reverse the row-major array (J H J), DPOTRF lower and DTRSM against I (here Eigen,
    // column-major like cuSOLVER), then UpperFromInverseKernel's mapping.
    std::reverse(h.begin(), h.end());
    const Eigen::Map<const Eigen::MatrixXd> a(h.data(), k, k);
    const Eigen::LLT<Eigen::MatrixXd> llt(a);
    if (llt.info() != Eigen::Success) return false;
    const Eigen::MatrixXd x = llt.matrixL().solve(Eigen::MatrixXd::Identity(k, k));
    u.assign(k * k, 0.0f);
    for (int64_t r = 0; r < k; ++r)
      for (int64_t c = 0; c < k; ++c) {
        const double v = x.data()[gptq_block::UpperFromInverseIndex(k, r, c)];
        if (!std::isfinite(v) || (r == c && !(v > 0))) return false;
        u[r * k + c] = static_cast<float>(v);
      }
    return true;
  };
  QC_ASSIGN_OR_RETURN(GptqPlan plan, PrepareGptq(w, k, n, hessian, spec, factor));
  gptq_block::Tables t = gptq_block::MakeTables(plan);
  const int64_t groups = static_cast<int64_t>(plan.members.size());
  const int64_t block = std::min<int64_t>(std::max<int64_t>(1, spec.block_size), k);
  std::vector<float> err(block * n), group_rows(plan.rows_per_group * n), scale(groups * n), w_hat(k * n);
  std::vector<int> zero_point(groups * n);
  std::vector<uint8_t> codes(k * n);
  gptq_block::BlockArgs args{k,
                             n,
                             t.w_pos.data(),
                             u.data(),
                             err.data(),
                             group_rows.data(),
                             plan.perm.data(),
                             plan.group_of.data(),
                             t.opens.data(),
                             t.member_begin.data(),
                             t.member_pos.data(),
                             scale.data(),
                             zero_point.data(),
                             codes.data(),
                             w_hat.data(),
                             gptq_block::QuantSpec{spec.quant.bits, spec.quant.sym, spec.quant.scale_search,
                                                   spec.quant.search_steps, spec.quant.search_span}};
  for (int64_t i1 = 0; i1 < k; i1 += block) {
    const int64_t i2 = std::min(i1 + block, k);
    for (int64_t j = 0; j < n; ++j) gptq_block::SolveBlockColumn(args, i1, i2, j);
    if (i2 < k) GemmReference(gptq_block::LazyBatchUpdate(k, n, i1, i2, err.data(), u.data(), t.w_pos.data()));
  }
  GptqResult result = std::move(plan.result);
  result.w_hat = std::move(w_hat);
  gptq_block::StoreResult(plan, codes, scale, zero_point, spec.quant.sym, &result);
  return result;
}

TEST(GptqBlock, ReferenceGemmIsColumnMajor) {
  // [1 2; 3 4] column-major is {1, 3, 2, 4}; Aᵀ B with B = I gives Aᵀ.
  const float a[] = {1, 3, 2, 4}, b[] = {1, 0, 0, 1};
  float c[] = {0, 0, 0, 0};
  GemmCall<float> g{true, false, 2, 2, 2, 1.0f, a, 2, b, 2, 0.0f, c, 2};
  GemmReference(g);
  EXPECT_EQ(std::vector<float>(c, c + 4), (std::vector<float>{1, 2, 3, 4}));
}

TEST(GptqBlock, HostRunOfTheDeviceLoopMatchesGptqQuantize) {
  GptqSpec search = SolverSpec(4, 32, true);
  search.quant.scale_search = true;
  search.quant.search_steps = 20;
  GptqSpec small_block = SolverSpec(3, 32, false);
  small_block.block_size = 24;  // blocks that cut groups, and rows after the block in an opening group
  GptqSpec act_small = SolverSpec(4, 16, false, true, true);
  act_small.block_size = 20;
  struct Case {
    const char* name;
    int64_t k, n;
    GptqSpec spec;
  } cases[] = {
      {"w4 g32 sym", 128, 40, SolverSpec(4, 32, true)},
      {"w4 g32 asym", 128, 40, SolverSpec(4, 32, false)},
      {"w4 per-channel", 96, 24, SolverSpec(4, -1, true)},
      {"w3 g32 asym block 24", 96, 24, small_block},
      {"w4 g32 act-order static", 128, 32, SolverSpec(4, 32, false, true, true)},
      {"w4 g16 act-order static block 20", 96, 24, act_small},
      {"w4 g32 act-order g_idx", 128, 32, SolverSpec(4, 32, false, true, false)},
      {"w4 g32 sym scale search", 64, 16, search},
  };
  uint32_t seed = 900;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::vector<double> h = HessianOf(CorrelatedInputs(4 * c.k, c.k, seed += 10), 4 * c.k, c.k);
    const std::vector<float> w = RandomNormal(c.k * c.n, seed + 1);
    StatusOr<GptqResult> cpu = GptqQuantize(w, c.k, c.n, h, c.spec);
    StatusOr<GptqResult> dev = EmulatedDeviceSolve(w, c.k, c.n, h, c.spec);
    ASSERT_TRUE(cpu.ok() && dev.ok()) << cpu.status().ToString() << " / " << dev.status().ToString();
    EXPECT_EQ(dev->weight.g_idx, cpu->weight.g_idx);
    EXPECT_EQ(dev->percdamp, cpu->percdamp);
    EXPECT_TRUE(dev->weight.Validate().ok());
    EXPECT_EQ(dev->weight.Dequantize(), dev->w_hat) << "w_hat is the dequantized weight, bit for bit";
    int64_t equal = 0;
    for (size_t i = 0; i < cpu->weight.q.size(); ++i) equal += cpu->weight.q[i] == dev->weight.q[i];
    const double frac = static_cast<double>(equal) / static_cast<double>(cpu->weight.q.size());
    EXPECT_GE(frac, 0.99);
    const double e_cpu = OutputErrorFromHessian(h, c.k, w, cpu->w_hat, c.n).rel_error;
    const double e_dev = OutputErrorFromHessian(h, c.k, w, dev->w_hat, c.n).rel_error;
    EXPECT_NEAR(e_dev, e_cpu, 0.01 * e_cpu);
  }
}

TEST(GptqBlock, IdentityHessianGivesTheCpuResultExactly) {
  constexpr int64_t k = 64, n = 16;
  std::vector<double> h(k * k, 0.0);
  for (int64_t i = 0; i < k; ++i) h[i * k + i] = 1.0;
  const std::vector<float> w = RandomNormal(k * n, 5);
  for (bool sym : {true, false}) {
    StatusOr<GptqResult> cpu = GptqQuantize(w, k, n, h, SolverSpec(4, 16, sym));
    StatusOr<GptqResult> dev = EmulatedDeviceSolve(w, k, n, h, SolverSpec(4, 16, sym));
    ASSERT_TRUE(cpu.ok() && dev.ok());
    EXPECT_EQ(dev->weight.q, cpu->weight.q);
    EXPECT_EQ(dev->weight.scales, cpu->weight.scales);
    EXPECT_EQ(dev->weight.zero_points, cpu->weight.zero_points);
    EXPECT_EQ(dev->w_hat, cpu->w_hat);
  }
}

}  // namespace
}  // namespace qc
