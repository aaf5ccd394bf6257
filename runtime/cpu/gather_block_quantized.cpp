// com.microsoft.GatherBlockQuantized with uint8 data: Gather of rows of a block-quantized table,
// dequantized on the way out, per ONNX Runtime's ContribOperators.md (the embedding lookup that
// reads a tied head's MatMulNBits codes). One reference kernel: it only copies the gathered rows.
#include <algorithm>
#include <string>
#include <vector>

#include "runtime/cpu/kernel.h"
#include "runtime/cpu/shape_ops_internal.h"

namespace qc {
namespace {

// data [rows, d1 .. dm, packed] viewed as rows x lines x packed bytes; one line is `cols` codes of
// the last (quantized) axis with its n_blocks scales and zero points.
struct GbqArgs {
  int64_t bits = 4, block_size = 128;
  int64_t rows = 0, lines = 1, packed = 0, cols = 0, n_blocks = 0, zp_line_bytes = 0;
  std::vector<int64_t> indices;  // normalized to [0, rows)
  Shape out_shape;               // indices.shape + data.shape[1:-1] + [cols]
  const uint8_t* data = nullptr;
  std::vector<float> scales;     // [rows * lines * n_blocks]
  const uint8_t* zero_points = nullptr;  // [rows * lines, zp_line_bytes], bit-packed like data
  DType out_dtype = DType::kFloat32;
};

// `bits`-wide value number `i` of a little-endian bit stream (2, 4 and 8 never straddle a byte).
inline int32_t ReadCode(const uint8_t* p, int64_t i, int64_t bits) {
  const int64_t bit = i * bits;
  return (p[bit / 8] >> (bit % 8)) & ((1 << bits) - 1);
}

StatusOr<GbqArgs> ParseGbq(const KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(3, 4));
  if (!ctx.has_input(1) || !ctx.has_input(2)) return ctx.Error("inputs indices and scales are required");
  GbqArgs r;
  r.bits = ctx.node.GetInt("bits", 4);
  r.block_size = ctx.node.GetInt("block_size", 128);
  if (r.bits != 2 && r.bits != 4 && r.bits != 8)
    return ctx.Error("bits must be 2, 4 or 8 for uint8 data, got " + std::to_string(r.bits));
  if (r.block_size < 16 || (r.block_size & (r.block_size - 1)) != 0)
    return ctx.Error("block_size must be a power of two >= 16, got " + std::to_string(r.block_size));

  const Tensor& data = ctx.input(0);
  // ONNX Runtime also takes int4/uint4 tensors as data; our IR has no 4-bit element types.
  if (data.dtype() != DType::kUInt8) return ctx.UnsupportedDType(data.dtype());
  if (data.rank() < 2) return ctx.Error("data must have rank >= 2, got " + ShapeToString(data.shape()));
  QC_ASSIGN_OR_RETURN(int gather_axis, shape_ops::NormalizeAxis(ctx, ctx.node.GetInt("gather_axis", 0), data.rank(),
                                                                "gather_axis"));
  QC_ASSIGN_OR_RETURN(int quantize_axis, shape_ops::NormalizeAxis(ctx, ctx.node.GetInt("quantize_axis", 1),
                                                                  data.rank(), "quantize_axis"));
  if (gather_axis != 0) return ctx.Error("gather_axis must be 0 for uint8 data");
  if (quantize_axis != data.rank() - 1) return ctx.Error("quantize_axis must be the last axis for uint8 data");
  r.rows = data.dim(0);
  r.packed = data.dim(-1);
  for (int d = 1; d + 1 < data.rank(); ++d) r.lines *= data.dim(d);
  r.cols = r.packed * (8 / r.bits);
  r.n_blocks = (r.cols + r.block_size - 1) / r.block_size;
  r.data = data.data<uint8_t>();

  const Tensor& scales = ctx.input(2);
  if (scales.dtype() != DType::kFloat32 && scales.dtype() != DType::kFloat16)
    return ctx.Error("scales must be float32 or float16, got " + DTypeName(scales.dtype()));
  Shape want = data.shape();
  want.back() = r.n_blocks;
  if (scales.shape() != want)
    return ctx.Error("scales must have shape " + ShapeToString(want) + " (data's, with ceil(" + std::to_string(r.cols) +
                     " / block_size) blocks last), got " + ShapeToString(scales.shape()));
  r.scales = scales.ToFloats();
  r.out_dtype = scales.dtype();

  if (ctx.has_input(3)) {
    const Tensor& zp = ctx.input(3);
    if (zp.dtype() != DType::kUInt8) return ctx.Error("zero_points must be uint8 like data, got " + DTypeName(zp.dtype()));
    r.zp_line_bytes = (r.n_blocks * r.bits + 7) / 8;  // packed like data along the last axis
    want.back() = r.zp_line_bytes;
    if (zp.shape() != want)
      return ctx.Error("zero_points must have shape " + ShapeToString(want) + ", got " + ShapeToString(zp.shape()));
    r.zero_points = zp.data<uint8_t>();
  }

  const Tensor& indices = ctx.input(1);
  if (indices.dtype() != DType::kInt64 && indices.dtype() != DType::kInt32)
    return ctx.Error("indices must be int64 or int32, got " + DTypeName(indices.dtype()));
  r.indices = indices.ToInt64s();
  // Like Gather and ONNX Runtime 1.30 ("indices element out of data bounds"); later ORT versions
  // write a row of zeros instead, which would silently stand for a token the table does not have.
  for (int64_t& v : r.indices) {
    if (v < -r.rows || v >= r.rows)
      return ctx.Error("index " + std::to_string(v) + " is out of range for " + std::to_string(r.rows) +
                       " rows (expected [" + std::to_string(-r.rows) + ", " + std::to_string(r.rows - 1) + "])");
    if (v < 0) v += r.rows;
  }
  r.out_shape = indices.shape();
  r.out_shape.insert(r.out_shape.end(), data.shape().begin() + 1, data.shape().end() - 1);
  r.out_shape.push_back(r.cols);
  QC_RETURN_IF_ERROR(shape_ops::CheckOutputShape(ctx, r.out_shape, "output"));
  return r;
}

// Dequantizes line `line` of the table into out[0, cols): (q - zero_point) * scale per block.
void DequantLine(const GbqArgs& r, int64_t line, float* out) {
  const uint8_t* codes = r.data + line * r.packed;
  const float* scales = r.scales.data() + line * r.n_blocks;
  const int32_t default_zp = 1 << (r.bits - 1);  // MatMulNBits' convention for absent zero points
  for (int64_t blk = 0; blk < r.n_blocks; ++blk) {
    const int32_t zp = r.zero_points ? ReadCode(r.zero_points + line * r.zp_line_bytes, blk, r.bits) : default_zp;
    const int64_t end = std::min(r.cols, (blk + 1) * r.block_size);
    for (int64_t c = blk * r.block_size; c < end; ++c)
      out[c] = static_cast<float>(ReadCode(codes, c, r.bits) - zp) * scales[blk];
  }
}

}  // namespace

Status GatherBlockQuantizedRef(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(GbqArgs r, ParseGbq(ctx));
  Tensor out = Tensor::Uninitialized(r.out_dtype, r.out_shape);
  std::vector<float> line(r.cols);
  const int64_t n = static_cast<int64_t>(r.indices.size());
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < r.lines; ++i) {
      const int64_t o = (j * r.lines + i) * r.cols;
      if (r.out_dtype == DType::kFloat32) {
        DequantLine(r, r.indices[j] * r.lines + i, out.mutable_data<float>() + o);
        continue;
      }
      DequantLine(r, r.indices[j] * r.lines + i, line.data());
      uint16_t* half = static_cast<uint16_t*>(out.mutable_raw()) + o;
      for (int64_t c = 0; c < r.cols; ++c) half[c] = FloatToHalf(line[c]);
    }
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

}  // namespace qc
