// GptqCudaSolver (passes/gptq_solver_cuda.h): GPTQ's factorisation and column loop on the GPU.
#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "passes/gptq_solver_cuda.h"
#include "runtime/cuda/context.h"
#include "runtime/cuda/cuda_check.h"
#include "runtime/cuda/cusolver_loader.h"

namespace qc {
namespace {

constexpr int kThreads = 128;  // one thread per output column; 128 keeps a 256-column layer on 2 SMs
int Blocks(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

#define QC_CUSOLVER_RETURN_IF_ERROR(expr)                                                             \
  do {                                                                                                \
    const cusolverStatus_t qc_cusolver_status_ = (expr);                                              \
    if (qc_cusolver_status_ != CUSOLVER_STATUS_SUCCESS)                                               \
      return Internal("cuSOLVER error " + std::to_string(static_cast<int>(qc_cusolver_status_)) + " in " #expr); \
  } while (0)

// The group quantization of passes/weight_quant.cpp, operation for operation (ParamsFromRange,
// QuantizeValue, ComputeGroupParams with its optional range search): the spec is the host code.
struct DeviceQuantSpec {
  int bits = 4;
  bool sym = true;
  bool scale_search = false;
  int search_steps = 100;
  float search_span = 0.2f;
};
struct DeviceGroupParams {
  float scale;
  int zero_point;
};

__device__ DeviceGroupParams ParamsFromRangeDevice(float lo, float hi, int bits, bool sym) {
  DeviceGroupParams p;
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

__device__ int QuantizeValueDevice(float w, DeviceGroupParams p, int bits) {
  if (p.scale == 0.0f) return p.zero_point;
  const float r = roundf(w / p.scale) + static_cast<float>(p.zero_point);  // half away from zero, as std::round
  if (!(r > 0.0f)) return 0;
  const int max_code = (1 << bits) - 1;
  return r >= static_cast<float>(max_code) ? max_code : static_cast<int>(r);
}

__device__ float DequantizeValueDevice(int q, DeviceGroupParams p) { return static_cast<float>(q - p.zero_point) * p.scale; }

__device__ double GroupSquaredError(const float* w, int64_t count, int64_t stride, DeviceGroupParams p, int bits) {
  double sse = 0;
  for (int64_t i = 0; i < count; ++i) {
    const float v = w[i * stride];
    const double e = static_cast<double>(v) - DequantizeValueDevice(QuantizeValueDevice(v, p, bits), p);
    sse += e * e;
  }
  return sse;
}

__device__ DeviceGroupParams ComputeGroupParamsDevice(const float* w, int64_t count, int64_t stride, DeviceQuantSpec spec) {
  float lo = INFINITY, hi = -INFINITY;
  for (int64_t i = 0; i < count; ++i) {
    const float v = w[i * stride];
    lo = v < lo ? v : lo;  // std::min(lo, v)
    hi = hi < v ? v : hi;  // std::max(hi, v)
  }
  if (count == 0) lo = hi = 0.0f;
  DeviceGroupParams best = ParamsFromRangeDevice(lo, hi, spec.bits, spec.sym);
  if (!spec.scale_search) return best;
  double best_err = GroupSquaredError(w, count, stride, best, spec.bits);
  for (int i = 1; i < spec.search_steps; ++i) {
    const float shrink = 1.0f - spec.search_span * static_cast<float>(i) / static_cast<float>(spec.search_steps);
    const DeviceGroupParams p = ParamsFromRangeDevice(lo * shrink, hi * shrink, spec.bits, spec.sym);
    const double err = GroupSquaredError(w, count, stride, p, spec.bits);
    if (err < best_err) {
      best_err = err;
      best = p;
    }
  }
  return best;
}

// What the block kernel reads and writes. Matrices are row-major with n columns (one per output
// column) unless said otherwise; "position" is the processing order (act-order) of an input row.
struct BlockArgs {
  int64_t k, n;
  float* w;              // [k, n] by position, updated in place (SolveChunk's W)
  const float* u;        // [k, k] U by position, upper triangular
  float* err;            // [block, n]: E of Algorithm 1
  float* group_rows;     // [rows_per_group, n]: a group's rows while its parameters are computed
  const int64_t* perm;   // position -> input row
  const int64_t* group_of;    // position -> group
  const int* opens;           // position -> 1 where its group's first position is
  const int64_t* member_begin;  // group -> offset into member_pos ([groups + 1])
  const int64_t* member_pos;    // the groups' positions, ascending within each group
  float* scale;               // [groups, n]
  int* zero_point;            // [groups, n]
  uint8_t* codes;             // [k, n] by input row
  float* w_hat;               // [k, n] by input row
  DeviceQuantSpec spec;
};

// Positions [i1, i2) of every output column: SolveChunk's loop body for one column (thread j).
__global__ void GptqBlockKernel(BlockArgs a, int64_t i1, int64_t i2) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= a.n) return;
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
      const DeviceGroupParams p = ComputeGroupParamsDevice(a.group_rows + j, m1 - m0, n, a.spec);
      a.scale[g * n + j] = p.scale;
      a.zero_point[g * n + j] = p.zero_point;
    }
    const DeviceGroupParams p{a.scale[g * n + j], a.zero_point[g * n + j]};
    // Algorithm 1, lines 6-7: q = quant(w), E = (w - q) / [H^-1]_jj (U's diagonal).
    const float d = a.u[pos * k + pos];
    const int64_t row = a.perm[pos];
    const float value = a.w[pos * n + j];
    const int code = QuantizeValueDevice(value, p, a.spec.bits);
    const float dq = DequantizeValueDevice(code, p);
    a.codes[row * n + j] = static_cast<uint8_t>(code);
    a.w_hat[row * n + j] = dq;
    const float e = (value - dq) / d;
    a.err[i * n + j] = e;
    // Line 8: the rest of the block absorbs the error, W[pos+1:i2] -= U[pos, pos+1:i2]ᵀ E_pos.
    for (int64_t r = pos + 1; r < i2; ++r) a.w[r * n + j] -= a.u[pos * k + r] * e;
  }
}

__global__ void IdentityKernel(int64_t k, double* x) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t r = blockIdx.y;
  if (c < k) x[r * k + c] = r == c ? 1.0 : 0.0;
}

// U = J L^-1 J as row-major float32, from L^-1 column-major in `x` (J reverses the order), and
// *bad = 1 when an entry is not finite or the diagonal not positive (UpperCholeskyOfInverse's check).
__global__ void UpperFromInverseKernel(int64_t k, const double* __restrict__ x, float* __restrict__ u, int* bad) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t r = blockIdx.y;
  if (c >= k) return;
  const double v = x[(k - 1 - r) + (k - 1 - c) * k];
  if (!isfinite(v) || (r == c && !(v > 0))) *bad = 1;  // every writer writes 1: the race is benign
  u[r * k + c] = static_cast<float>(v);
}

// M_w = W and M_d = W~ - W for output columns [c0, c0 + c), row-major [k, c], in float64.
__global__ void EnergyOperandsKernel(int64_t k, int64_t n, int64_t c0, int64_t c, const float* w, const float* w_hat,
                                     double* m_w, double* m_d) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t r = blockIdx.y;
  if (j >= c) return;
  const int64_t i = r * n + c0 + j;
  m_w[r * c + j] = static_cast<double>(w[i]);
  m_d[r * c + j] = static_cast<double>(w_hat[i]) - static_cast<double>(w[i]);
}

// Per column j: sum over rows of M ∘ (H M), in row order.
__global__ void ColumnDotKernel(int64_t k, int64_t c, const double* m, const double* hm, double* out) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= c) return;
  double s = 0;
  for (int64_t r = 0; r < k; ++r) s += m[r * c + j] * hm[r * c + j];
  out[j] = s;
}

template <typename T>
Status CopyToDevice(cudaStream_t stream, const cuda::DeviceBuffer& dst, const T* src, size_t count) {
  QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst.data(), src, count * sizeof(T), cudaMemcpyHostToDevice, stream));
  return Status::Ok();
}
template <typename T>
Status CopyToHost(cudaStream_t stream, T* dst, const cuda::DeviceBuffer& src, size_t count) {
  QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src.data(), count * sizeof(T), cudaMemcpyDeviceToHost, stream));
  return Status::Ok();
}

}  // namespace

struct GptqCudaSolver::Impl {
  std::unique_ptr<cuda::Context> ctx;
  const cuda::CusolverApi* solver = nullptr;  // nullptr: U on the host
  cusolverDnHandle_t dn = nullptr;
  ~Impl() {
    if (dn) (void)solver->destroy(dn);
  }

  StatusOr<cuda::DeviceBuffer> Allocate(size_t bytes) { return ctx->allocator().Allocate(std::max<size_t>(bytes, 1)); }

  // CholeskyOfInverse on the device: J H J = L Lᵀ (DPOTRF, lower), L^-1 (DTRSM against I), then
  // U = J L^-1 J in float32 into *u (see UpperCholeskyOfInverse for the identity).
  StatusOr<bool> Factor(std::vector<double> h, int64_t k, cuda::DeviceBuffer* u) {
    if (k > INT32_MAX / 2) return Unimplemented("GPTQ on the GPU: K = " + std::to_string(k) + " is too large");
    const cudaStream_t stream = ctx->stream();
    const size_t kk = static_cast<size_t>(k) * static_cast<size_t>(k);
    if (!solver) {
      std::vector<double> u_host;
      if (!UpperCholeskyOfInverse(std::move(h), k, &u_host)) return false;
      std::vector<float> u_float(u_host.begin(), u_host.end());
      QC_ASSIGN_OR_RETURN(*u, Allocate(kk * sizeof(float)));
      QC_RETURN_IF_ERROR(CopyToDevice(stream, *u, u_float.data(), kk));
      QC_RETURN_IF_ERROR(ctx->Synchronize());  // u_float is freed on return
      return true;
    }
    // Reversing the row-major array reverses rows and columns at once: J H J. H is symmetric, so
    // its row-major array read column-major is H itself.
    std::reverse(h.begin(), h.end());
    const int ki = static_cast<int>(k);
    QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer a, Allocate(kk * sizeof(double)));
    QC_RETURN_IF_ERROR(CopyToDevice(stream, a, h.data(), kk));
    int lwork = 0;
    QC_CUSOLVER_RETURN_IF_ERROR(solver->dpotrf_buffer_size(dn, CUBLAS_FILL_MODE_LOWER, ki, a.as<double>(), ki, &lwork));
    QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer work, Allocate(static_cast<size_t>(std::max(lwork, 1)) * sizeof(double)));
    QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer info, Allocate(sizeof(int)));
    QC_CUSOLVER_RETURN_IF_ERROR(
        solver->dpotrf(dn, CUBLAS_FILL_MODE_LOWER, ki, a.as<double>(), ki, work.as<double>(), lwork, info.as<int>()));
    int info_host = 0;
    QC_RETURN_IF_ERROR(CopyToHost(stream, &info_host, info, 1));
    QC_RETURN_IF_ERROR(ctx->Synchronize());  // h is freed on return
    if (info_host != 0) return false;  // > 0: the leading minor of that order is not positive definite
    work.Reset();
    QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer x, Allocate(kk * sizeof(double)));
    const dim3 grid(Blocks(k), static_cast<unsigned>(k));
    IdentityKernel<<<grid, kThreads, 0, stream>>>(k, x.as<double>());
    QC_CUDA_RETURN_IF_LAUNCH_ERROR("IdentityKernel");
    const double one = 1.0;
    QC_CUBLAS_RETURN_IF_ERROR(ctx->blas().dtrsm(ctx->cublas(), CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N,
                                                CUBLAS_DIAG_NON_UNIT, ki, ki, &one, a.as<double>(), ki, x.as<double>(), ki));
    QC_ASSIGN_OR_RETURN(*u, Allocate(kk * sizeof(float)));
    QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer bad, Allocate(sizeof(int)));
    QC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(bad.data(), 0, sizeof(int), stream));
    UpperFromInverseKernel<<<grid, kThreads, 0, stream>>>(k, x.as<double>(), u->as<float>(), bad.as<int>());
    QC_CUDA_RETURN_IF_LAUNCH_ERROR("UpperFromInverseKernel");
    int bad_host = 0;
    QC_RETURN_IF_ERROR(CopyToHost(stream, &bad_host, bad, 1));
    QC_RETURN_IF_ERROR(ctx->Synchronize());  // before a, x and bad go back to the cache
    if (bad_host) {
      u->Reset();
      return false;
    }
    return true;
  }
};

GptqCudaSolver::GptqCudaSolver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GptqCudaSolver::~GptqCudaSolver() = default;

StatusOr<std::unique_ptr<GptqCudaSolver>> GptqCudaSolver::Create() {
  auto impl = std::make_unique<Impl>();
  QC_ASSIGN_OR_RETURN(impl->ctx, cuda::Context::Create());
  StatusOr<const cuda::CusolverApi*> solver = cuda::Cusolver();
  if (solver.ok()) {
    impl->solver = *solver;
    QC_CUSOLVER_RETURN_IF_ERROR(impl->solver->create(&impl->dn));
    QC_CUSOLVER_RETURN_IF_ERROR(impl->solver->set_stream(impl->dn, impl->ctx->stream()));
  }
  return std::unique_ptr<GptqCudaSolver>(new GptqCudaSolver(std::move(impl)));
}

StatusOr<GptqResult> GptqCudaSolver::Quantize(const std::vector<float>& w, int64_t k, int64_t n,
                                              const std::vector<double>& hessian, const GptqSpec& spec) {
  Impl& m = *impl_;
  const cudaStream_t stream = m.ctx->stream();
  cuda::DeviceBuffer u;
  CholeskyOfInverse factor = [&](std::vector<double> h) -> StatusOr<bool> { return m.Factor(std::move(h), k, &u); };
  QC_ASSIGN_OR_RETURN(GptqPlan plan, PrepareGptq(w, k, n, hessian, spec, factor));
  if (k > INT32_MAX || n > INT32_MAX) return Unimplemented("GPTQ on the GPU: the weight is too large for cuBLAS");
  const int64_t groups = static_cast<int64_t>(plan.members.size());
  const size_t kn = static_cast<size_t>(k) * static_cast<size_t>(n);
  const int64_t block = std::min<int64_t>(std::max<int64_t>(1, spec.block_size), k);

  // Host-side tables, then everything to the device.
  std::vector<float> w_pos(kn);  // W in processing order
  for (int64_t a = 0; a < k; ++a) std::copy_n(plan.w0.begin() + plan.perm[a] * n, n, w_pos.begin() + a * n);
  std::vector<int> opens(k, 0);
  std::vector<int64_t> member_begin(groups + 1, 0), member_pos;
  member_pos.reserve(k);
  for (int64_t g = 0; g < groups; ++g) {
    if (!plan.members[g].empty()) opens[plan.members[g].front()] = 1;  // members ascend: the first is where it opens
    member_pos.insert(member_pos.end(), plan.members[g].begin(), plan.members[g].end());
    member_begin[g + 1] = static_cast<int64_t>(member_pos.size());
  }
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_w, m.Allocate(kn * sizeof(float)));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_err, m.Allocate(static_cast<size_t>(block * n) * sizeof(float)));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_group, m.Allocate(static_cast<size_t>(plan.rows_per_group * n) * sizeof(float)));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_perm, m.Allocate(k * sizeof(int64_t)));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_group_of, m.Allocate(k * sizeof(int64_t)));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_opens, m.Allocate(k * sizeof(int)));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_member_begin, m.Allocate((groups + 1) * sizeof(int64_t)));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_member_pos, m.Allocate(k * sizeof(int64_t)));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_scale, m.Allocate(static_cast<size_t>(groups * n) * sizeof(float)));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_zero_point, m.Allocate(static_cast<size_t>(groups * n) * sizeof(int)));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_codes, m.Allocate(kn));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_w_hat, m.Allocate(kn * sizeof(float)));
  QC_RETURN_IF_ERROR(CopyToDevice(stream, d_w, w_pos.data(), kn));
  QC_RETURN_IF_ERROR(CopyToDevice(stream, d_perm, plan.perm.data(), k));
  QC_RETURN_IF_ERROR(CopyToDevice(stream, d_group_of, plan.group_of.data(), k));
  QC_RETURN_IF_ERROR(CopyToDevice(stream, d_opens, opens.data(), k));
  QC_RETURN_IF_ERROR(CopyToDevice(stream, d_member_begin, member_begin.data(), groups + 1));
  QC_RETURN_IF_ERROR(CopyToDevice(stream, d_member_pos, member_pos.data(), k));

  BlockArgs args;
  args.k = k;
  args.n = n;
  args.w = d_w.as<float>();
  args.u = u.as<float>();
  args.err = d_err.as<float>();
  args.group_rows = d_group.as<float>();
  args.perm = d_perm.as<int64_t>();
  args.group_of = d_group_of.as<int64_t>();
  args.opens = d_opens.as<int>();
  args.member_begin = d_member_begin.as<int64_t>();
  args.member_pos = d_member_pos.as<int64_t>();
  args.scale = d_scale.as<float>();
  args.zero_point = d_zero_point.as<int>();
  args.codes = d_codes.as<uint8_t>();
  args.w_hat = d_w_hat.as<float>();
  args.spec = DeviceQuantSpec{spec.quant.bits, spec.quant.sym, spec.quant.scale_search, spec.quant.search_steps,
                              spec.quant.search_span};
  const int ki = static_cast<int>(k), ni = static_cast<int>(n);
  for (int64_t i1 = 0; i1 < k; i1 += block) {
    const int64_t i2 = std::min(i1 + block, k), count = i2 - i1;
    GptqBlockKernel<<<Blocks(n), kThreads, 0, stream>>>(args, i1, i2);
    QC_CUDA_RETURN_IF_LAUNCH_ERROR("GptqBlockKernel");
    if (i2 >= k) continue;
    // Line 10: the rows after the block, W[i2:] -= U[i1:i2, i2:]ᵀ E. Column-major, W[i2:] is the
    // n x (k - i2) matrix Wᵀ, E the n x count matrix Eᵀ, and U[i1:i2, i2:] (ld k) read transposed.
    const float minus_one = -1.0f, one = 1.0f;
    QC_CUBLAS_RETURN_IF_ERROR(m.ctx->blas().sgemm(m.ctx->cublas(), CUBLAS_OP_N, CUBLAS_OP_T, ni, static_cast<int>(k - i2),
                                                  static_cast<int>(count), &minus_one, d_err.as<float>(), ni,
                                                  u.as<float>() + i1 * k + i2, ki, &one, d_w.as<float>() + i2 * n, ni));
  }

  GptqResult result = std::move(plan.result);
  QuantizedWeight& qw = result.weight;
  const int64_t nb = qw.n_blocks();
  std::vector<uint8_t> codes(kn);
  std::vector<float> scale(static_cast<size_t>(groups * n));
  std::vector<int> zero_point(static_cast<size_t>(groups * n));
  result.w_hat.resize(kn);
  QC_RETURN_IF_ERROR(CopyToHost(stream, codes.data(), d_codes, kn));
  QC_RETURN_IF_ERROR(CopyToHost(stream, scale.data(), d_scale, scale.size()));
  QC_RETURN_IF_ERROR(CopyToHost(stream, zero_point.data(), d_zero_point, zero_point.size()));
  QC_RETURN_IF_ERROR(CopyToHost(stream, result.w_hat.data(), d_w_hat, kn));
  QC_RETURN_IF_ERROR(m.ctx->Synchronize());  // surfaces kernel faults; the buffers are freed after this
  qw.q.resize(kn);
  for (int64_t row = 0; row < k; ++row)
    for (int64_t j = 0; j < n; ++j) qw.q[j * k + row] = codes[row * n + j];
  qw.scales.assign(n * nb, 0.0f);
  if (!spec.quant.sym) qw.zero_points.assign(n * nb, 0);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t b = plan.blocks[g].first; b <= plan.blocks[g].second; ++b) {
        qw.scales[j * nb + b] = scale[g * n + j];
        if (!spec.quant.sym) qw.zero_points[j * nb + b] = static_cast<uint8_t>(zero_point[g * n + j]);
      }
  if (!m.solver) result.notes.push_back("GPU solver: H^-1 factored on the host (cuSOLVER could not be loaded)");
  return result;
}

StatusOr<std::pair<double, double>> GptqCudaSolver::OutputEnergies(const std::vector<double>& hessian, int64_t k,
                                                                   const std::vector<float>& w,
                                                                   const std::vector<float>& w_hat, int64_t n) {
  QC_CHECK(static_cast<int64_t>(hessian.size()) == k * k);
  QC_CHECK(static_cast<int64_t>(w.size()) == k * n && w_hat.size() == w.size());
  Impl& m = *impl_;
  const cudaStream_t stream = m.ctx->stream();
  // Columns per GEMM: bounds the float64 operands to 3 x k x 1024 (138 MB for K = 5632).
  constexpr int64_t kColumns = 1024;
  const int64_t cmax = std::min(n, kColumns);
  const size_t kk = static_cast<size_t>(k * k), kn = static_cast<size_t>(k * n);
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_h, m.Allocate(kk * sizeof(double)));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_w, m.Allocate(kn * sizeof(float)));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer d_w_hat, m.Allocate(kn * sizeof(float)));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer m_w, m.Allocate(static_cast<size_t>(k * cmax) * sizeof(double)));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer m_d, m.Allocate(static_cast<size_t>(k * cmax) * sizeof(double)));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer hm, m.Allocate(static_cast<size_t>(k * cmax) * sizeof(double)));
  QC_ASSIGN_OR_RETURN(cuda::DeviceBuffer dots, m.Allocate(static_cast<size_t>(2 * n) * sizeof(double)));
  QC_RETURN_IF_ERROR(CopyToDevice(stream, d_h, hessian.data(), kk));
  QC_RETURN_IF_ERROR(CopyToDevice(stream, d_w, w.data(), kn));
  QC_RETURN_IF_ERROR(CopyToDevice(stream, d_w_hat, w_hat.data(), kn));
  const double one = 1.0, zero = 0.0;
  for (int64_t c0 = 0; c0 < n; c0 += kColumns) {
    const int64_t c = std::min(kColumns, n - c0);
    EnergyOperandsKernel<<<dim3(Blocks(c), static_cast<unsigned>(k)), kThreads, 0, stream>>>(
        k, n, c0, c, d_w.as<float>(), d_w_hat.as<float>(), m_w.as<double>(), m_d.as<double>());
    QC_CUDA_RETURN_IF_LAUNCH_ERROR("EnergyOperandsKernel");
    int slot = 0;
    for (const cuda::DeviceBuffer* op : {&m_w, &m_d}) {
      // Row-major M [k, c] is column-major Mᵀ; (H M)ᵀ = Mᵀ H for the symmetric H.
      QC_CUBLAS_RETURN_IF_ERROR(m.ctx->blas().dgemm(m.ctx->cublas(), CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(c),
                                                    static_cast<int>(k), static_cast<int>(k), &one, op->as<double>(),
                                                    static_cast<int>(c), d_h.as<double>(), static_cast<int>(k), &zero,
                                                    hm.as<double>(), static_cast<int>(c)));
      ColumnDotKernel<<<Blocks(c), kThreads, 0, stream>>>(k, c, op->as<double>(), hm.as<double>(),
                                                          dots.as<double>() + slot * n + c0);
      QC_CUDA_RETURN_IF_LAUNCH_ERROR("ColumnDotKernel");
      ++slot;
    }
  }
  std::vector<double> host(2 * n);
  QC_RETURN_IF_ERROR(CopyToHost(stream, host.data(), dots, host.size()));
  QC_RETURN_IF_ERROR(m.ctx->Synchronize());
  double signal = 0, noise = 0;
  for (int64_t j = 0; j < n; ++j) {
    signal += host[j];
    noise += host[n + j];
  }
  return std::make_pair(signal, noise);
}

}  // namespace qc
