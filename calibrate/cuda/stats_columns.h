// The per-thread bodies of DeviceStatsAccumulator's kernels (device_stats.cu), written once for
// the device and for the host test that checks their indexing against direct sums
// (tests/calibrate/device_stats_columns_test.cpp). Plain C++ apart from QC_HD.
#pragma once

#include <cmath>
#include <cstdint>

#include "runtime/cuda/host_device.h"

namespace qc::stats_columns {

/// Rows one thread reduces per column before its partial result is folded in: fixed (not derived
/// from the device), so the order of the float64 sums, and every bit of the result, depends only
/// on the window's shape. 256 rows give a 2048-row window 8-fold parallelism over its columns.
inline constexpr int64_t kRowsPerChunk = 256;

/// Column j, chunk c of the row-major [rows, k] x: max |x|, the float64 sum of |x| and the count
/// of |x| > threshold over the chunk's rows, in row order, into the [chunks, k] partials; returns
/// false when a value is not finite.
QC_HD inline bool ColumnPartials(const float* x, int64_t rows, int64_t k, float threshold, int64_t j, int64_t c,
                                 float* part_max, double* part_sum, long long* part_count) {
  const int64_t t0 = c * kRowsPerChunk, t1 = rows < t0 + kRowsPerChunk ? rows : t0 + kRowsPerChunk;
  float mx = 0.0f;
  double sum = 0.0;
  long long count = 0;
  bool finite = true;
  for (int64_t t = t0; t < t1; ++t) {
    const float a = fabsf(x[t * k + j]);
    finite &= a <= 3.40282347e+38f;  // FLT_MAX: false for inf and NaN
    mx = a > mx ? a : mx;
    sum += a;
    count += a > threshold;
  }
  part_max[c * k + j] = mx;
  part_sum[c * k + j] = sum;
  part_count[c * k + j] = count;
  return finite;
}

/// Folds a window's chunks into column j's running statistics, chunk by chunk.
QC_HD inline void FoldPartials(int64_t chunks, int64_t k, int64_t j, const float* part_max, const double* part_sum,
                               const long long* part_count, float* abs_max, double* abs_sum, long long* outlier_count) {
  float mx = abs_max[j];
  double sum = abs_sum[j];
  long long count = outlier_count[j];
  for (int64_t c = 0; c < chunks; ++c) {
    const float m = part_max[c * k + j];
    mx = m > mx ? m : mx;
    sum += part_sum[c * k + j];
    count += part_count[c * k + j];
  }
  abs_max[j] = mx;
  abs_sum[j] = sum;
  outlier_count[j] = count;
}

/// The entry of SSYRK's column-major lower triangle that holds the symmetric S[r, c]: S(i, j) is
/// at i + j k for i >= j.
QC_HD inline int64_t LowerIndex(int64_t k, int64_t r, int64_t c) {
  const int64_t hi = r > c ? r : c, lo = r > c ? c : r;
  return hi + lo * k;
}

}  // namespace qc::stats_columns
