// Widening float16/bfloat16 inputs for CPU kernels without a 16-bit path (half_widening.h).
#include "runtime/cpu/half_widening.h"

#include <vector>

namespace qc {
namespace {

Tensor Widen(const Tensor& t) { return Tensor::Adopt<float>(t.ToFloats(), t.shape()); }

Tensor Narrow(const Tensor& t, DType to) {
  const int64_t n = t.numel();
  const float* x = t.data<float>();
  Tensor out = Tensor::Uninitialized(to, t.shape());
  if (to == DType::kFloat16) {
    for (int64_t i = 0; i < n; ++i) out.mutable_data<Float16>()[i] = Float16{FloatToHalf(x[i])};
  } else {
    for (int64_t i = 0; i < n; ++i) out.mutable_data<BFloat16>()[i] = BFloat16{FloatToBFloat16(x[i])};
  }
  return out;
}

}  // namespace

Status RunKernelWidening(KernelFn fn, KernelContext& ctx) {
  Status first = fn(ctx);
  if (first.ok()) return first;
  const Node& node = ctx.node;
  if ((node.domain.empty() || node.domain == "ai.onnx") && (node.op_type == "Cast" || node.op_type == "CastLike")) return first;
  DType half = DType::kUndefined;
  for (const Tensor* t : ctx.inputs) {
    if (!t || !IsFloatingPoint(t->dtype())) continue;
    if (!IsHalfFloat(t->dtype()) || (half != DType::kUndefined && half != t->dtype())) return first;
    half = t->dtype();
  }
  if (half == DType::kUndefined) return first;
  std::vector<Tensor> wide;
  wide.reserve(ctx.inputs.size());
  KernelContext retry{ctx.node, {}, std::vector<Tensor>(ctx.outputs.size()), ctx.opset, ctx.run_subgraph};
  for (const Tensor* t : ctx.inputs) {
    if (t && IsHalfFloat(t->dtype())) {
      wide.push_back(Widen(*t));
      retry.inputs.push_back(&wide.back());
    } else {
      retry.inputs.push_back(t);
    }
  }
  if (!fn(retry).ok()) return first;
  for (size_t i = 0; i < retry.outputs.size(); ++i) {
    Tensor& out = retry.outputs[i];
    ctx.outputs[i] = out.defined() && out.dtype() == DType::kFloat32 ? Narrow(out, half) : std::move(out);
  }
  return Status::Ok();
}

}  // namespace qc
