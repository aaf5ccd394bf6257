// Gather, GatherND and com.microsoft.GatherBlockQuantized (tied-embedding lookups) on the GPU
// (runtime/cpu/gather_ops.cpp, gather_block_quantized.cpp: the numeric spec). All three read their
// indices on the device: token ids need no copy to the host per call, GatherND's index tuples
// (which the dynamo exports build on the device from Range/Expand/Concat) need no wait for the
// GPU mid-run, and a CUDA graph can replay the lookup with new indices. An index outside
// [-n, n) sets kIndexOutOfRange, which fails the run (Context::TakeDeviceErrors).
#include "runtime/cuda/ops/common.cuh"

namespace qc::cuda {
namespace {

// out[o, j, i] = data[o, idx[j], i] over [outer, n_idx, inner] elements of `T` (bytes moved as is).
template <typename T, typename I>
__global__ void GatherKernel(const T* data, const I* idx, T* out, int64_t outer, int64_t n_idx, int64_t inner, int64_t axis_len,
                             unsigned* errors) {
  const int64_t n = outer * n_idx * inner;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n; e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e % inner;
    const int64_t j = (e / inner) % n_idx;
    const int64_t o = e / (inner * n_idx);
    const int64_t k = AxisIndex(idx, j, axis_len, errors);
    out[e] = k < 0 ? T{} : data[(o * axis_len + k) * inner + i];
  }
}

__device__ __forceinline__ int ReadCode(const uint8_t* p, int64_t i, int bits) {
  const int64_t bit = i * bits;
  return (p[bit / 8] >> (bit % 8)) & ((1 << bits) - 1);
}

// One thread per output value: (code - zero point) * scale of its block, in float32, stored in
// the scales' type T.
template <typename T, typename I>
__global__ void GatherBlockQuantizedKernel(const uint8_t* data, const T* scales, const uint8_t* zero_points, const I* idx,
                                           T* out, int64_t n_idx, int64_t rows, int64_t lines, int64_t packed, int64_t cols,
                                           int64_t n_blocks, int64_t zp_line_bytes, int bits, int64_t block_size, unsigned* errors) {
  const int64_t n = n_idx * lines * cols;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n; e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = e % cols;
    const int64_t i = (e / cols) % lines;
    const int64_t j = e / (cols * lines);
    const int64_t k = AxisIndex(idx, j, rows, errors);
    if (k < 0) {
      out[e] = StoreValue<T>(0.0f);
      continue;
    }
    const int64_t line = k * lines + i;
    const int64_t blk = c / block_size;
    const int zp = zero_points ? ReadCode(zero_points + line * zp_line_bytes, blk, bits) : 1 << (bits - 1);
    out[e] = StoreValue<T>(static_cast<float>(ReadCode(data + line * packed, c, bits) - zp) * LoadValue(scales[line * n_blocks + blk]));
  }
}

// GatherND's geometry: index tuples of `k` coordinates address axes b..b+k-1 of data.
constexpr int kMaxGatherNDRank = 8;
struct GatherNDShape {
  int64_t tuples = 1, slice = 1, batch_stride = 0;  // tuples per batch, elements per slice
  int k = 0, b = 0;
  int64_t dims[kMaxGatherNDRank] = {}, strides[kMaxGatherNDRank] = {};  // data's
};

// out[row * slice + i] = data[offset(row) + i], row = batch * tuples + tuple; a tuple with a
// coordinate out of range gives zeros (and kIndexOutOfRange).
template <typename T, typename I>
__global__ void GatherNDKernel(const T* data, const I* idx, T* out, int64_t rows, GatherNDShape g, unsigned* errors) {
  const int64_t n = rows * g.slice;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n; e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = e / g.slice;
    int64_t off = (row / g.tuples) * g.batch_stride;
    bool valid = true;
    for (int j = 0; j < g.k; ++j) {
      const int axis = g.b + j;
      const int64_t v = AxisIndex(idx, row * g.k + j, g.dims[axis], errors);
      valid &= v >= 0;
      off += v * g.strides[axis];
    }
    out[e] = valid ? data[off + e % g.slice] : T{};
  }
}

}  // namespace

Status GatherCuda(OpContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.Error("expected 2 inputs");
  const Tensor& data = ctx.input(0);
  const Tensor& indices = ctx.input(1);
  if (data.rank() == 0) return ctx.Error("data must have rank >= 1");
  int64_t axis = 0;
  if (!NormalizeAxis(ctx.node.GetInt("axis", 0), data.rank(), &axis)) return ctx.Error("axis out of range");
  const int size = ElementSize(data.dtype());
  if (size != 1 && size != 2 && size != 4 && size != 8) return ctx.Decline("dtype " + DTypeName(data.dtype()));
  if (indices.dtype() != DType::kInt64 && indices.dtype() != DType::kInt32)
    return ctx.Error("indices must be int64 or int32, got " + DTypeName(indices.dtype()));
  Shape out_shape(data.shape().begin(), data.shape().begin() + axis);
  out_shape.insert(out_shape.end(), indices.shape().begin(), indices.shape().end());
  out_shape.insert(out_shape.end(), data.shape().begin() + axis + 1, data.shape().end());
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, data.dtype(), out_shape));
  if (y->numel() == 0) return Status::Ok();
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= data.dim(d);
  for (int64_t d = axis + 1; d < data.rank(); ++d) inner *= data.dim(d);
  const int64_t n = y->numel(), n_idx = indices.numel(), len = data.dim(axis);
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    auto run = [&](const auto* ip) {
      GatherKernel<<<BlocksFor(n), kThreads, 0, ctx.cuda.stream()>>>(static_cast<const T*>(data.raw()), ip, static_cast<T*>(y->mutable_raw()),
                                                                     outer, n_idx, inner, len, ctx.cuda.device_errors());
    };
    if (indices.dtype() == DType::kInt64) run(indices.device_data<int64_t>());
    else run(indices.device_data<int32_t>());
  };
  DispatchBytes(size, launch);  // size checked above
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("GatherKernel");
  return Status::Ok();
}

Status GatherNDCuda(OpContext& ctx) {
  if (ctx.num_inputs() != 2 || !ctx.has_input(0) || !ctx.has_input(1)) return ctx.Error("expected 2 inputs");
  const Tensor& data = ctx.input(0);
  const Tensor& indices = ctx.input(1);
  const int size = ElementSize(data.dtype());
  if (size != 1 && size != 2 && size != 4 && size != 8) return ctx.Decline("dtype " + DTypeName(data.dtype()));
  if (indices.dtype() != DType::kInt64 && indices.dtype() != DType::kInt32)
    return ctx.Error("indices must be int64 or int32, got " + DTypeName(indices.dtype()));
  const int r = static_cast<int>(data.rank()), q = static_cast<int>(indices.rank());
  const int64_t b = ctx.node.GetInt("batch_dims", 0);
  if (r < 1 || q < 1) return ctx.Error("data and indices must have rank >= 1");
  if (b < 0 || b >= std::min(r, q)) return ctx.Error("batch_dims " + std::to_string(b) + " must be in [0, min(rank(data), rank(indices)))");
  for (int d = 0; d < b; ++d)
    if (data.dim(d) != indices.dim(d))
      return ctx.Error("batch dimension " + std::to_string(d) + " differs: data " + ShapeToString(data.shape()) + ", indices " +
                       ShapeToString(indices.shape()));
  const int64_t k = indices.dim(q - 1);
  if (k < 1 || k > r - b) return ctx.Error("indices.shape[-1] = " + std::to_string(k) + " must be in [1, " + std::to_string(r - b) + "]");
  if (r > kMaxGatherNDRank) return ctx.Decline("data of rank " + std::to_string(r));
  Shape shape(indices.shape().begin(), indices.shape().end() - 1);
  shape.insert(shape.end(), data.shape().begin() + b + k, data.shape().end());
  GatherNDShape g;
  g.k = static_cast<int>(k);
  g.b = static_cast<int>(b);
  int64_t batches = 1;
  for (int d = 0; d < b; ++d) batches *= data.dim(d);
  for (int d = static_cast<int>(b); d < q - 1; ++d) g.tuples *= indices.dim(d);
  for (int d = static_cast<int>(b + k); d < r; ++d) g.slice *= data.dim(d);
  for (int d = r - 1; d >= 0; --d) {
    g.dims[d] = data.dim(d);
    g.strides[d] = d == r - 1 ? 1 : g.strides[d + 1] * data.dim(d + 1);
  }
  g.batch_stride = b > 0 ? g.strides[b - 1] : 0;
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, data.dtype(), shape));
  if (y->numel() == 0) return Status::Ok();
  const int64_t rows = batches * g.tuples;
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    auto run = [&](const auto* ip) {
      GatherNDKernel<<<BlocksFor(rows * g.slice), kThreads, 0, ctx.cuda.stream()>>>(static_cast<const T*>(data.raw()), ip,
                                                                                   static_cast<T*>(y->mutable_raw()), rows, g,
                                                                                   ctx.cuda.device_errors());
    };
    if (indices.dtype() == DType::kInt64) run(indices.device_data<int64_t>());
    else run(indices.device_data<int32_t>());
  };
  DispatchBytes(size, launch);  // size checked above
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("GatherNDKernel");
  return Status::Ok();
}

Status GatherBlockQuantizedCuda(OpContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1) || !ctx.has_input(2)) return ctx.Error("inputs data, indices and scales are required");
  const Tensor& data = ctx.input(0);
  const Tensor& scales = ctx.input(2);
  const int bits = static_cast<int>(ctx.node.GetInt("bits", 4));
  const int64_t block_size = ctx.node.GetInt("block_size", 128);
  if (data.dtype() != DType::kUInt8 || !IsKernelFloat(scales.dtype())) return ctx.Decline("data not uint8 or scales not a float type");
  if ((bits != 2 && bits != 4 && bits != 8) || block_size < 16 || (block_size & (block_size - 1)) != 0 || data.rank() < 2)
    return ctx.Decline("bits/block_size/rank the CPU kernel validates");
  int64_t gather_axis = 0, quantize_axis = 0;
  if (!NormalizeAxis(ctx.node.GetInt("gather_axis", 0), data.rank(), &gather_axis) ||
      !NormalizeAxis(ctx.node.GetInt("quantize_axis", 1), data.rank(), &quantize_axis) || gather_axis != 0 ||
      quantize_axis != data.rank() - 1)
    return ctx.Decline("axes the CPU kernel validates");
  const int64_t rows = data.dim(0), packed = data.dim(-1), cols = packed * (8 / bits);
  int64_t lines = 1;
  for (int d = 1; d + 1 < data.rank(); ++d) lines *= data.dim(d);
  const int64_t n_blocks = (cols + block_size - 1) / block_size;
  Shape want = data.shape();
  want.back() = n_blocks;
  if (scales.shape() != want) return ctx.Decline("scales shape");
  const uint8_t* zp = nullptr;
  const int64_t zp_line_bytes = (n_blocks * bits + 7) / 8;
  if (ctx.has_input(3)) {
    want.back() = zp_line_bytes;
    if (ctx.input(3).dtype() != DType::kUInt8 || ctx.input(3).shape() != want) return ctx.Decline("zero_points dtype/shape");
    zp = ctx.input(3).device_data<uint8_t>();
  }
  const Tensor& indices = ctx.input(1);
  if (indices.dtype() != DType::kInt64 && indices.dtype() != DType::kInt32)
    return ctx.Error("indices must be int64 or int32, got " + DTypeName(indices.dtype()));
  Shape out_shape = indices.shape();
  out_shape.insert(out_shape.end(), data.shape().begin() + 1, data.shape().end() - 1);
  out_shape.push_back(cols);
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, scales.dtype(), out_shape));
  if (y->numel() == 0) return Status::Ok();
  DispatchFloat(scales.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto run = [&](const auto* ip) {
      GatherBlockQuantizedKernel<<<BlocksFor(y->numel()), kThreads, 0, ctx.cuda.stream()>>>(
          data.device_data<uint8_t>(), scales.device_data<T>(), zp, ip, y->mutable_device_data<T>(), indices.numel(), rows, lines,
          packed, cols, n_blocks, zp_line_bytes, bits, block_size, ctx.cuda.device_errors());
    };
    if (indices.dtype() == DType::kInt64) run(indices.device_data<int64_t>());
    else run(indices.device_data<int32_t>());
  });
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("GatherBlockQuantizedKernel");
  return Status::Ok();
}

}  // namespace qc::cuda
