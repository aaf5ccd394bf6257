// Execution-only graph rewrites: fuse op chains the exporters emit into one kernel each. The
// rewritten graph is what the executor runs; models are never written back in this form.
#pragma once

#include "formats/graph.h"

namespace qc {

/// Rewrites `graph` in place (main graph only; subgraphs are left alone). Fusions:
///   x -> Sigmoid -> s;  Mul(x, s)        =>  com.microsoft.QuickGelu(x, alpha=1)   (SiLU)
///   Softmax(Add(Mul(x, c), mask), axis=-1), c a float scalar initializer
///                                        =>  qconvert.fused.ScaledMaskedSoftmax(x, mask; scale=c)
///   Mul(w, Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2), axes=[-1]), eps)))))
///                                        =>  SimplifiedLayerNormalization(x, w; axis=-1, epsilon=eps)
/// and the 16-bit exports' forms of the last two, which compute in float32 between Casts:
///   Cast(Softmax(Cast(Add(Mul(x, c), mask), to=float)), to=T), x, c, mask of type T
///                                        =>  ScaledMaskedSoftmax in T
///   Mul(w, Cast(<the RMSNorm chain on Cast(x, to=float)>, to=T)), w and x of type T
///                                        =>  SimplifiedLayerNormalization(x, w) in T
/// (float32 inside, one rounding on store instead of two; a float16 Llama export runs ~400
/// kernels fewer per forward pass), and the W8A8 layers' per-token activation quantization
/// (docs/FORMAT.md), in float32, float16 or bfloat16 (each step rounded as the chain's op):
///   s = Div(Max(ReduceMax(Abs(x'), axes=[-1], keepdims=1), eps), 127),
///   q = Cast<uint8>(Add(Round(Div(x', s)), 128)), x' = x or Gather(x, columns, axis=-1)
///                                        =>  qconvert.fused.QuantizeTokensUint8(x[, columns]; epsilon=eps) -> (q, s)
/// A chain is fused only when its intermediate value has no other reader and is not a graph
/// output. Returns the number of fusions applied.
int FuseForExecution(Graph& graph);

}  // namespace qc
