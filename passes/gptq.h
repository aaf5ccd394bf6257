// `gptq`: Hessian-aware weight quantization with calibration (GPTQ, Frantar et al. 2022).
//
//   before:  X ──► MatMul / Gemm ◄── W (float32)
//   after:   X ──► com.microsoft.MatMulNBits ◄── B (codes), scales [, zero_points] [, bias]
//
// Each linear layer's weight is quantized input row by input row (passes/gptq_solver.h); the
// rounding error of each row is compensated on the rows not yet quantized, weighted by the
// Hessian H = 2 XᵀX / rows of the layer's input X on the calibration windows, so ||X W - X W~||
// is minimised instead of ||W - W~||. Layers are visited "true sequentially"
// (Calibrator::RunSequential): the Hessian of a layer group is collected with every earlier
// group already replaced by its dequantized weights. Group scales and zero points follow the
// round-to-nearest passes (passes/weight_quant.h: --sym / --asym, --group-size, --scale-search),
// computed when the solver reaches a group, from the weights as updated by then. With
// --act-order rows are quantized in decreasing diag(H) order while the groups keep input order
// ("static groups", no g_idx); with --g-idx each group is formed from consecutive rows of that
// order and recorded as g_idx in the artifact (see GptqSpecFromOptions). Needs calibration
// data (PassContext::calibrator). Preserves the graph interface and every node that is not a
// quantized linear layer; layers left out by --exclude and layers MatMulNBits cannot encode stay
// float (the latter with a report entry saying why). A Hessian that stays indefinite after
// damping is an error naming the layer, never a silent fallback to rounding.
#pragma once

#include <memory>

#include "passes/gptq_solver.h"
#include "passes/pass.h"

namespace qc {

class GptqPass : public Pass {
 public:
  const char* Name() const override { return "gptq"; }
  bool NeedsCalibration() const override { return true; }
  bool OnlyReplacesLinearLayers() const override { return true; }
  /// Asymmetric, as the paper's min-max quantizer: on docs-llama-12m (128 x 512 calibration, 48
  /// windows) w4 g128 act-order 14.92 vs 14.97 symmetric, w3 g128 16.38 vs 16.55.
  bool DefaultSymmetric() const override { return false; }
  [[nodiscard]] Status Run(Model& model, PassContext& context) override;
};

/// The solver settings the options ask for.
GptqSpec GptqSpecFromOptions(const QuantOptions& options);

}  // namespace qc
