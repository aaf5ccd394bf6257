// Execution-only rewrite of a graph's floating-point precision (--dtype): the values a float32
// model computes in float32 are computed in float16 or bfloat16 instead (or the reverse).
//
//   before (float32 model)                       after, to = float16, interface kept
//   x: float32 input                              x: float32 input -> Cast<f16> -> x/float16
//   W: float32 initializer                        W: float16 initializer (saturated)
//   Cast<float32>(ids)                            Cast<f16>(ids)
//   Constant / ConstantOfShape float32 values     float16 values
//   logits: float32 output                        logits/float16 -> Cast<f32> -> logits
//
// Integer and bool tensors are untouched. Converted constants saturate: a finite float32 value
// beyond the target's range becomes the target's largest finite value of that sign (the causal
// masks' finfo(float32).min becomes -65504 in float16, not -inf, so Mul(0, mask) stays 0 and a
// fully masked row stays finite); infinities and NaN stay what they are; values below the
// target's smallest subnormal round to zero.
#pragma once

#include "formats/graph.h"
#include "formats/status.h"

namespace qc {

/// The float type (float32, float16 or bfloat16) of most of the graph's initializer elements:
/// the model's own compute precision. kUndefined when it has no such initializer.
DType ModelFloatDType(const Graph& graph);

/// `t` (float32, float16 or bfloat16) converted to `to` (one of the same), saturating as above.
Tensor ConvertFloatTensor(const Tensor& t, DType to);

/// What happens to the main graph's inputs and outputs of dtype `from`.
enum class FloatInterface {
  /// They keep their dtype: a Cast after each input, before each output (what --dtype does).
  /// Outputs without a declared dtype get no Cast: their values come out in `to`.
  kKeep,
  /// They change dtype too, as `model.half()` followed by an export gives.
  kConvert,
};

/// Rewrites `graph` (subgraphs included) so every value of dtype `from` becomes a value of dtype
/// `to`: initializers (saturated, see above), Constant and ConstantOfShape values, Cast targets,
/// EyeLike/Random* dtype attributes and value_info. `from` and `to` are float32, float16 or
/// bfloat16. Inputs that ONNX requires in float32 (Resize/Upsample scales) keep it. InvalidArgument
/// for other dtypes.
Status ConvertFloatPrecision(Graph& graph, DType from, DType to, FloatInterface interface = FloatInterface::kKeep);

}  // namespace qc
