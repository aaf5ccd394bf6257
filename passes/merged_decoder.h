// Merged decoders (Optimum's decoder_model_merged.onnx): the main graph is an If on a bool graph
// input (use_cache_branch) whose two branches hold the decoder with and without a KV cache,
// reading the same outer-scope weights. Passes and calibration work on a flat view (the branch a
// prefill takes), and the weight quantization is then carried into every branch:
//
//   model:  use_cache_branch ──► If ─ then: ... MatMul(X, W) ...     (with past)
//                                   └ else: ... MatMul(X', W) ...    (prefill)
//   view:   ... MatMul(X', W) ...                                    (else inlined; passes run here)
//   after:  If ─ then: ... MatMulNBits(X, B, scales) ...
//              └ else: ... MatMulNBits(X', B, scales) ...            (B, scales in the outer graph)
//
// Only weight-only rewrites are carried over (MatMulNBits replacing a MatMul/Gemm); passes that
// also change other operators (awq, smoothquant, outlier-split) are refused on merged models.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "formats/graph.h"
#include "formats/linear_layers.h"
#include "formats/status.h"

namespace qc {

/// True when a MatMul or Gemm lives inside an If branch of the main graph.
bool HasLinearLayersInBranches(const Model& model);

/// The flat view: the main graph's If nodes whose condition is a graph input are replaced by
/// their else branch (what runtime/input_binding.h's prefill, use_cache_branch = false, runs).
/// Graph inputs and outputs stay as declared. Errors when an If with linear layers has a
/// computed condition (which branch runs is then unknown).
StatusOr<Model> InlinePrefillBranches(const Model& model);

/// The linear layers of `view` by output value. Record them before the passes run (they remove
/// the float weights).
std::map<std::string, LinearLayer> LinearLayersByOutput(const Model& view);

/// Carries the MatMulNBits rewrites of `quantized_view` into `model`: each MatMulNBits whose
/// output was a linear layer reading weight W (per `view_layers`) replaces every MatMul/Gemm
/// in every graph of `model` that reads W the same way (same op, orientation and bias); its packed
/// tensors are added to the main graph, and W is removed once nothing reads it. Consumers that
/// read W differently stay float and get a note in `notes`. When W is a tied embedding table and
/// every linear reader was carried, its row Gathers in every graph read the head's codes
/// (passes/tied_embedding.h), as the view's did.
Status CarryWeightQuantization(const Model& quantized_view, const std::map<std::string, LinearLayer>& view_layers,
                               Model& model, std::vector<std::string>* notes);

}  // namespace qc
