// Binds a model's inputs for a prefill run: input_ids from data, the rest filled the way
// serving code would (attention_mask ones, position_ids 0..S-1, an empty KV cache).
#pragma once

#include <string>
#include <vector>

#include "formats/graph.h"
#include "formats/status.h"
#include "formats/tensor.h"
#include "runtime/executor.h"

namespace qc {

/// Builds the feeds for `session` from token ids of shape [batch, seq] (int32 or int64).
/// `overrides` (name -> tensor) replace any generated input. An input that cannot be filled
/// is an error naming it.
StatusOr<NamedTensors> BindInputs(const Session& session, const Tensor& input_ids, const NamedTensors& overrides = {});

/// Index of the output holding logits: the one named "logits", else the first.
int LogitsOutputIndex(const Session& session);

}  // namespace qc
