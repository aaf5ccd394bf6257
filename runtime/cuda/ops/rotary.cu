// com.microsoft.RotaryEmbedding on the GPU, float32: one thread per output element, the CPU
// kernel's formulas (runtime/cpu/rotary.cpp, the numeric spec; arguments validated by the same
// ParseRotary, with position_ids read on the host).
#include "runtime/cpu/rotary.h"
#include "runtime/cuda/ops/common.cuh"

namespace qc::cuda {
namespace {

__global__ void RotaryKernel(RotaryArgs r, const float* x, const int64_t* pos, const float* cos_cache, const float* sin_cache, float* y) {
  const int64_t n = r.batch * r.seq * r.heads * r.head_size;
  const int64_t half = r.rotary_dim / 2;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n; e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e % r.head_size, t = e / r.head_size;
    const int64_t b = t / (r.seq * r.heads), s = (t / r.heads) % r.seq, h = t % r.heads;
    const int64_t off = b * r.batch_stride + s * r.seq_stride + h * r.head_stride;
    if (i >= r.rotary_dim) {  // dimensions beyond rotary_embedding_dim pass through
      y[off + i] = x[off + i];
      continue;
    }
    const int64_t p = r.per_token_positions ? pos[b * r.seq + s] : pos[0] + s;
    int64_t ci, j;
    float sign;
    if (r.interleaved) {  // pairs (2i, 2i+1) rotate together
      ci = i / 2;
      sign = i % 2 == 0 ? -1.0f : 1.0f;
      j = i % 2 == 0 ? i + 1 : i - 1;
    } else {  // the first half rotates with the second
      ci = i % half;
      sign = i < half ? -1.0f : 1.0f;
      j = (i + half) % r.rotary_dim;
    }
    y[off + i] = x[off + i] * cos_cache[p * half + ci] + sign * x[off + j] * sin_cache[p * half + ci];
  }
}

}  // namespace

Status RotaryEmbeddingCuda(OpContext& ctx) {
  if (ctx.num_inputs() != 4 || !ctx.has_input(0) || !ctx.has_input(1) || !ctx.has_input(2) || !ctx.has_input(3))
    return ctx.Error("inputs input, position_ids, cos_cache and sin_cache are required");
  if (ctx.input(0).dtype() != DType::kFloat32) return ctx.Decline("dtype " + DTypeName(ctx.input(0).dtype()));
  KernelContext k{ctx.node, ctx.inputs, std::vector<Tensor>(ctx.outputs.size()), ctx.opset, nullptr};
  QC_ASSIGN_OR_RETURN(RotaryArgs r, ParseRotary(k));
  const Tensor& x = ctx.input(0);
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, x.dtype(), x.shape()));
  const int64_t n = x.numel();
  if (n == 0) return Status::Ok();
  QC_ASSIGN_OR_RETURN(Tensor pos, ctx.cuda.Upload(ctx.input(1)));
  RotaryKernel<<<BlocksFor(n), kThreads, 0, ctx.cuda.stream()>>>(r, x.device_data<float>(), pos.device_data<int64_t>(), ctx.input(2).device_data<float>(),
                                                                 ctx.input(3).device_data<float>(), y->mutable_device_data<float>());
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("RotaryKernel");
  return Status::Ok();
}

}  // namespace qc::cuda
