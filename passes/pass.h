// The pass interface: a pass rewrites a Model in place, recording per-layer results.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "formats/graph.h"
#include "formats/report.h"
#include "formats/status.h"
#include "passes/quant_options.h"

namespace qc {

class Calibrator;

/// What a pass sees besides the model.
struct PassContext {
  const QuantOptions& options;
  /// Calibration source (nullptr when the user gave no --calib); passes that need it fail
  /// with a clear error when it is missing.
  Calibrator* calibrator = nullptr;
  /// Per-layer results; a pass appends one entry per layer it changes.
  std::vector<LayerReport>* layers = nullptr;
  /// False when a later pass of the pipeline quantizes the weights (`--pass awq,gptq`,
  /// `--pass smoothquant,gptq`): transform passes then only rescale, in float.
  bool quantize_weights = true;
};

/// A graph rewrite. Subclasses document in their header what they rewrite (before/after),
/// what calibration data they need and what they preserve.
class Pass {
 public:
  virtual ~Pass() = default;
  virtual const char* Name() const = 0;
  virtual bool NeedsCalibration() const = 0;
  /// True for passes that only rescale when a later pass quantizes (awq, smoothquant).
  virtual bool CanDeferQuantization() const { return false; }
  /// True for passes whose only rewrite is MatMul/Gemm -> MatMulNBits (absmax, zeropoint, gptq):
  /// those can quantize merged decoders (passes/merged_decoder.h).
  virtual bool OnlyReplacesLinearLayers() const { return false; }
  /// The weight scheme when neither --sym nor --asym is given: the last pass of a pipeline decides.
  virtual bool DefaultSymmetric() const { return true; }
  [[nodiscard]] virtual Status Run(Model& model, PassContext& context) = 0;
};

}  // namespace qc
