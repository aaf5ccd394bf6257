// Layer normalisations on the GPU: LayerNormalization, RMSNormalization, SimplifiedLayerNormalization
// and SkipSimplifiedLayerNormalization / SkipLayerNormalization, one block per row; float32, float16
// or bfloat16 (X, skip, scale and bias of one type; sums and statistics in float32).
// runtime/cpu/norm.cpp is the numeric spec (the fast CPU kernels accumulate in float as these do).
#include "runtime/cuda/ops/common.cuh"

namespace qc::cuda {
namespace {

// One block per row: mean (skipped for RMS), then the centred sum of squares, then the output.
// The row is read three times; rows of a few thousand floats stay in L1/L2 between passes. The
// skip variants' sum is stored (in T) and normalised as stored, as the CPU does.
template <typename T>
__global__ void NormKernel(const T* x, const T* skip, int64_t skip_n, const T* add_bias, const T* scale, const T* bias, T* y, T* sum_out,
                           int64_t cols, float epsilon, bool simplified) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * cols;
  T* yr = y + row * cols;
  // Skip variants: s = x + skip (+ bias), written to sum_out (or to y, normalised in place).
  const T* src = xr;
  if (skip) {
    T* sr = (sum_out ? sum_out : y) + row * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float v = LoadValue(xr[c]) + LoadValue(skip[(row * cols + c) % skip_n]);
      if (add_bias) v += LoadValue(add_bias[c]);
      sr[c] = StoreValue<T>(v);
    }
    __syncthreads();
    src = sr;
  }
  float mean = 0.0f;
  if (!simplified) {
    float s = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += LoadValue(src[c]);
    mean = BlockSum(s, scratch) / static_cast<float>(cols);
  }
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float d = LoadValue(src[c]) - mean;
    ss += d * d;
  }
  const float inv = 1.0f / sqrtf(BlockSum(ss, scratch) / static_cast<float>(cols) + epsilon);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = (LoadValue(src[c]) - mean) * inv * LoadValue(scale[c]);
    if (bias) v += LoadValue(bias[c]);
    yr[c] = StoreValue<T>(v);
  }
}

// Device pointers of one normalisation's operands (all of x's dtype; nullptr where absent).
struct NormArgs {
  const void* skip = nullptr;
  int64_t skip_n = 0;
  const void* add_bias = nullptr;
  const void* scale = nullptr;
  const void* bias = nullptr;
  void* sum_out = nullptr;
};

// Launches one normalisation of x viewed as [rows, cols].
Status LaunchNorm(OpContext& ctx, const Tensor& x, const NormArgs& a, int64_t cols, float epsilon, bool simplified) {
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, x.dtype(), x.shape()));
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  if (rows == 0) return Status::Ok();
  // 128 threads for the usual 256-1024 wide rows (every thread busy), 256 beyond.
  const int threads = cols <= 1024 ? 128 : 256;
  if (rows > 0x7fffffff) return ctx.Decline("more than 2^31 rows");
  DispatchFloat(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    NormKernel<T><<<static_cast<unsigned>(rows), threads, 0, ctx.cuda.stream()>>>(
        x.device_data<T>(), static_cast<const T*>(a.skip), a.skip_n, static_cast<const T*>(a.add_bias), static_cast<const T*>(a.scale),
        static_cast<const T*>(a.bias), y->mutable_device_data<T>(), static_cast<T*>(a.sum_out), cols, epsilon, simplified);
  });
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("NormKernel");
  return Status::Ok();
}

// Input i is present, of dtype `t` and has n elements.
bool IsVector(const OpContext& ctx, int i, DType t, int64_t n) {
  return ctx.has_input(i) && ctx.input(i).dtype() == t && ctx.input(i).numel() == n;
}

// X, Scale[, B]; normalise over dims [axis, rank). Scale and B must have exactly the normalised
// element count (the CPU kernel also broadcasts smaller ones: those decline).
Status AxisNorm(OpContext& ctx, bool simplified, bool allow_bias, int mean_index, int inv_index) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.Error("inputs X and Scale are required");
  const Tensor& x = ctx.input(0);
  if (!IsKernelFloat(x.dtype())) return ctx.Decline("dtype " + DTypeName(x.dtype()));
  if ((mean_index >= 0 && ctx.WantOutput(mean_index)) || (inv_index >= 0 && ctx.WantOutput(inv_index)))
    return ctx.Decline("Mean/InvStdDev outputs");
  int64_t axis = 0;
  if (x.rank() == 0 || !NormalizeAxis(ctx.node.GetInt("axis", -1), x.rank(), &axis))
    return ctx.Error("axis out of range for input of shape " + ShapeToString(x.shape()));
  const int64_t cols = NumElements(Shape(x.shape().begin() + axis, x.shape().end()));
  const bool has_bias = allow_bias && ctx.has_input(2);
  if (!IsVector(ctx, 1, x.dtype(), cols) || (has_bias && !IsVector(ctx, 2, x.dtype(), cols)))
    return ctx.Decline("Scale/B not of X's dtype and the normalised size");
  const float epsilon = ctx.node.GetFloat("epsilon", 1e-5f);
  NormArgs a;
  a.scale = ctx.input(1).raw();
  a.bias = has_bias ? ctx.input(2).raw() : nullptr;
  return LaunchNorm(ctx, x, a, cols, epsilon, simplified);
}

// SkipLayerNormalization: input, skip, gamma, beta, bias; SkipSimplifiedLayerNormalization:
// input, skip, gamma, bias. Output 3 is input + skip (+ bias).
Status SkipNorm(OpContext& ctx, bool simplified) {
  const int bias_index = simplified ? 3 : 4;
  if (!ctx.has_input(0) || !ctx.has_input(1) || !ctx.has_input(2)) return ctx.Error("inputs input, skip and gamma are required");
  const Tensor& x = ctx.input(0);
  const Tensor& skip = ctx.input(1);
  if (!IsKernelFloat(x.dtype()) || skip.dtype() != x.dtype()) return ctx.Decline("dtypes " + DTypeName(x.dtype()) + ", " + DTypeName(skip.dtype()));
  if (ctx.WantOutput(1) || ctx.WantOutput(2)) return ctx.Decline("Mean/InvStdDev outputs");
  if (x.rank() < 1) return ctx.Error("input must have rank >= 1");
  const int64_t hidden = x.dim(-1);
  Shape skip_core = skip.shape();
  while (skip_core.size() > 1 && skip_core.front() == 1) skip_core.erase(skip_core.begin());
  if (skip_core.empty() || static_cast<int>(skip_core.size()) > x.rank() ||
      Shape(x.shape().end() - skip_core.size(), x.shape().end()) != skip_core || skip.numel() == 0)
    return ctx.Decline("skip shape");
  const bool has_beta = !simplified && ctx.has_input(3);
  const bool has_bias = ctx.has_input(bias_index);
  const DType t = x.dtype();
  if (!IsVector(ctx, 2, t, hidden) || (has_beta && !IsVector(ctx, 3, t, hidden)) || (has_bias && !IsVector(ctx, bias_index, t, hidden)))
    return ctx.Decline("gamma/beta/bias not [hidden] of the input's dtype");
  NormArgs a;
  if (ctx.WantOutput(3)) {
    QC_ASSIGN_OR_RETURN(Tensor * s, ctx.Output(3, t, x.shape()));
    a.sum_out = s->mutable_raw();
  }
  a.skip = skip.raw();
  a.skip_n = skip.numel();
  a.add_bias = has_bias ? ctx.input(bias_index).raw() : nullptr;
  a.scale = ctx.input(2).raw();
  a.bias = has_beta ? ctx.input(3).raw() : nullptr;
  const float epsilon = ctx.node.GetFloat("epsilon", simplified ? 1e-5f : 1e-12f);
  return LaunchNorm(ctx, x, a, hidden, epsilon, simplified);
}

}  // namespace

Status LayerNormalizationCuda(OpContext& ctx) { return AxisNorm(ctx, false, true, 1, 2); }
Status RMSNormalizationCuda(OpContext& ctx) { return AxisNorm(ctx, true, false, -1, -1); }
Status SimplifiedLayerNormalizationCuda(OpContext& ctx) { return AxisNorm(ctx, true, false, -1, 1); }
Status SkipLayerNormalizationCuda(OpContext& ctx) { return SkipNorm(ctx, false); }
Status SkipSimplifiedLayerNormalizationCuda(OpContext& ctx) { return SkipNorm(ctx, true); }

}  // namespace qc::cuda
