// com.microsoft.RotaryEmbedding's validated arguments, shared by the CPU kernels (rotary.cpp, the
// numeric spec) and the CUDA one (runtime/cuda/ops/rotary.cu).
#pragma once

#include <cstdint>

#include "formats/status.h"
#include "runtime/cpu/kernel.h"

namespace qc {

/// The input seen as [batch, seq, heads, head_size] through strides (3-D or 4-D layouts).
struct RotaryArgs {
  int64_t batch = 0, seq = 0, heads = 0, head_size = 0, rotary_dim = 0, max_seq = 0;
  int64_t batch_stride = 0, seq_stride = 0, head_stride = 0;
  bool interleaved = false;
  bool per_token_positions = false;  // position_ids is [batch, seq] (else one start offset)
};

/// Validates the node's inputs (position_ids read on the host: every position must index the
/// cos/sin caches) and derives the layout. Any float type passes (the CPU kernel takes float32 and
/// float64, the CUDA one float32, float16 and bfloat16).
StatusOr<RotaryArgs> ParseRotary(const KernelContext& ctx);

}  // namespace qc
