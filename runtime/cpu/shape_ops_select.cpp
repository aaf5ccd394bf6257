// Index-producing kernels: ArgMax, ArgMin, TopK, NonZero, OneHot.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "runtime/cpu/dispatch.h"
#include "runtime/cpu/kernel.h"
#include "runtime/cpu/shape_ops_internal.h"

namespace qc {

using shape_ops::CheckOutputShape;
using shape_ops::ElementBytes;
using shape_ops::InputElementBytes;
using shape_ops::NormalizeAxis;
using shape_ops::ReadIntScalar;

namespace {

template <typename T>
bool IsNan(T v) {
  if constexpr (std::is_floating_point_v<T>) {
    return std::isnan(v);
  } else {
    return false;
  }
}

// NaN orders above every number, as numpy's argmax/sort treat it.
template <typename T>
bool Greater(T a, T b) {
  return (IsNan(a) && !IsNan(b)) || a > b;
}

// Calls fn(const T* values) with the input's values in a type whose < and > match the dtype's
// order. float16/bfloat16 are widened to float (exact); bool has no order here.
template <typename Fn>
bool WithOrderedValues(const Tensor& x, Fn&& fn) {
  if (x.dtype() == DType::kFloat16 || x.dtype() == DType::kBFloat16) {
    const std::vector<float> v = x.ToFloats();
    fn(v.data());
    return true;
  }
  if (x.dtype() == DType::kBool) return false;
  return DispatchNumeric(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    fn(x.data<T>());
  });
}

// outer * len * inner decomposition around `axis`.
struct AxisSplit {
  int64_t outer = 1, len = 1, inner = 1;
};
AxisSplit SplitAround(const Shape& shape, int axis) {
  AxisSplit s;
  s.len = shape[axis];
  for (int d = 0; d < axis; ++d) s.outer *= shape[d];
  for (size_t d = axis + 1; d < shape.size(); ++d) s.inner *= shape[d];
  return s;
}

Status ArgReduce(KernelContext& ctx, bool is_max) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 1));
  const Tensor& x = ctx.input(0);
  QC_ASSIGN_OR_RETURN(int axis, NormalizeAxis(ctx, ctx.node.GetInt("axis", 0), x.rank(), "axis"));
  const bool keepdims = ctx.node.GetInt("keepdims", 1) != 0;
  const bool select_last = ctx.node.GetInt("select_last_index", 0) != 0;
  const AxisSplit s = SplitAround(x.shape(), axis);
  if (s.len == 0) return ctx.Error("cannot reduce over axis " + std::to_string(axis) + " of size 0");
  Shape shape = x.shape();
  if (keepdims) {
    shape[axis] = 1;
  } else {
    shape.erase(shape.begin() + axis);
  }
  Tensor out(DType::kInt64, shape);
  int64_t* y = out.mutable_data<int64_t>();
  if (!WithOrderedValues(x, [&](const auto* v) {
        for (int64_t o = 0; o < s.outer; ++o)
          for (int64_t i = 0; i < s.inner; ++i) {
            const auto* row = v + o * s.len * s.inner + i;
            int64_t best = 0;
            for (int64_t k = 1; k < s.len; ++k) {
              const auto a = row[k * s.inner], b = row[best * s.inner];
              const bool better = is_max ? Greater(a, b) : (IsNan(a) && !IsNan(b)) || (!IsNan(b) && a < b);
              const bool tie = !Greater(a, b) && !Greater(b, a) && (IsNan(a) == IsNan(b));
              if (better || (select_last && tie)) best = k;
            }
            y[o * s.inner + i] = best;
          }
      })) {
    return ctx.UnsupportedDType(x.dtype());
  }
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

}  // namespace

Status ArgMaxRef(KernelContext& ctx) { return ArgReduce(ctx, /*is_max=*/true); }
Status ArgMinRef(KernelContext& ctx) { return ArgReduce(ctx, /*is_max=*/false); }

Status TopKRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 2));
  QC_ASSIGN_OR_RETURN(int es, InputElementBytes(ctx, 0));
  const Tensor& x = ctx.input(0);
  int64_t k = 0;
  if (ctx.has_input(1)) {
    QC_ASSIGN_OR_RETURN(k, ReadIntScalar(ctx, 1, "K"));
  } else if (ctx.node.HasAttr("k")) {
    k = ctx.node.GetInt("k", 0);  // opset 1
  } else {
    return ctx.Error("K is required (input 1)");
  }
  QC_ASSIGN_OR_RETURN(int axis, NormalizeAxis(ctx, ctx.node.GetInt("axis", -1), x.rank(), "axis"));
  const bool largest = ctx.node.GetInt("largest", 1) != 0;
  const AxisSplit s = SplitAround(x.shape(), axis);
  if (k < 0 || k > s.len)
    return ctx.Error("K = " + std::to_string(k) + " is out of range for axis " + std::to_string(axis) + " of size " +
                     std::to_string(s.len));
  Shape shape = x.shape();
  shape[axis] = k;
  Tensor values(x.dtype(), shape);
  Tensor indices(DType::kInt64, shape);
  const char* src = static_cast<const char*>(x.raw());
  char* val = static_cast<char*>(values.mutable_raw());
  int64_t* ind = indices.mutable_data<int64_t>();
  if (!WithOrderedValues(x, [&](const auto* v) {
        std::vector<int64_t> order(s.len);
        for (int64_t o = 0; o < s.outer; ++o)
          for (int64_t i = 0; i < s.inner; ++i) {
            const auto* row = v + o * s.len * s.inner + i;
            std::iota(order.begin(), order.end(), int64_t{0});
            // Equal values keep ascending index order, as the spec requires; sorted=0 may be
            // returned sorted too.
            auto cmp = [&](int64_t a, int64_t b) {
              const auto va = row[a * s.inner], vb = row[b * s.inner];
              if (largest ? Greater(va, vb) : Greater(vb, va)) return true;
              if (largest ? Greater(vb, va) : Greater(va, vb)) return false;
              return a < b;
            };
            std::partial_sort(order.begin(), order.begin() + k, order.end(), cmp);
            for (int64_t j = 0; j < k; ++j) {
              const int64_t out_off = (o * k + j) * s.inner + i;
              const int64_t in_off = (o * s.len + order[j]) * s.inner + i;
              ind[out_off] = order[j];
              std::memcpy(val + out_off * es, src + in_off * es, es);
            }
          }
      })) {
    return ctx.UnsupportedDType(x.dtype());
  }
  ctx.outputs[0] = std::move(values);
  if (ctx.num_outputs() > 1) ctx.outputs[1] = std::move(indices);
  return Status::Ok();
}

Status NonZeroRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 1));
  const Tensor& x = ctx.input(0);
  const int64_t n = x.numel();
  std::vector<int64_t> hits;
  if (x.dtype() == DType::kFloat16 || x.dtype() == DType::kBFloat16) {
    const uint16_t* p = static_cast<const uint16_t*>(x.raw());
    for (int64_t i = 0; i < n; ++i)
      if ((p[i] & 0x7fff) != 0) hits.push_back(i);  // +0 and -0 are the only zeros
  } else if (!DispatchNumeric(x.dtype(), [&](auto tag) {
               using T = typename decltype(tag)::type;
               const T* p = x.data<T>();
               for (int64_t i = 0; i < n; ++i)
                 if (p[i] != T(0)) hits.push_back(i);
             })) {
    return ctx.UnsupportedDType(x.dtype());
  }
  // A scalar reads as a 1-element vector (numpy's and ONNX Runtime's behaviour).
  const Shape dims = x.rank() == 0 ? Shape{1} : x.shape();
  const int r = static_cast<int>(dims.size());
  const int64_t count = static_cast<int64_t>(hits.size());
  Tensor out(DType::kInt64, {r, count});
  int64_t* y = out.mutable_data<int64_t>();
  for (int64_t j = 0; j < count; ++j) {
    int64_t rest = hits[j];
    for (int d = r - 1; d >= 0; --d) {
      y[d * count + j] = rest % dims[d];
      rest /= dims[d];
    }
  }
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

namespace {
// Integer value of element i of a numeric tensor; false for non-finite or absurdly large floats.
std::vector<int64_t> ReadIndexValues(const Tensor& t, std::vector<bool>* valid) {
  const int64_t n = t.numel();
  valid->assign(n, true);
  if (!IsFloatingPoint(t.dtype())) return t.ToInt64s();
  std::vector<int64_t> out(n, 0);
  const std::vector<float> f = t.dtype() == DType::kFloat64 ? std::vector<float>() : t.ToFloats();
  for (int64_t i = 0; i < n; ++i) {
    const double v = t.dtype() == DType::kFloat64 ? t.data<double>()[i] : f[i];
    // 2^62 keeps the later "+ depth" from overflowing; such values are out of range anyway.
    if (!std::isfinite(v) || std::fabs(v) > 4.6e18) {
      (*valid)[i] = false;
    } else {
      out[i] = static_cast<int64_t>(v);
    }
  }
  return out;
}
}  // namespace

Status OneHotRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(3, 3));
  const Tensor& indices = ctx.input(0);
  const Tensor& depth_t = ctx.input(1);
  const Tensor& values = ctx.input(2);
  for (int i = 0; i < 2; ++i) {
    const DType t = ctx.input(i).dtype();
    if (t == DType::kBool || ElementBytes(t) == 0) return ctx.UnsupportedDType(t);
  }
  const int es = ElementBytes(values.dtype());
  if (es == 0) return ctx.UnsupportedDType(values.dtype());
  if (depth_t.numel() != 1) return ctx.Error("depth must be a scalar, got shape " + ShapeToString(depth_t.shape()));
  if (values.numel() != 2) return ctx.Error("values must hold [off_value, on_value], got shape " +
                                            ShapeToString(values.shape()));
  std::vector<bool> depth_valid;
  const int64_t depth = ReadIndexValues(depth_t, &depth_valid)[0];
  if (!depth_valid[0] || depth <= 0) return ctx.Error("depth must be a positive number");
  const int r = indices.rank();
  QC_ASSIGN_OR_RETURN(int axis, NormalizeAxis(ctx, ctx.node.GetInt("axis", -1), r + 1, "axis"));
  Shape shape = indices.shape();
  shape.insert(shape.begin() + axis, depth);
  QC_RETURN_IF_ERROR(CheckOutputShape(ctx, shape, "output"));
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < r; ++d) (d < axis ? outer : inner) *= indices.shape()[d];
  Tensor out(values.dtype(), shape);
  char* dst = static_cast<char*>(out.mutable_raw());
  const char* off_value = static_cast<const char*>(values.raw());
  const char* on_value = off_value + es;
  for (int64_t i = 0; i < out.numel(); ++i) std::memcpy(dst + i * es, off_value, es);
  std::vector<bool> valid;
  const std::vector<int64_t> idx = ReadIndexValues(indices, &valid);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      const int64_t flat = o * inner + i;
      if (!valid[flat]) continue;
      int64_t v = idx[flat];
      if (v < 0) v += depth;
      // Out-of-range indices give an all-off row, as the spec says.
      if (v < 0 || v >= depth) continue;
      std::memcpy(dst + ((o * depth + v) * inner + i) * es, on_value, es);
    }
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

}  // namespace qc
