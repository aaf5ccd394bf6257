// Transpose, Concat, Slice, Expand and Split on the GPU. Shapes and attributes are validated by
// the CPU kernels' own plans (runtime/cpu/shape_ops_internal.h), which read only shapes and the
// host-side inputs; the copies below then move bytes, so every dtype of 1/2/4/8 bytes works.
#include "runtime/cpu/shape_ops_internal.h"
#include "runtime/cuda/ops/common.cuh"

namespace qc::cuda {
namespace {

// A CPU KernelContext over the same node and inputs, for the shape plans.
KernelContext PlanContext(const OpContext& ctx) {
  return KernelContext{ctx.node, ctx.inputs, std::vector<Tensor>(ctx.outputs.size()), ctx.opset, nullptr};
}

// out[i] = in[base + Σ idx_d · stride_d] over the output dims; adjacent dims contiguous in both
// are merged first.
struct StridedView {
  int rank = 0;
  int64_t dims[kMaxDims];
  int64_t strides[kMaxDims];
};

bool MakeStridedView(const Shape& dims, const std::vector<int64_t>& strides, StridedView* v) {
  std::vector<int64_t> d, s;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] == 1) continue;
    if (!d.empty() && s.back() == strides[i] * dims[i]) {
      d.back() *= dims[i];
      s.back() = strides[i];
      continue;
    }
    d.push_back(dims[i]);
    s.push_back(strides[i]);
  }
  if (static_cast<int>(d.size()) > kMaxDims) return false;
  v->rank = static_cast<int>(d.size());
  for (int i = 0; i < v->rank; ++i) {
    v->dims[i] = d[i];
    v->strides[i] = s[i];
  }
  return true;
}

template <typename T>
__global__ void StridedCopyKernel(const T* in, T* out, int64_t n, int64_t base, StridedView v) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t rest = i, off = base;
    for (int d = v.rank - 1; d >= 0; --d) {
      const int64_t q = rest / v.dims[d];
      off += (rest - q * v.dims[d]) * v.strides[d];
      rest = q;
    }
    out[i] = in[off];
  }
}

// Copies the strided view of `in` (element offsets) into the contiguous `out`, dispatching on the
// element size.
Status StridedCopy(OpContext& ctx, const Tensor& in, void* out, const Shape& dims, const std::vector<int64_t>& strides,
                   int64_t base) {
  const int64_t n = NumElements(dims);
  if (n == 0) return Status::Ok();
  StridedView v;
  if (!MakeStridedView(dims, strides, &v)) return ctx.Decline("more than 8 dims after merging");
  const int size = ElementSize(in.dtype());
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    StridedCopyKernel<T><<<BlocksFor(n), kThreads, 0, ctx.cuda.stream()>>>(static_cast<const T*>(in.raw()), static_cast<T*>(out), n, base, v);
  };
  if (!DispatchBytes(size, launch)) return ctx.Decline("dtype " + DTypeName(in.dtype()));
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("StridedCopyKernel");
  return Status::Ok();
}

std::vector<int64_t> Strides(const Shape& shape) {
  std::vector<int64_t> s(shape.size(), 1);
  for (size_t i = shape.size(); i-- > 1;) s[i - 1] = s[i] * shape[i];
  return s;
}

}  // namespace

Status TransposeCuda(OpContext& ctx) {
  if (!ctx.has_input(0)) return ctx.Error("expected 1 input");
  KernelContext k = PlanContext(ctx);
  QC_ASSIGN_OR_RETURN(shape_ops::TransposePlan p, shape_ops::PlanTranspose(k));
  const Tensor& x = ctx.input(0);
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, x.dtype(), p.out_shape));
  const std::vector<int64_t> in_strides = Strides(x.shape());
  std::vector<int64_t> strides(p.perm.size());
  for (size_t j = 0; j < p.perm.size(); ++j) strides[j] = in_strides[p.perm[j]];
  return StridedCopy(ctx, x, y->mutable_raw(), p.out_shape, strides, 0);
}

Status SliceCuda(OpContext& ctx) {
  if (!ctx.has_input(0)) return ctx.Error("input data is missing");
  KernelContext k = PlanContext(ctx);
  QC_ASSIGN_OR_RETURN(shape_ops::SlicePlan p, shape_ops::PlanSlice(k));
  const Tensor& x = ctx.input(0);
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, x.dtype(), p.out_shape));
  const std::vector<int64_t> in_strides = Strides(x.shape());
  std::vector<int64_t> strides(in_strides.size());
  int64_t base = 0;
  for (size_t d = 0; d < in_strides.size(); ++d) {
    strides[d] = in_strides[d] * p.steps[d];
    base += p.starts[d] * in_strides[d];
  }
  return StridedCopy(ctx, x, y->mutable_raw(), p.out_shape, strides, y->numel() == 0 ? 0 : base);
}

Status ExpandCuda(OpContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.Error("expected 2 inputs");
  KernelContext k = PlanContext(ctx);
  QC_ASSIGN_OR_RETURN(shape_ops::ExpandPlan p, shape_ops::PlanExpand(k));
  const Tensor& x = ctx.input(0);
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, x.dtype(), p.out_shape));
  std::vector<int64_t> strides(p.out_shape.size(), 0);
  const std::vector<int64_t> in_strides = Strides(x.shape());
  const size_t lead = p.out_shape.size() - x.shape().size();
  for (size_t d = 0; d < x.shape().size(); ++d) strides[lead + d] = x.shape()[d] == 1 ? 0 : in_strides[d];
  return StridedCopy(ctx, x, y->mutable_raw(), p.out_shape, strides, 0);
}

Status ConcatCuda(OpContext& ctx) {
  KernelContext k = PlanContext(ctx);
  QC_ASSIGN_OR_RETURN(shape_ops::ConcatPlan p, shape_ops::PlanConcat(k));
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, p.parts[0]->dtype(), p.out_shape));
  // Each part is [outer, part_axis * inner] copied into columns [offset, offset + width) of
  // the output's [outer, out_axis * inner]: a 2-D strided copy, written as a view of the output.
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < p.axis; ++d) outer *= p.out_shape[d];
  for (size_t d = p.axis + 1; d < p.out_shape.size(); ++d) inner *= p.out_shape[d];
  const int64_t out_row = p.out_shape[p.axis] * inner;
  const int size = ElementSize(y->dtype());
  int64_t offset = 0;
  for (const Tensor* part : p.parts) {
    const int64_t width = part->shape()[p.axis] * inner;
    if (outer * width > 0) {
      QC_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(static_cast<char*>(y->mutable_raw()) + offset * size, out_row * size, part->raw(), width * size,
                                                width * size, outer, cudaMemcpyDeviceToDevice, ctx.cuda.stream()));
    }
    offset += width;
  }
  return Status::Ok();
}

Status SplitCuda(OpContext& ctx) {
  if (!ctx.has_input(0)) return ctx.Error("input is missing");
  KernelContext k = PlanContext(ctx);
  QC_ASSIGN_OR_RETURN(shape_ops::SplitPlan p, shape_ops::PlanSplit(k));
  const Tensor& x = ctx.input(0);
  // Output i is the [outer, sizes[i] * inner] column block of x seen as [outer, dim * inner].
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < p.axis; ++d) outer *= x.dim(d);
  for (int64_t d = p.axis + 1; d < x.rank(); ++d) inner *= x.dim(d);
  const int64_t es = p.elem_bytes, row = x.dim(p.axis) * inner * es;
  int64_t begin = 0;
  for (size_t i = 0; i < p.sizes.size(); ++i) {
    const int64_t width = p.sizes[i] * inner * es;
    if (ctx.WantOutput(static_cast<int>(i))) {
      Shape shape = x.shape();
      shape[p.axis] = p.sizes[i];
      QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(static_cast<int>(i), x.dtype(), shape));
      if (outer * width > 0)
        QC_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(y->mutable_raw(), width, static_cast<const char*>(x.raw()) + begin * inner * es, row, width, outer,
                                                  cudaMemcpyDeviceToDevice, ctx.cuda.stream()));
    }
    begin += p.sizes[i];
  }
  return Status::Ok();
}

}  // namespace qc::cuda
