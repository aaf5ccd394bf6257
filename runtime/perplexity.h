// Perplexity over non-overlapping windows (the protocol of ../shared/README.md).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "formats/status.h"
#include "runtime/executor.h"

namespace qc {

struct PerplexityOptions {
  int64_t seqlen = 512;
  int64_t max_windows = -1;  // -1: every full window
  /// Called after each window with (windows done, windows total).
  std::function<void(int64_t, int64_t)> progress;
};

struct PerplexityResult {
  double ppl = 0;
  double mean_nll = 0;
  int64_t windows = 0;
  int64_t tokens_scored = 0;
  double seconds = 0;               // every window, wall
  double first_window_seconds = 0;  // of which the first (it warms up: cuBLAS loads its kernels)
  /// Tokens fed through the model per second after the first window (the steady state, as
  /// tools/ort_eval.py and tools/torch_eval.py time theirs); over all windows when there is one.
  double tokens_per_second = 0;
};

/// The graph input and output AddNextTokenNll adds.
inline constexpr char kNllTargetsInput[] = "qconvert.nll_targets";
inline constexpr char kNllOutput[] = "qconvert.nll";

/// Appends the scoring of a window to the model: qconvert.eval.NextTokenNll(logits, targets)
/// (runtime/cpu/next_token_nll.cpp), reading the logits output (named "logits", else the first)
/// and a new input kNllTargetsInput (int32 [batch, seq], the window's ids), giving a new output
/// kNllOutput (float64 [batch, seq-1]). A session of the model then scores where the logits
/// are: on the GPU only seq-1 numbers come back to the host instead of [seq, vocab] logits.
/// Errors when the model already has those names or no output.
Status AddNextTokenNll(Model& model);

/// Cuts `ids` into windows of `seqlen` (dropping the remainder), runs each as one sequence,
/// scores every position but the first: ppl = exp(mean NLL). NLLs are summed in double in a
/// fixed order, so the result is deterministic. A session of a model prepared by AddNextTokenNll
/// is asked for the per-position NLLs alone; any other for its logits, scored on the host by the
/// same code as the node's CPU kernel (runtime/cpu/next_token_nll.h).
StatusOr<PerplexityResult> EvaluatePerplexity(const Session& session, const std::vector<int32_t>& ids,
                                              const PerplexityOptions& options);

}  // namespace qc
