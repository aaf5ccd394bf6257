// GptqCudaSolver (passes/gptq_solver_cuda.h): GPTQ's factorisation and column loop on the GPU.
#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "passes/cuda/gptq_block.h"
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

// One thread per output column (gptq_block.h holds the loop body, shared with the host test).
__global__ void GptqBlockKernel(gptq_block::BlockArgs a, int64_t i1, int64_t i2) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < a.n) gptq_block::SolveBlockColumn(a, i1, i2, j);
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
  const double v = x[gptq_block::UpperFromInverseIndex(k, r, c)];
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
  const gptq_block::Tables tables = gptq_block::MakeTables(plan);
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
  QC_RETURN_IF_ERROR(CopyToDevice(stream, d_w, tables.w_pos.data(), kn));
  QC_RETURN_IF_ERROR(CopyToDevice(stream, d_perm, plan.perm.data(), k));
  QC_RETURN_IF_ERROR(CopyToDevice(stream, d_group_of, plan.group_of.data(), k));
  QC_RETURN_IF_ERROR(CopyToDevice(stream, d_opens, tables.opens.data(), k));
  QC_RETURN_IF_ERROR(CopyToDevice(stream, d_member_begin, tables.member_begin.data(), groups + 1));
  QC_RETURN_IF_ERROR(CopyToDevice(stream, d_member_pos, tables.member_pos.data(), k));

  gptq_block::BlockArgs args;
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
  args.spec = gptq_block::QuantSpec{spec.quant.bits, spec.quant.sym, spec.quant.scale_search, spec.quant.search_steps,
                              spec.quant.search_span};
  for (int64_t i1 = 0; i1 < k; i1 += block) {
    const int64_t i2 = std::min(i1 + block, k);
    GptqBlockKernel<<<Blocks(n), kThreads, 0, stream>>>(args, i1, i2);
    QC_CUDA_RETURN_IF_LAUNCH_ERROR("GptqBlockKernel");
    if (i2 >= k) continue;
    const gptq_block::GemmCall<float> g = gptq_block::LazyBatchUpdate(k, n, i1, i2, d_err.as<float>(), u.as<float>(), d_w.as<float>());
    QC_CUBLAS_RETURN_IF_ERROR(m.ctx->blas().sgemm(m.ctx->cublas(), g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                                                  g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, g.m, g.n, g.k, &g.alpha, g.a,
                                                  g.lda, g.b, g.ldb, &g.beta, g.c, g.ldc));
  }

  GptqResult result = std::move(plan.result);
  std::vector<uint8_t> codes(kn);
  std::vector<float> scale(static_cast<size_t>(groups * n));
  std::vector<int> zero_point(static_cast<size_t>(groups * n));
  result.w_hat.resize(kn);
  QC_RETURN_IF_ERROR(CopyToHost(stream, codes.data(), d_codes, kn));
  QC_RETURN_IF_ERROR(CopyToHost(stream, scale.data(), d_scale, scale.size()));
  QC_RETURN_IF_ERROR(CopyToHost(stream, zero_point.data(), d_zero_point, zero_point.size()));
  QC_RETURN_IF_ERROR(CopyToHost(stream, result.w_hat.data(), d_w_hat, kn));
  QC_RETURN_IF_ERROR(m.ctx->Synchronize());  // surfaces kernel faults; the buffers are freed after this
  gptq_block::StoreResult(plan, codes, scale, zero_point, spec.quant.sym, &result);
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
