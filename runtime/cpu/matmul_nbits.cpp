// com.microsoft.MatMulNBits: A times a block-quantised (2..8-bit) weight, per ONNX Runtime's
// ContribOperators.md; the reference dequantises the whole weight, the fast kernel one slab of
// output columns at a time and multiplies each slab with the GEMM.
#include <algorithm>
#include <string>
#include <vector>

#include "runtime/cpu/gemm_core.h"
#include "runtime/cpu/kernel.h"
#include "runtime/cpu/matmul_shape.h"

namespace qc {
namespace {

struct NBitsArgs {
  int64_t k = 0, n = 0, bits = 4, block_size = 0, k_blocks = 0, blob_size = 0;
  int64_t m = 0;  // rows of A flattened over its leading dims
  Shape out_shape;
  const uint8_t* b = nullptr;
  std::vector<float> scales;         // [n * k_blocks]
  const uint8_t* zp_packed = nullptr;  // [n, zp_row_bytes] bit-packed like B
  int64_t zp_row_bytes = 0;
  std::vector<float> zp_float;       // [n * k_blocks] when zero points are given as floats
  const int32_t* g_idx = nullptr;    // [k] block of each row of the weight
  const float* bias = nullptr;       // [n]
};

// `bits` wide value number `i` of a little-endian bit stream (values never straddle the end).
inline int32_t ReadBits(const uint8_t* p, int64_t i, int64_t bits) {
  const int64_t bit = i * bits;
  uint32_t v = p[bit / 8];
  if ((bit % 8) + bits > 8) v |= static_cast<uint32_t>(p[bit / 8 + 1]) << 8;
  return static_cast<int32_t>((v >> (bit % 8)) & ((1u << bits) - 1));
}

StatusOr<NBitsArgs> ParseNBits(const KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(3, 6));
  if (!ctx.has_input(1) || !ctx.has_input(2)) return ctx.Error("inputs B and scales are required");
  if (ctx.num_outputs() < 1) return ctx.Error("expected 1 output");
  NBitsArgs r;
  if (!ctx.node.HasAttr("K") || !ctx.node.HasAttr("N") || !ctx.node.HasAttr("block_size"))
    return ctx.Error("attributes K, N and block_size are required");
  r.k = ctx.node.GetInt("K", 0);
  r.n = ctx.node.GetInt("N", 0);
  r.bits = ctx.node.GetInt("bits", 4);
  r.block_size = ctx.node.GetInt("block_size", 0);
  if (r.bits < 2 || r.bits > 8) return ctx.Error("bits must be in 2..8, got " + std::to_string(r.bits));
  if (r.block_size < 16 || (r.block_size & (r.block_size - 1)) != 0)
    return ctx.Error("block_size must be a power of two >= 16, got " + std::to_string(r.block_size));
  if (r.k <= 0 || r.n <= 0 || r.k > (int64_t{1} << 31) || r.n > (int64_t{1} << 31))
    return ctx.Error("K and N must be positive, got K=" + std::to_string(r.k) + " N=" + std::to_string(r.n));
  r.k_blocks = (r.k + r.block_size - 1) / r.block_size;
  r.blob_size = r.block_size * r.bits / 8;

  const Tensor& a = ctx.input(0);
  if (a.dtype() != DType::kFloat32) return ctx.UnsupportedDType(a.dtype());
  if (a.rank() < 1 || a.dim(-1) != r.k)
    return ctx.Error("A's last dimension must be K=" + std::to_string(r.k) + ", got " + ShapeToString(a.shape()));
  r.m = a.numel() / r.k;
  r.out_shape = a.shape();
  r.out_shape.back() = r.n;
  if (r.m > kMaxOutputElements / r.n) return ctx.Error("output too large");

  const Tensor& b = ctx.input(1);
  if (b.dtype() != DType::kUInt8) return ctx.Error("B must be uint8, got " + DTypeName(b.dtype()));
  if (b.numel() != r.n * r.k_blocks * r.blob_size || b.rank() < 1 || b.dim(0) != r.n)
    return ctx.Error("B must have shape [N, k_blocks, blob_size] = [" + std::to_string(r.n) + ", " +
                     std::to_string(r.k_blocks) + ", " + std::to_string(r.blob_size) + "], got " +
                     ShapeToString(b.shape()));
  r.b = b.data<uint8_t>();

  const Tensor& scales = ctx.input(2);
  if (scales.dtype() != DType::kFloat32 && scales.dtype() != DType::kFloat16)
    return ctx.Error("scales must be float32 or float16, got " + DTypeName(scales.dtype()));
  if (scales.numel() != r.n * r.k_blocks)
    return ctx.Error("scales must have N * k_blocks = " + std::to_string(r.n * r.k_blocks) + " elements, got " +
                     ShapeToString(scales.shape()));
  r.scales = scales.ToFloats();

  if (ctx.has_input(3)) {
    const Tensor& zp = ctx.input(3);
    if (zp.dtype() == DType::kUInt8) {
      r.zp_row_bytes = (r.k_blocks * r.bits + 7) / 8;
      if (zp.numel() != r.n * r.zp_row_bytes)
        return ctx.Error("packed zero_points must have shape [N, ceil(k_blocks * bits / 8)] = [" +
                         std::to_string(r.n) + ", " + std::to_string(r.zp_row_bytes) + "], got " +
                         ShapeToString(zp.shape()));
      r.zp_packed = zp.data<uint8_t>();
    } else if (zp.dtype() == DType::kFloat32 || zp.dtype() == DType::kFloat16) {
      if (zp.numel() != r.n * r.k_blocks)
        return ctx.Error("float zero_points must have N * k_blocks elements, got " + ShapeToString(zp.shape()));
      r.zp_float = zp.ToFloats();
    } else {
      return ctx.Error("zero_points must be uint8 or float, got " + DTypeName(zp.dtype()));
    }
  }
  if (ctx.has_input(4)) {
    const Tensor& g = ctx.input(4);
    if (g.dtype() != DType::kInt32 || g.numel() != r.k)
      return ctx.Error("g_idx must be int32 with K elements, got " + DTypeName(g.dtype()) + " " +
                       ShapeToString(g.shape()));
    r.g_idx = g.data<int32_t>();
    for (int64_t i = 0; i < r.k; ++i)
      if (r.g_idx[i] < 0 || r.g_idx[i] >= r.k_blocks)
        return ctx.Error("g_idx[" + std::to_string(i) + "] = " + std::to_string(r.g_idx[i]) +
                         " outside [0, k_blocks)");
  }
  if (ctx.has_input(5)) {
    const Tensor& bias = ctx.input(5);
    if (bias.dtype() != DType::kFloat32 || bias.numel() != r.n)
      return ctx.Error("bias must be float32 of shape [N], got " + DTypeName(bias.dtype()) + " " +
                       ShapeToString(bias.shape()));
    r.bias = bias.data<float>();
  }
  return r;
}

// Dequantises weight rows (output columns) [n0, n1) into w[(n - n0) * k + kk]: (q - zp) * scale.
void DequantRows(const NBitsArgs& r, int64_t n0, int64_t n1, float* w) {
  const int32_t default_zp = 1 << (r.bits - 1);
  for (int64_t n = n0; n < n1; ++n) {
    float* wr = w + (n - n0) * r.k;
    const uint8_t* brow = r.b + n * r.k_blocks * r.blob_size;
    for (int64_t kk = 0; kk < r.k; ++kk) {
      const int64_t stored_blk = kk / r.block_size;
      const int64_t blk = r.g_idx ? r.g_idx[kk] : stored_blk;
      const int32_t q = ReadBits(brow + stored_blk * r.blob_size, kk % r.block_size, r.bits);
      const int64_t p = n * r.k_blocks + blk;
      float zp = static_cast<float>(default_zp);
      if (r.zp_packed) zp = static_cast<float>(ReadBits(r.zp_packed + n * r.zp_row_bytes, blk, r.bits));
      else if (!r.zp_float.empty()) zp = r.zp_float[p];
      wr[kk] = (static_cast<float>(q) - zp) * r.scales[p];
    }
  }
}

}  // namespace

Status MatMulNBitsRef(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(NBitsArgs r, ParseNBits(ctx));
  std::vector<float> w(r.n * r.k);  // [N, K]
  DequantRows(r, 0, r.n, w.data());
  const float* a = ctx.input(0).data<float>();
  Tensor y(DType::kFloat32, r.out_shape);
  float* yp = y.mutable_data<float>();
  for (int64_t i = 0; i < r.m; ++i)
    for (int64_t j = 0; j < r.n; ++j) {
      double s = 0;
      for (int64_t kk = 0; kk < r.k; ++kk) s += static_cast<double>(a[i * r.k + kk]) * w[j * r.k + kk];
      if (r.bias) s += r.bias[j];
      yp[i * r.n + j] = static_cast<float>(s);
    }
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

Status MatMulNBitsFast(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(NBitsArgs r, ParseNBits(ctx));
  const float* a = ctx.input(0).data<float>();
  Tensor y(DType::kFloat32, r.out_shape);
  float* yp = y.mutable_data<float>();
  // A slab of about 4 MiB of dequantised weight stays in L2/L3 while the GEMM consumes it.
  const int64_t slab = std::max<int64_t>(64, (int64_t{1} << 20) / r.k / 16 * 16);
  std::vector<float> w(std::min(slab, r.n) * r.k);
  for (int64_t n0 = 0; n0 < r.n; n0 += slab) {
    const int64_t n1 = std::min(r.n, n0 + slab);
    const int64_t rows = n1 - n0;
    // 16 weight rows per task: enough work per thread, fine-grained enough to balance.
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t c = 0; c < (rows + 15) / 16; ++c) {
      const int64_t s = n0 + c * 16;
      DequantRows(r, s, std::min(n1, s + 16), w.data() + (s - n0) * r.k);
    }
    // Y[:, n0:n1] = A [m, K] x W[n0:n1, :]^T
    GemmF32(false, true, r.m, rows, r.k, 1.0f, a, r.k, w.data(), r.k, 0.0f, yp + n0, r.n, true);
  }
  if (r.bias) {
#pragma omp parallel for schedule(static) if (r.m * r.n > 65536)
    for (int64_t i = 0; i < r.m; ++i)
      for (int64_t j = 0; j < r.n; ++j) yp[i * r.n + j] += r.bias[j];
  }
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

}  // namespace qc
