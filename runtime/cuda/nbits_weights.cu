// Upload of MatMulNBits weights (nbits_weights.h), with the CPU kernel's input checks.
#include "runtime/cuda/nbits_weights.h"

#include <string>
#include <utility>

#include "runtime/cuda/cuda_check.h"

namespace qc::cuda {
namespace {

Status NodeError(const Node& node, const std::string& message) {
  return InvalidArgument(node.Describe() + ": " + message);
}

// The copy goes on `stream`, the one whose kernels may still read or write the recycled block (the
// caching allocator's reuse is ordered by that stream only: a plain cudaMemcpy on the legacy stream
// is not ordered against a non-blocking stream, so a pending kernel could overwrite the weights).
// The sync lets `data` be a temporary.
StatusOr<DeviceBuffer> CopyToDevice(const void* data, size_t bytes, cudaStream_t stream, CachingAllocator& allocator) {
  QC_ASSIGN_OR_RETURN(DeviceBuffer buf, allocator.Allocate(bytes));
  QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(buf.data(), data, bytes, cudaMemcpyHostToDevice, stream));
  QC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return std::move(buf);  // explicit: nvcc does not apply C++20 implicit move into StatusOr
}

// Float scales, zero points or bias (float32, float16 or bfloat16: IsComputeFloat) as the
// kernels' float32, widened exactly.
StatusOr<DeviceBuffer> CopyFloats(const Tensor& t, cudaStream_t stream, CachingAllocator& allocator) {
  if (t.dtype() == DType::kFloat32) return CopyToDevice(t.raw(), t.numel() * sizeof(float), stream, allocator);
  const std::vector<float> f = t.ToFloats();
  return CopyToDevice(f.data(), f.size() * sizeof(float), stream, allocator);
}

}  // namespace

StatusOr<NBitsWeights> NBitsWeights::Upload(const Node& node, const std::vector<const Tensor*>& inputs,
                                            cudaStream_t stream, CachingAllocator& allocator) {
  auto input = [&](size_t i) -> const Tensor* { return i < inputs.size() ? inputs[i] : nullptr; };
  if (!node.HasAttr("K") || !node.HasAttr("N") || !node.HasAttr("block_size"))
    return NodeError(node, "attributes K, N and block_size are required");
  if (input(1) == nullptr || input(2) == nullptr) return NodeError(node, "inputs B and scales are required");
  NBitsWeights w;
  NBitsLayout& l = w.view_.layout;
  l.k = node.GetInt("K", 0);
  l.n = node.GetInt("N", 0);
  l.bits = node.GetInt("bits", 4);
  l.block_size = node.GetInt("block_size", 0);
  if (Status s = l.Validate(); !s.ok()) return NodeError(node, s.message());

  const Tensor& b = *input(1);
  if (b.dtype() != DType::kUInt8) return NodeError(node, "B must be uint8, got " + DTypeName(b.dtype()));
  if (b.numel() != l.n * l.row_bytes() || b.rank() < 1 || b.dim(0) != l.n)
    return NodeError(node, "B must have shape [N, k_blocks, blob_size] = [" + std::to_string(l.n) + ", " +
                               std::to_string(l.k_blocks()) + ", " + std::to_string(l.blob_bytes()) + "], got " +
                               ShapeToString(b.shape()));
  QC_ASSIGN_OR_RETURN(w.b_, CopyToDevice(b.raw(), static_cast<size_t>(b.numel()), stream, allocator));
  w.view_.b = w.b_.as<uint8_t>();

  const Tensor& scales = *input(2);
  if (!IsComputeFloat(scales.dtype())) return NodeError(node, "scales must be float32, float16 or bfloat16, got " + DTypeName(scales.dtype()));
  if (scales.numel() != l.n * l.k_blocks())
    return NodeError(node, "scales must have N * k_blocks = " + std::to_string(l.n * l.k_blocks()) +
                               " elements, got " + ShapeToString(scales.shape()));
  QC_ASSIGN_OR_RETURN(w.scales_, CopyFloats(scales, stream, allocator));
  w.view_.scales = w.scales_.as<float>();

  if (const Tensor* zp = input(3)) {
    if (zp->dtype() == DType::kUInt8) {
      if (zp->numel() != l.n * l.zp_row_bytes())
        return NodeError(node, "packed zero_points must have shape [N, ceil(k_blocks * bits / 8)] = [" +
                                   std::to_string(l.n) + ", " + std::to_string(l.zp_row_bytes()) + "], got " +
                                   ShapeToString(zp->shape()));
      QC_ASSIGN_OR_RETURN(w.zero_points_, CopyToDevice(zp->raw(), static_cast<size_t>(zp->numel()), stream, allocator));
      w.view_.zero_points = w.zero_points_.as<uint8_t>();
    } else if (IsComputeFloat(zp->dtype())) {
      if (zp->numel() != l.n * l.k_blocks())
        return NodeError(node, "float zero_points must have N * k_blocks elements, got " + ShapeToString(zp->shape()));
      QC_ASSIGN_OR_RETURN(w.zero_points_, CopyFloats(*zp, stream, allocator));
      w.view_.zero_points_float = w.zero_points_.as<float>();
    } else {
      return NodeError(node, "zero_points must be uint8 or float, got " + DTypeName(zp->dtype()));
    }
  }
  if (const Tensor* g = input(4)) {
    if (g->dtype() != DType::kInt32 || g->numel() != l.k)
      return NodeError(node, "g_idx must be int32 with K elements, got " + DTypeName(g->dtype()) + " " +
                                 ShapeToString(g->shape()));
    const int32_t* gi = g->data<int32_t>();
    for (int64_t i = 0; i < l.k; ++i)
      if (gi[i] < 0 || gi[i] >= l.k_blocks())
        return NodeError(node, "g_idx[" + std::to_string(i) + "] = " + std::to_string(gi[i]) + " outside [0, k_blocks)");
    QC_ASSIGN_OR_RETURN(w.g_idx_, CopyToDevice(gi, static_cast<size_t>(l.k) * sizeof(int32_t), stream, allocator));
    w.view_.g_idx = w.g_idx_.as<int32_t>();
  }
  if (const Tensor* bias = input(5)) {
    if (!IsComputeFloat(bias->dtype()) || bias->numel() != l.n)
      return NodeError(node, "bias must be float of shape [N], got " + DTypeName(bias->dtype()) + " " + ShapeToString(bias->shape()));
    QC_ASSIGN_OR_RETURN(w.bias_, CopyFloats(*bias, stream, allocator));
    w.view_.bias = w.bias_.as<float>();
  }
  return std::move(w);
}

size_t NBitsWeights::device_bytes() const {
  return b_.size() + scales_.size() + zero_points_.size() + g_idx_.size() + bias_.size();
}

}  // namespace qc::cuda
