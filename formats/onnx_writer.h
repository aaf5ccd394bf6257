// Writes the graph IR as an ONNX model file, with external data when large.
#pragma once

#include <cstdint>
#include <string>

#include "formats/graph.h"
#include "formats/status.h"

namespace qc {

struct OnnxWriteOptions {
  /// Store initializers in a side file `<model>.data` (always when the model would exceed 2 GB).
  bool external_data = false;
  /// Initializers smaller than this stay inside the .onnx even with external data.
  int64_t external_min_bytes = 1024;
};

/// Serialises `model` to `path` atomically: everything is written to temporary files that are
/// renamed into place only when complete, so a failure leaves no partial output behind. Tensor
/// bytes are streamed one tensor (and 16 MB) at a time, mapped ones released as written, so
/// memory does not grow with the model; the .onnx is byte for byte the one-message serialization.
Status WriteOnnxModel(const Model& model, const std::string& path, const OnnxWriteOptions& options = {});
/// Whether WriteOnnxModel writes `<path>.data`: when asked to, or when the weights would not fit
/// in one protobuf message (2 GB).
bool WritesExternalData(const Model& model, const OnnxWriteOptions& options);
/// Serialises to an in-memory protobuf string (no external data; fails over 2 GB).
StatusOr<std::string> SerializeOnnxModel(const Model& model);

}  // namespace qc
