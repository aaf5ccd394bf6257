// Constants, shape queries and the zero-copy view ops (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "runtime/cpu/dispatch.h"
#include "runtime/cpu/kernel.h"
#include "runtime/cpu/shape_ops_internal.h"

namespace qc {

using shape_ops::CheckOutputShape;
using shape_ops::ElementBytes;
using shape_ops::InputElementBytes;
using shape_ops::NormalizeAxis;
using shape_ops::ReadInts;

namespace {

Status ExpectOutputs(const KernelContext& ctx, int min, int max) {
  if (ctx.num_outputs() < min || ctx.num_outputs() > max)
    return ctx.Error("expected " + std::to_string(min) + ".." + std::to_string(max) + " outputs, got " +
                     std::to_string(ctx.num_outputs()));
  return Status::Ok();
}

bool OutputWanted(const KernelContext& ctx, int i) {
  return i < ctx.num_outputs() && i < static_cast<int>(ctx.node.outputs.size()) && !ctx.node.outputs[i].empty();
}

// Axes of Squeeze/Unsqueeze: the input from opset 13, the attribute before. Returns false in
// `present` when neither is given.
StatusOr<std::vector<int64_t>> ReadAxes(const KernelContext& ctx, bool* present) {
  *present = true;
  if (ctx.has_input(1)) return ReadInts(ctx, 1, "axes");
  if (ctx.node.HasAttr("axes")) return ctx.node.GetInts("axes");
  *present = false;
  return std::vector<int64_t>{};
}

}  // namespace

Status ConstantRef(KernelContext& ctx) {
  if (ctx.num_inputs() != 0) return ctx.Error("Constant takes no inputs, got " + std::to_string(ctx.num_inputs()));
  QC_RETURN_IF_ERROR(ExpectOutputs(ctx, 1, 1));
  static const char* const kKeys[] = {"value",      "value_float",  "value_floats", "value_int",
                                      "value_ints", "value_string", "value_strings", "sparse_value"};
  int count = 0;
  for (const char* key : kKeys) count += ctx.node.HasAttr(key) ? 1 : 0;
  if (count != 1)
    return ctx.Error("expected exactly one of the attributes value, value_float(s), value_int(s), value_string(s), "
                     "sparse_value; got " + std::to_string(count));
  const Node& n = ctx.node;
  if (n.HasAttr("value")) {
    const Attribute& a = n.attributes.at("value");
    if (a.type != Attribute::Type::kTensor || !a.t.defined())
      return ctx.Error("attribute 'value' must hold a tensor");
    ctx.outputs[0] = a.t;
  } else if (n.HasAttr("value_float")) {
    ctx.outputs[0] = Tensor::Scalar<float>(n.GetFloat("value_float", 0));
  } else if (n.HasAttr("value_floats")) {
    std::vector<float> v = n.GetFloats("value_floats");
    ctx.outputs[0] = Tensor::FromVector<float>(v, {static_cast<int64_t>(v.size())});
  } else if (n.HasAttr("value_int")) {
    ctx.outputs[0] = Tensor::Scalar<int64_t>(n.GetInt("value_int", 0));
  } else if (n.HasAttr("value_ints")) {
    std::vector<int64_t> v = n.GetInts("value_ints");
    ctx.outputs[0] = Tensor::FromVector<int64_t>(v, {static_cast<int64_t>(v.size())});
  } else if (n.HasAttr("sparse_value")) {
    return Unimplemented(n.Describe() + ": sparse_value constants are not supported; densify the model first");
  } else {
    return Unimplemented(n.Describe() + ": string constants are not supported (the runtime has no string tensors)");
  }
  return Status::Ok();
}

Status ConstantOfShapeRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 1));
  QC_ASSIGN_OR_RETURN(std::vector<int64_t> dims, ReadInts(ctx, 0, "input"));
  Shape shape(dims.begin(), dims.end());
  QC_RETURN_IF_ERROR(CheckOutputShape(ctx, shape, "output"));
  Tensor value = Tensor::Scalar<float>(0.0f);
  if (ctx.node.HasAttr("value")) {
    const Attribute& a = ctx.node.attributes.at("value");
    if (a.type != Attribute::Type::kTensor || !a.t.defined() || a.t.numel() != 1)
      return ctx.Error("attribute 'value' must be a one-element tensor");
    value = a.t;
  }
  const int bytes = ElementBytes(value.dtype());
  if (bytes == 0) return ctx.UnsupportedDType(value.dtype());
  Tensor out(value.dtype(), shape);
  char* dst = static_cast<char*>(out.mutable_raw());
  const int64_t n = out.numel();
  bool all_zero = true;
  for (int b = 0; b < bytes; ++b) all_zero &= static_cast<const char*>(value.raw())[b] == 0;
  if (!all_zero)
    for (int64_t i = 0; i < n; ++i) std::memcpy(dst + i * bytes, value.raw(), bytes);
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

Status IdentityRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 1));
  QC_RETURN_IF_ERROR(ExpectOutputs(ctx, 1, 1));
  ctx.outputs[0] = ctx.input(0);
  return Status::Ok();
}

// Inference-mode Dropout: the output aliases the input and the mask keeps everything.
Status DropoutRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 3));
  QC_RETURN_IF_ERROR(ExpectOutputs(ctx, 1, 2));
  double ratio = ctx.node.GetFloat("ratio", 0.5f);
  if (ctx.has_input(1)) {
    const Tensor& r = ctx.input(1);
    if (r.numel() != 1 || !IsFloatingPoint(r.dtype())) return ctx.Error("input 'ratio' must be a floating-point scalar");
    ratio = r.ToFloats()[0];
  }
  if (ctx.has_input(2)) {
    const Tensor& t = ctx.input(2);
    if (t.dtype() != DType::kBool || t.numel() != 1) return ctx.Error("input 'training_mode' must be a bool scalar");
    // Training-mode dropout is random: no deterministic result to compute unless nothing is dropped.
    if (t.data<bool>()[0] && ratio != 0.0)
      return Unimplemented(ctx.node.Describe() + ": training_mode=true with ratio " + std::to_string(ratio) +
                           " is random; only inference (or ratio 0) is supported");
  }
  const Tensor& x = ctx.input(0);
  ctx.outputs[0] = x;
  if (OutputWanted(ctx, 1)) {
    Tensor mask(DType::kBool, x.shape());
    std::fill_n(mask.mutable_data<bool>(), mask.numel(), true);
    ctx.outputs[1] = std::move(mask);
  }
  return Status::Ok();
}

Status ShapeRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 1));
  const Tensor& x = ctx.input(0);
  const int64_t r = x.rank();
  // Opset 15: start/end are clamped to [0, rank] after adding rank to negative values.
  auto clamp = [r](int64_t v) { return std::clamp<int64_t>(v < 0 ? v + r : v, 0, r); };
  const int64_t start = clamp(ctx.node.GetInt("start", 0));
  const int64_t end = clamp(ctx.node.GetInt("end", r));
  std::vector<int64_t> dims;
  for (int64_t i = start; i < end; ++i) dims.push_back(x.shape()[i]);
  ctx.outputs[0] = Tensor::FromVector<int64_t>(dims, {static_cast<int64_t>(dims.size())});
  return Status::Ok();
}

Status SizeRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 1));
  ctx.outputs[0] = Tensor::Scalar<int64_t>(ctx.input(0).numel());
  return Status::Ok();
}

Status ReshapeRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(2, 2));
  const Tensor& x = ctx.input(0);
  QC_ASSIGN_OR_RETURN(std::vector<int64_t> req, ReadInts(ctx, 1, "shape"));
  const bool allow_zero = ctx.node.GetInt("allowzero", 0) != 0;
  Shape out(req.size());
  int infer = -1;
  bool has_zero = false;
  for (size_t i = 0; i < req.size(); ++i) {
    const int64_t v = req[i];
    if (v == -1) {
      if (infer >= 0) return ctx.Error("shape " + ShapeToString(req) + " has more than one -1");
      infer = static_cast<int>(i);
      out[i] = 1;
    } else if (v == 0 && !allow_zero) {
      if (static_cast<int64_t>(i) >= x.rank())
        return ctx.Error("shape " + ShapeToString(req) + " copies dimension " + std::to_string(i) +
                         " (value 0) but the input " + ShapeToString(x.shape()) + " has rank " +
                         std::to_string(x.rank()));
      out[i] = x.shape()[i];
    } else if (v < -1) {
      return ctx.Error("shape " + ShapeToString(req) + " has invalid dimension " + std::to_string(v));
    } else {
      has_zero |= v == 0;
      out[i] = v;
    }
  }
  if (allow_zero && has_zero && infer >= 0)
    return ctx.Error("shape " + ShapeToString(req) + " has both 0 and -1, which allowzero=1 forbids");
  QC_RETURN_IF_ERROR(CheckOutputShape(ctx, out, "requested"));
  const int64_t known = NumElements(out);
  if (infer >= 0) {
    if (known == 0 || x.numel() % known != 0)
      return ctx.Error("cannot reshape input " + ShapeToString(x.shape()) + " to " + ShapeToString(req) +
                       ": the -1 dimension cannot be inferred");
    out[infer] = x.numel() / known;
  } else if (known != x.numel()) {
    return ctx.Error("cannot reshape input " + ShapeToString(x.shape()) + " (" + std::to_string(x.numel()) +
                     " elements) to " + ShapeToString(out) + " (" + std::to_string(known) + " elements)");
  }
  ctx.outputs[0] = x.Reshaped(out);
  return Status::Ok();
}

Status FlattenRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 1));
  const Tensor& x = ctx.input(0);
  QC_ASSIGN_OR_RETURN(int axis, NormalizeAxis(ctx, ctx.node.GetInt("axis", 1), x.rank(), "axis", true));
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < x.rank(); ++i) (i < axis ? outer : inner) *= x.shape()[i];
  ctx.outputs[0] = x.Reshaped({outer, inner});
  return Status::Ok();
}

Status SqueezeRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 2));
  const Tensor& x = ctx.input(0);
  bool present = false;
  QC_ASSIGN_OR_RETURN(std::vector<int64_t> axes, ReadAxes(ctx, &present));
  std::vector<bool> drop(x.rank(), false);
  // An empty axes list means "not given" (ONNX Runtime's reading): squeeze every size-1 dim.
  if (!present || axes.empty()) {
    for (int i = 0; i < x.rank(); ++i) drop[i] = x.shape()[i] == 1;
  } else {
    for (int64_t a : axes) {
      QC_ASSIGN_OR_RETURN(int axis, NormalizeAxis(ctx, a, x.rank(), "axis"));
      if (drop[axis]) return ctx.Error("axis " + std::to_string(a) + " is listed twice");
      if (x.shape()[axis] != 1)
        return ctx.Error("cannot squeeze axis " + std::to_string(a) + " of shape " + ShapeToString(x.shape()) +
                         ": its size is not 1");
      drop[axis] = true;
    }
  }
  Shape out;
  for (int i = 0; i < x.rank(); ++i)
    if (!drop[i]) out.push_back(x.shape()[i]);
  ctx.outputs[0] = x.Reshaped(out);
  return Status::Ok();
}

Status UnsqueezeRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 2));
  const Tensor& x = ctx.input(0);
  bool present = false;
  QC_ASSIGN_OR_RETURN(std::vector<int64_t> axes, ReadAxes(ctx, &present));
  if (!present) return ctx.Error("axes are required (input 1 from opset 13, attribute 'axes' before)");
  const int64_t out_rank = x.rank() + static_cast<int64_t>(axes.size());
  if (out_rank > 1024) return ctx.Error("output rank " + std::to_string(out_rank) + " is unreasonably large");
  std::vector<bool> inserted(out_rank, false);
  for (int64_t a : axes) {
    QC_ASSIGN_OR_RETURN(int axis, NormalizeAxis(ctx, a, static_cast<int>(out_rank), "axis"));
    if (inserted[axis]) return ctx.Error("axis " + std::to_string(a) + " is listed twice");
    inserted[axis] = true;
  }
  Shape out(out_rank);
  int src = 0;
  for (int64_t i = 0; i < out_rank; ++i) out[i] = inserted[i] ? 1 : x.shape()[src++];
  ctx.outputs[0] = x.Reshaped(out);
  return Status::Ok();
}

Status EyeLikeRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 1));
  const Tensor& x = ctx.input(0);
  if (x.rank() != 2) return ctx.Error("input must be 2-D, got shape " + ShapeToString(x.shape()));
  DType dtype = x.dtype();
  if (ctx.node.HasAttr("dtype")) {
    const int64_t d = ctx.node.GetInt("dtype", 0);
    if (d < 0 || d > 64 || !IsSupportedDType(static_cast<int32_t>(d)))
      return ctx.Error("unsupported dtype attribute " + std::to_string(d));
    dtype = static_cast<DType>(d);
  }
  const int64_t rows = x.shape()[0], cols = x.shape()[1];
  // Clamping k just past the matrix keeps i + k from overflowing without changing which cells are set.
  const int64_t k = std::clamp<int64_t>(ctx.node.GetInt("k", 0), -rows - 1, cols + 1);
  Tensor out(dtype, x.shape());
  auto set_ones = [&](auto* data, auto one) {
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t j = i + k;
      if (j >= 0 && j < cols) data[i * cols + j] = one;
    }
  };
  if (dtype == DType::kFloat16 || dtype == DType::kBFloat16) {
    set_ones(static_cast<uint16_t*>(out.mutable_raw()),
             dtype == DType::kFloat16 ? FloatToHalf(1.0f) : FloatToBFloat16(1.0f));
  } else if (!DispatchNumeric(dtype, [&](auto tag) {
               using T = typename decltype(tag)::type;
               set_ones(out.mutable_data<T>(), static_cast<T>(1));
             })) {
    return ctx.UnsupportedDType(dtype);
  }
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}


Status RangeRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(3, 3));
  const DType dtype = ctx.input(0).dtype();
  for (int i = 0; i < 3; ++i) {
    if (ctx.input(i).numel() != 1 || ctx.input(i).rank() > 1)
      return ctx.Error("start, limit and delta must be scalars; input " + std::to_string(i) + " has shape " +
                       ShapeToString(ctx.input(i).shape()));
    if (ctx.input(i).dtype() != dtype) return ctx.Error("start, limit and delta must have the same dtype");
  }
  if (dtype == DType::kBool) return ctx.UnsupportedDType(dtype);
  Status status = Status::Ok();
  if (!DispatchNumeric(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if constexpr (!std::is_same_v<T, bool>) {
          const T start = ctx.input(0).data<T>()[0];
          const T limit = ctx.input(1).data<T>()[0];
          const T delta = ctx.input(2).data<T>()[0];
          StatusOr<int64_t> n = shape_ops::RangeCount<T>(ctx, start, limit, delta);
          if (!n.ok()) {
            status = n.status();
            return;
          }
          Tensor out(dtype, {*n});
          T* y = out.mutable_data<T>();
          // The spec's formula start + i * delta (not repeated addition, which drifts for floats).
          for (int64_t i = 0; i < *n; ++i) {
            if constexpr (std::is_floating_point_v<T>) {
              y[i] = start + static_cast<T>(i) * delta;
            } else {
              y[i] = static_cast<T>(static_cast<__int128>(start) + static_cast<__int128>(i) * delta);
            }
          }
          ctx.outputs[0] = std::move(out);
        }
      })) {
    return ctx.UnsupportedDType(dtype);
  }
  return status;
}

}  // namespace qc
