// Tied embeddings: once a tied output head is a MatMulNBits, the embedding Gathers that read the
// same float table read the head's packed codes instead, through com.microsoft.GatherBlockQuantized,
// so the artifact stores the table once, quantized (docs/FORMAT.md):
//
//   before:  ids ──► Gather(axis 0) ◄── W (float [vocab, hidden])  ──► E
//            X ──► MatMulNBits ◄── W_Q4 [vocab, n_blocks, blob], W_scales [vocab * n_blocks][, W_zero_points]
//   after:   ids ──► GatherBlockQuantized(bits, block_size) ◄── data, scales[, zero_points]  ──► E
//            data        = Reshape(W_Q4, [vocab, n_blocks * blob])   (then Slice [0, hidden * bits / 8)
//                                                                     when hidden is not a block multiple)
//            scales      = Reshape(W_scales, [vocab, n_blocks])
//            zero_points = Reshape(W_zero_points, [vocab, ceil(n_blocks * bits / 8)])
//
// The Reshapes read the MatMulNBits initializers (ONNX Runtime requires those to stay
// initializers; GatherBlockQuantized takes computed inputs), so nothing is stored twice; both
// runtimes fold them into constants when the session starts. E stays float32 (the scales' type).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "formats/graph.h"
#include "formats/linear_layers.h"

namespace qc {

/// A tied head's packed weight, by initializer name, in MatMulNBits' layout.
struct PackedTable {
  std::string table;        // the float [rows, cols] initializer the embedding Gathers read
  std::string b;            // uint8 [rows, n_blocks, block_size * bits / 8]
  std::string scales;       // float32 [rows * n_blocks], without any Gemm alpha folded in
  std::string zero_points;  // uint8 [rows * ceil(n_blocks * bits / 8)]; "" when symmetric
  int64_t rows = 0, cols = 0, bits = 4, block_size = 0;
};

/// The narrowest head whose codes the embedding lookups share (see TiedTableStaysFloat).
inline constexpr int kMinSharedTableBits = 8;

/// Why the embedding Gathers of tied `layer` keep the float table when the head is quantized
/// to `bits` (before widening to storage bits), or nullopt when they can read the head's codes.
/// (The rewrite itself also needs the head's codes in input order, i.e. no act-order g_idx.)
std::optional<std::string> TiedTableStaysFloat(const LinearLayer& layer, int bits);

/// True when every reader of `table` in `main` and its subgraphs is a row Gather (axis 0 of the
/// table as data), so replacing them leaves the float table unread.
bool OnlyRowGathersRead(const Graph& main, const std::string& table);

/// Replaces every row Gather of `p.table` in `main` and its subgraphs by a GatherBlockQuantized
/// over `p` (other readers keep the float table). The Reshape/Slice nodes go first in `main`;
/// `unique_name` returns an unused name for a new value, node or initializer of `main`. Returns
/// how many Gathers were replaced (0 also when opset < 5 has no Reshape with a shape input).
int QuantizeEmbeddingGathers(Graph& main, const PackedTable& p, int64_t opset,
                             const std::function<std::string(const std::string&)>& unique_name);

}  // namespace qc
