// Reduce* ops over any set of axes (axes as attribute before opset 18 / 13 for ReduceSum, as an
// input after), with a row-wise fast path when the reduced axes are the trailing ones.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <Eigen/Dense>

#include "runtime/cpu/dispatch.h"
#include "runtime/cpu/kernel.h"

namespace qc {
namespace {

enum class ReduceKind { kSum, kMean, kMax, kMin, kProd, kL1, kL2, kSumSquare, kLogSum, kLogSumExp };

struct ReducePlan {
  bool noop = false;           // empty axes with noop_with_empty_axes: output is the input
  std::vector<bool> reduced;   // per input dim
  Shape out_shape;
  // When the reduced dims are exactly the trailing ones: the input as [rows, cols].
  bool trailing = false;
  int64_t rows = 0, cols = 0;
};

StatusOr<ReducePlan> PlanReduce(const KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 2));
  if (ctx.num_outputs() < 1) return ctx.Error("expected 1 output");
  const Tensor& x = ctx.input(0);
  const int64_t rank = x.rank();
  // Axes come from the input when given (ReduceSum >= 13, others >= 18), else the attribute.
  std::vector<int64_t> axes;
  if (ctx.has_input(1)) {
    const Tensor& a = ctx.input(1);
    if (a.dtype() != DType::kInt64 && a.dtype() != DType::kInt32)
      return ctx.Error("axes must be int64, got " + DTypeName(a.dtype()));
    if (a.rank() > 1) return ctx.Error("axes must be 1-D, got shape " + ShapeToString(a.shape()));
    axes = a.ToInt64s();
  } else {
    axes = ctx.node.GetInts("axes");
  }
  const bool keepdims = ctx.node.GetInt("keepdims", 1) != 0;
  const bool noop_empty = ctx.node.GetInt("noop_with_empty_axes", 0) != 0;
  ReducePlan p;
  if (axes.empty() && noop_empty) {
    p.noop = true;
    p.out_shape = x.shape();
    return p;
  }
  p.reduced.assign(rank, axes.empty());
  for (int64_t a : axes) {
    if (a < -rank || a >= rank || rank == 0)
      return ctx.Error("axis " + std::to_string(a) + " out of range for input of shape " + ShapeToString(x.shape()));
    if (a < 0) a += rank;
    if (p.reduced[a]) return ctx.Error("axis " + std::to_string(a) + " repeated in axes");
    p.reduced[a] = true;
  }
  for (int64_t d = 0; d < rank; ++d) {
    if (!p.reduced[d]) p.out_shape.push_back(x.dim(d));
    else if (keepdims) p.out_shape.push_back(1);
  }
  int64_t first = rank;
  while (first > 0 && p.reduced[first - 1]) --first;
  p.trailing = true;
  for (int64_t d = 0; d < first; ++d) p.trailing = p.trailing && !p.reduced[d];
  p.rows = 1;
  p.cols = 1;
  for (int64_t d = 0; d < rank; ++d) (d < first ? p.rows : p.cols) *= x.dim(d);
  return p;
}

template <typename T>
using Acc = std::conditional_t<std::is_floating_point_v<T>, double,
                               std::conditional_t<std::is_signed_v<T>, int64_t, uint64_t>>;

template <typename T>
Acc<T> InitialValue(ReduceKind kind) {
  switch (kind) {
    case ReduceKind::kProd: return Acc<T>(1);
    case ReduceKind::kMax:
      if constexpr (std::is_floating_point_v<T>) return -std::numeric_limits<double>::infinity();
      else return static_cast<Acc<T>>(std::numeric_limits<T>::lowest());
    case ReduceKind::kMin:
      if constexpr (std::is_floating_point_v<T>) return std::numeric_limits<double>::infinity();
      else return static_cast<Acc<T>>(std::numeric_limits<T>::max());
    default: return Acc<T>(0);
  }
}

template <typename T>
Acc<T> Combine(ReduceKind kind, Acc<T> acc, T v) {
  const Acc<T> a = static_cast<Acc<T>>(v);
  switch (kind) {
    case ReduceKind::kMax: return (a > acc || a != a) ? a : acc;  // NaN propagates
    case ReduceKind::kMin: return (a < acc || a != a) ? a : acc;
    case ReduceKind::kProd: return acc * a;
    case ReduceKind::kL1:
      if constexpr (std::is_unsigned_v<T>) return acc + a;
      else return acc + (a < 0 ? -a : a);
    case ReduceKind::kL2:
    case ReduceKind::kSumSquare: return acc + a * a;
    default: return acc + a;  // kSum, kMean, kLogSum
  }
}

template <typename T>
T Finish(ReduceKind kind, Acc<T> acc, int64_t count) {
  switch (kind) {
    case ReduceKind::kMean:
      if constexpr (std::is_floating_point_v<T>) return static_cast<T>(acc / static_cast<double>(count));
      else return static_cast<T>(count == 0 ? 0 : acc / static_cast<Acc<T>>(count));
    case ReduceKind::kL2: return static_cast<T>(std::sqrt(static_cast<double>(acc)));
    case ReduceKind::kLogSum: return static_cast<T>(std::log(static_cast<double>(acc)));
    default: return static_cast<T>(acc);
  }
}

// Reference: every input element is folded into its output slot; LogSumExp subtracts the
// per-slot max first so large inputs do not overflow.
template <typename T>
void ReduceRefImpl(ReduceKind kind, const ReducePlan& p, const Tensor& x, Tensor& y) {
  const Shape& s = x.shape();
  const int64_t rank = x.rank();
  const int64_t out_n = y.numel();
  // Output strides per input dim (0 for reduced dims).
  std::vector<int64_t> ostride(rank, 0);
  int64_t st = 1;
  for (int64_t d = rank; d-- > 0;) {
    if (!p.reduced[d]) {
      ostride[d] = st;
      st *= s[d];
    }
  }
  const int64_t n = x.numel();
  const int64_t count = out_n == 0 ? 0 : n / out_n;
  const T* xp = x.data<T>();
  T* yp = y.mutable_data<T>();
  auto for_each = [&](auto&& fn) {
    std::vector<int64_t> idx(rank, 0);
    for (int64_t e = 0; e < n; ++e) {
      int64_t o = 0;
      for (int64_t d = 0; d < rank; ++d) o += idx[d] * ostride[d];
      fn(e, o);
      for (int64_t d = rank; d-- > 0;) {
        if (++idx[d] < s[d]) break;
        idx[d] = 0;
      }
    }
  };
  if (kind == ReduceKind::kLogSumExp) {
    std::vector<double> mx(out_n, -std::numeric_limits<double>::infinity()), sum(out_n, 0.0);
    for_each([&](int64_t e, int64_t o) { mx[o] = std::max(mx[o], static_cast<double>(xp[e])); });
    for_each([&](int64_t e, int64_t o) {
      if (std::isfinite(mx[o])) sum[o] += std::exp(static_cast<double>(xp[e]) - mx[o]);
    });
    for (int64_t o = 0; o < out_n; ++o)
      yp[o] = static_cast<T>(std::isfinite(mx[o]) ? mx[o] + std::log(sum[o]) : mx[o]);
    return;
  }
  std::vector<Acc<T>> acc(out_n, InitialValue<T>(kind));
  for_each([&](int64_t e, int64_t o) { acc[o] = Combine<T>(kind, acc[o], xp[e]); });
  for (int64_t o = 0; o < out_n; ++o) yp[o] = Finish<T>(kind, acc[o], count);
}

// Fast: trailing-axes reduction of float/double as independent rows (Eigen, OpenMP over rows),
// accumulating in T.
template <typename T>
void ReduceRowsFast(ReduceKind kind, const ReducePlan& p, const T* x, T* y) {
  using Row = Eigen::Array<T, Eigen::Dynamic, 1>;
  const int64_t cols = p.cols;
  // Below ~64K elements a thread team costs more than it saves.
#pragma omp parallel for schedule(static) if (p.rows * cols > 65536)
  for (int64_t r = 0; r < p.rows; ++r) {
    Eigen::Map<const Row> xr(x + r * cols, cols);
    T v = 0;
    switch (kind) {
      case ReduceKind::kSum: v = xr.sum(); break;
      case ReduceKind::kMean: v = xr.sum() / static_cast<T>(cols); break;
      case ReduceKind::kMax: v = xr.hasNaN() ? std::numeric_limits<T>::quiet_NaN() : xr.maxCoeff(); break;
      case ReduceKind::kMin: v = xr.hasNaN() ? std::numeric_limits<T>::quiet_NaN() : xr.minCoeff(); break;
      case ReduceKind::kProd: v = xr.prod(); break;
      case ReduceKind::kL1: v = xr.abs().sum(); break;
      case ReduceKind::kL2: v = std::sqrt(xr.square().sum()); break;
      case ReduceKind::kSumSquare: v = xr.square().sum(); break;
      case ReduceKind::kLogSum: v = std::log(xr.sum()); break;
      case ReduceKind::kLogSumExp: {
        const T mx = xr.maxCoeff();
        v = std::isfinite(mx) ? mx + std::log((xr - mx).exp().sum()) : mx;
        break;
      }
    }
    y[r] = v;
  }
}

bool KindAcceptsDType(ReduceKind kind, DType t) {
  if (t == DType::kBool) return kind == ReduceKind::kMax || kind == ReduceKind::kMin;
  switch (t) {
    case DType::kFloat32: case DType::kFloat64: case DType::kInt32: case DType::kInt64:
    case DType::kUInt32: case DType::kUInt64: case DType::kInt8: case DType::kUInt8:
      return true;
    default: return false;
  }
}

Status RunReduce(KernelContext& ctx, ReduceKind kind, bool fast) {
  QC_ASSIGN_OR_RETURN(ReducePlan p, PlanReduce(ctx));
  const Tensor& x = ctx.input(0);
  if (!KindAcceptsDType(kind, x.dtype())) return ctx.UnsupportedDType(x.dtype());
  if (p.noop) {
    ctx.outputs[0] = x;
    return Status::Ok();
  }
  Tensor y(x.dtype(), p.out_shape);
  if (x.dtype() == DType::kBool) {
    // max = any, min = all.
    const bool* xp = x.data<bool>();
    Tensor xi(DType::kUInt8, x.shape());
    uint8_t* xq = xi.mutable_data<uint8_t>();
    for (int64_t i = 0; i < x.numel(); ++i) xq[i] = xp[i] ? 1 : 0;
    Tensor yi(DType::kUInt8, p.out_shape);
    ReduceRefImpl<uint8_t>(kind, p, xi, yi);
    bool* yp = y.mutable_data<bool>();
    for (int64_t i = 0; i < y.numel(); ++i) yp[i] = yi.data<uint8_t>()[i] != 0;
  } else if (fast && p.trailing && p.cols > 0 && IsFloatingPoint(x.dtype())) {
    DispatchFloat(x.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      ReduceRowsFast<T>(kind, p, x.data<T>(), y.mutable_data<T>());
    });
  } else {
    DispatchNumeric(x.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      if constexpr (!std::is_same_v<T, bool>) ReduceRefImpl<T>(kind, p, x, y);
    });
  }
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

}  // namespace

#define QC_DEFINE_REDUCE(Name, Kind)                                                     \
  Status Name##Ref(KernelContext& ctx) { return RunReduce(ctx, ReduceKind::Kind, false); } \
  Status Name##Fast(KernelContext& ctx) { return RunReduce(ctx, ReduceKind::Kind, true); }
QC_DEFINE_REDUCE(ReduceSum, kSum)
QC_DEFINE_REDUCE(ReduceMean, kMean)
QC_DEFINE_REDUCE(ReduceMax, kMax)
QC_DEFINE_REDUCE(ReduceMin, kMin)
QC_DEFINE_REDUCE(ReduceProd, kProd)
QC_DEFINE_REDUCE(ReduceL1, kL1)
QC_DEFINE_REDUCE(ReduceL2, kL2)
QC_DEFINE_REDUCE(ReduceSumSquare, kSumSquare)
QC_DEFINE_REDUCE(ReduceLogSum, kLogSum)
QC_DEFINE_REDUCE(ReduceLogSumExp, kLogSumExp)
#undef QC_DEFINE_REDUCE

}  // namespace qc
