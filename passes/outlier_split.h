// `outlier-split`: LLM.int8 (Dettmers et al., "LLM.int8(): 8-bit Matrix Multiplication for
// Transformers at Scale", NeurIPS 2022): mixed-precision decomposition of every linear layer.
//
//   before:  X ──► MatMul / Gemm ◄── W (float32)                                    ──► Y
//   after:   X ──► Gather(O) ──► MatMul ◄── W[O, :] (float32)          ─┐
//            X ──► Gather(R) ──► [per-token int8] ──► MatMulInteger ◄── int8(W[R, :]) ──► Cast,
//                                  Mul s_w, Mul s_x ───────────────────┴─► Add [──► Add bias] ──► Y
//
// Eq. 7 of the paper: Y = X_O W_O (16-bit there, float32 here) + S (X_R~ W_R~), with vector-wise
// quantization of the rest: int8 per token (row of X_R) times int8 per output channel (column of
// W_R), i.e. the W8A8 encoding of passes/int8_linear.h applied to the non-outlier channels R.
//
// The outlier channels O are chosen statically from one float calibration pass, per input X
// (so q/k/v share them). The paper decomposes, per batch, every column with some |x| >= 6
// (--threshold); a static choice has to predict that. A channel j is an outlier when
//   count_j >= max(1, kOutlierMinTokenFraction * tokens)   (|x_tj| > threshold on >= 0.1% of tokens)
// i.e. when it would exceed the threshold about once every 1000 tokens, often enough to be
// decomposed in most batches of the dynamic scheme. Channels that exceed it once or twice in
// the calibration set are not worth a float column: they rarely fire at run time, and on the
// small, un-normalized models where every channel grazes 6 now and then the rule degenerates
// to "all float". At most kOutlierMaxChannelFraction of K is kept (the channels with the most
// exceedances; ties: the larger max |x|), so a layer whose inputs are all large stays mostly
// int8. With no outliers the layer is plain W8A8.
//
// On docs-llama-12m (128 x 512 calibration tokens, threshold 6) the rule keeps 0 or 1 channel of
// the attention and MLP inputs (the one "massive activation" channel LLM.int8 describes), 1 to 21
// of the 1024 down-projection inputs in the first five blocks (where 48 to 887 channels exceed 6
// at least once), 130 in the last, and 96 of the 384 lm_head inputs (all 384 exceed 6 at least
// once: the final norm's output is large everywhere, and the cap binds).
//
// Needs calibration data: one float pass, group by group in execution order
// (Calibrator::RunSequential with the float weights kept), collecting per-channel counts of
// |x| > threshold, max |x| and the Hessian (for the report's weight-only error) of one group's
// input at a time; each group is split and quantized while its input is at hand, and its output
// error with int8 weights and activations (output_rel_error) measured on the input of the first
// kW8A8ErrorWindows windows. Nothing is held for more than one group (docs/MEMORY.md).
// Preserves the graph interface; layers excluded with --exclude, or whose weight is not float32,
// stay float.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "calibrate/calibrator.h"
#include "passes/pass.h"

namespace qc {

class OutlierSplitPass : public Pass {
 public:
  const char* Name() const override { return "outlier-split"; }
  bool NeedsCalibration() const override { return true; }
  [[nodiscard]] Status Run(Model& model, PassContext& context) override;
};

/// A channel is an outlier when |x| exceeds the threshold on at least this fraction of tokens.
inline constexpr double kOutlierMinTokenFraction = 1e-3;
/// At most this fraction of a layer's input channels stay float.
inline constexpr double kOutlierMaxChannelFraction = 0.25;

/// The outlier channels of one input by the rule above, sorted. `stats` must carry
/// outlier_count (StatsRequest::outlier_threshold > 0).
std::vector<int64_t> SelectOutlierChannels(const InputStats& stats, double min_token_fraction = kOutlierMinTokenFraction,
                                           double max_channel_fraction = kOutlierMaxChannelFraction);

}  // namespace qc
