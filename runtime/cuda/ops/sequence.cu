// CumSum and Range on the GPU (the position-id arithmetic of the exported decoders), float32,
// float16, bfloat16 (computed in float32, each output rounded once), int32 and int64.
// runtime/cpu/shape_ops_ref.cpp (CumSum) and shape_ops_views.cpp (Range) are the numeric spec:
// the same summation order, integers wrapping.
#include <type_traits>

#include "runtime/cpu/shape_ops_internal.h"
#include "runtime/cuda/ops/common.cuh"

namespace qc::cuda {
namespace {

// Wrapping integer addition (signed overflow is undefined in C++); plain float addition.
template <typename T>
__device__ __forceinline__ T WrapAdd(T a, T b) {
  if constexpr (std::is_integral_v<T>) return static_cast<T>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
  else return __fadd_rn(a, b);
}

// One thread per [outer, inner] line, summing along the axis in the CPU's order.
template <typename T>
__global__ void CumSumKernel(const T* x, T* y, int64_t outer, int64_t len, int64_t inner, bool exclusive, bool reverse) {
  for (int64_t line = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; line < outer * inner; line += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = line / inner, i = line % inner;
    using Acc = decltype(LoadValue(T{}));  // float for the float types
    Acc sum = Acc(0);
    for (int64_t s = 0; s < len; ++s) {
      const int64_t a = reverse ? len - 1 - s : s;
      const int64_t off = (o * len + a) * inner + i;
      if (exclusive) {
        y[off] = StoreValue<T>(sum);
        sum = WrapAdd(sum, LoadValue(x[off]));
      } else {
        sum = WrapAdd(sum, LoadValue(x[off]));
        y[off] = StoreValue<T>(sum);
      }
    }
  }
}

// y[i] = start + i * delta: rounded once per operation for floats (no FMA contraction, as the
// CPU computes it; float16/bfloat16 in float32, then rounded), modulo 2^bits for integers (the
// CPU's 128-bit product truncated). V is float for the float types.
template <typename T, typename V>
__global__ void RangeKernel(V start, V delta, T* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if constexpr (std::is_integral_v<T>)
      y[i] = static_cast<T>(static_cast<uint64_t>(start) + static_cast<uint64_t>(i) * static_cast<uint64_t>(delta));
    else
      y[i] = StoreValue<T>(__fadd_rn(start, __fmul_rn(static_cast<V>(i), delta)));
  }
}

template <typename Fn>
bool DispatchScanType(DType t, Fn&& fn) {
  if (DispatchFloat(t, fn)) return true;
  switch (t) {
    case DType::kInt32: fn(int32_t{}); return true;
    case DType::kInt64: fn(int64_t{}); return true;
    default: return false;
  }
}

}  // namespace

// The axis (input 1) is read on the host.
Status CumSumCuda(OpContext& ctx) {
  if (ctx.num_inputs() != 2 || !ctx.has_input(0) || !ctx.has_input(1)) return ctx.Error("expected 2 inputs");
  const Tensor& x = ctx.input(0);
  const Tensor& axis_t = ctx.input(1);
  if (axis_t.numel() != 1 || (axis_t.dtype() != DType::kInt64 && axis_t.dtype() != DType::kInt32))
    return ctx.Error("axis must be an int32/int64 scalar");
  int64_t axis = 0;
  if (!NormalizeAxis(axis_t.ToInt64s()[0], x.rank(), &axis)) return ctx.Error("axis out of range for input of shape " + ShapeToString(x.shape()));
  const bool exclusive = ctx.node.GetInt("exclusive", 0) != 0, reverse = ctx.node.GetInt("reverse", 0) != 0;
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.dim(d);
  for (int64_t d = axis + 1; d < x.rank(); ++d) inner *= x.dim(d);
  const int64_t len = x.dim(axis);
  Tensor* y = nullptr;
  Status status = Status::Ok();
  const bool ok = DispatchScanType(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    auto out = ctx.Output(0, x.dtype(), x.shape());
    if (!out.ok()) {
      status = out.status();
      return;
    }
    y = *out;
    if (x.numel() == 0) return;
    CumSumKernel<T><<<BlocksFor(outer * inner), kThreads, 0, ctx.cuda.stream()>>>(x.device_data<T>(), y->mutable_device_data<T>(), outer, len, inner,
                                                                                  exclusive, reverse);
  });
  if (!ok) return ctx.Decline("dtype " + DTypeName(x.dtype()));
  QC_RETURN_IF_ERROR(status);
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("CumSumKernel");
  return Status::Ok();
}

// start, limit and delta are read on the host; the element count is the CPU's.
Status RangeCuda(OpContext& ctx) {
  if (ctx.num_inputs() != 3 || !ctx.has_input(0) || !ctx.has_input(1) || !ctx.has_input(2)) return ctx.Error("expected 3 inputs");
  const DType dtype = ctx.input(0).dtype();
  for (int i = 0; i < 3; ++i) {
    if (ctx.input(i).numel() != 1 || ctx.input(i).rank() > 1)
      return ctx.Error("start, limit and delta must be scalars; input " + std::to_string(i) + " has shape " + ShapeToString(ctx.input(i).shape()));
    if (ctx.input(i).dtype() != dtype) return ctx.Error("start, limit and delta must have the same dtype");
  }
  KernelContext k{ctx.node, ctx.inputs, std::vector<Tensor>(ctx.outputs.size()), ctx.opset, nullptr};
  Status status = Status::Ok();
  const bool ok = DispatchScanType(dtype, [&](auto tag) {
    using T = decltype(tag);
    using V = std::conditional_t<std::is_integral_v<T>, T, float>;  // the 16-bit floats as float32
    auto scalar = [&](int i) -> V {
      if constexpr (std::is_integral_v<T> || std::is_same_v<T, float>) return ctx.input(i).data<T>()[0];
      else return ctx.input(i).ToFloats()[0];
    };
    const V start = scalar(0), limit = scalar(1), delta = scalar(2);
    StatusOr<int64_t> n = shape_ops::RangeCount<V>(k, start, limit, delta);
    if (!n.ok()) {
      status = n.status();
      return;
    }
    auto out = ctx.Output(0, dtype, {*n});
    if (!out.ok()) {
      status = out.status();
      return;
    }
    if (*n > 0) RangeKernel<T, V><<<BlocksFor(*n), kThreads, 0, ctx.cuda.stream()>>>(start, delta, (*out)->mutable_device_data<T>(), *n);
  });
  if (!ok) return ctx.Decline("dtype " + DTypeName(dtype));
  QC_RETURN_IF_ERROR(status);
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("RangeKernel");
  return Status::Ok();
}

}  // namespace qc::cuda
