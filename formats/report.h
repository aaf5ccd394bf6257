// The quantization error report: what each pass did to each layer, written as JSON and diffed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/status.h"

namespace qc {

/// What happened to one linear layer. Error metrics are -1 when not measured.
struct LayerReport {
  std::string name;            // the MatMul/Gemm node
  std::string weight;          // its weight initializer
  int64_t k = 0;               // in features
  int64_t n = 0;               // out features
  std::string pass;            // the pass that quantized it
  std::string scheme;          // e.g. "w4-g128-sym", "w8a8", "int8+outliers"
  int bits = 0;
  int64_t group_size = 0;      // -1: per output channel
  double weight_rel_error = -1;  // ||W - Q(W)||_F / ||W||_F
  double output_rel_error = -1;  // ||XW - XQ(W)||_F / ||XW||_F on calibration inputs
  double sqnr_db = -1;           // 10 log10(||XW||^2 / ||XW - XQ(W)||^2)
  double damping = -1;         // GPTQ: the dampening finally used (relative to mean diag(H))
  int64_t outliers_kept = -1;  // outlier-split: input channels left in float
  double seconds = 0;
  std::vector<std::string> notes;  // e.g. "damping raised to 0.1 after Cholesky failure"
};

/// A whole run: provenance, options, per-layer results and totals.
struct QuantReport {
  std::string tool_version;
  std::string command;
  std::string options_json;  // the options as a JSON object, verbatim
  uint64_t seed = 0;
  std::string input_path, input_sha256;
  int64_t input_bytes = 0;
  std::string output_path, output_sha256;
  int64_t output_bytes = 0;
  std::vector<LayerReport> layers;
  double ppl_before = -1;  // with --eval
  double ppl_after = -1;
  double seconds = 0;
};

/// Serialises to pretty JSON (schema in docs/REPORT.md). `with_timing` false zeroes timing
/// fields so two runs can be compared byte for byte.
std::string ReportToJson(const QuantReport& report, bool with_timing = true);
/// Parses a report written by ReportToJson; errors name the missing or mistyped field.
StatusOr<QuantReport> ReportFromJson(const std::string& json);
StatusOr<QuantReport> ReadReport(const std::string& path);

}  // namespace qc
