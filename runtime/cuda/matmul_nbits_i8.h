// kGemvInt8 (matmul_nbits.h): the MatMulNBits GEMV kernel on integer tensor cores, behind
// cuda::MatMulNBits (runtime/cuda/matmul_nbits_i8.cu).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "formats/status.h"
#include "runtime/cuda/matmul_nbits.h"

namespace qc::cuda {

/// Ok when kGemvInt8 can run `w` at `m` rows with `options` on the current device, else
/// Unimplemented saying why (bit width, block size, zero-point form, rows, alignment, device, or
/// the activations not fitting in shared memory).
Status GemvInt8Supported(const NBitsWeightsView& w, int64_t m, const NBitsOptions& options = {});

/// Queues kGemvInt8 (the caller has checked GemvInt8Supported and the weights).
Status MatMulNBitsGemvInt8(const NBitsWeightsView& w, const float* x, float* y, int64_t m, NBitsWorkspace& workspace,
                           cudaStream_t stream, const NBitsOptions& options);
Status MatMulNBitsGemvInt8(const NBitsWeightsView& w, const __half* x, __half* y, int64_t m,
                           NBitsWorkspace& workspace, cudaStream_t stream, const NBitsOptions& options);

}  // namespace qc::cuda
