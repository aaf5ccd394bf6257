// Seeded calibration window sampling.
#include "calibrate/calibration_data.h"

#include <random>

namespace qc {

StatusOr<std::vector<Tensor>> SampleCalibrationWindows(const std::vector<int32_t>& ids, int64_t nsamples, int64_t seqlen,
                                                       uint64_t seed) {
  if (nsamples < 1) return InvalidArgument("--nsamples must be at least 1");
  if (seqlen < 2) return InvalidArgument("--seqlen must be at least 2");
  if (static_cast<int64_t>(ids.size()) < seqlen)
    return InvalidArgument("calibration data has " + std::to_string(ids.size()) + " tokens, fewer than one window of " +
                           std::to_string(seqlen));
  // mt19937_64 with explicit modulo (not uniform_int_distribution, whose output differs across
  // standard libraries) keeps the windows identical on every platform.
  std::mt19937_64 rng(seed);
  const uint64_t span = ids.size() - seqlen + 1;
  std::vector<Tensor> windows;
  windows.reserve(nsamples);
  for (int64_t s = 0; s < nsamples; ++s) {
    const uint64_t start = rng() % span;
    Tensor t(DType::kInt64, {1, seqlen});
    int64_t* out = t.mutable_data<int64_t>();
    for (int64_t i = 0; i < seqlen; ++i) out[i] = ids[start + i];
    windows.push_back(std::move(t));
  }
  return windows;
}

}  // namespace qc
