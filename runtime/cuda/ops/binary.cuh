// The broadcasting binary-op launcher shared by the arithmetic (elementwise.cu) and the comparison
// and logic (compare.cu) kernels: y[i] = op(a[..], b[..]) with numpy broadcasting. float16 and
// bfloat16 operands are loaded to float, op runs in float, and the result is rounded once.
#pragma once

#include "runtime/cpu/broadcast.h"
#include "runtime/cuda/ops/common.cuh"

namespace qc::cuda {

template <typename T, typename R, typename Op>
__global__ void BinaryKernel(const T* a, const T* b, R* y, int64_t n, Indexer<2> ix, Op op) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t off[2];
    ix.Offsets(i, off);
    y[i] = StoreValue<R>(op(LoadValue(a[off[0]]), LoadValue(b[off[1]])));
  }
}

// Same shapes: no index arithmetic.
template <typename T, typename R, typename Op>
__global__ void BinarySameKernel(const T* a, const T* b, R* y, int64_t n, Op op) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = StoreValue<R>(op(LoadValue(a[i]), LoadValue(b[i])));
}

/// Launches op over `a` and `b` (both of element type T) broadcast together into a new output
/// `out_index` of dtype `out_dtype` (element type R).
template <typename T, typename R, typename Op>
Status LaunchBinaryInto(OpContext& ctx, const Tensor& a, const Tensor& b, DType out_dtype, Op op, Tensor* out) {
  auto shape = BroadcastShapes({a.shape(), b.shape()});
  if (!shape.ok()) return ctx.Error(shape.status().message());
  Indexer<2> ix;
  if (!MakeIndexer<2>(*shape, {a.shape(), b.shape()}, &ix)) return ctx.Decline("more than 8 broadcast dims");
  QC_ASSIGN_OR_RETURN(*out, ctx.cuda.Empty(out_dtype, *shape));
  const int64_t n = out->numel();
  if (n == 0) return Status::Ok();
  if (a.shape() == b.shape())
    BinarySameKernel<T, R><<<BlocksFor(n), kThreads, 0, ctx.cuda.stream()>>>(a.device_data<T>(), b.device_data<T>(), out->mutable_device_data<R>(), n, op);
  else
    BinaryKernel<T, R><<<BlocksFor(n), kThreads, 0, ctx.cuda.stream()>>>(a.device_data<T>(), b.device_data<T>(), out->mutable_device_data<R>(), n, ix, op);
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("BinaryKernel");
  return Status::Ok();
}

/// LaunchBinaryInto for the node's two inputs and output 0.
template <typename T, typename R, typename Op>
Status LaunchBinary(OpContext& ctx, DType out_dtype, Op op) {
  return LaunchBinaryInto<T, R>(ctx, ctx.input(0), ctx.input(1), out_dtype, op, &ctx.outputs[0]);
}

}  // namespace qc::cuda
