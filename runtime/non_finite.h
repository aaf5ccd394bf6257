// Where a run first produces NaN or Inf. When a model's logits come out non-finite, the node that
// introduced the first non-finite value tells a broken artifact (a quantized weight or scale) from
// a runtime fault (one kernel on one device).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "formats/status.h"
#include "runtime/executor.h"

namespace qc {

struct NonFiniteSite {
  std::string node;     // the node's name (may be empty in hand-built graphs)
  std::string op_type;  // "MatMulNBits", ...
  std::string output;   // the output value holding the non-finite values
  int64_t count = 0;    // NaN or Inf values in it
  int64_t numel = 0;    // values in it
  /// "node 'X' (Op), output 'Y': N of M values are NaN or Inf".
  std::string Describe() const;
};

/// NaN and Inf values in a floating-point host tensor.
int64_t CountNonFinite(const Tensor& host);

/// Runs `feeds` through `session` (created from `graph`) one step at a time and checks every
/// floating-point output of `graph`'s nodes in execution order; device values are copied to the
/// host, so this is a slow diagnostic run. Returns the first node whose output holds a NaN or Inf,
/// or nullopt when every value is finite. Values a fusion made internal to one step are not seen.
StatusOr<std::optional<NonFiniteSite>> FindFirstNonFinite(const Session& session, const Graph& graph,
                                                          const NamedTensors& feeds);

}  // namespace qc
