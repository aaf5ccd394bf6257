// Softmax, LogSoftmax and the fused ScaledMaskedSoftmax (runtime/graph_fusion.h) on the GPU, one block
// per row; float32, float16 or bfloat16 (computed in float32). runtime/cpu/softmax.cpp and
// fused_softmax.cpp are the numeric spec.
#include "runtime/cpu/broadcast.h"
#include "runtime/cuda/ops/common.cuh"

namespace qc::cuda {
namespace {

// u = x * scale (+ mask), then y = exp(u - max) / sum, in float32. float32 stages u in y and
// reads the row three times from there (it stays in L1/L2: rows are a few KB); the 16-bit types
// recompute u from x and the mask instead, since y would round it (an fp16 score of 20 is off by
// up to 0.008, 0.8% after exp). Row starts come from the broadcast indexer; x_step / m_step are
// the strides along the row (0 where broadcast).
template <typename T>
__global__ void SoftmaxKernel(const T* x, const T* mask, T* y, int64_t len, Indexer<2> ix, int64_t x_step, int64_t m_step, float scale,
                              bool scaled, bool log) {
  constexpr bool kStage = std::is_same_v<T, float>;
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  int64_t off[2];
  ix.Offsets(row * len, off);
  const T* xr = x + off[0];
  const T* mr = mask ? mask + off[1] : nullptr;
  T* yr = y + row * len;
  auto score = [&](int64_t j) {
    float u = LoadValue(xr[j * x_step]);
    if (scaled) u = u * scale;  // the unfused graph's Mul
    if (mr) u = u + LoadValue(mr[j * m_step]);
    return u;
  };
  auto staged = [&](int64_t j) {
    if constexpr (kStage) return yr[j];
    else return score(j);
  };
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
    const float u = score(j);
    if constexpr (kStage) yr[j] = u;
    mx = fmaxf(mx, u);
  }
  mx = BlockMax(mx, scratch);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) sum += expf(staged(j) - mx);
  sum = BlockSum(sum, scratch);
  if (log) {  // x - max - log(sum), as the CPU's reference
    const float log_sum = logf(sum);
    for (int64_t j = threadIdx.x; j < len; j += blockDim.x) yr[j] = StoreValue<T>((staged(j) - mx) - log_sum);
    return;
  }
  const float inv = 1.0f / sum;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) yr[j] = StoreValue<T>(expf(staged(j) - mx) * inv);
}

Status LaunchSoftmax(OpContext& ctx, const Tensor& x, const Tensor* mask, const Shape& out_shape, int64_t len, float scale,
                     bool scaled, bool log = false) {
  Indexer<2> ix;
  const Shape m_shape = mask ? mask->shape() : Shape{};
  if (!MakeIndexer<2>(out_shape, {x.shape(), m_shape}, &ix)) return ctx.Decline("more than 8 broadcast dims");
  const int64_t x_step = BroadcastStrides(x.shape(), out_shape).back();
  const int64_t m_step = mask ? BroadcastStrides(m_shape, out_shape).back() : 0;
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, x.dtype(), out_shape));
  const int64_t rows = len == 0 ? 0 : y->numel() / len;
  if (rows == 0) return Status::Ok();
  if (rows > 0x7fffffff) return ctx.Decline("more than 2^31 rows");
  DispatchFloat(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    // 128 threads: rows are 64-4096 long in attention; a wider block idles on the short ones.
    SoftmaxKernel<T><<<static_cast<unsigned>(rows), 128, 0, ctx.cuda.stream()>>>(
        x.device_data<T>(), mask ? mask->device_data<T>() : nullptr, y->mutable_device_data<T>(), len, ix, x_step, m_step, scale, scaled, log);
  });
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("SoftmaxKernel");
  return Status::Ok();
}

// Softmax or LogSoftmax over the last axis (or, below opset 13, the flattened trailing dims).
Status SoftmaxOverRows(OpContext& ctx, bool log) {
  if (!ctx.has_input(0)) return ctx.Error("expected 1 input");
  const Tensor& x = ctx.input(0);
  if (!IsKernelFloat(x.dtype())) return ctx.Decline("dtype " + DTypeName(x.dtype()));
  if (x.rank() == 0) return ctx.Decline("scalar");
  const bool legacy = ctx.opset > 0 && ctx.opset < 13;
  int64_t axis = 0;
  if (!NormalizeAxis(ctx.node.GetInt("axis", legacy ? 1 : -1), x.rank(), &axis))
    return ctx.Error("axis out of range for rank " + std::to_string(x.rank()));
  // Opsets < 13 softmax the flattened [.., axis:] block: rows of the trailing dims.
  if (!legacy && axis != x.rank() - 1) return ctx.Decline("axis other than the last");
  const int64_t len = NumElements(Shape(x.shape().begin() + axis, x.shape().end()));
  const Tensor flat = x.Reshaped({x.numel() / std::max<int64_t>(len, 1), len});
  if (len == 0) return ctx.Output(0, x.dtype(), x.shape()).status();
  QC_RETURN_IF_ERROR(LaunchSoftmax(ctx, flat, nullptr, flat.shape(), len, 1.0f, false, log));
  if (ctx.declined.empty()) ctx.outputs[0] = ctx.outputs[0].Reshaped(x.shape());
  return Status::Ok();
}

}  // namespace

Status SoftmaxCuda(OpContext& ctx) { return SoftmaxOverRows(ctx, false); }
Status LogSoftmaxCuda(OpContext& ctx) { return SoftmaxOverRows(ctx, true); }

Status ScaledMaskedSoftmaxCuda(OpContext& ctx) {
  if (!ctx.has_input(0)) return ctx.Error("expected 1 or 2 inputs");
  const Tensor& x = ctx.input(0);
  const Tensor* mask = ctx.has_input(1) ? &ctx.input(1) : nullptr;
  if (!IsKernelFloat(x.dtype()) || (mask && mask->dtype() != x.dtype()))
    return ctx.Decline("dtypes " + DTypeName(x.dtype()) + (mask ? ", " + DTypeName(mask->dtype()) : ""));
  auto out_shape = BroadcastShapes({x.shape(), mask ? mask->shape() : Shape{}});
  if (!out_shape.ok()) return ctx.Error(out_shape.status().message());
  if (out_shape->empty()) return ctx.Error("softmax of a scalar");
  return LaunchSoftmax(ctx, x, mask, *out_shape, out_shape->back(), ctx.node.GetFloat("scale", 1.0f), true);
}

}  // namespace qc::cuda
