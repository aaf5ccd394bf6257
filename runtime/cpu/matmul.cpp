// MatMul: numpy-semantics batched matrix product (reference in double, fast via one GEMM per batch).
#include <omp.h>

#include <algorithm>
#include <string>
#include <vector>

#include "runtime/cpu/dispatch.h"
#include "runtime/cpu/gemm_core.h"
#include "runtime/cpu/kernel.h"
#include "runtime/cpu/matmul_shape.h"

namespace qc {

StatusOr<MatMulPlan> PlanMatMul(const KernelContext& ctx, const Shape& a_in, const Shape& b_in) {
  if (a_in.empty() || b_in.empty())
    return ctx.Error("MatMul operands must have rank >= 1, got " + ShapeToString(a_in) + " and " +
                     ShapeToString(b_in));
  for (int64_t d : a_in)
    if (d < 0) return ctx.Error("negative dimension in A " + ShapeToString(a_in));
  for (int64_t d : b_in)
    if (d < 0) return ctx.Error("negative dimension in B " + ShapeToString(b_in));
  // 1-D operands: A [K] -> [1,K] and B [K] -> [K,1]; the inserted dims are dropped from the output.
  Shape a = a_in, b = b_in;
  const bool a_vec = a.size() == 1, b_vec = b.size() == 1;
  if (a_vec) a.insert(a.begin(), 1);
  if (b_vec) b.push_back(1);
  MatMulPlan plan;
  plan.m = a[a.size() - 2];
  plan.k = a[a.size() - 1];
  plan.n = b[b.size() - 1];
  if (b[b.size() - 2] != plan.k)
    return ctx.Error("MatMul inner dimensions differ: A " + ShapeToString(a_in) + " x B " + ShapeToString(b_in));
  const size_t a_batch_rank = a.size() - 2, b_batch_rank = b.size() - 2;
  const size_t batch_rank = std::max(a_batch_rank, b_batch_rank);
  Shape batch(batch_rank), a_bdim(batch_rank, 1), b_bdim(batch_rank, 1);
  for (size_t i = 0; i < a_batch_rank; ++i) a_bdim[batch_rank - a_batch_rank + i] = a[i];
  for (size_t i = 0; i < b_batch_rank; ++i) b_bdim[batch_rank - b_batch_rank + i] = b[i];
  int64_t total = 1;
  for (size_t i = 0; i < batch_rank; ++i) {
    if (a_bdim[i] != b_bdim[i] && a_bdim[i] != 1 && b_bdim[i] != 1)
      return ctx.Error("MatMul batch dimensions do not broadcast: A " + ShapeToString(a_in) + " x B " +
                       ShapeToString(b_in));
    batch[i] = a_bdim[i] == 1 ? b_bdim[i] : a_bdim[i];
    if (batch[i] != 0 && total > kMaxOutputElements / batch[i]) return ctx.Error("MatMul output too large");
    total *= batch[i];
  }
  if (plan.m > 0 && total > kMaxOutputElements / plan.m) return ctx.Error("MatMul output too large");
  if (plan.n > 0 && total * plan.m > kMaxOutputElements / plan.n) return ctx.Error("MatMul output too large");
  plan.out_shape = batch;
  if (!a_vec) plan.out_shape.push_back(plan.m);
  if (!b_vec) plan.out_shape.push_back(plan.n);

  // Strides (in matrices) of each operand's batch dims, 0 where the operand broadcasts.
  std::vector<int64_t> a_stride(batch_rank, 0), b_stride(batch_rank, 0);
  int64_t as = 1, bs = 1;
  for (size_t i = batch_rank; i-- > 0;) {
    a_stride[i] = a_bdim[i] == 1 ? 0 : as;
    b_stride[i] = b_bdim[i] == 1 ? 0 : bs;
    as *= a_bdim[i];
    bs *= b_bdim[i];
  }
  plan.a_offsets.resize(total);
  plan.b_offsets.resize(total);
  std::vector<int64_t> idx(batch_rank, 0);
  for (int64_t t = 0; t < total; ++t) {
    int64_t ao = 0, bo = 0;
    for (size_t i = 0; i < batch_rank; ++i) {
      ao += idx[i] * a_stride[i];
      bo += idx[i] * b_stride[i];
    }
    plan.a_offsets[t] = ao * plan.m * plan.k;
    plan.b_offsets[t] = bo * plan.k * plan.n;
    for (size_t i = batch_rank; i-- > 0;) {
      if (++idx[i] < batch[i]) break;
      idx[i] = 0;
    }
  }
  // B is shared when it has no real batch; A's matrices are then consecutive in output order.
  plan.b_shared = bs == 1 && as == total;
  return plan;
}

namespace {

template <typename T>
using Acc = std::conditional_t<std::is_floating_point_v<T>, double,
                               std::conditional_t<std::is_signed_v<T>, int64_t, uint64_t>>;

// Reference: unravels each output index independently of the plan's offsets, accumulating in
// double (floats) or 64-bit integers.
template <typename T>
void MatMulRefImpl(const Tensor& a, const Tensor& b, Tensor& out) {
  Shape as = a.shape(), bs = b.shape();
  if (as.size() == 1) as.insert(as.begin(), 1);
  if (bs.size() == 1) bs.push_back(1);
  const int64_t m = as[as.size() - 2], k = as.back(), n = bs.back();
  const size_t rank = std::max(as.size(), bs.size());
  as.insert(as.begin(), rank - as.size(), 1);
  bs.insert(bs.begin(), rank - bs.size(), 1);
  const T* ap = a.data<T>();
  const T* bp = b.data<T>();
  T* op = out.mutable_data<T>();
  int64_t batch = 1;
  for (size_t i = 0; i + 2 < rank; ++i) batch *= std::max(as[i], bs[i]);
  for (int64_t t = 0; t < batch; ++t) {
    int64_t rem = t, a_mat = 0, b_mat = 0, a_mul = 1, b_mul = 1;
    for (size_t i = rank - 2; i-- > 0;) {
      const int64_t d = std::max(as[i], bs[i]);
      const int64_t j = rem % d;
      rem /= d;
      a_mat += (as[i] == 1 ? 0 : j) * a_mul;
      b_mat += (bs[i] == 1 ? 0 : j) * b_mul;
      a_mul *= as[i];
      b_mul *= bs[i];
    }
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        Acc<T> s = 0;
        for (int64_t p = 0; p < k; ++p)
          s += static_cast<Acc<T>>(ap[(a_mat * m + i) * k + p]) * static_cast<Acc<T>>(bp[(b_mat * k + p) * n + j]);
        op[(t * m + i) * n + j] = static_cast<T>(s);
      }
  }
}

Status CheckMatMulInputs(const KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(2, 2));
  if (!ctx.has_input(1)) return ctx.Error("input B is missing");
  if (ctx.input(0).dtype() != ctx.input(1).dtype())
    return ctx.Error("A and B dtypes differ: " + DTypeName(ctx.input(0).dtype()) + " vs " +
                     DTypeName(ctx.input(1).dtype()));
  if (ctx.num_outputs() < 1) return ctx.Error("expected 1 output");
  return Status::Ok();
}

bool IsMatMulDType(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat64 || t == DType::kInt32 || t == DType::kInt64 ||
         t == DType::kUInt32 || t == DType::kUInt64;
}

template <typename T>
void MatMulFastImpl(const MatMulPlan& plan, const T* a, const T* b, T* c) {
  const int64_t m = plan.m, n = plan.n, k = plan.k;
  auto gemm = [&](int64_t rows, const T* ap, const T* bp, T* cp, bool threaded) {
    if constexpr (std::is_same_v<T, float>)
      GemmF32(false, false, rows, n, k, 1.0f, ap, k, bp, n, 0.0f, cp, n, threaded);
    else
      GemmF64(false, false, rows, n, k, 1.0, ap, k, bp, n, 0.0, cp, n, threaded);
  };
  const int64_t batch = plan.batch();
  if (plan.b_shared) {
    // [B,S,K] x [K,N] (the constant-weight case) is a single [B*S,K] x [K,N] product.
    gemm(batch * m, a, b, c, true);
    return;
  }
  if (batch >= KernelThreads()) {
    // Attention-style products ([B,H,S,D] x [B,H,D,S]): one single-threaded GEMM per thread.
    // Below ~128K multiply-adds in total a thread team costs more than it saves.
    const bool parallel = batch * m * n * k >= (int64_t{1} << 17);
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
    for (int64_t t = 0; t < batch; ++t)
      gemm(m, a + plan.a_offsets[t], b + plan.b_offsets[t], c + t * m * n, false);
  } else {
    for (int64_t t = 0; t < batch; ++t) gemm(m, a + plan.a_offsets[t], b + plan.b_offsets[t], c + t * m * n, true);
  }
}

}  // namespace

Status MatMulRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(CheckMatMulInputs(ctx));
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  if (!IsMatMulDType(a.dtype())) return ctx.UnsupportedDType(a.dtype());
  QC_ASSIGN_OR_RETURN(MatMulPlan plan, PlanMatMul(ctx, a.shape(), b.shape()));
  Tensor out(a.dtype(), plan.out_shape);
  DispatchNumeric(a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, bool>) MatMulRefImpl<T>(a, b, out);
  });
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

Status MatMulFast(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(CheckMatMulInputs(ctx));
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  if (a.dtype() != DType::kFloat32 && a.dtype() != DType::kFloat64) return MatMulRef(ctx);
  QC_ASSIGN_OR_RETURN(MatMulPlan plan, PlanMatMul(ctx, a.shape(), b.shape()));
  // The GEMM writes every output element when K > 0; K == 0 must give zeros.
  Tensor out = plan.k > 0 ? Tensor::Uninitialized(a.dtype(), plan.out_shape) : Tensor(a.dtype(), plan.out_shape);
  if (a.dtype() == DType::kFloat32)
    MatMulFastImpl<float>(plan, a.data<float>(), b.data<float>(), out.mutable_data<float>());
  else
    MatMulFastImpl<double>(plan, a.data<double>(), b.data<double>(), out.mutable_data<double>());
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

}  // namespace qc
