// Reads ONNX model files (protobuf, opset 13+, external data) into the graph IR.
#pragma once

#include <string>

#include "formats/graph.h"
#include "formats/status.h"

namespace qc {

struct OnnxReadOptions {
  /// Memory-map the model file and its external-data files instead of reading them: weights, inline
  /// (raw_data of 4 KiB and more) or external, become Tensor::Mapped views that stay on disk until
  /// read (docs/MEMORY.md).
  bool map_external_data = true;
};

/// Parses an .onnx file. External data files are resolved relative to the model's directory.
/// Errors name the file, tensor or node at fault (truncated protobuf, missing/short data file,
/// unsupported dtype, invalid dims).
StatusOr<Model> ReadOnnxModel(const std::string& path, const OnnxReadOptions& options = {});
/// Parses a model from bytes; `base_dir` resolves external data.
StatusOr<Model> ParseOnnxModel(const std::string& bytes, const std::string& base_dir,
                               const OnnxReadOptions& options = {});
/// Reads a serialized onnx.TensorProto file (the ONNX test-data `input_0.pb` format).
StatusOr<Tensor> ReadTensorProtoFile(const std::string& path);

}  // namespace qc
