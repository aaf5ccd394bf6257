// Cast and CastLike: conversion between every numeric dtype, bool and the 16-bit floats.
#include <string>
#include <type_traits>

#include "runtime/cpu/elementwise_common.h"

namespace qc {

using elementwise::kIsHalf;
using elementwise::kIsBool;
using elementwise::DispatchAll;
using elementwise::Load;
using elementwise::SaturateCast;
using elementwise::RequireInputs;
using elementwise::UnaryLoop;

namespace {

/// One element From -> To: floats to integers truncate toward zero (ONNX) and saturate instead of
/// invoking C++'s undefined out-of-range conversion; anything to bool is `!= 0`; the 16-bit floats
/// go through float32.
template <typename To, typename From>
To ConvertValue(From v) {
  if constexpr (kIsHalf<From>) {
    return ConvertValue<To>(Load(v));
  } else if constexpr (std::is_same_v<To, Float16>) {
    return Float16{FloatToHalf(static_cast<float>(v))};
  } else if constexpr (std::is_same_v<To, BFloat16>) {
    return BFloat16{FloatToBFloat16(static_cast<float>(v))};
  } else if constexpr (kIsBool<To>) {
    return v != From(0);
  } else {
    return SaturateCast<To>(v);
  }
}

Status CastTo(KernelContext& ctx, DType to) {
  const Tensor& x = ctx.input(0);
  if (to == DType::kString || x.dtype() == DType::kString)
    return Unimplemented(ctx.node.Describe() + ": Cast to or from string is not supported");
  // 17..20 are the float8 types (opset 19), the only ones the saturate attribute affects.
  const int to_int = static_cast<int>(to);
  if (to_int >= 17 && to_int <= 20)
    return Unimplemented(ctx.node.Describe() + ": Cast to float8 (ONNX type " + std::to_string(to_int) +
                         ") is not supported");
  if (x.dtype() == to) {
    ctx.outputs[0] = x;  // tensors are immutable, so sharing the buffer is a valid copy
    return Status::Ok();
  }
  Tensor y(to, x.shape());
  bool to_ok = false;
  const bool from_ok = DispatchAll(x.dtype(), [&](auto from_tag) {
    using From = typename decltype(from_tag)::type;
    to_ok = DispatchAll(to, [&](auto to_tag) {
      using To = typename decltype(to_tag)::type;
      UnaryLoop<From, To>(x, y, [](From v) { return ConvertValue<To>(v); });
    });
  });
  if (!from_ok) return ctx.UnsupportedDType(x.dtype());
  if (!to_ok) return Unimplemented(ctx.node.Describe() + ": unsupported target dtype " + DTypeName(to) +
                                   " (ONNX type " + std::to_string(to_int) + ")");
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

}  // namespace

Status CastRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(RequireInputs(ctx, 1));
  if (!ctx.node.HasAttr("to")) return ctx.Error("missing required attribute 'to'");
  const int64_t to = ctx.node.GetInt("to", 0);
  if (to <= 0 || to > 64) return ctx.Error("attribute 'to' is not an ONNX data type: " + std::to_string(to));
  return CastTo(ctx, static_cast<DType>(to));
}

Status CastLikeRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(RequireInputs(ctx, 2));
  return CastTo(ctx, ctx.input(1).dtype());
}

}  // namespace qc
