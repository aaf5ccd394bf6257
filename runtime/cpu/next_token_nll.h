// The scoring of one window position: -log softmax(logits_row)[target], shared by the
// NextTokenNll kernels (runtime/cpu/next_token_nll.cpp) and perplexity's host path.
#pragma once

#include <cstdint>

namespace qc {

/// log(sum_v exp(row[v] - max)) + max - row[target]: exp of float (row - max) <= 0, vectorised,
/// summed in double. The terms lie in (0, 1], so float exp's relative error (~1e-7) leaves the
/// NLL exact to ~1e-7 absolute. `target` must lie in [0, vocab).
double NextTokenNllRow(const float* row, int64_t vocab, int64_t target);

}  // namespace qc
