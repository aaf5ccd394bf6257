// `smoothquant`: SmoothQuant (Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training
// Quantization for Large Language Models", ICML 2023), W8A8 with per-token activations.
//
//   before:  P ──► X ──► MatMul / Gemm ◄── W (float32)                      (every layer group)
//   after:   P' ──► X / s ──► [per-token int8 quantization] ──► MatMulInteger ◄── int8(diag(s) W)
//                                          ──► Cast ──► Mul s_w ──► Mul s_x [──► Add bias]
//
// Per group of layers reading one X (q/k/v, gate/up, o, down, lm_head), the activation outliers
// migrate into the weights with the smoothing factor of the paper's Eq. 4,
//   s_j = max(|X_j|)^alpha / max(|W_j|)^(1 - alpha),
// max |X_j| over the calibration tokens, max |W_j| over row j of every layer of the group, both
// clamped to >= 1e-5 as in the reference code, alpha = --alpha (0.5). 1/s goes into X's producer
// (passes/channel_scaling.h: a norm, a linear layer upstream, or an inserted Mul), so the float
// function is unchanged. Then every layer becomes W8A8 (passes/int8_linear.h): int8 weights per
// output channel, int8 activations per token (the paper's "O3" granularity, computed in the graph
// at run time).
//
// Needs calibration data: one float pass for the per-channel max |x| (K floats per group), then
// the first kW8A8ErrorWindows windows again through the smoothed model, group by group
// (Calibrator::RunSequential), to quantize each layer and measure its output error with int8
// weights and activations (the report's output_rel_error) and its weight-only error (from the
// Hessian of those tokens) while its input is at hand; nothing is held for more than one group. With
// `--pass smoothquant,gptq` only the smoothing is applied (in float, the function unchanged) and
// the next pass quantizes. Preserves the graph interface; layers excluded with --exclude, or whose
// weight is not float32, stay float (their group is still smoothed when another layer of it is
// quantized). No layer is left float by default: on docs-llama-12m the tied lm_head in W8A8 costs
// 0.003% perplexity (14.6584 with it, 14.6580 without).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "passes/pass.h"

namespace qc {

class SmoothQuantPass : public Pass {
 public:
  const char* Name() const override { return "smoothquant"; }
  bool NeedsCalibration() const override { return true; }
  bool CanDeferQuantization() const override { return true; }
  [[nodiscard]] Status Run(Model& model, PassContext& context) override;
};

/// The smoothing factors of one group (Eq. 4): `act_abs_max` [K] from calibration, `weights` the
/// group's row-major [K, N_i] weights. Both maxima are clamped to >= kSmoothMinValue, and so is s;
/// the activation maxima also to >= kSmoothActFloorFraction times their median.
/// `floored` (optional) receives the number of channels raised to the floor.
std::vector<float> SmoothingFactors(const std::vector<float>& act_abs_max,
                                    const std::vector<std::vector<float>>& weights, int64_t k, double alpha,
                                    int64_t* floored = nullptr);

/// The reference code's clamp of the maxima and of s (smooth.py: clamp(min=1e-5)).
inline constexpr float kSmoothMinValue = 1e-5f;
/// Floor of a channel's calibration max |x|, relative to the median channel's: a channel that
/// stayed (nearly) silent on the calibration tokens is not amplified more than 1 / sqrt(0.1) ~ 3x
/// beyond a typical one when it fires later (at alpha = 0.5). Not in the paper, whose calibration
/// sets are large enough that this rarely binds; it does not bind on docs-llama-12m.
inline constexpr float kSmoothActFloorFraction = 0.1f;

}  // namespace qc
