// kStream (matmul_nbits.h): the MatMulNBits batch-1 kernel that streams 4-bit weights straight
// from DRAM into registers, behind cuda::MatMulNBits (runtime/cuda/matmul_nbits_stream.cu).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "formats/status.h"
#include "runtime/cuda/matmul_nbits.h"

namespace qc::cuda {

/// Ok when kStream can run `w` at `m` rows on the current device, else Unimplemented saying why:
/// it takes one row of 4-bit weights in blocks of a multiple of 128 (integer or no zero points, no
/// g_idx), K of at least 1024 whose activations fit in shared memory, B 16-byte aligned, sm_90.
Status StreamSupported(const NBitsWeightsView& w, int64_t m, bool half_activations);

/// Queues kStream (the caller has checked StreamSupported and the weights).
Status MatMulNBitsStream(const NBitsWeightsView& w, const float* x, float* y, cudaStream_t stream,
                         const NBitsOptions& options);
Status MatMulNBitsStream(const NBitsWeightsView& w, const __half* x, __half* y, cudaStream_t stream,
                         const NBitsOptions& options);

}  // namespace qc::cuda
