// Per-input-channel rescaling of a layer group, the function-preserving transform shared by AWQ
// and SmoothQuant: X W = (X diag(s)^-1) (diag(s) W).
//
//   before:  P ──► X ──► MatMul/Gemm ◄── W        (every layer of the group reads X)
//   after:   P' ──► X / s ──► MatMul/Gemm ◄── diag(s) W
//
// where 1/s is folded into P, the operator producing X, when every reader of X is in the group
// and P allows it:
//   - LayerNormalization / SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization /
//     SkipLayerNormalization / RMSNormalization: scale (and bias) divided by s;
//   - a Mul by a constant [k] (or broadcastable [1,..,k]) vector, the decomposed RMSNorm weight;
//   - a preceding linear layer reached through ops that keep the channel axis (Reshape, Transpose,
//     the attention MatMul with X's channels in its second operand, an elementwise Mul with
//     another activation): its output columns (and bias) divided by s, when the channel mapping
//     is one to one;
// otherwise an explicit Mul(X, 1/s) node is inserted in front of the group.
// Between P and X there may be Reshapes that keep the last dimension k and per-channel bias Adds
// (TorchScript's decomposed LayerNorm, GPT-2's Conv1D view), which are divided too. Reads of
// shapes only (Shape, Size) do not count as readers. The norm and Mul folds are exact by
// construction; a fold into a linear layer assumes X's channel c is its output column offset + c
// (offset: the Split part, e.g. V of a fused QKV), which a numeric probe checks: the model runs
// once on 8 tokens (ids 0..7; static-shape inputs for other models) before and after the fold with
// a probe scale, X must come out divided by it elementwise, else the fold is undone and the Mul
// inserted (grouped-query attention, interleaved GPT-NeoX heads). Each probe builds two Sessions
// of the whole model, so it costs two short forward passes.
// Weights read by anything outside the group (a tied embedding's Gather) are copied first, so
// nothing else changes. Graph inputs and outputs are unchanged; the node order stays topological
// (an inserted node goes right before the group's first layer).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "calibrate/calibrator.h"
#include "formats/graph.h"
#include "formats/status.h"

namespace qc {

/// Where ApplyInputChannelScale put 1/s.
struct ChannelScaleResult {
  /// e.g. "LayerNormalization 'ln_1' via Reshape", "linear 'up' (up.weight) through Mul",
  /// "inserted Mul 'x_channel_scale' (why no fold was possible)".
  std::string folded_into;
  bool inserted_mul = false;
};

/// Applies s (> 0, finite, one per input channel k of the group) to `group` in `model`. Node
/// indices of existing nodes may change (a Mul may be inserted), so callers re-run
/// FindLinearLayers afterwards. Errors (InvalidArgument: a zero, negative or NaN s, a wrong
/// length; Internal: a stale group) leave the model unchanged.
StatusOr<ChannelScaleResult> ApplyInputChannelScale(Model& model, const LayerGroup& group, const std::vector<float>& s);

/// The linear layer ApplyInputChannelScale would fold 1/s into for `group` (the output value of its
/// MatMul/Gemm node), before the numeric probe has its say; nullopt when 1/s would go into a
/// normalisation, a constant Mul or an inserted Mul. A pass that quantizes layer by layer while it
/// scales holds such a layer back until the group folding into it has been scaled (passes/awq.cpp).
/// Reads the model only.
std::optional<std::string> PlannedLinearFoldTarget(Model& model, const LayerGroup& group);

}  // namespace qc
