// Reference kernels of the elementwise ops: scalar loops that follow the ONNX operator specs.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "runtime/cpu/elementwise_common.h"
#include "runtime/cpu/elementwise_math.h"

namespace qc {

namespace elementwise {

Status RequireInputRange(const KernelContext& ctx, int min, int max) {
  if (ctx.num_inputs() < min || ctx.num_inputs() > max) {
    return ctx.Error("expected " + (min == max ? std::to_string(min) : std::to_string(min) + ".." + std::to_string(max)) +
                     " inputs, got " + std::to_string(ctx.num_inputs()));
  }
  for (int i = 0; i < min; ++i) {
    if (!ctx.has_input(i)) return ctx.Error("required input " + std::to_string(i) + " is missing");
  }
  if (ctx.num_outputs() < 1) return ctx.Error("expected at least one output");
  return Status::Ok();
}

Status RequireInputs(const KernelContext& ctx, int n) { return RequireInputRange(ctx, n, n); }

Status RequireSameDType(const KernelContext& ctx, const std::vector<int>& indices) {
  const DType first = ctx.input(indices[0]).dtype();
  for (int i : indices) {
    if (!ctx.has_input(i)) continue;
    if (ctx.input(i).dtype() != first) {
      return ctx.Error("input " + std::to_string(i) + " has dtype " + DTypeName(ctx.input(i).dtype()) +
                       " but input " + std::to_string(indices[0]) + " has dtype " + DTypeName(first));
    }
  }
  return Status::Ok();
}

StatusOr<Shape> BroadcastInputs(const KernelContext& ctx, const std::vector<int>& indices) {
  std::vector<Shape> shapes;
  for (int i : indices) shapes.push_back(ctx.input(i).shape());
  StatusOr<Shape> shape = BroadcastShapes(shapes);
  if (!shape.ok()) return ctx.Error(shape.status().message());
  return shape;
}

}  // namespace elementwise

using elementwise::kIsInt;
using elementwise::Types;
using elementwise::Dispatch;
using elementwise::MathT;
using elementwise::Load;
using elementwise::Store;
using elementwise::IsNaNValue;
using elementwise::RequireInputs;
using elementwise::RequireInputRange;
using elementwise::RequireSameDType;
using elementwise::BroadcastInputs;
using elementwise::BinaryLoop;
using elementwise::UnaryLoop;
using elementwise::UnaryMathOnInput0;
using elementwise::UnaryMathRef;
using elementwise::BinaryMathRef;
using elementwise::BinaryPredicateRef;
using elementwise::ArithAdd;
using elementwise::ArithSub;
using elementwise::ArithMul;
using elementwise::ArithNeg;
using elementwise::ArithDiv;
using elementwise::TruncMod;
using elementwise::FloorMod;
using elementwise::PowValue;
using elementwise::MaxValue;
using elementwise::MinValue;
using elementwise::ReluValue;
using elementwise::SigmoidValue;
using elementwise::GeluErf;
using elementwise::GeluTanh;
using elementwise::QuickGeluValue;

namespace {

// ---- Binary arithmetic ---------------------------------------------------------------------------

/// Integer division and modulo by zero would raise SIGFPE; ONNX leaves it undefined, we reject it.
template <typename T>
bool HasZero(const Tensor& t) {
  const T* p = t.data<T>();
  for (int64_t i = 0; i < t.numel(); ++i)
    if (p[i] == T(0)) return true;
  return false;
}

Status CheckNoIntegerZero(const KernelContext& ctx, const Tensor& divisor) {
  bool zero = false;
  Dispatch<Types::kNumeric>(divisor.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (kIsInt<T>) zero = HasZero<T>(divisor);
  });
  if (zero) return ctx.Error("integer division by zero (input 1 contains 0)");
  return Status::Ok();
}

}  // namespace

Status AddRef(KernelContext& ctx) {
  return BinaryMathRef<Types::kNumeric>(ctx, [](auto a, auto b) { return ArithAdd(a, b); });
}

Status SubRef(KernelContext& ctx) {
  return BinaryMathRef<Types::kNumeric>(ctx, [](auto a, auto b) { return ArithSub(a, b); });
}

Status MulRef(KernelContext& ctx) {
  return BinaryMathRef<Types::kNumeric>(ctx, [](auto a, auto b) { return ArithMul(a, b); });
}

Status DivRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(RequireInputs(ctx, 2));
  QC_RETURN_IF_ERROR(CheckNoIntegerZero(ctx, ctx.input(1)));
  return BinaryMathRef<Types::kNumeric>(ctx, [](auto a, auto b) { return ArithDiv(a, b); });
}

Status ModRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(RequireInputs(ctx, 2));
  const int64_t fmod = ctx.node.GetInt("fmod", 0);
  if (fmod != 0 && fmod != 1) return ctx.Error("attribute fmod must be 0 or 1, got " + std::to_string(fmod));
  if (fmod == 0 && IsFloatingPoint(ctx.input(0).dtype()))
    return ctx.Error("floating-point inputs require fmod=1 (the ONNX spec leaves fmod=0 undefined for them)");
  QC_RETURN_IF_ERROR(CheckNoIntegerZero(ctx, ctx.input(1)));
  if (fmod == 1) return BinaryMathRef<Types::kNumeric>(ctx, [](auto a, auto b) { return TruncMod(a, b); });
  return BinaryMathRef<Types::kNumeric>(ctx, [](auto a, auto b) { return FloorMod(a, b); });
}

Status PowRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(RequireInputs(ctx, 2));
  QC_ASSIGN_OR_RETURN(Shape shape, BroadcastInputs(ctx, {0, 1}));
  const Tensor& x = ctx.input(0);
  const Tensor& e = ctx.input(1);
  Tensor y(x.dtype(), shape);
  bool exponent_ok = false;
  const bool base_ok = Dispatch<Types::kNumeric>(x.dtype(), [&](auto base_tag) {
    using T = typename decltype(base_tag)::type;
    exponent_ok = Dispatch<Types::kNumeric>(e.dtype(), [&](auto exp_tag) {
      using E = typename decltype(exp_tag)::type;
      BinaryLoop<T, E, T>(x, e, y, [](T a, E b) { return Store<T>(PowValue<MathT<T>>(Load(a), Load(b))); });
    });
  });
  if (!base_ok) return ctx.UnsupportedDType(x.dtype());
  if (!exponent_ok) return ctx.UnsupportedDType(e.dtype());
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

Status BitShiftRef(KernelContext& ctx) {
  const std::string direction = ctx.node.GetString("direction", "");
  if (direction != "LEFT" && direction != "RIGHT")
    return ctx.Error("attribute direction must be \"LEFT\" or \"RIGHT\", got \"" + direction + "\"");
  const bool left = direction == "LEFT";
  return BinaryMathRef<Types::kUnsignedInt>(ctx, [left](auto a, auto b) {
    using T = decltype(a);
    // Shifting by the type's width or more is UB in C++; every bit is shifted out, so 0.
    if (b >= static_cast<T>(sizeof(T) * 8)) return T(0);
    return left ? static_cast<T>(a << b) : static_cast<T>(a >> b);
  });
}

// ---- Unary math ------------------------------------------------------------------------------------

Status SqrtRef(KernelContext& ctx) {
  return UnaryMathRef<Types::kFloat>(ctx, [](auto x) { return std::sqrt(x); });
}

Status ReciprocalRef(KernelContext& ctx) {
  return UnaryMathRef<Types::kFloat>(ctx, [](auto x) { return decltype(x)(1) / x; });
}

Status NegRef(KernelContext& ctx) {
  return UnaryMathRef<Types::kSigned>(ctx, [](auto x) { return ArithNeg(x); });
}

Status ExpRef(KernelContext& ctx) {
  return UnaryMathRef<Types::kFloat>(ctx, [](auto x) { return std::exp(x); });
}

Status LogRef(KernelContext& ctx) {
  return UnaryMathRef<Types::kFloat>(ctx, [](auto x) { return std::log(x); });
}

Status TanhRef(KernelContext& ctx) {
  return UnaryMathRef<Types::kFloat>(ctx, [](auto x) { return std::tanh(x); });
}

Status ErfRef(KernelContext& ctx) {
  return UnaryMathRef<Types::kFloat>(ctx, [](auto x) { return std::erf(x); });
}

Status SinRef(KernelContext& ctx) {
  return UnaryMathRef<Types::kFloat>(ctx, [](auto x) { return std::sin(x); });
}

Status CosRef(KernelContext& ctx) {
  return UnaryMathRef<Types::kFloat>(ctx, [](auto x) { return std::cos(x); });
}

Status AbsRef(KernelContext& ctx) {
  return UnaryMathRef<Types::kNumeric>(ctx, [](auto x) {
    using V = decltype(x);
    if constexpr (std::is_floating_point_v<V>) {
      return std::fabs(x);
    } else if constexpr (std::is_signed_v<V>) {
      return x < 0 ? ArithNeg(x) : x;  // INT_MIN stays INT_MIN (wraps), as in ONNX Runtime
    } else {
      return x;
    }
  });
}

Status FloorRef(KernelContext& ctx) {
  return UnaryMathRef<Types::kFloat>(ctx, [](auto x) { return std::floor(x); });
}

Status CeilRef(KernelContext& ctx) {
  return UnaryMathRef<Types::kFloat>(ctx, [](auto x) { return std::ceil(x); });
}

Status RoundRef(KernelContext& ctx) {
  // ONNX Round rounds halves to even: nearbyint under the default round-to-nearest mode.
  return UnaryMathRef<Types::kFloat>(ctx, [](auto x) { return std::nearbyint(x); });
}

Status SignRef(KernelContext& ctx) {
  return UnaryMathRef<Types::kNumeric>(ctx, [](auto x) {
    using V = decltype(x);
    if constexpr (std::is_floating_point_v<V>) {
      if (std::isnan(x)) return x;
    }
    return x > V(0) ? V(1) : (x < V(0) ? static_cast<V>(-1) : V(0));
  });
}

namespace {
template <typename F>
Status FloatPredicateRef(KernelContext& ctx, F&& f) {
  QC_RETURN_IF_ERROR(RequireInputs(ctx, 1));
  const Tensor& x = ctx.input(0);
  Tensor y(DType::kBool, x.shape());
  const bool ok = Dispatch<Types::kFloat>(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    UnaryLoop<T, bool>(x, y, [&](T v) { return static_cast<bool>(f(Load(v))); });
  });
  if (!ok) return ctx.UnsupportedDType(x.dtype());
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}
}  // namespace

Status IsNaNRef(KernelContext& ctx) {
  return FloatPredicateRef(ctx, [](auto x) { return std::isnan(x); });
}

Status IsInfRef(KernelContext& ctx) {
  const bool negative = ctx.node.GetInt("detect_negative", 1) != 0;
  const bool positive = ctx.node.GetInt("detect_positive", 1) != 0;
  return FloatPredicateRef(ctx, [=](auto x) { return std::isinf(x) && (x > 0 ? positive : negative); });
}

// ---- Activations ---------------------------------------------------------------------------------

Status SigmoidRef(KernelContext& ctx) {
  return UnaryMathRef<Types::kFloat>(ctx, [](auto x) { return SigmoidValue(x); });
}

Status ReluRef(KernelContext& ctx) {
  return UnaryMathRef<Types::kSigned>(ctx, [](auto x) { return ReluValue(x); });
}

Status LeakyReluRef(KernelContext& ctx) {
  const float alpha = ctx.node.GetFloat("alpha", 0.01f);
  return UnaryMathRef<Types::kFloat>(ctx, [alpha](auto x) {
    using V = decltype(x);
    return x < V(0) ? static_cast<V>(alpha) * x : x;
  });
}

Status SoftplusRef(KernelContext& ctx) {
  return UnaryMathRef<Types::kFloat>(ctx, [](auto x) {
    // ln(exp(x) + 1), rearranged so that exp never overflows for large x.
    using V = decltype(x);
    return x > V(0) ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x));
  });
}

Status HardSigmoidRef(KernelContext& ctx) {
  const float alpha = ctx.node.GetFloat("alpha", 0.2f);
  const float beta = ctx.node.GetFloat("beta", 0.5f);
  return UnaryMathRef<Types::kFloat>(ctx, [=](auto x) {
    using V = decltype(x);
    return std::max(V(0), std::min(V(1), static_cast<V>(alpha) * x + static_cast<V>(beta)));
  });
}

Status GeluRef(KernelContext& ctx) {
  const std::string approximate = ctx.node.GetString("approximate", "none");
  if (approximate == "none") return UnaryMathRef<Types::kFloat>(ctx, [](auto x) { return GeluErf(x); });
  if (approximate == "tanh") return UnaryMathRef<Types::kFloat>(ctx, [](auto x) { return GeluTanh(x); });
  return ctx.Error("attribute approximate must be \"none\" or \"tanh\", got \"" + approximate + "\"");
}

Status ContribGeluRef(KernelContext& ctx) {
  return UnaryMathRef<Types::kFloat>(ctx, [](auto x) { return GeluErf(x); });
}

Status QuickGeluRef(KernelContext& ctx) {
  const float alpha = ctx.node.GetFloat("alpha", 1.702f);
  return UnaryMathRef<Types::kFloat>(ctx, [alpha](auto x) { return QuickGeluValue(x, static_cast<decltype(x)>(alpha)); });
}

namespace {
/// gelu(x + bias) with a 1-D bias over the last dim (FastGelu's optional bias, BiasGelu's B).
template <typename G>
Status BiasGeluLikeRef(KernelContext& ctx, bool bias_required, G&& gelu) {
  QC_RETURN_IF_ERROR(RequireInputRange(ctx, bias_required ? 2 : 1, 2));
  if (!ctx.has_input(1)) return UnaryMathOnInput0<Types::kFloat>(ctx, gelu);
  QC_RETURN_IF_ERROR(RequireSameDType(ctx, {0, 1}));
  const Tensor& x = ctx.input(0);
  const Tensor& bias = ctx.input(1);
  if (bias.rank() != 1 || x.rank() < 1 || bias.dim(0) != x.dim(-1))
    return ctx.Error("bias must be 1-D with the input's last dimension; input " + ShapeToString(x.shape()) +
                     ", bias " + ShapeToString(bias.shape()));
  return BinaryMathRef<Types::kFloat>(ctx, [&gelu](auto a, auto b) { return gelu(a + b); });
}
}  // namespace

Status FastGeluRef(KernelContext& ctx) {
  return BiasGeluLikeRef(ctx, /*bias_required=*/false, [](auto x) { return GeluTanh(x); });
}

Status BiasGeluRef(KernelContext& ctx) {
  return BiasGeluLikeRef(ctx, /*bias_required=*/true, [](auto x) { return GeluErf(x); });
}

// ---- Clip and the variadic ops ----------------------------------------------------------------------

Status ClipRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(RequireInputRange(ctx, 1, 3));
  QC_RETURN_IF_ERROR(RequireSameDType(ctx, {0, 1, 2}));
  for (int i = 1; i <= 2; ++i) {
    if (ctx.has_input(i) && ctx.input(i).numel() != 1)
      return ctx.Error(std::string(i == 1 ? "min" : "max") + " must be a scalar, got shape " +
                       ShapeToString(ctx.input(i).shape()));
  }
  const Tensor& x = ctx.input(0);
  Tensor y(x.dtype(), x.shape());
  const bool ok = Dispatch<Types::kNumeric>(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using V = MathT<T>;
    V lo = std::numeric_limits<V>::lowest();
    V hi = std::numeric_limits<V>::max();
    if (ctx.has_input(1)) lo = Load(ctx.input(1).data<T>()[0]);
    if (ctx.has_input(2)) hi = Load(ctx.input(2).data<T>()[0]);
    // Before opset 11 the bounds were float attributes.
    if (!ctx.has_input(1) && ctx.node.HasAttr("min")) lo = static_cast<V>(ctx.node.GetFloat("min", 0));
    if (!ctx.has_input(2) && ctx.node.HasAttr("max")) hi = static_cast<V>(ctx.node.GetFloat("max", 0));
    // Min(max, Max(x, min)) per the spec: min > max yields max everywhere; NaN propagates.
    UnaryLoop<T, T>(x, y, [&](T t) {
      V v = Load(t);
      if (IsNaNValue(v)) return t;
      return Store<T>(std::min(hi, std::max(v, lo)));
    });
  });
  if (!ok) return ctx.UnsupportedDType(x.dtype());
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

namespace {
/// Folds all inputs (broadcast together) with `combine` on math values, then `finish`es each
/// result with the input count.
template <Types C, typename Combine, typename Finish>
Status VariadicRef(KernelContext& ctx, Combine&& combine, Finish&& finish) {
  if (ctx.num_inputs() < 1) return ctx.Error("expected at least 1 input, got 0");
  if (ctx.num_outputs() < 1) return ctx.Error("expected at least one output");
  std::vector<int> indices;
  std::vector<Shape> shapes;
  for (int i = 0; i < ctx.num_inputs(); ++i) {
    if (!ctx.has_input(i)) return ctx.Error("input " + std::to_string(i) + " is missing");
    indices.push_back(i);
    shapes.push_back(ctx.input(i).shape());
  }
  QC_RETURN_IF_ERROR(RequireSameDType(ctx, indices));
  QC_ASSIGN_OR_RETURN(Shape shape, BroadcastInputs(ctx, indices));
  const DType dtype = ctx.input(0).dtype();
  Tensor y(dtype, shape);
  const int count = ctx.num_inputs();
  const bool ok = Dispatch<C>(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    std::vector<const T*> ptrs;
    for (int i = 0; i < count; ++i) ptrs.push_back(ctx.input(i).template data<T>());
    T* out = y.mutable_data<T>();
    BroadcastCounter it(shape, shapes);
    const int64_t n = y.numel();
    for (int64_t i = 0; i < n; ++i, it.Next()) {
      MathT<T> acc = Load(ptrs[0][it.offset(0)]);
      for (int k = 1; k < count; ++k) acc = combine(acc, Load(ptrs[k][it.offset(k)]));
      out[i] = Store<T>(static_cast<MathT<T>>(finish(acc, count)));
    }
  });
  if (!ok) return ctx.UnsupportedDType(dtype);
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

constexpr auto kKeep = [](auto v, int) { return v; };
}  // namespace

Status MaxRef(KernelContext& ctx) {
  return VariadicRef<Types::kNumeric>(ctx, [](auto a, auto b) { return MaxValue(a, b); }, kKeep);
}

Status MinRef(KernelContext& ctx) {
  return VariadicRef<Types::kNumeric>(ctx, [](auto a, auto b) { return MinValue(a, b); }, kKeep);
}

Status SumRef(KernelContext& ctx) {
  return VariadicRef<Types::kNumeric>(ctx, [](auto a, auto b) { return ArithAdd(a, b); }, kKeep);
}

Status MeanRef(KernelContext& ctx) {
  return VariadicRef<Types::kFloat>(
      ctx, [](auto a, auto b) { return a + b; }, [](auto v, int n) { return v / static_cast<decltype(v)>(n); });
}

// ---- Where, comparisons, logic ---------------------------------------------------------------------

Status WhereRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(RequireInputs(ctx, 3));
  const Tensor& cond = ctx.input(0);
  const Tensor& x = ctx.input(1);
  const Tensor& y = ctx.input(2);
  if (cond.dtype() != DType::kBool) return ctx.Error("condition must be bool, got " + DTypeName(cond.dtype()));
  QC_RETURN_IF_ERROR(RequireSameDType(ctx, {1, 2}));
  QC_ASSIGN_OR_RETURN(Shape shape, BroadcastInputs(ctx, {0, 1, 2}));
  Tensor out(x.dtype(), shape);
  // Selection copies elements unchanged, so any dtype works through an integer of its width.
  auto select = [&](auto tag) {
    using U = typename decltype(tag)::type;
    const uint8_t* pc = static_cast<const uint8_t*>(cond.raw());  // bytes: a file's bool may not be 0/1
    const U* px = static_cast<const U*>(x.raw());
    const U* py = static_cast<const U*>(y.raw());
    U* po = static_cast<U*>(out.mutable_raw());
    BroadcastCounter it(shape, {cond.shape(), x.shape(), y.shape()});
    const int64_t n = out.numel();
    for (int64_t i = 0; i < n; ++i, it.Next()) po[i] = pc[it.offset(0)] != 0 ? px[it.offset(1)] : py[it.offset(2)];
  };
  switch (DTypeBits(x.dtype())) {
    case 8: select(TypeTag<uint8_t>{}); break;
    case 16: select(TypeTag<uint16_t>{}); break;
    case 32: select(TypeTag<uint32_t>{}); break;
    case 64: select(TypeTag<uint64_t>{}); break;
    default: return ctx.UnsupportedDType(x.dtype());
  }
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

Status EqualRef(KernelContext& ctx) {
  return BinaryPredicateRef<Types::kNumericBool>(ctx, [](auto a, auto b) { return a == b; });
}

Status GreaterRef(KernelContext& ctx) {
  return BinaryPredicateRef<Types::kNumericBool>(ctx, [](auto a, auto b) { return a > b; });
}

Status LessRef(KernelContext& ctx) {
  return BinaryPredicateRef<Types::kNumericBool>(ctx, [](auto a, auto b) { return a < b; });
}

Status LessOrEqualRef(KernelContext& ctx) {
  return BinaryPredicateRef<Types::kNumericBool>(ctx, [](auto a, auto b) { return a <= b; });
}

Status GreaterOrEqualRef(KernelContext& ctx) {
  return BinaryPredicateRef<Types::kNumericBool>(ctx, [](auto a, auto b) { return a >= b; });
}

Status AndRef(KernelContext& ctx) {
  return BinaryPredicateRef<Types::kBool>(ctx, [](bool a, bool b) { return a && b; });
}

Status OrRef(KernelContext& ctx) {
  return BinaryPredicateRef<Types::kBool>(ctx, [](bool a, bool b) { return a || b; });
}

Status XorRef(KernelContext& ctx) {
  return BinaryPredicateRef<Types::kBool>(ctx, [](bool a, bool b) { return a != b; });
}

Status NotRef(KernelContext& ctx) {
  return UnaryMathRef<Types::kBool>(ctx, [](bool x) { return !x; });
}

}  // namespace qc
