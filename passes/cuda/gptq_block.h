// The column loop of the CUDA GPTQ solver (gptq_solver_cuda.cu), written once for the device and
// for the host: the kernels call these functions per thread, and passes_test runs them on the CPU
// (with a reference column-major GEMM standing in for cuBLAS) against GptqQuantize, so the
// indexing is checked on machines without a GPU. Plain C++ apart from QC_HD.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "passes/gptq_solver.h"
#include "runtime/cuda/host_device.h"

namespace qc::gptq_block {

// The group quantization of passes/weight_quant.cpp, operation for operation (ParamsFromRange,
// QuantizeValue, ComputeGroupParams with its optional range search): the host code is the spec.
struct QuantSpec {
  int bits = 4;
  bool sym = true;
  bool scale_search = false;
  int search_steps = 100;
  float search_span = 0.2f;
};
struct Params {
  float scale;
  int zero_point;
};

QC_HD inline Params ParamsFromRange(float lo, float hi, int bits, bool sym) {
  Params p;
  if (sym) {
    const float extreme = fabsf(hi) > fabsf(lo) ? hi : lo;
    p.scale = extreme / static_cast<float>(-(1 << (bits - 1)));
    p.zero_point = 1 << (bits - 1);
    return p;
  }
  lo = 0.0f < lo ? 0.0f : lo;  // std::min(lo, 0.0f)
  hi = hi < 0.0f ? 0.0f : hi;  // std::max(hi, 0.0f)
  const int max_code = (1 << bits) - 1;
  p.scale = (hi - lo) / static_cast<float>(max_code);
  const float zp = p.scale != 0.0f ? -lo / p.scale : 0.0f;
  p.zero_point = zp <= 0.0f ? 0 : zp >= static_cast<float>(max_code) ? max_code : static_cast<int>(roundf(zp));
  return p;
}

QC_HD inline int QuantizeValue(float w, Params p, int bits) {
  if (p.scale == 0.0f) return p.zero_point;
  const float r = roundf(w / p.scale) + static_cast<float>(p.zero_point);  // half away from zero, as std::round
  if (!(r > 0.0f)) return 0;
  const int max_code = (1 << bits) - 1;
  return r >= static_cast<float>(max_code) ? max_code : static_cast<int>(r);
}

QC_HD inline float DequantizeValue(int q, Params p) { return static_cast<float>(q - p.zero_point) * p.scale; }

QC_HD inline double GroupSquaredError(const float* w, int64_t count, int64_t stride, Params p, int bits) {
  double sse = 0;
  for (int64_t i = 0; i < count; ++i) {
    const float v = w[i * stride];
    const double e = static_cast<double>(v) - DequantizeValue(QuantizeValue(v, p, bits), p);
    sse += e * e;
  }
  return sse;
}

QC_HD inline Params ComputeGroupParams(const float* w, int64_t count, int64_t stride, QuantSpec spec) {
  float lo = INFINITY, hi = -INFINITY;
  for (int64_t i = 0; i < count; ++i) {
    const float v = w[i * stride];
    lo = v < lo ? v : lo;  // std::min(lo, v)
    hi = hi < v ? v : hi;  // std::max(hi, v)
  }
  if (count == 0) lo = hi = 0.0f;
  Params best = ParamsFromRange(lo, hi, spec.bits, spec.sym);
  if (!spec.scale_search) return best;
  double best_err = GroupSquaredError(w, count, stride, best, spec.bits);
  for (int i = 1; i < spec.search_steps; ++i) {
    const float shrink = 1.0f - spec.search_span * static_cast<float>(i) / static_cast<float>(spec.search_steps);
    const Params p = ParamsFromRange(lo * shrink, hi * shrink, spec.bits, spec.sym);
    const double err = GroupSquaredError(w, count, stride, p, spec.bits);
    if (err < best_err) {  // strict: ties keep the wider range
      best_err = err;
      best = p;
    }
  }
  return best;
}

/// What the block step reads and writes. Matrices are row-major with n columns (one per output
/// column) unless said otherwise; a "position" is an input row's place in the processing order.
struct BlockArgs {
  int64_t k, n;
  float* w;                     // [k, n] by position, updated in place (SolveChunk's W)
  const float* u;               // [k, k] U by position, upper triangular
  float* err;                   // [block, n]: E of Algorithm 1
  float* group_rows;            // [rows_per_group, n]: a group's rows while its parameters are computed
  const int64_t* perm;          // position -> input row
  const int64_t* group_of;      // position -> group
  const int* opens;             // position -> 1 where its group's first position is
  const int64_t* member_begin;  // group -> offset into member_pos ([groups + 1])
  const int64_t* member_pos;    // the groups' positions, ascending within each group
  float* scale;                 // [groups, n]
  int* zero_point;              // [groups, n]
  uint8_t* codes;               // [k, n] by input row
  float* w_hat;                 // [k, n] by input row
  QuantSpec spec;
};

/// Positions [i1, i2) of output column j: SolveChunk's loop body for one column.
QC_HD inline void SolveBlockColumn(const BlockArgs& a, int64_t i1, int64_t i2, int64_t j) {
  const int64_t k = a.k, n = a.n;
  for (int64_t i = 0; i < i2 - i1; ++i) {
    const int64_t pos = i1 + i;
    const int64_t g = a.group_of[pos];
    if (a.opens[pos]) {
      // The group's parameters from its rows as updated by every row quantized so far. Rows of
      // this block already carry those updates; rows after it still lack this block's pending
      // E · U[i1:pos, p], added here.
      const int64_t m0 = a.member_begin[g], m1 = a.member_begin[g + 1];
      for (int64_t r = 0; r < m1 - m0; ++r) {
        const int64_t p = a.member_pos[m0 + r];
        float v = a.w[p * n + j];
        if (!(p < i2 || i == 0)) {
          float pending = 0.0f;
          for (int64_t t = 0; t < i; ++t) pending += a.u[(i1 + t) * k + p] * a.err[t * n + j];
          v -= pending;
        }
        a.group_rows[r * n + j] = v;
      }
      const Params p = ComputeGroupParams(a.group_rows + j, m1 - m0, n, a.spec);
      a.scale[g * n + j] = p.scale;
      a.zero_point[g * n + j] = p.zero_point;
    }
    const Params p{a.scale[g * n + j], a.zero_point[g * n + j]};
    // Algorithm 1, lines 6-7: q = quant(w), E = (w - q) / [H^-1]_jj (U's diagonal).
    const float d = a.u[pos * k + pos];
    const int64_t row = a.perm[pos];
    const float value = a.w[pos * n + j];
    const int code = QuantizeValue(value, p, a.spec.bits);
    const float dq = DequantizeValue(code, p);
    a.codes[row * n + j] = static_cast<uint8_t>(code);
    a.w_hat[row * n + j] = dq;
    const float e = (value - dq) / d;
    a.err[i * n + j] = e;
    // Line 8: the rest of the block absorbs the error, W[pos+1:i2] -= U[pos, pos+1:i2]ᵀ E_pos.
    for (int64_t r = pos + 1; r < i2; ++r) a.w[r * n + j] -= a.u[pos * k + r] * e;
  }
}

/// One column-major GEMM, C = alpha op(A) op(B) + beta C, as cuBLAS takes it.
template <typename T>
struct GemmCall {
  bool trans_a = false, trans_b = false;
  int m = 0, n = 0, k = 0;
  T alpha = 0;
  const T* a = nullptr;
  int lda = 0;
  const T* b = nullptr;
  int ldb = 0;
  T beta = 0;
  T* c = nullptr;
  int ldc = 0;
};

/// Line 10: the rows after the block, W[i2:] -= U[i1:i2, i2:]ᵀ E. Column-major, W[i2:] is the
/// n x (k - i2) matrix Wᵀ, E the n x count matrix Eᵀ, and U[i1:i2, i2:] (ld k) is read transposed.
inline GemmCall<float> LazyBatchUpdate(int64_t k, int64_t n, int64_t i1, int64_t i2, const float* err, const float* u,
                                       float* w) {
  GemmCall<float> g;
  g.trans_a = false;
  g.trans_b = true;
  g.m = static_cast<int>(n);
  g.n = static_cast<int>(k - i2);
  g.k = static_cast<int>(i2 - i1);
  g.alpha = -1.0f;
  g.a = err;
  g.lda = static_cast<int>(n);
  g.b = u + i1 * k + i2;
  g.ldb = static_cast<int>(k);
  g.beta = 1.0f;
  g.c = w + i2 * n;
  g.ldc = static_cast<int>(n);
  return g;
}

/// The entry of L^-1 (column-major, from DTRSM, of the factor of J H J) that is U's row-major
/// [r, c]: U = J L^-1 J.
QC_HD inline int64_t UpperFromInverseIndex(int64_t k, int64_t r, int64_t c) { return (k - 1 - r) + (k - 1 - c) * k; }

/// The tables the block step reads, from the plan: W in processing order, where each group opens,
/// and the groups' positions.
struct Tables {
  std::vector<float> w_pos;
  std::vector<int> opens;
  std::vector<int64_t> member_begin, member_pos;
};
inline Tables MakeTables(const GptqPlan& plan) {
  Tables t;
  const int64_t k = plan.k, n = plan.n, groups = static_cast<int64_t>(plan.members.size());
  t.w_pos.resize(static_cast<size_t>(k * n));
  for (int64_t a = 0; a < k; ++a)
    for (int64_t j = 0; j < n; ++j) t.w_pos[a * n + j] = plan.w0[plan.perm[a] * n + j];
  t.opens.assign(k, 0);
  t.member_begin.assign(groups + 1, 0);
  t.member_pos.reserve(k);
  for (int64_t g = 0; g < groups; ++g) {
    if (!plan.members[g].empty()) t.opens[plan.members[g].front()] = 1;  // ascending: the first is where it opens
    t.member_pos.insert(t.member_pos.end(), plan.members[g].begin(), plan.members[g].end());
    t.member_begin[g + 1] = static_cast<int64_t>(t.member_pos.size());
  }
  return t;
}

/// The block step's outputs ([k, n] codes by input row, [groups, n] parameters) in
/// QuantizedWeight's layout, into `result` (whose weight layout PrepareGptq set).
inline void StoreResult(const GptqPlan& plan, const std::vector<uint8_t>& codes, const std::vector<float>& scale,
                        const std::vector<int>& zero_point, bool sym, GptqResult* result) {
  const int64_t k = plan.k, n = plan.n, groups = static_cast<int64_t>(plan.members.size());
  QuantizedWeight& qw = result->weight;
  const int64_t nb = qw.n_blocks();
  qw.q.resize(static_cast<size_t>(k * n));
  for (int64_t row = 0; row < k; ++row)
    for (int64_t j = 0; j < n; ++j) qw.q[j * k + row] = codes[row * n + j];
  qw.scales.assign(n * nb, 0.0f);
  if (!sym) qw.zero_points.assign(n * nb, 0);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t b = plan.blocks[g].first; b <= plan.blocks[g].second; ++b) {
        qw.scales[j * nb + b] = scale[g * n + j];
        if (!sym) qw.zero_points[j * nb + b] = static_cast<uint8_t>(zero_point[g * n + j]);
      }
}

}  // namespace qc::gptq_block
