// MatMulInteger on the GPU, exactly the integer result of runtime/cpu/matmul_quantize.cpp's
// MatMulIntegerRef (the numeric spec), in one of two ways:
// - cuBLAS's int8 tensor-core GEMM (IMMA) when every zero point is the operand's midpoint (uint8
//   with 128, int8 with 0 or none: the W8A8 layers of docs/FORMAT.md). Then a - a_zp is the int8
//   a ^ 0x80 (uint8) or a itself, so the product is a plain int8 GEMM. cuBLAS wants B as [N, K]
//   (its "TN" layout): a constant B is transposed (and flipped) once and kept with the step.
// - Our WMMA kernel otherwise (any zero points, scalars or vectors), with the zero points applied
//   afterwards:
//     sum_k (a - a_zp)(b - b_zp) = sum_k a b - b_zp sum_k a - a_zp sum_k b + K a_zp b_zp,
//   every term in wrapping 32-bit arithmetic, which is what the CPU's int64 sum cast to int32 keeps.
// The W8A8 scales are applied in the epilogue of either (ScaleEpilogue).
#include <mma.h>

#include "runtime/cpu/matmul_shape.h"
#include "runtime/cuda/ops/common.cuh"

namespace qc::cuda {
namespace {

// A block computes a 64x64 tile of C with 4 warps of 32x32 (2x2 WMMA 16x16x16 fragments); K
// advances 32 at a time, so each of the 128 threads loads one 16-byte line of A and of B per step.
constexpr int kTileM = 64, kTileN = 64, kTileK = 32, kGemmThreads = 128;
// Row pitch of the int32 result tile: a multiple of 4 (WMMA's ldm for 32-bit) off the bank stride.
constexpr int kTileCPitch = kTileN + 4;

/// A zero point: one value, or one per row (A) / column (B) from a device array.
struct ZeroPoint {
  const int32_t* per = nullptr;
  int32_t value = 0;
  int64_t period = 1;  // rows of one batch matrix (A's per-row points repeat when batches fold)
  __device__ __forceinline__ uint32_t At(int64_t i) const { return static_cast<uint32_t>(per ? per[i % period] : value); }
};

/// The W8A8 layer's epilogue, fused: y = (float(acc) * col[n]) * row[m] (docs/FORMAT.md, "W8A8"),
/// in float32 (rounded as the graph's Cast and two Muls), or in float16/bfloat16 for --dtype:
/// the same float32 products from the widened scales, rounded once. Empty (col == nullptr): the
/// int32 result itself.
struct ScaleEpilogue {
  const void* col = nullptr;
  const void* row = nullptr;
  void* y = nullptr;
  DType dtype = DType::kFloat32;

  __device__ __forceinline__ float Scale(const void* p, int64_t i) const {
    if (dtype == DType::kFloat16) return __half2float(static_cast<const __half*>(p)[i]);
    if (dtype == DType::kBFloat16) return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    return static_cast<const float*>(p)[i];
  }
  __device__ __forceinline__ void Write(int64_t r, int64_t c, int64_t n, int32_t acc) const {
    const float v = __fmul_rn(__fmul_rn(static_cast<float>(acc), Scale(col, c)), Scale(row, r));
    if (dtype == DType::kFloat16) static_cast<__half*>(y)[r * n + c] = __float2half_rn(v);
    else if (dtype == DType::kBFloat16) static_cast<__nv_bfloat16*>(y)[r * n + c] = __float2bfloat16_rn(v);
    else static_cast<float*>(y)[r * n + c] = v;
  }
};

template <typename T>
__global__ void __launch_bounds__(kGemmThreads) IntegerGemmKernel(const T* a, const T* b, int32_t* c, int64_t m, int64_t n, int64_t k,
                                                                  bool a_vector_loads, ZeroPoint a_zp, ZeroPoint b_zp, ScaleEpilogue scale) {
  using namespace nvcuda;
  // WMMA pointers must be 256-bit aligned: A and B are stored as [k chunk][row or column][16 bytes],
  // so every fragment starts on a 256-byte boundary.
  __shared__ __align__(32) T tile_a[kTileK / 16][kTileM][16];
  __shared__ __align__(32) T tile_b[kTileK / 16][kTileN][16];
  __shared__ __align__(32) int32_t tile_c[kTileM][kTileCPitch];
  __shared__ int32_t row_sum[kTileM];
  __shared__ int32_t col_sum[2][kTileN];
  const int t = threadIdx.x, warp = t / 32;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTileM, n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  // This thread's line of A: row t/2, bytes [16 (t%2), +16) of the K step; of B: column t%64,
  // k rows [16 (t/64), +16).
  const int a_row = t / 2, a_half = t % 2, b_col = t % kTileN, b_half = t / kTileN;
  const int64_t ga_row = m0 + a_row, gb_col = n0 + b_col;
  uint32_t a_part = 0, b_part = 0;  // this thread's share of its row / column sum

  wmma::fragment<wmma::accumulator, 16, 16, 16, int> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0);

  for (int64_t k0 = 0; k0 < k; k0 += kTileK) {
    const int64_t ka = k0 + a_half * 16;
    alignas(16) T line[16];  // moved as one uint4 into shared memory
    if (ga_row < m && a_vector_loads && ka + 16 <= k) {
      *reinterpret_cast<uint4*>(line) = *reinterpret_cast<const uint4*>(a + ga_row * k + ka);
    } else {
#pragma unroll
      for (int q = 0; q < 16; ++q) line[q] = ga_row < m && ka + q < k ? a[ga_row * k + ka + q] : T(0);
    }
#pragma unroll
    for (int q = 0; q < 16; ++q) a_part += static_cast<uint32_t>(static_cast<int32_t>(line[q]));
    *reinterpret_cast<uint4*>(tile_a[a_half][a_row]) = *reinterpret_cast<const uint4*>(line);
    const int64_t kb = k0 + b_half * 16;
#pragma unroll
    for (int q = 0; q < 16; ++q) line[q] = gb_col < n && kb + q < k ? b[(kb + q) * n + gb_col] : T(0);
#pragma unroll
    for (int q = 0; q < 16; ++q) b_part += static_cast<uint32_t>(static_cast<int32_t>(line[q]));
    *reinterpret_cast<uint4*>(tile_b[b_half][b_col]) = *reinterpret_cast<const uint4*>(line);
    __syncthreads();
#pragma unroll
    for (int kc = 0; kc < kTileK / 16; ++kc) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &tile_a[kc][(warp / 2) * 32 + i * 16][0], 16);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &tile_b[kc][(warp % 2) * 32 + j * 16][0], 16);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&tile_c[(warp / 2) * 32 + i * 16][(warp % 2) * 32 + j * 16], acc[i][j], kTileCPitch, wmma::mem_row_major);
  a_part += __shfl_xor_sync(0xffffffffu, a_part, 1);  // the two halves of a row are lanes 2r, 2r+1
  if (a_half == 0) row_sum[a_row] = static_cast<int32_t>(a_part);
  col_sum[b_half][b_col] = static_cast<int32_t>(b_part);
  __syncthreads();
  const uint32_t kk = static_cast<uint32_t>(k);
  for (int e = t; e < kTileM * kTileN; e += kGemmThreads) {
    const int r = e / kTileN, cc = e % kTileN;
    const int64_t gr = m0 + r, gc = n0 + cc;
    if (gr >= m || gc >= n) continue;
    const uint32_t az = a_zp.At(gr), bz = b_zp.At(gc);
    const uint32_t sum_a = static_cast<uint32_t>(row_sum[r]);
    const uint32_t sum_b = static_cast<uint32_t>(col_sum[0][cc]) + static_cast<uint32_t>(col_sum[1][cc]);
    const uint32_t v = static_cast<uint32_t>(tile_c[r][cc]) - bz * sum_a - az * sum_b + kk * az * bz;
    if (scale.col)
      scale.Write(gr, gc, n, static_cast<int32_t>(v));
    else
      c[gr * n + gc] = static_cast<int32_t>(v);
  }
}

// A zero point input (scalar, or 1-D of `per_len`) as a ZeroPoint; vectors are uploaded into `keep`.
Status ReadZeroPoint(OpContext& ctx, int index, const Tensor& of, int64_t per_len, const char* what, ZeroPoint* zp, Tensor* keep) {
  if (!ctx.has_input(index)) return Status::Ok();
  const Tensor& z = ctx.input(index);
  if (z.dtype() != of.dtype()) return ctx.Error(std::string(what) + " dtype " + DTypeName(z.dtype()) + " differs from its operand's");
  const bool scalar = z.numel() == 1 && z.rank() <= 1;
  if (!scalar && !(z.rank() == 1 && z.dim(0) == per_len))
    return ctx.Error(std::string(what) + " must be a scalar or 1-D of size " + std::to_string(per_len) + ", got " + ShapeToString(z.shape()));
  const std::vector<int64_t> v = z.ToInt64s();
  if (scalar) {
    zp->value = static_cast<int32_t>(v[0]);
    return Status::Ok();
  }
  std::vector<int32_t> values(v.begin(), v.end());
  QC_ASSIGN_OR_RETURN(*keep, ctx.cuda.Upload(Tensor::FromVector<int32_t>(values, {per_len})));
  zp->per = keep->device_data<int32_t>();
  zp->period = per_len;
  return Status::Ok();
}

template <typename T>
Status LaunchIntegerGemm(OpContext& ctx, const T* a, const T* b, int32_t* c, int64_t m, int64_t n, int64_t k, const ZeroPoint& a_zp,
                         const ZeroPoint& b_zp, const ScaleEpilogue& scale) {
  const int64_t grid_m = (m + kTileM - 1) / kTileM, grid_n = (n + kTileN - 1) / kTileN;
  if (grid_m > 65535 || grid_n > 0x7fffffff) return ctx.Decline("more than 65535 row tiles");
  const bool a_vector_loads = k % 16 == 0 && reinterpret_cast<uintptr_t>(a) % 16 == 0;
  IntegerGemmKernel<T><<<dim3(static_cast<unsigned>(grid_n), static_cast<unsigned>(grid_m)), kGemmThreads, 0, ctx.cuda.stream()>>>(
      a, b, c, m, n, k, a_vector_loads, a_zp, b_zp, scale);
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("IntegerGemmKernel");
  return Status::Ok();
}

// ---- The cuBLAS int8 path ----

// bt[n][k] = b[k][n] ^ flip: B [K, N] into cuBLAS's [N, K] int8 layout (32 x 32 tiles through
// shared memory, so reads and writes are both coalesced).
__global__ void TransposeToInt8Kernel(const uint8_t* b, int8_t* bt, int64_t k, int64_t n, uint8_t flip) {
  __shared__ uint8_t tile[32][33];
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * 32, n0 = static_cast<int64_t>(blockIdx.x) * 32;
  for (int r = threadIdx.y; r < 32; r += blockDim.y) {
    const int64_t kk = k0 + r, nn = n0 + threadIdx.x;
    if (kk < k && nn < n) tile[r][threadIdx.x] = b[kk * n + nn];
  }
  __syncthreads();
  for (int r = threadIdx.y; r < 32; r += blockDim.y) {
    const int64_t nn = n0 + r, kk = k0 + threadIdx.x;
    if (nn < n && kk < k) bt[nn * k + kk] = static_cast<int8_t>(tile[threadIdx.x][r] ^ flip);
  }
}

// out = in ^ 0x80808080 over `words` 32-bit words: uint8 codes minus 128 as int8.
__global__ void FlipToInt8Kernel(const uint32_t* in, uint32_t* out, int64_t words) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < words; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = in[i] ^ 0x80808080u;
}

// The W8A8 scales applied to cuBLAS's int32 products, one thread per output value.
__global__ void ScaleProductsKernel(const int32_t* c, int64_t m, int64_t n, ScaleEpilogue scale) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < m * n; e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    scale.Write(e / n, e % n, n, c[e]);
}

// B on the device, made by the op from the host B (the executor leaves B on the host: bit 1 of
// the kernel's host mask), once for a constant B: cuBLAS's int8 [N, K] for the cuBLAS path, else
// B as it is. A constant B so never has two device copies.
struct IntegerWeights : OpState {
  const void* source = nullptr;  // the host B it was made from
  bool transposed = false;
  bool cublas_declined = false;  // cuBLAS refused these shapes once: the WMMA kernel from then on
  Tensor b;
};

// Whether a zero point as ReadZeroPoint read it (absent: 0) is one value, the midpoint of the
// codes of its operand's type `of`.
bool IsMidpoint(const ZeroPoint& zp, DType of) { return zp.per == nullptr && zp.value == (of == DType::kUInt8 ? 128 : 0); }

// The device B for this call: kept in ctx.state for a constant B, else made for the call.
// `transposed`: cuBLAS's int8 [N, K] (flipped from uint8), else B's own bytes.
StatusOr<Tensor> DeviceWeights(OpContext& ctx, const Tensor& host_b, bool transposed, int64_t k, int64_t n) {
  const bool constant = ctx.constant[1];
  auto* kept = dynamic_cast<IntegerWeights*>(ctx.state.get());
  if (constant && kept != nullptr && kept->source == host_b.raw() && kept->transposed == transposed) return kept->b;
  QC_ASSIGN_OR_RETURN(Tensor b, ctx.cuda.Upload(host_b));
  if (transposed) {
    QC_ASSIGN_OR_RETURN(Tensor bt, ctx.cuda.Empty(DType::kInt8, {n, k}));
    const dim3 grid(static_cast<unsigned>((n + 31) / 32), static_cast<unsigned>((k + 31) / 32));
    TransposeToInt8Kernel<<<grid, dim3(32, 8), 0, ctx.cuda.stream()>>>(static_cast<const uint8_t*>(b.raw()), bt.mutable_device_data<int8_t>(), k,
                                                                        n, host_b.dtype() == DType::kUInt8 ? 0x80 : 0);
    QC_CUDA_RETURN_IF_LAUNCH_ERROR("TransposeToInt8Kernel");
    b = std::move(bt);  // the upload is freed in stream order
  }
  if (constant) {
    const bool declined = kept != nullptr && kept->cublas_declined;
    auto state = std::make_unique<IntegerWeights>();
    state->source = host_b.raw();
    state->transposed = transposed;
    state->cublas_declined = declined;
    state->b = b;
    ctx.state = std::move(state);
  }
  return b;
}

// Whether cuBLAS's int8 GEMM may take this product: midpoint zero points, one [m, k] x [k, n]
// product, IMMA's alignment (leading dimensions K and N multiples of 16 and 4, A's rows 16-byte
// aligned), and cuBLAS did not refuse this step before.
bool CublasInt8Eligible(OpContext& ctx, const Tensor& a, const Tensor& b, const MatMulPlan& p, int64_t rows, const ZeroPoint& a_zp,
                        const ZeroPoint& b_zp) {
  auto* kept = dynamic_cast<IntegerWeights*>(ctx.state.get());
  if (kept != nullptr && kept->cublas_declined) return false;
  const bool single = p.b_shared || p.batch() == 1;
  return single && p.a_offsets[0] == 0 && p.b_offsets[0] == 0 && IsMidpoint(a_zp, a.dtype()) && IsMidpoint(b_zp, b.dtype()) &&
         p.k % 16 == 0 && p.n % 4 == 0 && rows <= 0x7fffffff && p.n <= 0x7fffffff && p.k <= 0x7fffffff &&
         reinterpret_cast<uintptr_t>(a.raw()) % 16 == 0;
}

// The product through cuBLAS's int8 GEMM with `bt` (int8 [n, k]), into `c` (int32 [m, n]) or
// through `scale`; *done is false (nothing but A's conversion queued) when cuBLAS refuses it.
Status CublasInt8Gemm(OpContext& ctx, const Tensor& a, const Tensor& bt, int64_t m, int64_t n, int64_t k, int32_t* c,
                      const ScaleEpilogue& scale, bool* done) {
  *done = false;
  const int8_t* ap = static_cast<const int8_t*>(a.raw());
  Tensor flipped;
  if (a.dtype() == DType::kUInt8) {
    QC_ASSIGN_OR_RETURN(flipped, ctx.cuda.Empty(DType::kInt8, {m, k}));
    const int64_t words = m * k / 4;
    FlipToInt8Kernel<<<BlocksFor(words), kThreads, 0, ctx.cuda.stream()>>>(static_cast<const uint32_t*>(a.raw()),
                                                                         static_cast<uint32_t*>(flipped.mutable_raw()), words);
    QC_CUDA_RETURN_IF_LAUNCH_ERROR("FlipToInt8Kernel");
    ap = flipped.device_data<int8_t>();
  }
  Tensor products;
  if (c == nullptr) {
    QC_ASSIGN_OR_RETURN(products, ctx.cuda.Empty(DType::kInt32, {m, n}));
    c = products.mutable_device_data<int32_t>();
  }
  // Row-major C [m, n] = A [m, k] B [k, n] is column-major C^T = (Bt)^T A^T: Bt [n, k] row-major is
  // column-major k x n, transposed ("T"); A row-major is column-major k x m ("N").
  const int32_t alpha = 1, beta = 0;
  const cublasStatus_t status = ctx.cuda.blas().gemm_strided_batched_ex(
      ctx.cuda.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, bt.raw(), CUDA_R_8I,
      static_cast<int>(k), 0, ap, CUDA_R_8I, static_cast<int>(k), 0, &beta, c, CUDA_R_32I, static_cast<int>(n), 0, 1, CUBLAS_COMPUTE_32I,
      CUBLAS_GEMM_DEFAULT);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) return Status::Ok();
  QC_CUBLAS_RETURN_IF_ERROR(status);
  if (scale.col != nullptr) {
    ScaleProductsKernel<<<BlocksFor(m * n), kThreads, 0, ctx.cuda.stream()>>>(c, m, n, scale);
    QC_CUDA_RETURN_IF_LAUNCH_ERROR("ScaleProductsKernel");
  }
  *done = true;
  return Status::Ok();
}

// MatMulInteger into ctx.outputs[0]: int32, or with `col` and `row` the W8A8 output of `dtype`
// (`col` of N and `row` of one value per output row, both of `dtype`; declined otherwise).
Status RunMatMulInteger(OpContext& ctx, const Tensor* col, const Tensor* row, DType dtype) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.Error("inputs A and B are required");
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  for (const Tensor* x : {&a, &b})
    if (x->dtype() != DType::kInt8 && x->dtype() != DType::kUInt8) return ctx.Error("A and B must be int8 or uint8, got " + DTypeName(x->dtype()));
  // The tensor cores multiply operands of one signedness.
  if (a.dtype() != b.dtype()) return ctx.Decline("mixed int8 and uint8 operands");
  KernelContext kc{ctx.node, ctx.inputs, std::vector<Tensor>(ctx.outputs.size()), ctx.opset, nullptr};
  QC_ASSIGN_OR_RETURN(MatMulPlan p, PlanMatMul(kc, a.shape(), b.shape()));
  ZeroPoint a_zp, b_zp;
  Tensor a_zp_keep, b_zp_keep;
  QC_RETURN_IF_ERROR(ReadZeroPoint(ctx, 2, a, p.m, "a_zero_point", &a_zp, &a_zp_keep));
  QC_RETURN_IF_ERROR(ReadZeroPoint(ctx, 3, b, p.n, "b_zero_point", &b_zp, &b_zp_keep));
  ScaleEpilogue scale;
  if (col) {
    Shape row_shape = p.out_shape;
    if (!row_shape.empty()) row_shape.back() = 1;
    if (!IsKernelFloat(dtype) || col->dtype() != dtype || row->dtype() != dtype || col->shape() != Shape{p.n} || row->shape() != row_shape)
      return ctx.Decline("scales not a " + DTypeName(dtype) + " [N] column vector and a [..., 1] row vector of the output");
    if (!p.b_shared && p.batch() > 1) return ctx.Decline("batched B with scales");
  }
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, col ? dtype : DType::kInt32, p.out_shape));
  if (y->numel() == 0) return Status::Ok();
  if (col) scale = {col->raw(), row->raw(), y->mutable_raw(), dtype};
  int32_t* yp = col ? nullptr : y->mutable_device_data<int32_t>();
  // A's matrices are consecutive when B is shared: one [batch * m, k] x [k, n] product.
  const int64_t products = p.b_shared ? 1 : p.batch();
  const int64_t rows = p.b_shared ? p.batch() * p.m : p.m;
  if (CublasInt8Eligible(ctx, a, b, p, rows, a_zp, b_zp)) {
    QC_ASSIGN_OR_RETURN(Tensor bt, DeviceWeights(ctx, b, /*transposed=*/true, p.k, p.n));
    bool done = false;
    QC_RETURN_IF_ERROR(CublasInt8Gemm(ctx, a, bt, rows, p.n, p.k, yp, scale, &done));
    if (done) return Status::Ok();
    if (auto* kept = dynamic_cast<IntegerWeights*>(ctx.state.get())) kept->cublas_declined = true;
  }
  QC_ASSIGN_OR_RETURN(const Tensor b_device, DeviceWeights(ctx, b, /*transposed=*/false, p.k, p.n));
  for (int64_t t = 0; t < products; ++t) {
    int32_t* out = yp ? yp + t * rows * p.n : nullptr;
    if (a.dtype() == DType::kUInt8) {
      QC_RETURN_IF_ERROR(LaunchIntegerGemm(ctx, a.device_data<uint8_t>() + p.a_offsets[t], b_device.device_data<uint8_t>() + p.b_offsets[t], out, rows,
                                           p.n, p.k, a_zp, b_zp, scale));
    } else {
      QC_RETURN_IF_ERROR(LaunchIntegerGemm(ctx, a.device_data<int8_t>() + p.a_offsets[t], b_device.device_data<int8_t>() + p.b_offsets[t], out, rows,
                                           p.n, p.k, a_zp, b_zp, scale));
    }
    if (!ctx.declined.empty()) return Status::Ok();
  }
  return Status::Ok();
}

}  // namespace

// B and the zero points (inputs 1-3) are read on the host: B is uploaded by the op (DeviceWeights).
Status MatMulIntegerCuda(OpContext& ctx) { return RunMatMulInteger(ctx, nullptr, nullptr, DType::kInt32); }

Status MatMulIntegerScaledCuda(OpContext& ctx, const Tensor& col, const Tensor& row, DType dtype) { return RunMatMulInteger(ctx, &col, &row, dtype); }

}  // namespace qc::cuda
