// ReduceMean / ReduceSum / ReduceMax on the GPU over one contiguous block of axes; float32, float16
// or bfloat16, accumulated in float32. runtime/cpu/reduce.cpp is the numeric spec (its fast path
// accumulates in float too).
#include "runtime/cuda/ops/common.cuh"

namespace qc::cuda {
namespace {

enum class Reduction { kSum, kMean, kMax };

// x seen as [outer, len, inner]; one block per output when inner == 1 (rows), else one thread
// per output walking the reduced axis with stride inner.
template <typename T>
__global__ void ReduceRowsKernel(const T* x, T* y, int64_t len, Reduction kind) {
  __shared__ float scratch[32];
  const T* xr = x + blockIdx.x * len;
  float v = kind == Reduction::kMax ? -INFINITY : 0.0f;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
    const float e = LoadValue(xr[j]);
    v = kind == Reduction::kMax ? fmaxf(v, e) : v + e;
  }
  v = kind == Reduction::kMax ? BlockMax(v, scratch) : BlockSum(v, scratch);
  if (threadIdx.x == 0) y[blockIdx.x] = StoreValue<T>(kind == Reduction::kMean ? v / static_cast<float>(len) : v);
}

template <typename T>
__global__ void ReduceStridedKernel(const T* x, T* y, int64_t outer, int64_t len, int64_t inner, Reduction kind) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < outer * inner; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = i / inner, in = i - o * inner;
    const T* p = x + o * len * inner + in;
    float v = kind == Reduction::kMax ? -INFINITY : 0.0f;
    for (int64_t j = 0; j < len; ++j) {
      const float e = LoadValue(p[j * inner]);
      v = kind == Reduction::kMax ? fmaxf(v, e) : v + e;
    }
    y[i] = StoreValue<T>(kind == Reduction::kMean ? v / static_cast<float>(len) : v);
  }
}

Status Reduce(OpContext& ctx, Reduction kind) {
  if (!ctx.has_input(0)) return ctx.Error("expected 1 or 2 inputs");
  const Tensor& x = ctx.input(0);
  if (!IsKernelFloat(x.dtype())) return ctx.Decline("dtype " + DTypeName(x.dtype()));
  const int64_t rank = x.rank();
  std::vector<int64_t> axes = ctx.has_input(1) ? HostInts(ctx.input(1)) : ctx.node.GetInts("axes");
  const bool keepdims = ctx.node.GetInt("keepdims", 1) != 0;
  if (axes.empty() && ctx.node.GetInt("noop_with_empty_axes", 0) != 0) return ctx.Decline("no-op reduction");
  std::vector<bool> reduced(rank, axes.empty());
  for (int64_t a : axes) {
    int64_t n = 0;
    if (!NormalizeAxis(a, rank, &n)) return ctx.Error("axis " + std::to_string(a) + " out of range for input of shape " + ShapeToString(x.shape()));
    if (reduced[n]) return ctx.Error("axis " + std::to_string(a) + " repeated in axes");
    reduced[n] = true;
  }
  // The reduced axes must be one contiguous block [first, last] (size-1 dims may sit anywhere).
  int64_t first = -1, last = -1;
  for (int64_t d = 0; d < rank; ++d)
    if (reduced[d] && x.dim(d) != 1) {
      if (first < 0) first = d;
      last = d;
    }
  Shape out_shape;
  for (int64_t d = 0; d < rank; ++d) {
    if (!reduced[d]) out_shape.push_back(x.dim(d));
    else if (keepdims) out_shape.push_back(1);
  }
  int64_t outer = 1, len = 1, inner = 1;
  if (first >= 0) {
    for (int64_t d = first; d <= last; ++d) {
      if (!reduced[d] && x.dim(d) != 1) return ctx.Decline("non-contiguous axes");
      len *= x.dim(d);
    }
    for (int64_t d = 0; d < first; ++d) outer *= x.dim(d);
    for (int64_t d = last + 1; d < rank; ++d) inner *= x.dim(d);
  } else {
    outer = x.numel();
  }
  if (len == 0 || x.numel() == 0) return ctx.Decline("empty reduction");
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, x.dtype(), out_shape));
  DispatchFloat(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if (inner == 1 && len >= 32 && outer <= 0x7fffffff) {
      ReduceRowsKernel<T><<<static_cast<unsigned>(outer), 128, 0, ctx.cuda.stream()>>>(x.device_data<T>(), y->mutable_device_data<T>(), len, kind);
    } else {
      ReduceStridedKernel<T><<<BlocksFor(outer * inner), kThreads, 0, ctx.cuda.stream()>>>(x.device_data<T>(), y->mutable_device_data<T>(), outer,
                                                                                           len, inner, kind);
    }
  });
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("Reduce");
  return Status::Ok();
}

}  // namespace

Status ReduceSumCuda(OpContext& ctx) { return Reduce(ctx, Reduction::kSum); }
Status ReduceMeanCuda(OpContext& ctx) { return Reduce(ctx, Reduction::kMean); }
Status ReduceMaxCuda(OpContext& ctx) { return Reduce(ctx, Reduction::kMax); }

}  // namespace qc::cuda
