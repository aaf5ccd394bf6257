// Perplexity evaluation: window the ids, run the model, accumulate next-token NLL.
#include "runtime/perplexity.h"

#include <chrono>
#include <cmath>

#include <Eigen/Core>

#include "runtime/input_binding.h"

namespace qc {

StatusOr<double> SumNextTokenNll(const float* logits, int64_t seq, int64_t vocab, const int32_t* targets) {
  for (int64_t t = 1; t < seq; ++t)
    if (targets[t] < 0 || targets[t] >= vocab)
      return InvalidArgument("token id " + std::to_string(targets[t]) + " is outside the model's vocabulary of " + std::to_string(vocab));
  std::vector<double> nll(seq > 0 ? seq - 1 : 0);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < seq - 1; ++t) {
    const float* row = logits + t * vocab;
    // Vectorised float exp of (logit - max) <= 0, summed in double: the terms are in (0, 1], so
    // float exp's relative error (~1e-7) leaves the NLL exact to ~1e-7 absolute.
    Eigen::Map<const Eigen::ArrayXf> logits_row(row, vocab);
    const float max = logits_row.maxCoeff();
    const double sum = (logits_row - max).exp().cast<double>().sum();
    nll[t] = std::log(sum) + max - row[targets[t + 1]];
  }
  // Summed serially in position order so the result does not depend on the thread count.
  double total = 0;
  for (double v : nll) total += v;
  return total;
}

namespace {

// 16-bit logits widened to float32 on every core: the vocabulary-sized rows of a window are
// millions of values (4M for docs-llama-12m), a third of the window's time in one thread.
Tensor WidenLogits(const Tensor& t) {
  const int64_t n = t.numel();
  std::vector<float> out(n);
  const uint16_t* p = static_cast<const uint16_t*>(t.raw());
  const bool bf16 = t.dtype() == DType::kBFloat16;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = bf16 ? BFloat16ToFloat(p[i]) : HalfToFloat(p[i]);
  return Tensor::Adopt<float>(std::move(out), t.shape());
}

}  // namespace

StatusOr<PerplexityResult> EvaluatePerplexity(const Session& session, const std::vector<int32_t>& ids,
                                              const PerplexityOptions& options) {
  if (options.seqlen < 2) return InvalidArgument("seqlen must be at least 2");
  int64_t windows = static_cast<int64_t>(ids.size()) / options.seqlen;
  if (options.max_windows >= 0) windows = std::min(windows, options.max_windows);
  if (windows == 0)
    return InvalidArgument("the data has " + std::to_string(ids.size()) + " tokens, fewer than one window of " +
                           std::to_string(options.seqlen));
  const int logits_index = LogitsOutputIndex(session);
  const std::string logits_name = session.outputs()[logits_index].name;
  const auto start = std::chrono::steady_clock::now();
  double nll_sum = 0;
  int64_t scored = 0;
  for (int64_t w = 0; w < windows; ++w) {
    std::vector<int32_t> window(ids.begin() + w * options.seqlen, ids.begin() + (w + 1) * options.seqlen);
    Tensor input = Tensor::FromVector<int32_t>(window, {1, options.seqlen});
    QC_ASSIGN_OR_RETURN(NamedTensors feeds, BindInputs(session, input));
    QC_ASSIGN_OR_RETURN(std::vector<Tensor> outs, session.Run(feeds, {logits_name}));
    Tensor logits = outs[0];
    const DType dtype = logits.dtype();
    const bool half = dtype == DType::kFloat16 || dtype == DType::kBFloat16;
    if ((dtype != DType::kFloat32 && !half) || logits.rank() != 3 || logits.dim(1) != options.seqlen)
      return InvalidArgument("output '" + logits_name + "' is " + DTypeName(dtype) + " " + ShapeToString(logits.shape()) +
                             "; expected float logits [1, " + std::to_string(options.seqlen) + ", vocab]");
    // A float16/bfloat16 model's logits are scored in float32 (widening is exact).
    if (half) logits = WidenLogits(logits);
    QC_ASSIGN_OR_RETURN(double sum, SumNextTokenNll(logits.data<float>(), options.seqlen, logits.dim(2), window.data()));
    nll_sum += sum;
    scored += options.seqlen - 1;
    if (options.progress) options.progress(w + 1, windows);
  }
  PerplexityResult r;
  r.windows = windows;
  r.tokens_scored = scored;
  r.mean_nll = nll_sum / static_cast<double>(scored);
  r.ppl = std::exp(r.mean_nll);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.tokens_per_second = r.seconds > 0 ? static_cast<double>(windows * options.seqlen) / r.seconds : 0;
  return r;
}

}  // namespace qc
