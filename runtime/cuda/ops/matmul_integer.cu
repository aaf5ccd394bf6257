// MatMulInteger on the GPU: int8/uint8 tensor-core products (WMMA, int32 accumulation) with the
// zero points applied afterwards, exactly the integer result of runtime/cpu/matmul_quantize.cpp's
// MatMulIntegerRef (the numeric spec):
//   sum_k (a - a_zp)(b - b_zp) = sum_k a b - b_zp sum_k a - a_zp sum_k b + K a_zp b_zp,
// every term in wrapping 32-bit arithmetic, which is what the CPU's int64 sum cast to int32 keeps.
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
  for (int64_t t = 0; t < products; ++t) {
    int32_t* out = yp ? yp + t * rows * p.n : nullptr;
    if (a.dtype() == DType::kUInt8) {
      QC_RETURN_IF_ERROR(LaunchIntegerGemm(ctx, a.device_data<uint8_t>() + p.a_offsets[t], b.device_data<uint8_t>() + p.b_offsets[t], out, rows,
                                           p.n, p.k, a_zp, b_zp, scale));
    } else {
      QC_RETURN_IF_ERROR(LaunchIntegerGemm(ctx, a.device_data<int8_t>() + p.a_offsets[t], b.device_data<int8_t>() + p.b_offsets[t], out, rows,
                                           p.n, p.k, a_zp, b_zp, scale));
    }
    if (!ctx.declined.empty()) return Status::Ok();
  }
  return Status::Ok();
}

}  // namespace

// Zero points (inputs 2, 3) are read on the host.
Status MatMulIntegerCuda(OpContext& ctx) { return RunMatMulInteger(ctx, nullptr, nullptr, DType::kInt32); }

Status MatMulIntegerScaledCuda(OpContext& ctx, const Tensor& col, const Tensor& row, DType dtype) { return RunMatMulInteger(ctx, &col, &row, dtype); }

}  // namespace qc::cuda
