// A MatMulNBits node's constant inputs (B, scales, zero points, g_idx, bias) copied to the device.
#pragma once

#include <cuda_runtime_api.h>

#include <vector>

#include "formats/graph.h"
#include "formats/status.h"
#include "formats/tensor.h"
#include "runtime/cuda/allocator.h"
#include "runtime/cuda/matmul_nbits.h"

namespace qc::cuda {

/// Owns the device copies of one MatMulNBits weight; view() is what the kernels take.
class NBitsWeights {
 public:
  /// Checks `node`'s attributes (K, N, bits, block_size) and its inputs 1..5 (B, scales,
  /// zero_points, g_idx, bias; nullptr where absent) as the CPU kernel does, then copies them to
  /// the device. float16/bfloat16 scales, zero points and bias are widened to float32 (exact). Input 0 is not read.
  /// The copies are ordered on `stream` (the stream that uses `allocator`'s blocks) and complete on return.
  static StatusOr<NBitsWeights> Upload(const Node& node, const std::vector<const Tensor*>& inputs,
                                       cudaStream_t stream = nullptr,
                                       CachingAllocator& allocator = CachingAllocator::Default());

  const NBitsWeightsView& view() const { return view_; }
  /// Device bytes held (B, scales, zero points, g_idx, bias).
  size_t device_bytes() const;

 private:
  NBitsWeightsView view_;
  DeviceBuffer b_, scales_, zero_points_, g_idx_, bias_;
};

}  // namespace qc::cuda
