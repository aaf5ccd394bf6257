// Elementwise ops on the GPU: broadcasting binary arithmetic, Max/Min, Where, unary math and activations.
// runtime/cpu/elementwise_ref.cpp is the numeric spec. Floats are float32, float16 or bfloat16
// (computed in float32, rounded once on store); Add/Sub/Mul/Max/Min also take int32/int64.
#include <cmath>

#include "runtime/cuda/ops/binary.cuh"

namespace qc::cuda {
namespace {

struct AddOp {
  template <typename T> __device__ T operator()(T a, T b) const { return a + b; }
};
struct SubOp {
  template <typename T> __device__ T operator()(T a, T b) const { return a - b; }
};
struct MulOp {
  template <typename T> __device__ T operator()(T a, T b) const { return a * b; }
};
struct DivOp {
  template <typename T> __device__ T operator()(T a, T b) const { return a / b; }
};
struct PowOp {
  __device__ float operator()(float a, float b) const { return powf(a, b); }
};
// NaN-propagating as runtime/cpu/elementwise_math.h's MaxValue/MinValue (the first NaN wins).
template <typename T>
__device__ __forceinline__ bool IsNaN(T v) {
  return v != v;
}
struct MaxOp {
  template <typename T> __device__ T operator()(T a, T b) const {
    if (IsNaN(a)) return a;
    if (IsNaN(b)) return b;
    return a < b ? b : a;
  }
};
struct MinOp {
  template <typename T> __device__ T operator()(T a, T b) const {
    if (IsNaN(a)) return a;
    if (IsNaN(b)) return b;
    return b < a ? b : a;
  }
};

// Max/Min of any number of inputs, folded left to right like the CPU's VariadicRef (the order
// fixes which NaN wins); the float types, int32, int64.
template <typename Op>
Status Variadic(OpContext& ctx) {
  if (ctx.num_inputs() < 1) return ctx.Error("expected at least 1 input, got 0");
  for (int i = 0; i < ctx.num_inputs(); ++i)
    if (!ctx.has_input(i)) return ctx.Error("input " + std::to_string(i) + " is missing");
  const DType t = ctx.input(0).dtype();
  for (int i = 1; i < ctx.num_inputs(); ++i)
    if (ctx.input(i).dtype() != t) return ctx.Error("inputs have different dtypes");
  if (!IsKernelFloat(t) && t != DType::kInt32 && t != DType::kInt64) return ctx.Decline("dtype " + DTypeName(t));
  if (ctx.num_inputs() == 1) {
    const Tensor& x = ctx.input(0);
    QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, t, x.shape()));
    if (x.nbytes() > 0) QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(y->mutable_raw(), x.raw(), x.nbytes(), cudaMemcpyDeviceToDevice, ctx.cuda.stream()));
    return Status::Ok();
  }
  Tensor acc = ctx.input(0);
  for (int i = 1; i < ctx.num_inputs(); ++i) {
    Tensor next;
    Status status = Status::Ok();
    auto launch = [&](auto tag) {
      using T = decltype(tag);
      status = LaunchBinaryInto<T, T>(ctx, acc, ctx.input(i), t, Op{}, &next);
    };
    if (!DispatchFloat(t, launch)) {
      if (t == DType::kInt32) launch(int32_t{});
      else launch(int64_t{});
    }
    QC_RETURN_IF_ERROR(status);
    if (!ctx.declined.empty()) return Status::Ok();
    acc = std::move(next);
  }
  ctx.outputs[0] = std::move(acc);
  return Status::Ok();
}

template <typename T, typename Op>
Status LaunchSameType(OpContext& ctx, Op op) {
  return LaunchBinary<T, T>(ctx, ctx.input(0).dtype(), op);
}

// Arithmetic on the float types, and on int32/int64 for Add/Sub/Mul (index arithmetic).
template <typename Op, bool kIntegers>
Status Arith(OpContext& ctx) {
  if (ctx.num_inputs() != 2 || !ctx.has_input(0) || !ctx.has_input(1)) return ctx.Error("expected 2 inputs");
  const DType t = ctx.input(0).dtype();
  if (ctx.input(1).dtype() != t) return ctx.Error("inputs have different dtypes");
  Status status = Status::Ok();
  if (DispatchFloat(t, [&](auto tag) { status = LaunchSameType<decltype(tag)>(ctx, Op{}); })) return status;
  if constexpr (kIntegers) {
    if (t == DType::kInt64) return LaunchSameType<int64_t>(ctx, Op{});
    if (t == DType::kInt32) return LaunchSameType<int32_t>(ctx, Op{});
  }
  return ctx.Decline("dtype " + DTypeName(t));
}

template <typename T>
__global__ void WhereKernel(const bool* c, const T* a, const T* b, T* y, int64_t n, Indexer<3> ix) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t off[3];
    ix.Offsets(i, off);
    y[i] = c[off[0]] ? a[off[1]] : b[off[2]];
  }
}

template <typename T, typename Fn>
__global__ void UnaryKernel(const T* x, T* y, int64_t n, Fn fn) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = StoreValue<T>(fn(LoadValue(x[i])));
}

// y = fn(x) for a float x; fn takes and returns float.
template <typename Fn>
Status Unary(OpContext& ctx, Fn fn) {
  if (!ctx.has_input(0)) return ctx.Error("expected 1 input");
  const Tensor& x = ctx.input(0);
  if (!IsKernelFloat(x.dtype())) return ctx.Decline("dtype " + DTypeName(x.dtype()));
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, x.dtype(), x.shape()));
  const int64_t n = x.numel();
  if (n == 0) return Status::Ok();
  DispatchFloat(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    UnaryKernel<<<BlocksFor(n), kThreads, 0, ctx.cuda.stream()>>>(x.device_data<T>(), y->mutable_device_data<T>(), n, fn);
  });
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("UnaryKernel");
  return Status::Ok();
}

// The same formulas as runtime/cpu/elementwise_math.h.
__device__ __forceinline__ float Sigmoid(float x) {
  const float e = expf(-fabsf(x));
  const float d = 1.0f + e;
  return x >= 0.0f ? 1.0f / d : e / d;
}
__device__ __forceinline__ float GeluErf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f)); }
__device__ __forceinline__ float GeluTanh(float x) {
  return 0.5f * x * (1.0f + tanhf(0.79788456080286535588f * (x + 0.044715f * x * x * x)));
}

template <typename T, typename Fn>
__global__ void BiasUnaryKernel(const T* x, const T* bias, T* y, int64_t n, int64_t cols, Fn fn) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = StoreValue<T>(fn(LoadValue(x[i]) + LoadValue(bias[i % cols])));
}

}  // namespace

Status AddCuda(OpContext& ctx) { return Arith<AddOp, true>(ctx); }
Status SubCuda(OpContext& ctx) { return Arith<SubOp, true>(ctx); }
Status MulCuda(OpContext& ctx) { return Arith<MulOp, true>(ctx); }
Status DivCuda(OpContext& ctx) { return Arith<DivOp, false>(ctx); }  // integer division by zero is an error on the CPU
Status PowCuda(OpContext& ctx) {
  if (ctx.num_inputs() != 2 || !ctx.has_input(1)) return ctx.Error("expected 2 inputs");
  const DType t = ctx.input(0).dtype();
  if (!IsKernelFloat(t) || ctx.input(1).dtype() != t) return ctx.Decline("dtypes " + DTypeName(t) + ", " + DTypeName(ctx.input(1).dtype()));
  Status status = Status::Ok();
  DispatchFloat(t, [&](auto tag) { status = LaunchSameType<decltype(tag)>(ctx, PowOp{}); });
  return status;
}

Status MaxCuda(OpContext& ctx) { return Variadic<MaxOp>(ctx); }
Status MinCuda(OpContext& ctx) { return Variadic<MinOp>(ctx); }

Status WhereCuda(OpContext& ctx) {
  if (ctx.num_inputs() != 3 || !ctx.has_input(0) || !ctx.has_input(1) || !ctx.has_input(2)) return ctx.Error("expected 3 inputs");
  const Tensor& c = ctx.input(0);
  const Tensor& a = ctx.input(1);
  const Tensor& b = ctx.input(2);
  if (c.dtype() != DType::kBool) return ctx.Error("condition must be bool");
  if (a.dtype() != b.dtype()) return ctx.Error("X and Y have different dtypes");
  auto shape = BroadcastShapes({c.shape(), a.shape(), b.shape()});
  if (!shape.ok()) return ctx.Error(shape.status().message());
  Indexer<3> ix;
  if (!MakeIndexer<3>(*shape, {c.shape(), a.shape(), b.shape()}, &ix)) return ctx.Decline("more than 8 broadcast dims");
  const int size = ElementSize(a.dtype());
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, a.dtype(), *shape));
  const int64_t n = y->numel();
  if (n == 0) return Status::Ok();
  const bool* cp = c.device_data<bool>();
  // Where moves bytes: dispatch on the element size, not the dtype.
  const bool launched = DispatchBytes(size, [&](auto tag) {
    using T = decltype(tag);
    WhereKernel<<<BlocksFor(n), kThreads, 0, ctx.cuda.stream()>>>(cp, static_cast<const T*>(a.raw()), static_cast<const T*>(b.raw()),
                                                                  static_cast<T*>(y->mutable_raw()), n, ix);
  });
  if (!launched) return ctx.Decline("dtype " + DTypeName(a.dtype()));
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("WhereKernel");
  return Status::Ok();
}

Status SqrtCuda(OpContext& ctx) { return Unary(ctx, [] __device__(float x) { return sqrtf(x); }); }
Status ReciprocalCuda(OpContext& ctx) { return Unary(ctx, [] __device__(float x) { return 1.0f / x; }); }
Status NegCuda(OpContext& ctx) { return Unary(ctx, [] __device__(float x) { return -x; }); }
Status ExpCuda(OpContext& ctx) { return Unary(ctx, [] __device__(float x) { return expf(x); }); }
Status LogCuda(OpContext& ctx) { return Unary(ctx, [] __device__(float x) { return logf(x); }); }
Status TanhCuda(OpContext& ctx) { return Unary(ctx, [] __device__(float x) { return tanhf(x); }); }
Status ErfCuda(OpContext& ctx) { return Unary(ctx, [] __device__(float x) { return erff(x); }); }
Status SinCuda(OpContext& ctx) { return Unary(ctx, [] __device__(float x) { return sinf(x); }); }
Status CosCuda(OpContext& ctx) { return Unary(ctx, [] __device__(float x) { return cosf(x); }); }
// ONNX Round: halves to even, as the CPU's nearbyint in the default rounding mode.
Status RoundCuda(OpContext& ctx) { return Unary(ctx, [] __device__(float x) { return rintf(x); }); }
Status AbsCuda(OpContext& ctx) { return Unary(ctx, [] __device__(float x) { return fabsf(x); }); }
Status SigmoidCuda(OpContext& ctx) { return Unary(ctx, [] __device__(float x) { return Sigmoid(x); }); }
Status ReluCuda(OpContext& ctx) { return Unary(ctx, [] __device__(float x) { return x < 0.0f ? 0.0f : x; }); }

Status GeluCuda(OpContext& ctx) {
  const std::string approximate = ctx.node.GetString("approximate", "none");
  if (approximate == "none") return Unary(ctx, [] __device__(float x) { return GeluErf(x); });
  if (approximate == "tanh") return Unary(ctx, [] __device__(float x) { return GeluTanh(x); });
  return ctx.Error("attribute approximate must be \"none\" or \"tanh\", got \"" + approximate + "\"");
}
Status ContribGeluCuda(OpContext& ctx) { return Unary(ctx, [] __device__(float x) { return GeluErf(x); }); }
Status QuickGeluCuda(OpContext& ctx) {
  const float alpha = ctx.node.GetFloat("alpha", 1.702f);
  return Unary(ctx, [alpha] __device__(float x) { return x * Sigmoid(alpha * x); });
}
Status FastGeluCuda(OpContext& ctx) {
  if (!ctx.has_input(1)) return Unary(ctx, [] __device__(float x) { return GeluTanh(x); });
  const Tensor& x = ctx.input(0);
  const Tensor& bias = ctx.input(1);
  if (!IsKernelFloat(x.dtype()) || bias.dtype() != x.dtype()) return ctx.Decline("dtypes " + DTypeName(x.dtype()) + ", " + DTypeName(bias.dtype()));
  if (bias.rank() != 1 || x.rank() < 1 || bias.dim(0) != x.dim(-1)) return ctx.Decline("bias not a row over the last dim");
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, x.dtype(), x.shape()));
  const int64_t n = x.numel();
  if (n == 0) return Status::Ok();
  auto gelu = [] __device__(float v) { return GeluTanh(v); };
  DispatchFloat(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    BiasUnaryKernel<<<BlocksFor(n), kThreads, 0, ctx.cuda.stream()>>>(x.device_data<T>(), bias.device_data<T>(), y->mutable_device_data<T>(), n,
                                                                      bias.dim(0), gelu);
  });
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("BiasUnaryKernel");
  return Status::Ok();
}

}  // namespace qc::cuda
