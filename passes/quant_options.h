// Options shared by the quantization passes (the CLI's flags, one field each).
#pragma once

#include <cstdint>
#include <string>

namespace qc {

struct QuantOptions {
  int bits = 4;                 // 2..8
  int64_t group_size = 128;     // -1: one group per output channel (whole K)
  bool sym = true;              // symmetric (no zero point) vs asymmetric
  bool scale_search = false;    // absmax: search per-group scales minimising squared error
  bool act_order = false;       // GPTQ: quantize columns in decreasing diag(H) order (g_idx)
  bool static_groups = true;    // GPTQ act-order: keep groups in input order (false: g_idx)
  double damp = 0.01;           // GPTQ: percdamp, fraction of mean diag(H) added to the diagonal
  int64_t block_size = 128;     // GPTQ: lazy-batch block size
  double alpha = 0.5;           // SmoothQuant migration strength
  double threshold = 6.0;       // outlier-split: activation magnitude threshold
  std::string exclude_regex;    // layers (node or weight names) left in float
  uint64_t seed = 0;
};

}  // namespace qc
