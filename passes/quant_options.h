// Options shared by the quantization passes (the CLI's flags, one field each).
#pragma once

#include <cstdint>
#include <string>

namespace qc {

inline constexpr int kHeadFloat = 0;
inline constexpr int kHeadLikeOthers = -1;
/// `qconvert --head-bits` default. llama.cpp keeps its output tensor at 6-8 bits, and the GPTQ,
/// AWQ and ModelOpt tools leave lm_head unquantized: the logits carry the head's error straight
/// into the loss (docs-llama-12m gptq w3: 16.38 with a 3-bit head, 15.95 with an 8-bit one).
inline constexpr int kCliHeadBits = 8;

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
  /// Bits of the output head (the layer computing the logits): kHeadFloat leaves it in float,
  /// kHeadLikeOthers quantizes it like every other layer. The CLI's default is kCliHeadBits.
  int head_bits = kHeadLikeOthers;
  uint64_t seed = 0;
};

}  // namespace qc
