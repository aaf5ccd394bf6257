// Layer normalisations: LayerNormalization, RMSNormalization and ONNX Runtime's fused
// SimplifiedLayerNormalization / SkipLayerNormalization / SkipSimplifiedLayerNormalization.
#include <cmath>
#include <string>
#include <vector>

#include <Eigen/Dense>

#include "runtime/cpu/dispatch.h"
#include "runtime/cpu/kernel.h"

namespace qc {
namespace {

// One normalisation: X seen as [rows, cols], each row normalised independently.
struct NormJob {
  int64_t rows = 0, cols = 0;
  bool simplified = false;  // RMS: no mean subtraction, no bias
  double epsilon = 1e-5;
  Shape stat_shape;  // shape of the Mean / InvStdDev outputs
};

// Broadcasts `t` (numpy rules, right-aligned) to `target` and returns the cols = numel(target)
// values as doubles; `what` names the input in errors.
StatusOr<std::vector<double>> ExpandParam(const KernelContext& ctx, const Tensor& t, const Shape& target,
                                          const std::string& what) {
  if (t.rank() > static_cast<int>(target.size()))
    return ctx.Error(what + " of shape " + ShapeToString(t.shape()) + " does not broadcast to the normalised shape " +
                     ShapeToString(target));
  const size_t off = target.size() - t.rank();
  for (int i = 0; i < t.rank(); ++i)
    if (t.dim(i) != 1 && t.dim(i) != target[off + i])
      return ctx.Error(what + " of shape " + ShapeToString(t.shape()) +
                       " does not broadcast to the normalised shape " + ShapeToString(target));
  std::vector<double> src;
  if (t.dtype() == DType::kFloat64) {
    src.assign(t.data<double>(), t.data<double>() + t.numel());
  } else {
    std::vector<float> f = t.ToFloats();
    src.assign(f.begin(), f.end());
  }
  const int64_t n = NumElements(target);
  std::vector<double> out(n);
  std::vector<int64_t> idx(target.size(), 0);
  for (int64_t e = 0; e < n; ++e) {
    int64_t s = 0;
    for (int i = 0; i < t.rank(); ++i) s = s * t.dim(i) + (t.dim(i) == 1 ? 0 : idx[off + i]);
    out[e] = src[s];
    for (size_t i = target.size(); i-- > 0;) {
      if (++idx[i] < target[i]) break;
      idx[i] = 0;
    }
  }
  return out;
}

template <typename T>
std::vector<T> CastVec(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// Reference: double accumulation, two-pass variance.
template <typename T>
void NormRefImpl(const NormJob& job, const T* x, const std::vector<double>& scale, const std::vector<double>* bias,
                 T* y, T* mean_out, T* inv_out) {
  for (int64_t r = 0; r < job.rows; ++r) {
    const T* xr = x + r * job.cols;
    T* yr = y + r * job.cols;
    double mean = 0;
    for (int64_t c = 0; c < job.cols; ++c) mean += xr[c];
    mean /= static_cast<double>(job.cols);
    const double center = job.simplified ? 0.0 : mean;
    double var = 0;
    for (int64_t c = 0; c < job.cols; ++c) var += (xr[c] - center) * (xr[c] - center);
    var /= static_cast<double>(job.cols);
    const double inv = 1.0 / std::sqrt(var + job.epsilon);
    for (int64_t c = 0; c < job.cols; ++c) {
      double v = (xr[c] - center) * inv * scale[c];
      if (bias) v += (*bias)[c];
      yr[c] = static_cast<T>(v);
    }
    if (mean_out) mean_out[r] = static_cast<T>(job.simplified ? 0.0 : mean);
    if (inv_out) inv_out[r] = static_cast<T>(inv);
  }
}

// Fast: Eigen-vectorised rows in T (float accumulation for float), OpenMP across rows.
template <typename T>
void NormFastImpl(const NormJob& job, const T* x, const std::vector<double>& scale_d,
                  const std::vector<double>* bias_d, T* y, T* mean_out, T* inv_out) {
  using Row = Eigen::Array<T, Eigen::Dynamic, 1>;
  const std::vector<T> scale_v = CastVec<T>(scale_d);
  const std::vector<T> bias_v = bias_d ? CastVec<T>(*bias_d) : std::vector<T>();
  const int64_t cols = job.cols;
  Eigen::Map<const Row> scale(scale_v.data(), cols);
  Eigen::Map<const Row> bias(bias_d ? bias_v.data() : scale_v.data(), cols);
  const T eps = static_cast<T>(job.epsilon);
  const T inv_cols = T(1) / static_cast<T>(cols);
  // Below ~32K elements a thread team costs more than it saves.
#pragma omp parallel for schedule(static) if (job.rows * cols > 32768)
  for (int64_t r = 0; r < job.rows; ++r) {
    Eigen::Map<const Row> xr(x + r * cols, cols);
    Eigen::Map<Row> yr(y + r * cols, cols);
    T mean = 0;
    T inv;
    if (job.simplified) {
      inv = T(1) / std::sqrt(xr.square().sum() * inv_cols + eps);
      yr = xr * inv * scale;
    } else {
      mean = xr.sum() * inv_cols;
      inv = T(1) / std::sqrt((xr - mean).square().sum() * inv_cols + eps);
      if (bias_d) yr = (xr - mean) * inv * scale + bias;
      else yr = (xr - mean) * inv * scale;
    }
    if (mean_out) mean_out[r] = mean;
    if (inv_out) inv_out[r] = inv;
  }
}

bool WantOutput(const KernelContext& ctx, int i) {
  return i < ctx.num_outputs() && i < static_cast<int>(ctx.node.outputs.size()) && !ctx.node.outputs[i].empty();
}

// Runs a normalisation of `x` (already validated) and fills outputs y_index, mean_index,
// inv_index (negative: none).
Status RunNorm(KernelContext& ctx, const NormJob& job, const Tensor& x, const std::vector<double>& scale,
               const std::vector<double>* bias, int mean_index, int inv_index, bool fast) {
  Tensor y(x.dtype(), x.shape());
  Tensor mean, inv;
  const bool want_mean = mean_index >= 0 && WantOutput(ctx, mean_index);
  const bool want_inv = inv_index >= 0 && WantOutput(ctx, inv_index);
  if (want_mean) mean = Tensor(x.dtype(), job.stat_shape);
  if (want_inv) inv = Tensor(x.dtype(), job.stat_shape);
  DispatchFloat(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* mp = want_mean ? mean.mutable_data<T>() : nullptr;
    T* ip = want_inv ? inv.mutable_data<T>() : nullptr;
    if (fast && job.cols > 0)
      NormFastImpl<T>(job, x.data<T>(), scale, bias, y.mutable_data<T>(), mp, ip);
    else
      NormRefImpl<T>(job, x.data<T>(), scale, bias, y.mutable_data<T>(), mp, ip);
  });
  ctx.outputs[0] = std::move(y);
  if (want_mean) ctx.outputs[mean_index] = std::move(mean);
  if (want_inv) ctx.outputs[inv_index] = std::move(inv);
  return Status::Ok();
}

// LayerNormalization (opset 17), RMSNormalization (opset 23) and SimplifiedLayerNormalization:
// X, Scale[, B]; normalise over dims [axis, rank).
Status AxisNorm(KernelContext& ctx, bool simplified, bool allow_bias, int mean_index, int inv_index, bool fast) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(2, allow_bias ? 3 : 2));
  if (!ctx.has_input(1)) return ctx.Error("input Scale is missing");
  if (ctx.num_outputs() < 1) return ctx.Error("expected at least 1 output");
  const Tensor& x = ctx.input(0);
  if (x.dtype() != DType::kFloat32 && x.dtype() != DType::kFloat64) return ctx.UnsupportedDType(x.dtype());
  for (int i = 1; i < ctx.num_inputs(); ++i)
    if (ctx.has_input(i) && !IsFloatingPoint(ctx.input(i).dtype()))
      return ctx.Error("input " + std::to_string(i) + " must be floating point, got " +
                       DTypeName(ctx.input(i).dtype()));
  const int64_t rank = x.rank();
  int64_t axis = ctx.node.GetInt("axis", -1);
  if (rank == 0 || axis < -rank || axis >= rank)
    return ctx.Error("axis " + std::to_string(axis) + " out of range for input of shape " + ShapeToString(x.shape()));
  if (axis < 0) axis += rank;
  NormJob job;
  job.simplified = simplified;
  job.epsilon = ctx.node.GetFloat("epsilon", 1e-5f);
  Shape norm_shape(x.shape().begin() + axis, x.shape().end());
  job.rows = NumElements(Shape(x.shape().begin(), x.shape().begin() + axis));
  job.cols = NumElements(norm_shape);
  job.stat_shape = x.shape();
  for (int64_t i = axis; i < rank; ++i) job.stat_shape[i] = 1;
  QC_ASSIGN_OR_RETURN(std::vector<double> scale, ExpandParam(ctx, ctx.input(1), norm_shape, "Scale"));
  std::vector<double> bias;
  const bool has_bias = allow_bias && ctx.has_input(2);
  if (has_bias) {
    QC_ASSIGN_OR_RETURN(bias, ExpandParam(ctx, ctx.input(2), norm_shape, "B"));
  }
  return RunNorm(ctx, job, x, scale, has_bias ? &bias : nullptr, mean_index, inv_index, fast);
}

// SkipLayerNormalization / SkipSimplifiedLayerNormalization: s = input + skip (+ bias), then a
// last-axis normalisation of s; output 3 is s itself.
Status SkipNorm(KernelContext& ctx, bool simplified, bool fast) {
  // SkipLN: input, skip, gamma, beta, bias. SkipSimplifiedLN: input, skip, gamma, bias.
  const int bias_index = simplified ? 3 : 4;
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(3, bias_index + 1));
  if (!ctx.has_input(1) || !ctx.has_input(2)) return ctx.Error("inputs skip and gamma are required");
  if (ctx.num_outputs() < 1) return ctx.Error("expected at least 1 output");
  const Tensor& x = ctx.input(0);
  const Tensor& skip = ctx.input(1);
  if (x.dtype() != DType::kFloat32 && x.dtype() != DType::kFloat64) return ctx.UnsupportedDType(x.dtype());
  for (int i = 1; i < ctx.num_inputs(); ++i)
    if (ctx.has_input(i) && ctx.input(i).dtype() != x.dtype())
      return ctx.Error("input " + std::to_string(i) + " has dtype " + DTypeName(ctx.input(i).dtype()) +
                       ", expected " + DTypeName(x.dtype()));
  if (x.rank() < 1) return ctx.Error("input must have rank >= 1");
  const int64_t hidden = x.dim(-1);
  // skip may omit (or set to 1) leading dims of input: (B,S,H), (1,S,H) or (S,H). With its leading
  // 1s stripped it must equal input's trailing dims, so indexing it modulo its size broadcasts it.
  Shape skip_core = skip.shape();
  while (skip_core.size() > 1 && skip_core.front() == 1) skip_core.erase(skip_core.begin());
  if (skip_core.empty() || static_cast<int>(skip_core.size()) > x.rank() ||
      Shape(x.shape().end() - skip_core.size(), x.shape().end()) != skip_core || (skip.numel() == 0 && x.numel() != 0))
    return ctx.Error("skip of shape " + ShapeToString(skip.shape()) + " does not broadcast to input " +
                     ShapeToString(x.shape()));
  const Shape hidden_shape{hidden};
  auto check_vec = [&](int i, const char* what) -> Status {
    if (ctx.has_input(i) && !(ctx.input(i).rank() == 1 && ctx.input(i).dim(0) == hidden))
      return ctx.Error(std::string(what) + " must have shape [" + std::to_string(hidden) + "], got " +
                       ShapeToString(ctx.input(i).shape()));
    return Status::Ok();
  };
  QC_RETURN_IF_ERROR(check_vec(2, "gamma"));
  if (!simplified) QC_RETURN_IF_ERROR(check_vec(3, "beta"));
  QC_RETURN_IF_ERROR(check_vec(bias_index, "bias"));
  const bool has_beta = !simplified && ctx.has_input(3);
  const bool has_bias = ctx.has_input(bias_index);

  Tensor sum(x.dtype(), x.shape());
  DispatchFloat(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xp = x.data<T>();
    const T* sp = skip.data<T>();
    const T* bp = has_bias ? ctx.input(bias_index).data<T>() : nullptr;
    T* out = sum.mutable_data<T>();
    const int64_t n = x.numel(), skip_n = skip.numel();
#pragma omp parallel for schedule(static) if (fast && n > 65536)
    for (int64_t i = 0; i < n; ++i) {
      T v = xp[i] + sp[i % skip_n];
      if (bp) v += bp[i % hidden];
      out[i] = v;
    }
  });
  NormJob job;
  job.simplified = simplified;
  job.epsilon = ctx.node.GetFloat("epsilon", simplified ? 1e-5f : 1e-12f);
  job.cols = hidden;
  job.rows = hidden == 0 ? 0 : x.numel() / hidden;
  job.stat_shape = x.shape();
  job.stat_shape.back() = 1;
  QC_ASSIGN_OR_RETURN(std::vector<double> gamma, ExpandParam(ctx, ctx.input(2), hidden_shape, "gamma"));
  std::vector<double> beta;
  if (has_beta) {
    QC_ASSIGN_OR_RETURN(beta, ExpandParam(ctx, ctx.input(3), hidden_shape, "beta"));
  }
  QC_RETURN_IF_ERROR(RunNorm(ctx, job, sum, gamma, has_beta ? &beta : nullptr, 1, 2, fast));
  if (WantOutput(ctx, 3)) ctx.outputs[3] = std::move(sum);
  return Status::Ok();
}

}  // namespace

Status LayerNormalizationRef(KernelContext& ctx) { return AxisNorm(ctx, false, true, 1, 2, false); }
Status LayerNormalizationFast(KernelContext& ctx) { return AxisNorm(ctx, false, true, 1, 2, true); }
Status RMSNormalizationRef(KernelContext& ctx) { return AxisNorm(ctx, true, false, -1, -1, false); }
Status RMSNormalizationFast(KernelContext& ctx) { return AxisNorm(ctx, true, false, -1, -1, true); }
Status SimplifiedLayerNormalizationRef(KernelContext& ctx) { return AxisNorm(ctx, true, false, -1, 1, false); }
Status SimplifiedLayerNormalizationFast(KernelContext& ctx) { return AxisNorm(ctx, true, false, -1, 1, true); }
Status SkipLayerNormalizationRef(KernelContext& ctx) { return SkipNorm(ctx, false, false); }
Status SkipLayerNormalizationFast(KernelContext& ctx) { return SkipNorm(ctx, false, true); }
Status SkipSimplifiedLayerNormalizationRef(KernelContext& ctx) { return SkipNorm(ctx, true, false); }
Status SkipSimplifiedLayerNormalizationFast(KernelContext& ctx) { return SkipNorm(ctx, true, true); }

}  // namespace qc
