// Fast float32 kernels of the elementwise ops hot in LLM inference: broadcasting collapsed to
// contiguous rows, vectorisable inner loops, OpenMP across rows for large tensors. Everything
// else (other dtypes, invalid inputs) goes to the reference kernel, which also reports errors.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include <Eigen/Core>

#include "runtime/cpu/elementwise_common.h"
#include "runtime/cpu/elementwise_math.h"

namespace qc {

// Reference kernels this file falls back to (defined in elementwise_ref.cpp).
Status AddRef(KernelContext&);
Status SubRef(KernelContext&);
Status MulRef(KernelContext&);
Status DivRef(KernelContext&);
Status PowRef(KernelContext&);
Status SqrtRef(KernelContext&);
Status ReciprocalRef(KernelContext&);
Status NegRef(KernelContext&);
Status ExpRef(KernelContext&);
Status TanhRef(KernelContext&);
Status ErfRef(KernelContext&);
Status SinRef(KernelContext&);
Status CosRef(KernelContext&);
Status SigmoidRef(KernelContext&);
Status ReluRef(KernelContext&);
Status GeluRef(KernelContext&);
Status ContribGeluRef(KernelContext&);
Status FastGeluRef(KernelContext&);
Status BiasGeluRef(KernelContext&);
Status QuickGeluRef(KernelContext&);
Status WhereRef(KernelContext&);

using elementwise::ReluValue;
using elementwise::SigmoidValue;
using elementwise::GeluErf;
using elementwise::GeluTanh;
using elementwise::QuickGeluValue;

namespace {

// Below this many elements OpenMP's fork/join costs more than it saves (shape arithmetic on tiny
// int64/float tensors runs constantly in exported LLM graphs).
constexpr int64_t kParallelThreshold = 32768;
// Elements per parallel task: 64 KiB of float32 per operand, large enough to amortise the task's
// index arithmetic, small enough to balance a [1, S, H] tensor across cores.
constexpr int64_t kChunk = 16384;

/// A broadcast of N operands to an output, collapsed: output dims of size 1 are dropped and
/// adjacent dims along which the same operands vary are merged. The innermost collapsed dim is
/// walked by a vectorisable loop in which each operand steps by 1 or 0; the outer ones by strides.
/// [B,S,H] + [H] becomes rows of H ({1, 0} outer strides); [B,S,H] * [B,S,1] rows of H with the
/// second operand constant along each row; same-shape and scalar cases become a single row.
template <int N>
struct BroadcastPlan {
  int64_t total = 0;
  int64_t inner = 1;
  std::array<bool, N> inner_varies{};
  std::vector<int64_t> outer_sizes;  // outermost first
  std::vector<std::array<int64_t, N>> outer_strides;
};

template <int N>
BroadcastPlan<N> MakePlan(const Shape& out, const std::array<const Shape*, N>& ins) {
  struct Dim {
    int64_t size;
    std::array<bool, N> varies;
  };
  const size_t rank = out.size();
  std::vector<Dim> dims;
  for (size_t d = 0; d < rank; ++d) {
    if (out[d] == 1) continue;
    Dim dim{out[d], {}};
    for (int k = 0; k < N; ++k) {
      const Shape& s = *ins[k];
      const size_t lead = rank - s.size();
      dim.varies[k] = d >= lead && s[d - lead] != 1;
    }
    if (!dims.empty() && dims.back().varies == dim.varies) {
      dims.back().size *= dim.size;
    } else {
      dims.push_back(dim);
    }
  }
  BroadcastPlan<N> plan;
  plan.total = NumElements(out);
  if (dims.empty()) return plan;  // every operand is a single element
  std::vector<std::array<int64_t, N>> strides(dims.size());
  std::array<int64_t, N> stride;
  stride.fill(1);
  for (size_t c = dims.size(); c-- > 0;) {
    for (int k = 0; k < N; ++k) {
      strides[c][k] = dims[c].varies[k] ? stride[k] : 0;
      if (dims[c].varies[k]) stride[k] *= dims[c].size;
    }
  }
  plan.inner = dims.back().size;
  plan.inner_varies = dims.back().varies;
  for (size_t c = 0; c + 1 < dims.size(); ++c) {
    plan.outer_sizes.push_back(dims[c].size);
    plan.outer_strides.push_back(strides[c]);
  }
  return plan;
}

/// Calls row(offsets, out_offset, len) for every contiguous piece of the output, in parallel
/// when the output is large. `offsets[k]` is operand k's element offset at the piece's start.
template <int N, typename RowFn>
void RunPlan(const BroadcastPlan<N>& plan, RowFn&& row) {
  if (plan.total == 0) return;
  const int64_t rows = plan.total / plan.inner;
  const int64_t pieces = (plan.inner + kChunk - 1) / kChunk;
  const int64_t tasks = rows * pieces;
  const int outer_rank = static_cast<int>(plan.outer_sizes.size());
  auto task = [&](int64_t t) {
    const int64_t r = t / pieces;
    const int64_t j0 = (t % pieces) * kChunk;
    const int64_t len = std::min(kChunk, plan.inner - j0);
    std::array<int64_t, N> offsets{};
    int64_t rem = r;
    for (int c = outer_rank - 1; c >= 0; --c) {
      const int64_t i = rem % plan.outer_sizes[c];
      rem /= plan.outer_sizes[c];
      for (int k = 0; k < N; ++k) offsets[k] += i * plan.outer_strides[c][k];
    }
    for (int k = 0; k < N; ++k)
      if (plan.inner_varies[k]) offsets[k] += j0;
    row(offsets, r * plan.inner + j0, len);
  };
  if (plan.total <= kParallelThreshold) {
    for (int64_t t = 0; t < tasks; ++t) task(t);
  } else {
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) task(t);
  }
}

/// An output tensor whose storage is not zero-filled: every fast kernel writes all its elements,
/// and for large outputs Tensor's memset was the single biggest cost (it also moves the first touch
/// of each page into the parallel loop, where the page faults are spread across threads).
Tensor UninitializedFloats(Shape shape) { return Tensor::Uninitialized(DType::kFloat32, std::move(shape)); }

/// Calls fn(std::bool_constant<b>{}) so a runtime flag selects a compile-time loop variant.
template <typename Fn>
void WithBool(bool b, Fn&& fn) {
  if (b) {
    fn(std::true_type{});
  } else {
    fn(std::false_type{});
  }
}

/// y = f(a, b) over a broadcast plan of float32 operands. A constant operand is loaded once per
/// row, so the loop is a plain streaming loop the compiler vectorises.
template <typename F>
void BinaryFloatLoop(const float* a, const float* b, float* y, const BroadcastPlan<2>& plan, F f) {
  WithBool(plan.inner_varies[0], [&](auto va) {
    WithBool(plan.inner_varies[1], [&](auto vb) {
      constexpr bool kA = decltype(va)::value;
      constexpr bool kB = decltype(vb)::value;
      RunPlan<2>(plan, [&](const std::array<int64_t, 2>& off, int64_t o, int64_t len) {
        const float* __restrict pa = a + off[0];
        const float* __restrict pb = b + off[1];
        float* __restrict py = y + o;
        if constexpr (kA && kB) {
          for (int64_t j = 0; j < len; ++j) py[j] = f(pa[j], pb[j]);
        } else if constexpr (kA) {
          const float bv = pb[0];
          for (int64_t j = 0; j < len; ++j) py[j] = f(pa[j], bv);
        } else if constexpr (kB) {
          const float av = pa[0];
          for (int64_t j = 0; j < len; ++j) py[j] = f(av, pb[j]);
        } else {
          const float v = f(pa[0], pb[0]);
          for (int64_t j = 0; j < len; ++j) py[j] = v;
        }
      });
    });
  });
}

/// True when inputs 0 and 1 are present float32 tensors and the node has an output; otherwise
/// the caller defers to the reference kernel.
bool IsFloatBinary(const KernelContext& ctx) {
  return ctx.num_inputs() == 2 && ctx.has_input(0) && ctx.has_input(1) && ctx.num_outputs() >= 1 &&
         ctx.input(0).dtype() == DType::kFloat32 && ctx.input(1).dtype() == DType::kFloat32;
}

bool IsFloatUnary(const KernelContext& ctx) {
  return ctx.num_inputs() == 1 && ctx.has_input(0) && ctx.num_outputs() >= 1 &&
         ctx.input(0).dtype() == DType::kFloat32;
}

/// Binary float32 op with broadcasting, or the reference kernel when not applicable (which then
/// also reports any error such as incompatible shapes).
template <typename F>
Status BinaryFast(KernelContext& ctx, KernelFn ref, F f) {
  if (!IsFloatBinary(ctx)) return ref(ctx);
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  StatusOr<Shape> shape = BroadcastShapes({a.shape(), b.shape()});
  if (!shape.ok()) return ref(ctx);
  Tensor y = UninitializedFloats(*shape);
  const BroadcastPlan<2> plan = MakePlan<2>(*shape, {&a.shape(), &b.shape()});
  BinaryFloatLoop(a.data<float>(), b.data<float>(), y.mutable_data<float>(), plan, f);
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

/// y[i] = f(x[i]) over a float32 tensor; `f` must be a pure function of one float.
template <typename F>
void UnaryFloatLoop(const float* x, float* y, int64_t n, F f) {
  if (n <= kParallelThreshold) {
    for (int64_t i = 0; i < n; ++i) y[i] = f(x[i]);
    return;
  }
  const int64_t tasks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tasks; ++t) {
    const float* __restrict px = x + t * kChunk;
    float* __restrict py = y + t * kChunk;
    const int64_t len = std::min(kChunk, n - t * kChunk);
    for (int64_t j = 0; j < len; ++j) py[j] = f(px[j]);
  }
}

/// y = sqrt(x), or pow(x, 0.5) when `pow_half`: sqrt plus pow's special cases pow(-0, 0.5) = +0
/// and pow(-inf, 0.5) = +inf. Written with intrinsics because std::sqrt sets errno for negative
/// inputs, which stops GCC from vectorising it; vsqrtps is correctly rounded like sqrtss and
/// returns the same default NaN, so results are bit-identical to std::sqrt.
void SqrtRange(const float* __restrict x, float* __restrict y, int64_t n, bool pow_half) {
  int64_t i = 0;
#if defined(__AVX__)
  const __m256 zero = _mm256_setzero_ps();
  const __m256 neg_inf = _mm256_set1_ps(-INFINITY);
  const __m256 pos_inf = _mm256_set1_ps(INFINITY);
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    __m256 r = _mm256_sqrt_ps(v);
    if (pow_half) r = _mm256_blendv_ps(_mm256_add_ps(r, zero), pos_inf, _mm256_cmp_ps(v, neg_inf, _CMP_EQ_OQ));
    _mm256_storeu_ps(y + i, r);
  }
#endif
  for (; i < n; ++i) {
    const float v = x[i];
    y[i] = !pow_half ? std::sqrt(v) : (v == -INFINITY ? INFINITY : std::sqrt(v) + 0.0f);
  }
}

void SqrtLoop(const float* x, float* y, int64_t n, bool pow_half) {
  if (n <= kParallelThreshold) {
    SqrtRange(x, y, n, pow_half);
    return;
  }
  const int64_t tasks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tasks; ++t) SqrtRange(x + t * kChunk, y + t * kChunk, std::min(kChunk, n - t * kChunk), pow_half);
}

/// y = f(x) for input 0 (float32, present); the caller has validated the node.
template <typename F>
Status UnaryFastOnInput0(KernelContext& ctx, F f) {
  const Tensor& x = ctx.input(0);
  Tensor y = UninitializedFloats(x.shape());
  UnaryFloatLoop(x.data<float>(), y.mutable_data<float>(), x.numel(), f);
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

template <typename F>
Status UnaryFast(KernelContext& ctx, KernelFn ref, F f) {
  if (!IsFloatUnary(ctx)) return ref(ctx);
  return UnaryFastOnInput0(ctx, f);
}

/// gelu(x + bias) for FastGelu / BiasGelu; bias validation mirrors the reference kernel's.
template <typename G>
Status BiasGeluLikeFast(KernelContext& ctx, KernelFn ref, G gelu) {
  const bool no_bias = ctx.num_inputs() == 1 || (ctx.num_inputs() == 2 && !ctx.has_input(1));
  if (no_bias && ctx.has_input(0) && ctx.num_outputs() >= 1 && ctx.input(0).dtype() == DType::kFloat32)
    return UnaryFastOnInput0(ctx, gelu);
  if (!IsFloatBinary(ctx)) return ref(ctx);
  const Tensor& x = ctx.input(0);
  const Tensor& bias = ctx.input(1);
  if (bias.rank() != 1 || x.rank() < 1 || bias.dim(0) != x.dim(-1)) return ref(ctx);
  return BinaryFast(ctx, ref, [gelu](float a, float b) { return gelu(a + b); });
}

}  // namespace

// ---- Binary arithmetic ---------------------------------------------------------------------------

Status AddFast(KernelContext& ctx) {
  return BinaryFast(ctx, AddRef, [](float a, float b) { return a + b; });
}

Status SubFast(KernelContext& ctx) {
  return BinaryFast(ctx, SubRef, [](float a, float b) { return a - b; });
}

Status MulFast(KernelContext& ctx) {
  return BinaryFast(ctx, MulRef, [](float a, float b) { return a * b; });
}

Status DivFast(KernelContext& ctx) {
  return BinaryFast(ctx, DivRef, [](float a, float b) { return a / b; });
}

Status PowFast(KernelContext& ctx) {
  const bool float_base = ctx.num_inputs() == 2 && ctx.has_input(0) && ctx.has_input(1) && ctx.num_outputs() >= 1 &&
                          ctx.input(0).dtype() == DType::kFloat32;
  if (!float_base) return PowRef(ctx);
  const Tensor& x = ctx.input(0);
  const Tensor& e = ctx.input(1);
  const DType et = e.dtype();
  const bool numeric_exponent = et == DType::kFloat32 || et == DType::kFloat64 || et == DType::kInt32 || et == DType::kInt64;
  if (numeric_exponent && e.numel() == 1 && e.rank() <= x.rank()) {
    const double exponent = et == DType::kFloat64 ? e.data<double>()[0] : static_cast<double>(e.ToFloats()[0]);
    if (exponent == 2.0) {
      // x * x is the correctly rounded square. For an integer or double exponent the reference
      // squares exactly in double and rounds once, so this is bit-identical; for a float exponent
      // glibc's powf(x, 2) misrounds ~0.07% of exact ties, so it is within 1 ulp (tested).
      Tensor y = UninitializedFloats(x.shape());
      UnaryFloatLoop(x.data<float>(), y.mutable_data<float>(), x.numel(), [](float v) { return v * v; });
      ctx.outputs[0] = std::move(y);
      return Status::Ok();
    }
    if (exponent == 0.5 && et == DType::kFloat32) {
      // sqrt is within 1 ulp of powf(x, 0.5) (sqrt is correctly rounded, powf is not quite).
      Tensor y = UninitializedFloats(x.shape());
      SqrtLoop(x.data<float>(), y.mutable_data<float>(), x.numel(), /*pow_half=*/true);
      ctx.outputs[0] = std::move(y);
      return Status::Ok();
    }
  }
  if (et != DType::kFloat32) return PowRef(ctx);
  return BinaryFast(ctx, PowRef, [](float a, float b) { return std::pow(a, b); });
}

// ---- Unary math ------------------------------------------------------------------------------------

Status SqrtFast(KernelContext& ctx) {
  if (!IsFloatUnary(ctx)) return SqrtRef(ctx);
  const Tensor& x = ctx.input(0);
  Tensor y = UninitializedFloats(x.shape());
  SqrtLoop(x.data<float>(), y.mutable_data<float>(), x.numel(), /*pow_half=*/false);
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

Status ReciprocalFast(KernelContext& ctx) {
  return UnaryFast(ctx, ReciprocalRef, [](float x) { return 1.0f / x; });
}

Status NegFast(KernelContext& ctx) {
  return UnaryFast(ctx, NegRef, [](float x) { return -x; });
}

Status ExpFast(KernelContext& ctx) {
  return UnaryFast(ctx, ExpRef, [](float x) { return std::exp(x); });
}

Status TanhFast(KernelContext& ctx) {
  return UnaryFast(ctx, TanhRef, [](float x) { return std::tanh(x); });
}

Status ErfFast(KernelContext& ctx) {
  return UnaryFast(ctx, ErfRef, [](float x) { return std::erf(x); });
}

Status SinFast(KernelContext& ctx) {
  return UnaryFast(ctx, SinRef, [](float x) { return std::sin(x); });
}

Status CosFast(KernelContext& ctx) {
  return UnaryFast(ctx, CosRef, [](float x) { return std::cos(x); });
}

// ---- Activations ---------------------------------------------------------------------------------

/// y = x * sigmoid(alpha x) (alpha = 1: plain Sigmoid when `times_x` is false, SiLU when true),
/// with Eigen's vectorised exp (within 1-2 ulp of std::exp) instead of a scalar libm call per
/// element: SiLU's Sigmoid over [S, intermediate] was a fifth of a Llama forward pass. Same stable
/// form as the reference: e = exp(-|ax|), then 1/(1+e) or e/(1+e).
static Status SigmoidLikeFast(KernelContext& ctx, float alpha, bool times_x) {
  const Tensor& x = ctx.input(0);
  Tensor y = UninitializedFloats(x.shape());
  const int64_t n = x.numel();
  auto range = [alpha, times_x](const float* px, float* py, int64_t len) {
    Eigen::Map<const Eigen::ArrayXf> xs(px, len);
    Eigen::Map<Eigen::ArrayXf> ys(py, len);
    // sigmoid(a x) = 1 / (1 + e^(-a x)) and x * sigmoid(a x) = x / (1 + e^(-a x)): one division
    // and no select (a select of two quotients ran 8x slower). Where e^(-a x) overflows to inf
    // (a x < -88.7) the result is 0, against a true value below 1e-38.
    if (times_x)
      ys = xs / (1.0f + (-alpha * xs).exp());
    else
      ys = 1.0f / (1.0f + (-alpha * xs).exp());
  };
  const int64_t tasks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
  for (int64_t t = 0; t < tasks; ++t)
    range(x.data<float>() + t * kChunk, y.mutable_data<float>() + t * kChunk, std::min(kChunk, n - t * kChunk));
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

Status SigmoidFast(KernelContext& ctx) {
  if (!IsFloatUnary(ctx)) return SigmoidRef(ctx);
  return SigmoidLikeFast(ctx, 1.0f, /*times_x=*/false);
}

Status ReluFast(KernelContext& ctx) {
  return UnaryFast(ctx, ReluRef, [](float x) { return ReluValue(x); });
}

Status GeluFast(KernelContext& ctx) {
  const std::string approximate = ctx.node.GetString("approximate", "none");
  if (approximate == "none") return UnaryFast(ctx, GeluRef, [](float x) { return GeluErf(x); });
  if (approximate == "tanh") return UnaryFast(ctx, GeluRef, [](float x) { return GeluTanh(x); });
  return GeluRef(ctx);
}

Status ContribGeluFast(KernelContext& ctx) {
  return UnaryFast(ctx, ContribGeluRef, [](float x) { return GeluErf(x); });
}

Status QuickGeluFast(KernelContext& ctx) {
  const float alpha = ctx.node.GetFloat("alpha", 1.702f);
  if (!IsFloatUnary(ctx)) return QuickGeluRef(ctx);
  return SigmoidLikeFast(ctx, alpha, /*times_x=*/true);
}

Status FastGeluFast(KernelContext& ctx) {
  return BiasGeluLikeFast(ctx, FastGeluRef, [](float x) { return GeluTanh(x); });
}

Status BiasGeluFast(KernelContext& ctx) {
  if (ctx.num_inputs() != 2) return BiasGeluRef(ctx);  // the bias is required
  return BiasGeluLikeFast(ctx, BiasGeluRef, [](float x) { return GeluErf(x); });
}

// ---- Where ---------------------------------------------------------------------------------------

Status WhereFast(KernelContext& ctx) {
  if (ctx.num_inputs() != 3 || !ctx.has_input(0) || !ctx.has_input(1) || !ctx.has_input(2) ||
      ctx.num_outputs() < 1 || ctx.input(0).dtype() != DType::kBool ||
      ctx.input(1).dtype() != DType::kFloat32 || ctx.input(2).dtype() != DType::kFloat32)
    return WhereRef(ctx);
  const Tensor& cond = ctx.input(0);
  const Tensor& x = ctx.input(1);
  const Tensor& y = ctx.input(2);
  StatusOr<Shape> shape = BroadcastShapes({cond.shape(), x.shape(), y.shape()});
  if (!shape.ok()) return WhereRef(ctx);
  Tensor out = UninitializedFloats(*shape);
  const BroadcastPlan<3> plan = MakePlan<3>(*shape, {&cond.shape(), &x.shape(), &y.shape()});
  // Read as bytes: a model file's bool bytes other than 0/1 must not reach a `bool` (UB).
  const uint8_t* c = static_cast<const uint8_t*>(cond.raw());
  const float* px = x.data<float>();
  const float* py = y.data<float>();
  float* po = out.mutable_data<float>();
  WithBool(plan.inner_varies[0], [&](auto vc) {
    WithBool(plan.inner_varies[1], [&](auto vx) {
      WithBool(plan.inner_varies[2], [&](auto vy) {
        constexpr bool kC = decltype(vc)::value;
        constexpr bool kX = decltype(vx)::value;
        constexpr bool kY = decltype(vy)::value;
        RunPlan<3>(plan, [&](const std::array<int64_t, 3>& off, int64_t o, int64_t len) {
          const uint8_t* __restrict rc = c + off[0];
          const float* __restrict rx = px + off[1];
          const float* __restrict ry = py + off[2];
          float* __restrict ro = po + o;
          // Both values are loaded unconditionally so the select compiles to a vector blend.
          for (int64_t j = 0; j < len; ++j) {
            const float a = rx[kX ? j : 0];
            const float b = ry[kY ? j : 0];
            ro[j] = rc[kC ? j : 0] != 0 ? a : b;
          }
        });
      });
    });
  });
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

}  // namespace qc
