// Layer normalisations on the GPU: LayerNormalization, RMSNormalization, SimplifiedLayerNormalization
// and SkipSimplifiedLayerNormalization / SkipLayerNormalization, float32, one block per row.
// runtime/cpu/norm.cpp is the numeric spec (the fast CPU kernels accumulate in float as these do).
#include "runtime/cuda/ops/common.cuh"

namespace qc::cuda {
namespace {

// One block per row: mean (skipped for RMS), then the centred sum of squares, then the output.
// The row is read three times; rows of a few thousand floats stay in L1/L2 between passes.
__global__ void NormKernel(const float* x, const float* skip, int64_t skip_n, const float* add_bias, const float* scale,
                           const float* bias, float* y, float* sum_out, int64_t cols, float epsilon, bool simplified) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * cols;
  float* yr = y + row * cols;
  // Skip variants: s = x + skip (+ bias), written to sum_out (or to y, normalised in place).
  const float* src = xr;
  if (skip) {
    float* sr = (sum_out ? sum_out : y) + row * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float v = xr[c] + skip[(row * cols + c) % skip_n];
      if (add_bias) v += add_bias[c];
      sr[c] = v;
    }
    __syncthreads();
    src = sr;
  }
  float mean = 0.0f;
  if (!simplified) {
    float s = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += src[c];
    mean = BlockSum(s, scratch) / static_cast<float>(cols);
  }
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float d = src[c] - mean;
    ss += d * d;
  }
  const float inv = 1.0f / sqrtf(BlockSum(ss, scratch) / static_cast<float>(cols) + epsilon);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = (src[c] - mean) * inv * scale[c];
    if (bias) v += bias[c];
    yr[c] = v;
  }
}

// Launches one normalisation of x viewed as [rows, cols]; params are device float32 [cols].
Status LaunchNorm(OpContext& ctx, const Tensor& x, const float* skip, int64_t skip_n, const float* add_bias, const float* scale,
                  const float* bias, float* sum_out, int64_t cols, float epsilon, bool simplified) {
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, x.dtype(), x.shape()));
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  if (rows == 0) return Status::Ok();
  // 128 threads for the usual 256-1024 wide rows (every thread busy), 256 beyond.
  const int threads = cols <= 1024 ? 128 : 256;
  if (rows > 0x7fffffff) return ctx.Decline("more than 2^31 rows");
  NormKernel<<<static_cast<unsigned>(rows), threads, 0, ctx.cuda.stream()>>>(x.device_data<float>(), skip, skip_n, add_bias, scale, bias,
                                                                             y->mutable_device_data<float>(), sum_out, cols, epsilon, simplified);
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("NormKernel");
  return Status::Ok();
}

bool IsFloatVector(const OpContext& ctx, int i, int64_t n) {
  return ctx.has_input(i) && ctx.input(i).dtype() == DType::kFloat32 && ctx.input(i).numel() == n;
}

// X, Scale[, B]; normalise over dims [axis, rank). Scale and B must have exactly the normalised
// element count (the CPU kernel also broadcasts smaller ones: those decline).
Status AxisNorm(OpContext& ctx, bool simplified, bool allow_bias, int mean_index, int inv_index) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.Error("inputs X and Scale are required");
  const Tensor& x = ctx.input(0);
  if (x.dtype() != DType::kFloat32) return ctx.Decline("dtype " + DTypeName(x.dtype()));
  if ((mean_index >= 0 && ctx.WantOutput(mean_index)) || (inv_index >= 0 && ctx.WantOutput(inv_index)))
    return ctx.Decline("Mean/InvStdDev outputs");
  int64_t axis = 0;
  if (x.rank() == 0 || !NormalizeAxis(ctx.node.GetInt("axis", -1), x.rank(), &axis))
    return ctx.Error("axis out of range for input of shape " + ShapeToString(x.shape()));
  const int64_t cols = NumElements(Shape(x.shape().begin() + axis, x.shape().end()));
  const bool has_bias = allow_bias && ctx.has_input(2);
  if (!IsFloatVector(ctx, 1, cols) || (has_bias && !IsFloatVector(ctx, 2, cols)))
    return ctx.Decline("Scale/B not float32 of the normalised size");
  const float epsilon = ctx.node.GetFloat("epsilon", 1e-5f);
  return LaunchNorm(ctx, x, nullptr, 0, nullptr, ctx.input(1).device_data<float>(), has_bias ? ctx.input(2).device_data<float>() : nullptr,
                    nullptr, cols, epsilon, simplified);
}

// SkipLayerNormalization: input, skip, gamma, beta, bias; SkipSimplifiedLayerNormalization:
// input, skip, gamma, bias. Output 3 is input + skip (+ bias).
Status SkipNorm(OpContext& ctx, bool simplified) {
  const int bias_index = simplified ? 3 : 4;
  if (!ctx.has_input(0) || !ctx.has_input(1) || !ctx.has_input(2)) return ctx.Error("inputs input, skip and gamma are required");
  const Tensor& x = ctx.input(0);
  const Tensor& skip = ctx.input(1);
  if (x.dtype() != DType::kFloat32 || skip.dtype() != DType::kFloat32) return ctx.Decline("dtype other than float32");
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
  if (!IsFloatVector(ctx, 2, hidden) || (has_beta && !IsFloatVector(ctx, 3, hidden)) || (has_bias && !IsFloatVector(ctx, bias_index, hidden)))
    return ctx.Decline("gamma/beta/bias not float32 [hidden]");
  float* sum = nullptr;
  if (ctx.WantOutput(3)) {
    QC_ASSIGN_OR_RETURN(Tensor * s, ctx.Output(3, x.dtype(), x.shape()));
    sum = s->mutable_device_data<float>();
  }
  const float epsilon = ctx.node.GetFloat("epsilon", simplified ? 1e-5f : 1e-12f);
  return LaunchNorm(ctx, x, skip.device_data<float>(), skip.numel(), has_bias ? ctx.input(bias_index).device_data<float>() : nullptr,
                    ctx.input(2).device_data<float>(), has_beta ? ctx.input(3).device_data<float>() : nullptr, sum, hidden, epsilon, simplified);
}

}  // namespace

Status LayerNormalizationCuda(OpContext& ctx) { return AxisNorm(ctx, false, true, 1, 2); }
Status RMSNormalizationCuda(OpContext& ctx) { return AxisNorm(ctx, true, false, -1, -1); }
Status SimplifiedLayerNormalizationCuda(OpContext& ctx) { return AxisNorm(ctx, true, false, -1, 1); }
Status SkipLayerNormalizationCuda(OpContext& ctx) { return SkipNorm(ctx, false); }
Status SkipSimplifiedLayerNormalizationCuda(OpContext& ctx) { return SkipNorm(ctx, true); }

}  // namespace qc::cuda
