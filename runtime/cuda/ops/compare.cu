// Comparisons (Equal, Less, LessOrEqual, Greater, GreaterOrEqual) and boolean logic (And, Or, Xor,
// Not) on the GPU, with broadcasting: the causal-mask arithmetic of the exported decoders.
// runtime/cpu/elementwise_ref.cpp is the numeric spec.
#include "runtime/cuda/ops/binary.cuh"

namespace qc::cuda {
namespace {

struct EqualOp {
  template <typename T> __device__ bool operator()(T a, T b) const { return a == b; }
};
struct LessOp {
  template <typename T> __device__ bool operator()(T a, T b) const { return a < b; }
};
struct LessOrEqualOp {
  template <typename T> __device__ bool operator()(T a, T b) const { return a <= b; }
};
struct GreaterOp {
  template <typename T> __device__ bool operator()(T a, T b) const { return a > b; }
};
struct GreaterOrEqualOp {
  template <typename T> __device__ bool operator()(T a, T b) const { return a >= b; }
};
struct AndOp {
  __device__ bool operator()(bool a, bool b) const { return a && b; }
};
struct OrOp {
  __device__ bool operator()(bool a, bool b) const { return a || b; }
};
struct XorOp {
  __device__ bool operator()(bool a, bool b) const { return a != b; }
};

Status CheckTwoInputs(OpContext& ctx) {
  if (ctx.num_inputs() != 2 || !ctx.has_input(0) || !ctx.has_input(1)) return ctx.Error("expected 2 inputs");
  if (ctx.input(0).dtype() != ctx.input(1).dtype())
    return ctx.Error("inputs have different dtypes: " + DTypeName(ctx.input(0).dtype()) + " and " + DTypeName(ctx.input(1).dtype()));
  return Status::Ok();
}

// A comparison of float (float32/16, bfloat16), int32, int64 or bool operands into a bool tensor.
template <typename Op>
Status Compare(OpContext& ctx) {
  QC_RETURN_IF_ERROR(CheckTwoInputs(ctx));
  const DType t = ctx.input(0).dtype();
  Status status = Status::Ok();
  if (DispatchFloat(t, [&](auto tag) { status = LaunchBinary<decltype(tag), bool>(ctx, DType::kBool, Op{}); })) return status;
  if (t == DType::kInt64) return LaunchBinary<int64_t, bool>(ctx, DType::kBool, Op{});
  if (t == DType::kInt32) return LaunchBinary<int32_t, bool>(ctx, DType::kBool, Op{});
  if (t == DType::kBool) return LaunchBinary<bool, bool>(ctx, DType::kBool, Op{});
  return ctx.Decline("dtype " + DTypeName(t));
}

template <typename Op>
Status Logic(OpContext& ctx) {
  QC_RETURN_IF_ERROR(CheckTwoInputs(ctx));
  if (ctx.input(0).dtype() != DType::kBool) return ctx.Error("inputs must be bool, got " + DTypeName(ctx.input(0).dtype()));
  return LaunchBinary<bool, bool>(ctx, DType::kBool, Op{});
}

__global__ void NotKernel(const bool* x, bool* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = !x[i];
}

}  // namespace

Status EqualCuda(OpContext& ctx) { return Compare<EqualOp>(ctx); }
Status LessCuda(OpContext& ctx) { return Compare<LessOp>(ctx); }
Status LessOrEqualCuda(OpContext& ctx) { return Compare<LessOrEqualOp>(ctx); }
Status GreaterCuda(OpContext& ctx) { return Compare<GreaterOp>(ctx); }
Status GreaterOrEqualCuda(OpContext& ctx) { return Compare<GreaterOrEqualOp>(ctx); }
Status AndCuda(OpContext& ctx) { return Logic<AndOp>(ctx); }
Status OrCuda(OpContext& ctx) { return Logic<OrOp>(ctx); }
Status XorCuda(OpContext& ctx) { return Logic<XorOp>(ctx); }

Status NotCuda(OpContext& ctx) {
  if (!ctx.has_input(0)) return ctx.Error("expected 1 input");
  const Tensor& x = ctx.input(0);
  if (x.dtype() != DType::kBool) return ctx.Error("input must be bool, got " + DTypeName(x.dtype()));
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, DType::kBool, x.shape()));
  const int64_t n = x.numel();
  if (n == 0) return Status::Ok();
  NotKernel<<<BlocksFor(n), kThreads, 0, ctx.cuda.stream()>>>(x.device_data<bool>(), y->mutable_device_data<bool>(), n);
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("NotKernel");
  return Status::Ok();
}

}  // namespace qc::cuda
