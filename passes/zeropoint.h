// `zeropoint`: asymmetric (scale + zero point) round-to-nearest weight quantization.
//
//   before:  X ──► MatMul / Gemm ◄── W (float32)
//   after:   X ──► com.microsoft.MatMulNBits ◄── B (codes), scales, zero_points [, bias]
//
// Each group's range [min, max] is widened to contain 0, then scale = (max - min) / (2^b - 1)
// and zero point = round(-min / scale), clamped to the code range (MLAS range2scalezp). Zero
// points are stored packed like the codes. --scale-search shrinks the range as in absmax. Needs
// no calibration data; preserves what absmax preserves.
#pragma once

#include <memory>

#include "passes/pass.h"

namespace qc {

class ZeroPointPass : public Pass {
 public:
  const char* Name() const override { return "zeropoint"; }
  bool NeedsCalibration() const override { return false; }
  bool OnlyReplacesLinearLayers() const override { return true; }
  [[nodiscard]] Status Run(Model& model, PassContext& context) override;
};

}  // namespace qc
