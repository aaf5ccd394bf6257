// Calibration windows: `nsamples` windows of `seqlen` tokens drawn (seeded) from token ids.
#pragma once

#include <cstdint>
#include <vector>

#include "formats/status.h"
#include "formats/tensor.h"

namespace qc {

/// Draws `nsamples` windows of `seqlen` consecutive tokens at seeded uniform offsets (as the
/// GPTQ reference code does). If the data holds fewer tokens than nsamples * seqlen the
/// windows overlap; data shorter than one window is an error. Each window is an int64 [1, seqlen].
StatusOr<std::vector<Tensor>> SampleCalibrationWindows(const std::vector<int32_t>& ids, int64_t nsamples, int64_t seqlen,
                                                       uint64_t seed);

}  // namespace qc
