// Perplexity evaluation: window the ids, run the model, accumulate next-token NLL.
#include "runtime/perplexity.h"

#include <chrono>
#include <cmath>

#include "runtime/cpu/next_token_nll.h"
#include "runtime/input_binding.h"

namespace qc {

Status AddNextTokenNll(Model& model) {
  Graph& g = model.graph;
  if (g.outputs.empty()) return InvalidArgument("the model has no output to score");
  for (const ValueInfo& v : g.inputs)
    if (v.name == kNllTargetsInput) return InvalidArgument("the model already has an input named " + std::string(kNllTargetsInput));
  for (const ValueInfo& v : g.outputs)
    if (v.name == kNllOutput) return InvalidArgument("the model already has an output named " + std::string(kNllOutput));
  std::string logits = g.outputs.front().name;
  for (const ValueInfo& v : g.outputs)
    if (v.name == "logits") logits = v.name;

  ValueInfo targets;
  targets.name = kNllTargetsInput;
  targets.dtype = DType::kInt32;
  targets.has_shape = true;
  targets.shape = {Dim{-1, "batch"}, Dim{-1, "sequence"}};
  g.inputs.push_back(targets);
  Node score;
  score.name = "qconvert.next_token_nll";
  score.op_type = "NextTokenNll";
  score.domain = "qconvert.eval";
  score.inputs = {logits, kNllTargetsInput};
  score.outputs = {kNllOutput};
  g.nodes.push_back(std::move(score));
  ValueInfo nll;
  nll.name = kNllOutput;
  nll.dtype = DType::kFloat64;
  g.outputs.push_back(nll);
  bool imported = false;
  for (const OpsetImport& o : model.opset_imports) imported |= o.domain == "qconvert.eval";
  if (!imported) model.opset_imports.push_back({"qconvert.eval", 1});
  return Status::Ok();
}

namespace {

bool HasOutput(const Session& session, const std::string& name) {
  for (const ValueInfo& v : session.outputs())
    if (v.name == name) return true;
  return false;
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
  const bool scored_in_graph = HasOutput(session, kNllOutput);
  const int logits_index = LogitsOutputIndex(session);
  const std::string logits_name = session.outputs()[logits_index].name;
  const auto start = std::chrono::steady_clock::now();
  auto first_done = start;
  double nll_sum = 0;
  int64_t scored = 0;
  for (int64_t w = 0; w < windows; ++w) {
    std::vector<int32_t> window(ids.begin() + w * options.seqlen, ids.begin() + (w + 1) * options.seqlen);
    Tensor input = Tensor::FromVector<int32_t>(window, {1, options.seqlen});
    double sum = 0;
    if (scored_in_graph) {
      QC_ASSIGN_OR_RETURN(NamedTensors feeds, BindInputs(session, input, {{kNllTargetsInput, input}}));
      QC_ASSIGN_OR_RETURN(std::vector<Tensor> outs, session.Run(feeds, {kNllOutput}));
      const Tensor& nll = outs[0];
      if (nll.dtype() != DType::kFloat64 || nll.numel() != options.seqlen - 1)
        return Internal(std::string(kNllOutput) + " is " + DTypeName(nll.dtype()) + " " + ShapeToString(nll.shape()));
      // Summed serially in position order, as the host path below.
      for (int64_t t = 0; t < options.seqlen - 1; ++t) sum += nll.data<double>()[t];
    } else {
      QC_ASSIGN_OR_RETURN(NamedTensors feeds, BindInputs(session, input));
      QC_ASSIGN_OR_RETURN(std::vector<Tensor> outs, session.Run(feeds, {logits_name}));
      const Tensor& logits = outs[0];
      const DType dtype = logits.dtype();
      if (!IsComputeFloat(dtype) || logits.rank() != 3 || logits.dim(1) != options.seqlen)
        return InvalidArgument("output '" + logits_name + "' is " + DTypeName(dtype) + " " + ShapeToString(logits.shape()) +
                               "; expected float logits [1, " + std::to_string(options.seqlen) + ", vocab]");
      // The NextTokenNll kernel's scoring (16-bit logits widened exactly, row by row).
      std::vector<double> nll(options.seqlen - 1);
      QC_RETURN_IF_ERROR(NextTokenNlls(logits, std::vector<int64_t>(window.begin(), window.end()), nll.data()));
      for (double v : nll) sum += v;  // serially in position order: independent of the thread count
    }
    nll_sum += sum;
    scored += options.seqlen - 1;
    if (w == 0) first_done = std::chrono::steady_clock::now();
    if (options.progress) options.progress(w + 1, windows);
  }
  PerplexityResult r;
  r.windows = windows;
  r.tokens_scored = scored;
  r.mean_nll = nll_sum / static_cast<double>(scored);
  r.ppl = std::exp(r.mean_nll);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.first_window_seconds = std::chrono::duration<double>(first_done - start).count();
  const double timed = windows > 1 ? r.seconds - r.first_window_seconds : r.seconds;
  const int64_t timed_windows = windows > 1 ? windows - 1 : windows;
  r.tokens_per_second = timed > 0 ? static_cast<double>(timed_windows * options.seqlen) / timed : 0;
  return r;
}

}  // namespace qc
