// `absmax`: symmetric round-to-nearest weight quantization, per group or per output channel.
//
//   before:  X ──► MatMul / Gemm ◄── W (float32)
//   after:   X ──► com.microsoft.MatMulNBits ◄── B (codes), scales [, bias]
//
// Each group of `group_size` input rows of one output column gets scale = e / -2^(b-1), where e
// is the group's signed extreme value (ONNX Runtime's blockwise convention: all 2^b levels are
// used, the extreme lands exactly on code 0), and zero point 2^(b-1). With --scale-search the
// range is shrunk per group to the factor of least squared error. Needs no calibration data; with --calib the report
// also gets each layer's output error on the calibration inputs.
// Preserves the graph interface and every node that is not an excluded or unsupported linear
// layer; a tied embedding keeps its float table for the Gather.
#pragma once

#include <memory>

#include "passes/pass.h"

namespace qc {

class AbsmaxPass : public Pass {
 public:
  const char* Name() const override { return "absmax"; }
  bool NeedsCalibration() const override { return false; }
  bool OnlyReplacesLinearLayers() const override { return true; }
  [[nodiscard]] Status Run(Model& model, PassContext& context) override;
};

}  // namespace qc
