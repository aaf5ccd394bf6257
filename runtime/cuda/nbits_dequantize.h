// MatMulNBits weights expanded to a dense matrix, for prefill-sized batches: at hundreds of rows
// the product is bound by arithmetic, not by reading the packed weights once, and cuBLAS's
// tensor-core GEMM on the dense weights beats kMma's 32-row tiles (docs/BENCHMARKS.md). The
// 16-bit activation types take this path from kDequantGemmMinRows rows, float32 (dense float32
// weights, cuBLAS's SGEMM: no TF32, as every float32 GEMM of the backend) from
// kDequantGemmMinRowsFloat32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "formats/status.h"
#include "runtime/cuda/matmul_nbits.h"

namespace qc::cuda {

/// Rows (the product of A's leading dims) from which MatMulNBits with float16 or bfloat16
/// activations dequantises its weights and runs a dense GEMM.
constexpr int64_t kDequantGemmMinRows = 64;
/// The same for float32 activations. kMma computes them as two fp16 halves on tensor cores, twice
/// its 16-bit work; SGEMM has no tensor cores, so it wins later. Measured on the H200
/// (`bench/cuda_gemv.sh --prefill`, docs/BENCHMARKS.md): kMma wins on every 1.1B layer below 256
/// rows, the two are within 2% at 256, SGEMM wins by 16-26% from 512.
constexpr int64_t kDequantGemmMinRowsFloat32 = 256;

/// Writes dequant(B) for output columns [col0, col0 + cols) of `w` as a row-major [cols, K]
/// matrix on `stream`: (code - zero point) * scale in float32, rounded once to the output type.
/// Every layout (bits 2..8, any block size, packed or float zero points, g_idx). InvalidArgument
/// when the column range is outside [0, N) or cols > 65535 (callers chunk).
Status DequantizeNBits(const NBitsWeightsView& w, int64_t col0, int64_t cols, float* out, cudaStream_t stream);
Status DequantizeNBits(const NBitsWeightsView& w, int64_t col0, int64_t cols, __half* out, cudaStream_t stream);
Status DequantizeNBits(const NBitsWeightsView& w, int64_t col0, int64_t cols, __nv_bfloat16* out, cudaStream_t stream);

}  // namespace qc::cuda
