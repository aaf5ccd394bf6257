// GPTQ's solver (see gptq_solver.h): damping, act-order permutation, the Cholesky factor of H^-1
// and the lazy-batch column loop of Algorithm 1.
#include "passes/gptq_solver.h"

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

namespace qc {
namespace {

using MatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Output columns one thread solves together. GPTQ never mixes output columns (a column's
// rounding error moves only along its own input rows), so column chunks are independent; a
// fixed width keeps every float operation, and so every bit of the result, independent of the
// thread count. 64 floats per row keep the rank-1 and block updates vectorised.
constexpr int64_t kChunkColumns = 64;

std::string FormatDamp(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// Solves output columns [j0, j0 + nc) of `w` (the row-major [k, n] weight with dead rows zeroed),
// writing their codes, scales, zero points and dequantized values into `qw` and `w_hat`.
void SolveChunk(const GptqPlan& plan, const MatrixF& hinv, const std::vector<float>& w, const GptqSpec& spec, int64_t j0,
                int64_t nc, QuantizedWeight* qw, std::vector<float>* w_hat) {
  const int64_t k = plan.k, n = plan.n, nb = qw->n_blocks();
  const int bits = spec.quant.bits;
  MatrixF W(k, nc);  // the chunk in processing order, updated in place
  for (int64_t a = 0; a < k; ++a)
    for (int64_t j = 0; j < nc; ++j) W(a, j) = w[plan.perm[a] * n + j0 + j];
  const int64_t groups = static_cast<int64_t>(plan.members.size());
  std::vector<GroupParams> params(groups * nc);
  std::vector<char> ready(groups, 0);
  const int64_t block = std::max<int64_t>(1, spec.block_size);
  MatrixF err(std::min(block, k), nc);  // E of Algorithm 1: scaled errors of the current block
  MatrixF group_rows(plan.rows_per_group, nc);

  for (int64_t i1 = 0; i1 < k; i1 += block) {
    const int64_t i2 = std::min(i1 + block, k), count = i2 - i1;
    for (int64_t i = 0; i < count; ++i) {
      const int64_t a = i1 + i;
      const int64_t g = plan.group_of[a];
      if (!ready[g]) {
        // The group's parameters come from its rows as updated by every row quantized so far.
        // Rows of this block already carry those updates; rows after it still lack this block's
        // pending E · U[i1:a, p], added here.
        const std::vector<int64_t>& rows = plan.members[g];
        for (size_t r = 0; r < rows.size(); ++r) {
          const int64_t p = rows[r];
          if (p < i2 || i == 0) group_rows.row(r) = W.row(p);
          else group_rows.row(r) = W.row(p) - hinv.col(p).segment(i1, i).transpose() * err.topRows(i);
        }
        for (int64_t j = 0; j < nc; ++j) {
          const GroupParams p =
              ComputeGroupParams(group_rows.data() + j, static_cast<int64_t>(rows.size()), nc, spec.quant);
          params[g * nc + j] = p;
          for (int64_t b = plan.blocks[g].first; b <= plan.blocks[g].second; ++b) {
            qw->scales[(j0 + j) * nb + b] = p.scale;
            if (!spec.quant.sym) qw->zero_points[(j0 + j) * nb + b] = static_cast<uint8_t>(p.zero_point);
          }
        }
        ready[g] = 1;
      }
      // Algorithm 1, lines 6-7: q = quant(w), E = (w - q) / [H^-1]_jj (U's diagonal).
      const float d = hinv(a, a);
      const int64_t row = plan.perm[a];
      for (int64_t j = 0; j < nc; ++j) {
        const float value = W(a, j);
        const int32_t code = QuantizeValue(value, params[g * nc + j], bits);
        const float dq = DequantizeValue(code, params[g * nc + j]);
        qw->q[(j0 + j) * k + row] = static_cast<uint8_t>(code);
        (*w_hat)[row * n + j0 + j] = dq;
        err(i, j) = (value - dq) / d;
      }
      // Line 8: the rest of the block absorbs the error, W[j+1:i+B] -= U[j, j+1:i+B]ᵀ E_j.
      const int64_t rest = i2 - a - 1;
      if (rest > 0) W.middleRows(a + 1, rest).noalias() -= hinv.row(a).segment(a + 1, rest).transpose() * err.row(i);
    }
    // Line 10: the rows after the block, in one GEMM, W[i+B:] -= U[i:i+B, i+B:]ᵀ E.
    if (i2 < k)
      W.bottomRows(k - i2).noalias() -= hinv.block(i1, i2, count, k - i2).transpose() * err.topRows(count);
  }
}

}  // namespace

bool UpperCholeskyOfInverse(std::vector<double> h, int64_t k, std::vector<double>* u) {
  QC_CHECK(static_cast<int64_t>(h.size()) == k * k && u != nullptr);
  // Algorithm 1, line 3. With J the reversal permutation and J H J = L Lᵀ,
  // H^-1 = (J L^-1 J)ᵀ (J L^-1 J), and J L^-1 J is upper triangular with a positive diagonal: the
  // upper Cholesky factor of H^-1, from one factorisation and one triangular inverse (the
  // reference factors twice and inverts once).
  // Everything happens in `h` and `u` (two K x K buffers: for K = 5632 each is 254 MB): H is
  // symmetric, so its row-major buffer read column-major is H itself; it is reversed and factored
  // in place, and L^-1 is formed, reversed and transposed to row-major U in place.
  Eigen::Map<Eigen::MatrixXd> m(h.data(), k, k);
  m.reverseInPlace();
  const Eigen::LLT<Eigen::Ref<Eigen::MatrixXd>> llt(m);
  if (llt.info() != Eigen::Success) return false;
  u->assign(k * k, 0.0);
  Eigen::Map<Eigen::MatrixXd> l_inv(u->data(), k, k);
  l_inv.setIdentity();
  llt.matrixL().solveInPlace(l_inv);
  l_inv.reverseInPlace();
  l_inv.transposeInPlace();  // column-major Uᵀ is row-major U
  const Eigen::Map<const MatrixD> um(u->data(), k, k);
  for (int64_t i = 0; i < k; ++i)
    if (!(um(i, i) > 0) || !std::isfinite(um(i, i))) return false;
  return um.allFinite();
}

StatusOr<GptqPlan> PrepareGptq(const std::vector<float>& w, int64_t k, int64_t n, const std::vector<double>& hessian,
                               const GptqSpec& spec, const CholeskyOfInverse& factor) {
  QC_RETURN_IF_ERROR(ValidateWeightQuantSpec(spec.quant));
  if (k <= 0 || n <= 0 || static_cast<int64_t>(w.size()) != k * n)
    return InvalidArgument("GPTQ: weight has " + std::to_string(w.size()) + " values, expected K*N = " +
                           std::to_string(k) + "*" + std::to_string(n));
  if (static_cast<int64_t>(hessian.size()) != k * k)
    return InvalidArgument("GPTQ: Hessian has " + std::to_string(hessian.size()) + " values, expected K*K = " +
                           std::to_string(k) + "*" + std::to_string(k));
  if (spec.block_size < 1)
    return InvalidArgument("GPTQ block size must be at least 1, got " + std::to_string(spec.block_size));
  if (!(spec.percdamp >= 0) || !std::isfinite(spec.percdamp))
    return InvalidArgument("GPTQ dampening must be a finite value >= 0, got " + FormatDamp(spec.percdamp));
  for (double v : hessian)
    if (!std::isfinite(v))
      return InvalidArgument("the Hessian of the layer input holds non-finite values (NaN or inf): the calibration "
                             "activations overflowed, so GPTQ cannot weigh this layer's errors");

  GptqPlan plan;
  GptqResult& result = plan.result;
  plan.w0 = w;
  std::vector<float>& w0 = plan.w0;
  // Dead inputs (never active on calibration data): diag(H) = 0 makes H singular; the reference
  // sets H_ii = 1 and the weight row to 0, which changes no output on data like the calibration's.
  std::vector<double> diag(k);
  for (int64_t i = 0; i < k; ++i) {
    diag[i] = hessian[i * k + i];
    if (diag[i] != 0) continue;
    diag[i] = 1;
    std::fill(w0.begin() + i * n, w0.begin() + (i + 1) * n, 0.0f);
    ++result.dead_inputs;
  }
  if (result.dead_inputs > 0)
    result.notes.push_back(std::to_string(result.dead_inputs) +
                           " input channels never active on calibration data (diag(H) = 0): their weights set to 0");

  plan.k = k;
  plan.n = n;
  plan.perm.resize(k);
  std::iota(plan.perm.begin(), plan.perm.end(), 0);
  if (spec.act_order)  // decreasing diag(H); stable, so ties keep input order
    std::stable_sort(plan.perm.begin(), plan.perm.end(), [&](int64_t a, int64_t b) { return diag[a] > diag[b]; });

  // H in processing order (P H Pᵀ), damped: H + percdamp * mean(diag H) I, raised tenfold while
  // the factorisation fails (the reference stops with an error there).
  // Built afresh from `hessian` for every attempt, so at most three K x K matrices exist at once
  // (the caller's H, the one being factored, U).
  double mean_diag = 0;
  for (int64_t a = 0; a < k; ++a) mean_diag += diag[plan.perm[a]];
  mean_diag /= static_cast<double>(k);
  auto damped_h = [&](double damp) {
    std::vector<double> d(k * k);
    for (int64_t a = 0; a < k; ++a) {
      for (int64_t b = 0; b < k; ++b) d[a * k + b] = hessian[plan.perm[a] * k + plan.perm[b]];
      d[a * k + a] = diag[plan.perm[a]] + damp * mean_diag;
    }
    return d;
  };
  double percdamp = spec.percdamp;
  for (;;) {
    QC_ASSIGN_OR_RETURN(const bool factored, factor(damped_h(percdamp)));
    if (factored) break;
    const double next = percdamp > 0 ? percdamp * 10 : 0.01;
    if (next > kMaxPercdamp * (1 + 1e-9))
      return InvalidArgument("the Hessian of the layer input is not positive definite even with dampening " +
                             FormatDamp(percdamp) + " x mean(diag H) (Cholesky failed); the calibration "
                             "statistics are broken (try other --calib data)");
    percdamp = next;
  }
  if (percdamp != spec.percdamp)
    result.notes.push_back("damping raised from " + FormatDamp(spec.percdamp) + " to " + FormatDamp(percdamp) +
                           " after Cholesky failure");
  result.percdamp = percdamp;

  // Groups. Without act-order, and with static groups, group g is input rows [g*G, (g+1)*G);
  // with reordered groups it is positions [g*G, (g+1)*G) of the act-order.
  QuantizedWeight& qw = result.weight;
  qw.bits = spec.quant.bits;
  qw.k = k;
  qw.n = n;
  qw.block_size = BlockSizeFor(spec.quant.group_size, k);
  qw.group_size = spec.quant.group_size;
  const int64_t bs = qw.block_size;
  plan.rows_per_group = spec.quant.group_size == -1 ? k : spec.quant.group_size;
  const int64_t groups = (k + plan.rows_per_group - 1) / plan.rows_per_group;
  const bool reordered = spec.act_order && !spec.static_groups && groups > 1;
  plan.group_of.resize(k);
  plan.members.assign(groups, {});
  for (int64_t a = 0; a < k; ++a) {
    plan.group_of[a] = (reordered ? a : plan.perm[a]) / plan.rows_per_group;
    plan.members[plan.group_of[a]].push_back(a);
  }
  for (int64_t g = 0; g < groups; ++g) {
    // A group wider than the largest block spans several blocks that repeat its parameters.
    const int64_t first = g * plan.rows_per_group, last = std::min(k, first + plan.rows_per_group) - 1;
    plan.blocks.emplace_back(first / bs, last / bs);
  }
  if (reordered) {
    // Row perm[a] reads block a / bs, which holds the parameters of its group a / G.
    qw.g_idx.resize(k);
    bool identity = true;
    for (int64_t a = 0; a < k; ++a) {
      qw.g_idx[plan.perm[a]] = static_cast<int32_t>(a / bs);
      identity &= a / bs == plan.perm[a] / bs;
    }
    if (identity) qw.g_idx.clear();  // every row kept its block: the plain encoding says the same
  }
  result.reordered_groups = !qw.g_idx.empty();
  return plan;
}

StatusOr<GptqResult> GptqQuantize(const std::vector<float>& w, int64_t k, int64_t n, const std::vector<double>& hessian,
                                  const GptqSpec& spec) {
  std::vector<double> u;
  CholeskyOfInverse factor = [&](std::vector<double> h) -> StatusOr<bool> {
    return UpperCholeskyOfInverse(std::move(h), k, &u);
  };
  QC_ASSIGN_OR_RETURN(GptqPlan plan, PrepareGptq(w, k, n, hessian, spec, factor));
  // The updates run in float32, as in the reference; U itself is computed in float64.
  const MatrixF hinv = Eigen::Map<const MatrixD>(u.data(), k, k).cast<float>();
  std::vector<double>().swap(u);

  GptqResult result = std::move(plan.result);
  QuantizedWeight& qw = result.weight;
  const int64_t nb = qw.n_blocks();
  qw.q.assign(k * n, 0);
  qw.scales.assign(n * nb, 0.0f);
  if (!spec.quant.sym) qw.zero_points.assign(n * nb, 0);
  result.w_hat.assign(k * n, 0.0f);
  const int64_t chunks = (n + kChunkColumns - 1) / kChunkColumns;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t j0 = c * kChunkColumns;
    SolveChunk(plan, hinv, plan.w0, spec, j0, std::min(kChunkColumns, n - j0), &qw, &result.w_hat);
  }
  return result;
}

}  // namespace qc
