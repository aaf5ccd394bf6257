// NumPy .npy (format 1.0/2.0/3.0) reading and writing for dense little-endian arrays.
#pragma once

#include <string>

#include "formats/status.h"
#include "formats/tensor.h"

namespace qc {

/// Reads a C-order .npy file of a numeric or bool dtype. Fortran order, big-endian data,
/// object arrays and truncated files are errors.
StatusOr<Tensor> ReadNpy(const std::string& path);
/// Parses .npy bytes.
StatusOr<Tensor> ParseNpy(const std::string& bytes);
/// Writes a tensor as .npy (format 1.0), atomically (temp file + rename).
Status WriteNpy(const Tensor& tensor, const std::string& path);

}  // namespace qc
