// The scoring of window positions: -log softmax(logits_row)[target], shared by the NextTokenNll
// kernels (runtime/cpu/next_token_nll.cpp) and perplexity's host path (runtime/perplexity.cpp).
#pragma once

#include <cstdint>
#include <vector>

#include "formats/status.h"
#include "formats/tensor.h"

namespace qc {

/// log(sum_v exp(row[v] - max)) + max - row[target]: exp of float (row - max) <= 0, vectorised,
/// summed in double. The terms lie in (0, 1], so float exp's relative error (~1e-7) leaves the
/// NLL exact to ~1e-7 absolute. `target` must lie in [0, vocab).
double NextTokenNllRow(const float* row, int64_t vocab, int64_t target);

/// The NLL of every scored position of `logits` [B, S, V] (float32, float16 or bfloat16) against
/// `targets` (B x S ids, row-major): out[b * (S-1) + t] scores targets[b, t+1], by NextTokenNllRow,
/// rows in parallel (16-bit rows widened one at a time by the thread scoring them). Errors, naming
/// the id, when a scored target lies outside [0, V); `out` holds B * (S-1) values.
Status NextTokenNlls(const Tensor& logits, const std::vector<int64_t>& targets, double* out);

}  // namespace qc
