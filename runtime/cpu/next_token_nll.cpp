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

// Every scored target (positions 1..S-1 of each row) must be a row of the logits.
Status CheckTargetIds(const std::vector<int64_t>& ids, int64_t batch, int64_t seq, int64_t vocab) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 1; t < seq; ++t) {
      const int64_t id = ids[b * seq + t];
      if (id < 0 || id >= vocab)
        return InvalidArgument("token id " + std::to_string(id) + " is outside the model's vocabulary of " + std::to_string(vocab));
    }
  return Status::Ok();
}

}  // namespace

Status NextTokenNlls(const Tensor& logits, const std::vector<int64_t>& targets, double* out) {
  const DType type = logits.dtype();
  if (!IsComputeFloat(type))
    return InvalidArgument("logits of dtype " + DTypeName(type) + " cannot be scored");
  const int64_t batch = logits.dim(0), seq = logits.dim(1), vocab = logits.dim(2);
  if (static_cast<int64_t>(targets.size()) != batch * seq) return Internal("targets do not match the logits' [B, S]");
  QC_RETURN_IF_ERROR(CheckTargetIds(targets, batch, seq, vocab));
  const int64_t scored = seq > 0 ? seq - 1 : 0;
#pragma omp parallel
  {
    std::vector<float> widened(type == DType::kFloat32 ? 0 : vocab);
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = 0; t < scored; ++t) {
        const int64_t first = (b * seq + t) * vocab;
        const float* row = nullptr;
        if (type == DType::kFloat32) {
          row = logits.data<float>() + first;
        } else {
          const uint16_t* bits = static_cast<const uint16_t*>(logits.raw()) + first;
          for (int64_t v = 0; v < vocab; ++v)
            widened[v] = type == DType::kBFloat16 ? BFloat16ToFloat(bits[v]) : HalfToFloat(bits[v]);
          row = widened.data();
        }
        out[b * scored + t] = NextTokenNllRow(row, vocab, targets[b * seq + t + 1]);
      }
  }
  return Status::Ok();
}

namespace {

struct NllShape {
  int64_t batch = 0, seq = 0, vocab = 0;
};

// Checks the operands' dtypes and shapes.
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
  return NllShape{logits.dim(0), logits.dim(1), logits.dim(2)};
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
  QC_RETURN_IF_ERROR(CheckTargetIds(ids, s.batch, s.seq, s.vocab));
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
  Tensor y = Tensor::Uninitialized(DType::kFloat64, {s.batch, s.seq > 0 ? s.seq - 1 : 0});
  QC_RETURN_IF_ERROR(NextTokenNlls(ctx.input(0), ctx.input(1).ToInt64s(), y.mutable_data<double>()));
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

}  // namespace qc
