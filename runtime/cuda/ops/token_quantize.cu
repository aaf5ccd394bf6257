// qconvert.fused.QuantizeTokensUint8 on the GPU (runtime/cpu/fused_token_quantize.cpp is the
// numeric spec): one block per token reads its row (or rest columns) for the absolute maximum, then
// again, from L1/L2, for the codes. IEEE division and rintf (half to even) as the CPU's float ops,
// so the codes and scales are the CPU's bit for bit. Columns are read on the device; one outside
// [-K, K) sets kIndexOutOfRange.
#include "runtime/cuda/ops/common.cuh"

namespace qc::cuda {
namespace {

constexpr int kTokenThreads = 256;

// T: x's and s's type. Each step rounds to T as the unfused graph's op does (token_quantize's CPU
// kernel): s = T(max(max|x|, eps) / 127), then q = uint8(rint(T(x / s)) + 128).
template <typename T>
__global__ void __launch_bounds__(kTokenThreads) QuantizeTokensKernel(const T* x, const int64_t* columns, int64_t len, int64_t width,
                                                                      float epsilon, uint8_t* q, T* s, unsigned* errors) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const T* xr = x + r * len;
  auto column = [&](int64_t j) { return columns == nullptr ? j : AxisIndex(columns, j, len, errors); };
  // NaN-propagating, as the CPU's MaxValue (fmaxf would drop a NaN).
  auto max_nan = [](float a, float b) { return isnan(a) ? a : isnan(b) ? b : (a < b ? b : a); };
  auto rounded = [](float v) { return static_cast<float>(LoadValue(StoreValue<T>(v))); };
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
    const int64_t k = column(j);
    if (k >= 0) mx = max_nan(mx, fabsf(static_cast<float>(LoadValue(xr[k]))));
  }
  // BlockMax (fmaxf) drops a NaN: the block asks whether any thread saw one.
  const bool any_nan = __syncthreads_or(isnan(mx));
  mx = any_nan ? NAN : BlockMax(mx, scratch);
  const float scale = rounded(max_nan(mx, epsilon) / 127.0f);
  if (threadIdx.x == 0) s[r] = StoreValue<T>(scale);
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
    const int64_t k = column(j);
    const float code = k < 0 ? 0.0f : rintf(rounded(static_cast<float>(LoadValue(xr[k])) / scale)) + 128.0f;
    q[r * width + j] = isnan(code) ? uint8_t{0} : static_cast<uint8_t>(fminf(fmaxf(code, 0.0f), 255.0f));  // as Cast
  }
}

}  // namespace

Status QuantizeTokensUint8Cuda(OpContext& ctx) {
  if (!ctx.has_input(0)) return ctx.Error("input x is missing");
  const Tensor& x = ctx.input(0);
  if (!IsKernelFloat(x.dtype())) return ctx.Decline("dtype " + DTypeName(x.dtype()));
  if (x.rank() < 1) return ctx.Error("x must have rank >= 1");
  if (ctx.outputs.size() < 2) return ctx.Error("expected 2 outputs (q, s)");
  const int64_t len = x.dim(-1), rows = len == 0 ? 0 : x.numel() / len;
  const int64_t* columns = nullptr;
  int64_t width = len;
  if (ctx.has_input(1)) {
    const Tensor& c = ctx.input(1);
    if (c.dtype() != DType::kInt64 || c.rank() != 1) return ctx.Error("columns must be a 1-D int64 tensor");
    columns = c.device_data<int64_t>();
    width = c.numel();
  }
  Shape q_shape = x.shape(), s_shape = x.shape();
  q_shape.back() = width;
  s_shape.back() = 1;
  QC_ASSIGN_OR_RETURN(Tensor * q, ctx.Output(0, DType::kUInt8, q_shape));
  QC_ASSIGN_OR_RETURN(Tensor * s, ctx.Output(1, x.dtype(), s_shape));
  if (rows == 0) return Status::Ok();
  if (rows > 0x7fffffff) return ctx.Decline("more than 2^31 tokens");
  // The unfused graph's eps constant is of x's type.
  const float epsilon = RoundedToDType(ctx.node.GetFloat("epsilon", 1e-30f), x.dtype());
  DispatchFloat(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    QuantizeTokensKernel<T><<<static_cast<unsigned>(rows), kTokenThreads, 0, ctx.cuda.stream()>>>(
        x.device_data<T>(), columns, len, width, epsilon, q->mutable_device_data<uint8_t>(), s->mutable_device_data<T>(),
        ctx.cuda.device_errors());
  });
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("QuantizeTokensKernel");
  return Status::Ok();
}

}  // namespace qc::cuda
