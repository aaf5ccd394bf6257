// The convert driver: import -> (calibrate) -> passes -> write -> validate, with the report.
#pragma once

#include <functional>
#include <string>

#include "converter/commands.h"
#include "formats/report.h"
#include "formats/status.h"

namespace qc {

/// NAME.PASS-wBITS.onnx beside `model` (passes joined with '+': model.awq+gptq-w4.onnx).
std::string DefaultOutputPath(const std::string& model, const std::string& passes, int bits);

/// The report's "options" object: every option that changes the artifact, in a fixed order.
std::string OptionsJson(const ConvertOptions& options);

/// Checks the options before any work: pass names and order, bit width, group size, device,
/// calibration data for passes that need it, and that the output is not the input.
Status ValidateConvertOptions(const ConvertOptions& options);

/// Runs the whole conversion:
///  1. reads the model (the input file is only read, never written);
///  2. loads calibration windows (--calib) and evaluation ids (--eval), measuring the float
///     perplexity on the first `eval_windows` windows;
///  3. runs the passes in order; a pass that can defer quantization (awq, smoothquant) only
///     rescales when a later pass quantizes (PassContext::quantize_weights = false);
///  4. writes the artifact atomically;
///  5. validates it: re-reads the file and runs it with our Session on one calibration or eval
///     window (a short window of token 0 without either), then measures its perplexity with --eval;
///  6. writes the report atomically when asked.
/// On any error nothing is left at the output (or report) path. `log` receives one-line progress
/// messages (may be empty).
StatusOr<QuantReport> RunConvertPipeline(const ConvertOptions& options,
                                         const std::function<void(const std::string&)>& log = {});

}  // namespace qc
