// MatMul and Gemm on the GPU through cuBLAS (float32: plain SGEMM, no TF32, CPU-matching accuracy;
// float16/bfloat16: GemmEx on the tensor cores with float32 accumulation), and
// com.microsoft.MatMulNBits through runtime/cuda/matmul_nbits. runtime/cpu/matmul.cpp, gemm.cpp
// and matmul_nbits.cpp are the numeric spec.
#include <algorithm>
#include <climits>

#include "runtime/cpu/broadcast.h"
#include "runtime/cuda/nbits_dequantize.h"
#include "runtime/cuda/nbits_weights.h"
#include "runtime/cuda/ops/common.cuh"

namespace qc::cuda {
namespace {

bool FitsInt(int64_t v) { return v >= 0 && v <= INT_MAX; }

// Row-major C[b] = alpha * op(A[b]) · op(B[b]) + beta * C[b] for `batch` matrices of dtype `t`, via
// the column-major identity Cᵀ = op(B)ᵀ · op(A)ᵀ. Strides are in elements (0: the same matrix for
// every b); C's rows are `ldc` elements apart (0: n, a dense C; more: C is a column block of a wider
// matrix).
Status Gemm(OpContext& ctx, DType t, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const void* a, int64_t stride_a,
            const void* b, int64_t stride_b, float beta, void* c, int64_t batch, int64_t ldc = 0) {
  if (ldc == 0) ldc = n;
  if (!FitsInt(m) || !FitsInt(n) || !FitsInt(k) || !FitsInt(batch) || !FitsInt(ldc)) return ctx.Decline("dimensions beyond 2^31");
  const int lda = static_cast<int>(trans_a ? m : k), ldb = static_cast<int>(trans_b ? k : n);
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (t == DType::kFloat32) {
    QC_CUBLAS_RETURN_IF_ERROR(ctx.cuda.blas().sgemm_strided_batched(
        ctx.cuda.cublas(), op_b, op_a, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, static_cast<const float*>(b), ldb,
        stride_b, static_cast<const float*>(a), lda, stride_a, &beta, static_cast<float*>(c), static_cast<int>(ldc), m * ldc, static_cast<int>(batch)));
    return Status::Ok();
  }
  const cudaDataType type = t == DType::kFloat16 ? CUDA_R_16F : CUDA_R_16BF;
  QC_CUBLAS_RETURN_IF_ERROR(ctx.cuda.blas().gemm_strided_batched_ex(
      ctx.cuda.cublas(), op_b, op_a, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b, type, ldb, stride_b, a, type, lda,
      stride_a, &beta, c, type, static_cast<int>(ldc), m * ldc, static_cast<int>(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return Status::Ok();
}

// `p` advanced by `elements` of `size` bytes.
const void* Advance(const void* p, int64_t elements, int size) { return static_cast<const char*>(p) + elements * size; }
void* Advance(void* p, int64_t elements, int size) { return static_cast<char*>(p) + elements * size; }

template <typename T>
__global__ void BroadcastCopyKernel(const T* x, T* y, int64_t n, Indexer<1> ix) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t off[1];
    ix.Offsets(i, off);
    y[i] = x[off[0]];
  }
}

template <typename From, typename To>
__global__ void ConvertKernel(const From* x, To* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = StoreValue<To>(LoadValue(x[i]));
}

class NBitsState : public OpState {
 public:
  explicit NBitsState(NBitsWeights w) : weights(std::move(w)) {}
  NBitsWeights weights;
};

}  // namespace

Status MatMulCuda(OpContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.Error("expected 2 inputs");
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  const DType t = a.dtype();
  if (!IsKernelFloat(t) || b.dtype() != t) return ctx.Decline("dtypes " + DTypeName(t) + ", " + DTypeName(b.dtype()));
  if (a.rank() < 2 || b.rank() < 2) return ctx.Decline("1-D operand");
  const int64_t m = a.dim(-2), k = a.dim(-1), n = b.dim(-1);
  if (b.dim(-2) != k) return ctx.Error("inner dimensions differ: " + ShapeToString(a.shape()) + " x " + ShapeToString(b.shape()));
  const Shape batch_a(a.shape().begin(), a.shape().end() - 2), batch_b(b.shape().begin(), b.shape().end() - 2);
  auto batch = BroadcastShapes({batch_a, batch_b});
  if (!batch.ok()) return ctx.Error(batch.status().message());
  Shape out_shape = *batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, t, out_shape));
  if (y->numel() == 0) return Status::Ok();
  const int64_t count = NumElements(*batch), count_a = NumElements(batch_a), count_b = NumElements(batch_b);
  const int size = ElementSize(t);
  void* yp = y->mutable_raw();
  if (k == 0) {
    QC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(yp, 0, y->nbytes(), ctx.cuda.stream()));
    return Status::Ok();
  }
  if (count_b == 1)  // a shared weight: one GEMM over every row of A
    return Gemm(ctx, t, false, false, count_a * m, n, k, 1.0f, a.raw(), 0, b.raw(), 0, 0.0f, yp, 1);
  // Strided batches: each side has every batch matrix (a broadcastable shape with the full count
  // has the broadcast layout) or a single one.
  if (count_a == count && count_b > 1 && count_b < count) {
    // B's batch dims (leading 1s dropped) are A's trailing ones: B repeats over A's leading dims,
    // one strided batch of count_b per repetition.
    Shape core = batch_b;
    while (!core.empty() && core.front() == 1) core.erase(core.begin());
    if (core.size() > batch->size() || !std::equal(core.begin(), core.end(), batch->end() - core.size()))
      return ctx.Decline("partially broadcast batch dims");
    for (int64_t r = 0; r < count / count_b; ++r)
      QC_RETURN_IF_ERROR(Gemm(ctx, t, false, false, m, n, k, 1.0f, Advance(a.raw(), r * count_b * m * k, size), m * k, b.raw(), k * n, 0.0f,
                              Advance(yp, r * count_b * m * n, size), count_b));
    return Status::Ok();
  }
  if (!((count_a == count || count_a == 1) && (count_b == count || count_b == 1))) return ctx.Decline("partially broadcast batch dims");
  return Gemm(ctx, t, false, false, m, n, k, 1.0f, a.raw(), count_a == 1 ? 0 : m * k, b.raw(), count_b == 1 ? 0 : k * n, 0.0f, yp, count);
}

Status GemmCuda(OpContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.Error("expected 2 or 3 inputs");
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  const DType t = a.dtype();
  if (!IsKernelFloat(t) || b.dtype() != t) return ctx.Decline("dtypes " + DTypeName(t) + ", " + DTypeName(b.dtype()));
  if (a.rank() != 2 || b.rank() != 2) return ctx.Error("A and B must be 2-D");
  const bool ta = ctx.node.GetInt("transA", 0) != 0, tb = ctx.node.GetInt("transB", 0) != 0;
  const float alpha = ctx.node.GetFloat("alpha", 1.0f), beta = ctx.node.GetFloat("beta", 1.0f);
  const int64_t m = ta ? a.dim(1) : a.dim(0), k = ta ? a.dim(0) : a.dim(1);
  const int64_t n = tb ? b.dim(0) : b.dim(1);
  if ((tb ? b.dim(1) : b.dim(0)) != k) return ctx.Error("inner dimensions differ");
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, t, {m, n}));
  if (y->numel() == 0) return Status::Ok();
  void* yp = y->mutable_raw();
  const bool has_c = ctx.has_input(2) && beta != 0.0f;
  if (has_c) {
    const Tensor& c = ctx.input(2);
    if (c.dtype() != t) return ctx.Decline("C of dtype " + DTypeName(c.dtype()));
    auto shape = BroadcastShapes({c.shape(), Shape{m, n}});
    if (!shape.ok() || *shape != Shape{m, n}) return ctx.Error("C of shape " + ShapeToString(c.shape()) + " does not broadcast to [M, N]");
    Indexer<1> ix;
    if (!MakeIndexer<1>({m, n}, {c.shape()}, &ix)) return ctx.Decline("C shape");
    DispatchFloat(t, [&](auto tag) {
      using T = decltype(tag);
      BroadcastCopyKernel<T><<<BlocksFor(m * n), kThreads, 0, ctx.cuda.stream()>>>(c.device_data<T>(), static_cast<T*>(yp), m * n, ix);
    });
    QC_CUDA_RETURN_IF_LAUNCH_ERROR("BroadcastCopyKernel");
  }
  if (k == 0) {
    if (has_c) return ctx.Decline("k = 0 with C");  // beta·C: rare enough for the CPU
    QC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(yp, 0, y->nbytes(), ctx.cuda.stream()));
    return Status::Ok();
  }
  return Gemm(ctx, t, ta, tb, m, n, k, alpha, a.raw(), 0, b.raw(), 0, has_c ? beta : 0.0f, yp, 1);
}

template <typename T>
__global__ void AddColumnBiasKernel(T* y, const float* bias, int64_t rows, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < rows * n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = StoreValue<T>(LoadValue(y[i]) + bias[i % n]);
}

// Prefill-sized MatMulNBits (runtime/cuda/nbits_dequantize.h): the weights are dequantised into a
// dense [cols, K] matrix of the activation type, a chunk of columns at a time (bounded scratch),
// and multiplied by cuBLAS (tensor cores for the 16-bit types, SGEMM for float32) into that column
// block of Y.
template <typename T>
Status DequantizedGemm(OpContext& ctx, const NBitsWeightsView& w, const Tensor& x, Tensor* y, int64_t m) {
  constexpr int64_t kChunkElements = int64_t{16} << 20;  // 32 MiB of 16-bit weights (64 of float32) at a time
  const int64_t k = w.layout.k, n = w.layout.n;
  const int64_t chunk = std::clamp<int64_t>(kChunkElements / k / 16 * 16, 16, 65535 / 16 * 16);
  QC_ASSIGN_OR_RETURN(Tensor dense, ctx.cuda.Empty(x.dtype(), {std::min(chunk, n), k}));
  for (int64_t col0 = 0; col0 < n; col0 += chunk) {
    const int64_t cols = std::min(chunk, n - col0);
    QC_RETURN_IF_ERROR(DequantizeNBits(w, col0, cols, dense.mutable_device_data<T>(), ctx.cuda.stream()));
    QC_RETURN_IF_ERROR(Gemm(ctx, x.dtype(), false, true, m, cols, k, 1.0f, x.raw(), 0, dense.raw(), 0, 0.0f,
                            y->mutable_device_data<T>() + col0, 1, /*ldc=*/n));
    if (!ctx.declined.empty()) return Status::Ok();
  }
  if (w.bias != nullptr) {
    AddColumnBiasKernel<T><<<BlocksFor(m * n), kThreads, 0, ctx.cuda.stream()>>>(y->mutable_device_data<T>(), w.bias, m, n);
    QC_CUDA_RETURN_IF_LAUNCH_ERROR("AddColumnBiasKernel");
  }
  return Status::Ok();
}

// Inputs 1..5 (B, scales, zero_points, g_idx, bias) are read on the host and uploaded once into
// the kernel's layout when they are session constants (always, for qconvert's artifacts).
Status MatMulNBitsCuda(OpContext& ctx) {
  if (!ctx.has_input(0)) return ctx.Error("input A is missing");
  const Tensor& x = ctx.input(0);
  if (!IsKernelFloat(x.dtype())) return ctx.Decline("dtype " + DTypeName(x.dtype()));
  std::unique_ptr<NBitsState> fresh;
  const NBitsState* state = dynamic_cast<const NBitsState*>(ctx.state.get());
  if (!state) {
    QC_ASSIGN_OR_RETURN(NBitsWeights w, NBitsWeights::Upload(ctx.node, ctx.inputs, ctx.cuda.stream()));
    fresh = std::make_unique<NBitsState>(std::move(w));
    state = fresh.get();
  }
  const NBitsLayout& layout = state->weights.view().layout;
  if (x.rank() < 1 || x.dim(-1) != layout.k)
    return ctx.Error("A of shape " + ShapeToString(x.shape()) + " does not have K = " + std::to_string(layout.k) + " columns");
  Shape out_shape = x.shape();
  out_shape.back() = layout.n;
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, x.dtype(), out_shape));
  const int64_t m = layout.k == 0 ? 0 : x.numel() / layout.k;
  const NBitsWeightsView& w = state->weights.view();
  NBitsWorkspace& ws = ctx.cuda.nbits_workspace();
  if (x.dtype() == DType::kFloat16 && m >= kDequantGemmMinRows) {
    QC_RETURN_IF_ERROR(DequantizedGemm<__half>(ctx, w, x, y, m));
  } else if (x.dtype() == DType::kBFloat16 && m >= kDequantGemmMinRows) {
    QC_RETURN_IF_ERROR(DequantizedGemm<__nv_bfloat16>(ctx, w, x, y, m));
  } else if (x.dtype() == DType::kFloat32 && m >= kDequantGemmMinRowsFloat32) {
    QC_RETURN_IF_ERROR(DequantizedGemm<float>(ctx, w, x, y, m));
  } else if (x.dtype() == DType::kFloat32) {
    QC_RETURN_IF_ERROR(MatMulNBits(w, x.device_data<float>(), y->mutable_device_data<float>(), m, ws, ctx.cuda.stream()));
  } else if (x.dtype() == DType::kFloat16) {  // the kernels' own fp16 path: fp16 products, fp32 accumulation
    QC_RETURN_IF_ERROR(MatMulNBits(w, x.device_data<__half>(), y->mutable_device_data<__half>(), m, ws, ctx.cuda.stream()));
  } else {
    // bfloat16 runs the float32 path (its range does not fit fp16): widened in, rounded out.
    const int64_t n = x.numel(), n_out = y->numel();
    QC_ASSIGN_OR_RETURN(Tensor x32, ctx.cuda.Empty(DType::kFloat32, x.shape()));
    QC_ASSIGN_OR_RETURN(Tensor y32, ctx.cuda.Empty(DType::kFloat32, out_shape));
    if (n > 0)
      ConvertKernel<<<BlocksFor(n), kThreads, 0, ctx.cuda.stream()>>>(x.device_data<__nv_bfloat16>(), x32.mutable_device_data<float>(), n);
    QC_CUDA_RETURN_IF_LAUNCH_ERROR("ConvertKernel");
    QC_RETURN_IF_ERROR(MatMulNBits(w, x32.device_data<float>(), y32.mutable_device_data<float>(), m, ws, ctx.cuda.stream()));
    if (n_out > 0)
      ConvertKernel<<<BlocksFor(n_out), kThreads, 0, ctx.cuda.stream()>>>(y32.device_data<float>(), y->mutable_device_data<__nv_bfloat16>(), n_out);
    QC_CUDA_RETURN_IF_LAUNCH_ERROR("ConvertKernel");
  }
  bool all_constant = true;
  for (int i = 1; i < ctx.num_inputs(); ++i) all_constant &= !ctx.has_input(i) || ctx.constant[i];
  if (fresh && all_constant) {
    ctx.state = std::move(fresh);
  } else if (fresh) {
    QC_RETURN_IF_ERROR(ctx.cuda.Synchronize());  // per-call weights are freed on return
  }
  return Status::Ok();
}

}  // namespace qc::cuda
