// Gemm: Y = alpha * op(A) * op(B) + beta * C with C broadcast to [M, N].
#include <string>

#include "runtime/cpu/dispatch.h"
#include "runtime/cpu/gemm_core.h"
#include "runtime/cpu/kernel.h"
#include "runtime/cpu/matmul_shape.h"

namespace qc {
namespace {

struct GemmArgs {
  bool trans_a = false, trans_b = false;
  float alpha = 1.0f, beta = 1.0f;
  int64_t m = 0, n = 0, k = 0;
  const Tensor* c = nullptr;
  int64_t c_rows = 1, c_cols = 1;  // C's shape as a (possibly broadcast) [rows, cols] matrix
};

StatusOr<GemmArgs> ParseGemm(const KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(2, 3));
  if (!ctx.has_input(1)) return ctx.Error("input B is missing");
  if (ctx.num_outputs() < 1) return ctx.Error("expected 1 output");
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  if (a.dtype() != DType::kFloat32 && a.dtype() != DType::kFloat64) return ctx.UnsupportedDType(a.dtype());
  if (b.dtype() != a.dtype()) return ctx.Error("A and B dtypes differ");
  if (a.rank() != 2 || b.rank() != 2)
    return ctx.Error("A and B must be 2-D, got " + ShapeToString(a.shape()) + " and " + ShapeToString(b.shape()));
  GemmArgs g;
  g.trans_a = ctx.node.GetInt("transA", 0) != 0;
  g.trans_b = ctx.node.GetInt("transB", 0) != 0;
  g.alpha = ctx.node.GetFloat("alpha", 1.0f);
  g.beta = ctx.node.GetFloat("beta", 1.0f);
  g.m = g.trans_a ? a.dim(1) : a.dim(0);
  g.k = g.trans_a ? a.dim(0) : a.dim(1);
  const int64_t kb = g.trans_b ? b.dim(1) : b.dim(0);
  g.n = g.trans_b ? b.dim(0) : b.dim(1);
  if (kb != g.k)
    return ctx.Error("inner dimensions differ: op(A) is [" + std::to_string(g.m) + ", " + std::to_string(g.k) +
                     "], op(B) is [" + std::to_string(kb) + ", " + std::to_string(g.n) + "]");
  if (g.n > 0 && g.m > kMaxOutputElements / g.n) return ctx.Error("output too large");
  if (ctx.has_input(2)) {
    const Tensor& c = ctx.input(2);
    if (c.dtype() != a.dtype()) return ctx.Error("C dtype differs from A");
    if (c.rank() > 2) return ctx.Error("C must have rank <= 2, got " + ShapeToString(c.shape()));
    if (c.rank() == 2) g.c_rows = c.dim(0);
    if (c.rank() >= 1) g.c_cols = c.dim(-1);
    if ((g.c_rows != 1 && g.c_rows != g.m) || (g.c_cols != 1 && g.c_cols != g.n))
      return ctx.Error("C of shape " + ShapeToString(c.shape()) + " does not broadcast to [" + std::to_string(g.m) +
                       ", " + std::to_string(g.n) + "]");
    g.c = &c;
  }
  return g;
}

template <typename T>
T CAt(const GemmArgs& g, int64_t i, int64_t j) {
  const T* c = g.c->data<T>();
  return c[(g.c_rows == 1 ? 0 : i) * g.c_cols + (g.c_cols == 1 ? 0 : j)];
}

}  // namespace

Status GemmRef(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(GemmArgs g, ParseGemm(ctx));
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  Tensor y(a.dtype(), {g.m, g.n});
  DispatchFloat(a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* ap = a.data<T>();
    const T* bp = b.data<T>();
    T* yp = y.mutable_data<T>();
    for (int64_t i = 0; i < g.m; ++i)
      for (int64_t j = 0; j < g.n; ++j) {
        double s = 0;
        for (int64_t p = 0; p < g.k; ++p) {
          const double av = g.trans_a ? ap[p * g.m + i] : ap[i * g.k + p];
          const double bv = g.trans_b ? bp[j * g.k + p] : bp[p * g.n + j];
          s += av * bv;
        }
        double v = g.alpha * s;
        // Like ONNX Runtime, beta == 0 ignores C entirely (no NaN propagation from C).
        if (g.c && g.beta != 0.0f) v += static_cast<double>(g.beta) * static_cast<double>(CAt<T>(g, i, j));
        yp[i * g.n + j] = static_cast<T>(v);
      }
  });
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

Status GemmFast(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(GemmArgs g, ParseGemm(ctx));
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  Tensor y(a.dtype(), {g.m, g.n});
  DispatchFloat(a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* yp = y.mutable_data<T>();
    T beta = 0;
    if (g.c && g.beta != 0.0f) {
      for (int64_t i = 0; i < g.m; ++i)
        for (int64_t j = 0; j < g.n; ++j) yp[i * g.n + j] = CAt<T>(g, i, j);
      beta = static_cast<T>(g.beta);
    }
    const int64_t lda = g.trans_a ? g.m : g.k;
    const int64_t ldb = g.trans_b ? g.k : g.n;
    if constexpr (std::is_same_v<T, float>)
      GemmF32(g.trans_a, g.trans_b, g.m, g.n, g.k, g.alpha, a.data<float>(), lda, b.data<float>(), ldb, beta, yp,
              g.n, true);
    else
      GemmF64(g.trans_a, g.trans_b, g.m, g.n, g.k, g.alpha, a.data<double>(), lda, b.data<double>(), ldb, beta, yp,
              g.n, true);
  });
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

}  // namespace qc
