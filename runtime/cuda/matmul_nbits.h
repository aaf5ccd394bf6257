// com.microsoft.MatMulNBits on the GPU: Y[m, n] = X[m, k] · dequant(B)ᵀ (+ bias), with B in ONNX
// Runtime's packed layout (docs/FORMAT.md), for 2/4/8-bit storage, any block size, with or
// without zero points and g_idx. runtime/cpu/matmul_nbits.cpp is the numeric spec.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "formats/status.h"
#include "runtime/cuda/allocator.h"

namespace qc::cuda {

/// Shape and packing of one MatMulNBits weight: the node's K, N, bits and block_size attributes.
struct NBitsLayout {
  int64_t k = 0, n = 0, bits = 4, block_size = 128;
  int64_t k_blocks() const { return (k + block_size - 1) / block_size; }
  /// Bytes of one block of one output column (B's last dimension).
  int64_t blob_bytes() const { return block_size * bits / 8; }
  /// Packed bytes of one output column: B is [n, row_bytes()].
  int64_t row_bytes() const { return k_blocks() * blob_bytes(); }
  /// Bytes of one column's packed zero points.
  int64_t zp_row_bytes() const { return (k_blocks() * bits + 7) / 8; }
  /// InvalidArgument unless bits in 2..8, block_size a power of two >= 16, 0 < k, n < 2^31.
  Status Validate() const;
};

/// Device pointers to one MatMulNBits weight, in ONNX Runtime's layout (not owned).
struct NBitsWeightsView {
  NBitsLayout layout;
  const uint8_t* b = nullptr;                  // [n, k_blocks, blob_bytes]
  const float* scales = nullptr;               // [n * k_blocks]
  const uint8_t* zero_points = nullptr;        // packed like B, [n, zp_row_bytes]; or null
  const float* zero_points_float = nullptr;    // [n * k_blocks]; or null (at most one of the two)
  const int32_t* g_idx = nullptr;              // [k] block of each input row; or null
  const float* bias = nullptr;                 // [n]; or null
};

/// The kernels behind MatMulNBits.
enum class NBitsKernel {
  kAuto,
  /// Batch GEMV, m <= 16 rows, sm_90 (kAuto takes it for one fp32 row of 4-bit weights that
  /// kStream cannot take: K < 1024, or blocks of 32/64): the copy
  /// engine (cp.async.bulk) streams each block's packed weights into shared memory before the
  /// kernel waits for the previous one (programmatic dependent launch), so back-to-back layers'
  /// weight streams overlap; each block converts its slice of X itself (no prologue launch) and
  /// dequantises into mma.sync m16n8k16 A fragments. The layouts of kMma, with B 16-byte aligned.
  kGemv,
  /// Batch 1, 4-bit weights in blocks of a multiple of 128, K >= 1024, sm_90
  /// (runtime/cuda/matmul_nbits_stream.cu): each warp streams its steps of 16 columns x 128 codes
  /// from DRAM through a ring of registers (the first loads issued before the previous kernel
  /// ends), the block stages X once in shared memory in mma B-fragment order, and the codes are
  /// dequantised into mma.sync m16n8k16 A fragments. No split-K across blocks: deterministic
  /// without partial sums.
  kStream,
  /// Tensor cores (mma.sync m16n8k16, fp32 accumulation): packed weights are streamed once with
  /// 4-16 byte loads and dequantised in registers straight into A fragments; activations are
  /// prepared by a prologue kernel. 2/4/8-bit storage, integer (or no) zero points, no g_idx, and
  /// blocks of at least 16 bytes per column (W4 >= 32, W8 >= 16, W2 >= 64 rows per block).
  kMma,
  /// CUDA cores, one warp per output column, the reference's per-element dequantisation: every
  /// layout (g_idx, float zero points, 3/5/6/7-bit storage, the smallest blocks).
  kGeneric,
};
const char* NBitsKernelName(NBitsKernel kernel);
/// The kernel kAuto picks for `w` at `m` rows of fp32 (or fp16) activations, where each measured
/// fastest: kStream for one row of 4-bit weights it can run, else kGemv for one fp32 row of 4-bit
/// weights, else kMma where it can run, else kGeneric.
NBitsKernel SelectNBitsKernel(const NBitsWeightsView& w, int64_t m = 1, bool half_activations = false);

/// How kStream stages X into shared memory before its first step.
enum class StreamStaging {
  /// kClusterPair for fp32 rows where each block has at most one tile, else kWarp (measured:
  /// docs/BENCHMARKS.md, "Where kStream's time goes").
  kAuto,
  /// The block's threads stage all of X, then wait for each other.
  kBlock,
  /// Each warp stages the steps it reads and goes on without waiting for the others.
  kWarp,
  /// Two blocks of a thread block cluster each stage half of X into both blocks' shared memory
  /// (an odd block count is rounded up; a layer of one tile stages alone, as kBlock).
  kClusterPair,
};

/// Launch knobs; the defaults are what the executor uses. Tests and benchmarks force the less
/// common paths.
struct NBitsOptions {
  NBitsKernel kernel = NBitsKernel::kAuto;
  /// Number of K slices across blocks, summed by the last block of each tile (0: the kernel's own
  /// choice; kGemv takes more where a slice would not fit in shared memory).
  int split_k = 0;
  /// kGemv: 16-column tiles per block, 1..8 (0: the kernel's own choice).
  int gemv_tiles = 0;
  /// kGemv, kStream: launch with programmatic dependent launch, so the weight loads of this call
  /// overlap the kernel before it. Off: the call starts after the previous one ends (benchmarks
  /// use it to time one call in isolation).
  bool programmatic_launch = true;
  /// kStream: blocks (0: one or two per SM; never more than the 16-column tiles).
  int gemv_blocks = 0;
  /// kStream: steps in flight per warp, 2, 4 or 8 (0: 4; another value is Unimplemented, also
  /// when kAuto picks kStream).
  int ring_stages = 0;
  /// kStream: how X is staged into shared memory (StreamStaging).
  StreamStaging stream_staging = StreamStaging::kAuto;
};

/// Scratch of the tensor-core kernel: the activations prepared for it (fp16, in its lane order,
/// with per-group scales) and the split-K partial sums with per-tile arrival counters. One per
/// stream: launches sharing a workspace must be ordered (the counters reset themselves at the end
/// of each launch). Grows on demand, never shrinks.
class NBitsWorkspace {
 public:
  explicit NBitsWorkspace(CachingAllocator& allocator = CachingAllocator::Default()) : allocator_(&allocator) {}
  /// Grows each buffer to at least the given element counts (new counters are zeroed on `stream`).
  Status Reserve(int64_t partial_floats, int64_t counters, int64_t activation_halves, int64_t activation_scales,
                 cudaStream_t stream);
  float* partials() const { return partials_.as<float>(); }
  unsigned* counters() const { return counters_.as<unsigned>(); }
  __half* activations() const { return activations_.as<__half>(); }
  float* activation_scales() const { return activation_scales_.as<float>(); }
  /// Frees every buffer (outgrown ones included); the next Reserve allocates and zeroes anew. For
  /// a CUDA graph capture that failed: a Reserve inside it queued its counters' zeroing into the
  /// graph only, so those buffers must not be used.
  void Release();
  /// While set, buffers outgrown by Reserve are kept instead of freed: a captured CUDA graph's
  /// kernels still address them. Clearing it frees them.
  void set_keep_outgrown(bool keep) {
    keep_outgrown_ = keep;
    if (!keep) outgrown_.clear();
  }

 private:
  CachingAllocator* allocator_;
  DeviceBuffer partials_, counters_, activations_, activation_scales_;
  bool keep_outgrown_ = false;
  std::vector<DeviceBuffer> outgrown_;
  int64_t partial_capacity_ = 0, counter_capacity_ = 0, activation_capacity_ = 0, activation_scale_capacity_ = 0;
};

/// Queues Y[m, n] = X[m, k] · dequant(B)ᵀ (+ bias) on `stream`; x and y are row-major device
/// arrays. fp32 activations are split into two fp16 halves (hi + lo, with a power-of-two scale
/// per row and 256 inputs, 128 in kStream) so the tensor-core path keeps float32 accuracy; fp16 activations are used
/// as they are (fp32 accumulation, fp16 output). m = 0 is a no-op. Deterministic: the same
/// inputs and options give bitwise the same Y.
Status MatMulNBits(const NBitsWeightsView& w, const float* x, float* y, int64_t m, NBitsWorkspace& workspace,
                   cudaStream_t stream, const NBitsOptions& options = {});
Status MatMulNBits(const NBitsWeightsView& w, const __half* x, __half* y, int64_t m, NBitsWorkspace& workspace,
                   cudaStream_t stream, const NBitsOptions& options = {});

}  // namespace qc::cuda
