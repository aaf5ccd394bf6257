// `awq`: activation-aware weight quantization (Lin et al., "AWQ: Activation-aware Weight
// Quantization for LLM Compression and Acceleration", MLSys 2024).
//
//   before:  P ──► X ──► MatMul / Gemm ◄── W (float32)                       (every layer group)
//   after:   P' ──► X / s ──► com.microsoft.MatMulNBits ◄── Q(clip(diag(s) W)) (codes, scales[, zero_points])
//
// Per group of layers reading one X (q/k/v, gate/up, o, down, ...), the input channels are scaled
// by s = s_X^alpha / sqrt(max(s) min(s)) with s_X = mean_t |x_t| (paper Sec. 3.2, Eq. 5; the
// reference's normalisation), alpha searched on the grid {0, 1/20, ..., 19/20} for the least
// output error of the quantized group; 1/s goes into X's producer (passes/channel_scaling.h:
// a norm, a linear layer upstream, or an inserted Mul). Then each layer's weight groups are
// clipped to the shrink factor (1, 0.95, ..., 0.55 of max |w|) of least output error (the
// reference's auto_clip, not done for query/key projections, as there; but scored on the whole
// output column with the cross-group terms of H, by coordinate descent over the groups) and
// rounded to nearest.
//
// The output error ||X (W - W~)||^2 = rows/2 tr(Δᵀ H Δ) comes from the Hessian H = 2 XᵀX / rows
// of one float calibration pass (calibrate/calibrator.h), so no activations are stored; for the
// scaled input, H_s = diag(1/s) H diag(1/s).
//
// Needs calibration data. With `--pass awq,gptq` it only applies the scales (in float, the
// function preserved) and the next pass quantizes. Preserves the graph interface; layers excluded
// with --exclude or that cannot be MatMulNBits stay float (their group may still be scaled).
#pragma once

#include <memory>

#include "passes/pass.h"

namespace qc {

class AwqPass : public Pass {
 public:
  const char* Name() const override { return "awq"; }
  bool NeedsCalibration() const override { return true; }
  bool CanDeferQuantization() const override { return true; }
  [[nodiscard]] Status Run(Model& model, PassContext& context) override;
};

/// Grid sizes of the searches (the reference's n_grid = 20 and max_shrink = 0.5).
inline constexpr int kAwqScaleGrid = 20;
inline constexpr int kAwqClipGrid = 20;
inline constexpr double kAwqMaxShrink = 0.5;

}  // namespace qc
