// qconvert.eval.NextTokenNll(logits [B, S, V], targets [B, S] int32/int64) -> nll [B, S-1] float64:
// nll[b, t] = -log softmax(logits[b, t])[targets[b, t+1]], the per-position loss of a
// perplexity window (runtime/perplexity.h, AddNextTokenNll). Scoring inside the graph lets a
// device session return S-1 numbers instead of the [S, V] logits.
#include "runtime/cpu/next_token_nll.h"

#include <cmath>
#include <limits>
#include <string>

#include <Eigen/Core>

#include "runtime/cpu/kernel.h"

namespace qc {

double NextTokenNllRow(const float* row, int64_t vocab, int64_t target) {
  Eigen::Map<const Eigen::ArrayXf> logits_row(row, vocab);
  const float max = logits_row.maxCoeff();
  const double sum = (logits_row - max).exp().cast<double>().sum();
  return std::log(sum) + max - row[target];
}

namespace {

struct NllShape {
  int64_t batch = 0, seq = 0, vocab = 0;
};

// Checks the operands and every scored target (positions 1..S-1) against the vocabulary.
StatusOr<NllShape> CheckNll(const KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(2, 2));
  const Tensor& logits = ctx.input(0);
  const Tensor& targets = ctx.input(1);
  if (!IsFloatingPoint(logits.dtype()) || logits.dtype() == DType::kFloat64) return ctx.UnsupportedDType(logits.dtype());
  if (targets.dtype() != DType::kInt32 && targets.dtype() != DType::kInt64)
    return ctx.Error("targets must be int32 or int64, got " + DTypeName(targets.dtype()));
  if (logits.rank() != 3 || targets.rank() != 2 || targets.dim(0) != logits.dim(0) || targets.dim(1) != logits.dim(1))
    return ctx.Error("expected logits [B, S, V] and targets [B, S], got " + ShapeToString(logits.shape()) + " and " +
                     ShapeToString(targets.shape()));
  NllShape s{logits.dim(0), logits.dim(1), logits.dim(2)};
  const std::vector<int64_t> ids = targets.ToInt64s();
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t t = 1; t < s.seq; ++t) {
      const int64_t id = ids[b * s.seq + t];
      if (id < 0 || id >= s.vocab)
        return InvalidArgument("token id " + std::to_string(id) + " is outside the model's vocabulary of " + std::to_string(s.vocab));
    }
  return s;
}

}  // namespace

// Reference: every sum in double, one scalar loop per row.
Status NextTokenNllRef(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(NllShape s, CheckNll(ctx));
  const int64_t scored = s.seq > 0 ? s.seq - 1 : 0;
  Tensor y(DType::kFloat64, {s.batch, scored});
  double* out = y.mutable_data<double>();
  const std::vector<float> values = ctx.input(0).ToFloats();  // float16/bfloat16 logits widened
  const float* logits = values.data();
  const std::vector<int64_t> ids = ctx.input(1).ToInt64s();
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t t = 0; t < scored; ++t) {
      const float* row = logits + (b * s.seq + t) * s.vocab;
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t v = 0; v < s.vocab; ++v) mx = std::max(mx, static_cast<double>(row[v]));
      double sum = 0;
      for (int64_t v = 0; v < s.vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - mx);
      out[b * scored + t] = std::log(sum) + mx - row[ids[b * s.seq + t + 1]];
    }
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

Status NextTokenNllFast(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(NllShape s, CheckNll(ctx));
  const int64_t scored = s.seq > 0 ? s.seq - 1 : 0;
  Tensor y = Tensor::Uninitialized(DType::kFloat64, {s.batch, scored});
  double* out = y.mutable_data<double>();
  std::vector<float> widened;  // float16/bfloat16 logits
  if (ctx.input(0).dtype() != DType::kFloat32) widened = ctx.input(0).ToFloats();
  const float* logits = widened.empty() ? ctx.input(0).data<float>() : widened.data();
  const std::vector<int64_t> ids = ctx.input(1).ToInt64s();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t t = 0; t < scored; ++t)
      out[b * scored + t] = NextTokenNllRow(logits + (b * s.seq + t) * s.vocab, s.vocab, ids[b * s.seq + t + 1]);
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

}  // namespace qc
