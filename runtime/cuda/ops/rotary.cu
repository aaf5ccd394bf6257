// com.microsoft.RotaryEmbedding on the GPU, float32, float16 or bfloat16 (input and caches of one
// type, computed in float32): one thread per output element, the CPU kernel's formulas (runtime/cpu/rotary.cpp, the numeric spec; arguments validated by the same
// ParseRotary, with position_ids read on the host).
#include "runtime/cpu/rotary.h"
#include "runtime/cuda/ops/common.cuh"

namespace qc::cuda {
namespace {

template <typename T>
__global__ void RotaryKernel(RotaryArgs r, const T* x, const int64_t* pos, const T* cos_cache, const T* sin_cache, T* y) {
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
    y[off + i] = StoreValue<T>(LoadValue(x[off + i]) * LoadValue(cos_cache[p * half + ci]) +
                               sign * LoadValue(x[off + j]) * LoadValue(sin_cache[p * half + ci]));
  }
}

}  // namespace

Status RotaryEmbeddingCuda(OpContext& ctx) {
  if (ctx.num_inputs() != 4 || !ctx.has_input(0) || !ctx.has_input(1) || !ctx.has_input(2) || !ctx.has_input(3))
    return ctx.Error("inputs input, position_ids, cos_cache and sin_cache are required");
  const DType t = ctx.input(0).dtype();
  if (!IsKernelFloat(t) || ctx.input(2).dtype() != t || ctx.input(3).dtype() != t)
    return ctx.Decline("dtypes " + DTypeName(t) + ", caches " + DTypeName(ctx.input(2).dtype()));
  KernelContext k{ctx.node, ctx.inputs, std::vector<Tensor>(ctx.outputs.size()), ctx.opset, nullptr};
  QC_ASSIGN_OR_RETURN(RotaryArgs r, ParseRotary(k));
  const Tensor& x = ctx.input(0);
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, x.dtype(), x.shape()));
  const int64_t n = x.numel();
  if (n == 0) return Status::Ok();
  QC_ASSIGN_OR_RETURN(Tensor pos, ctx.cuda.Upload(ctx.input(1)));
  DispatchFloat(t, [&](auto tag) {
    using T = decltype(tag);
    RotaryKernel<T><<<BlocksFor(n), kThreads, 0, ctx.cuda.stream()>>>(r, x.device_data<T>(), pos.device_data<int64_t>(), ctx.input(2).device_data<T>(),
                                                                      ctx.input(3).device_data<T>(), y->mutable_device_data<T>());
  });
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("RotaryKernel");
  return Status::Ok();
}

}  // namespace qc::cuda
