// The per-thread bodies of the device statistics kernels (calibrate/cuda/stats_columns.h) run on
// the host over every (column, chunk), with a reference column-major SSYRK (lower) standing in for
// cuBLAS: they give the direct sums, so the device accumulator's indexing is checked without a GPU.
#include "calibrate/cuda/stats_columns.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace qc {
namespace {

using stats_columns::kRowsPerChunk;

TEST(DeviceStatsColumns, HostRunGivesTheDirectSums) {
  constexpr int64_t k = 37, rows = 600;  // three chunks, the last partial
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> x(rows * k);
  for (float& v : x) v = 2.0f * normal(rng);
  const float threshold = 1.5f;
  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<float> part_max(chunks * k), abs_max(k, 0.0f);
  std::vector<double> part_sum(chunks * k), abs_sum(k, 0.0);
  std::vector<long long> part_count(chunks * k), count(k, 0);
  for (int window = 0; window < 2; ++window) {  // the same window twice: running sums double
    for (int64_t c = 0; c < chunks; ++c)
      for (int64_t j = 0; j < k; ++j)
        ASSERT_TRUE(stats_columns::ColumnPartials(x.data(), rows, k, threshold, j, c, part_max.data(), part_sum.data(),
                                                  part_count.data()));
    for (int64_t j = 0; j < k; ++j)
      stats_columns::FoldPartials(chunks, k, j, part_max.data(), part_sum.data(), part_count.data(), abs_max.data(),
                                  abs_sum.data(), count.data());
  }
  for (int64_t j = 0; j < k; ++j) {
    float mx = 0;
    double sum = 0;
    long long n = 0;
    for (int64_t t = 0; t < rows; ++t) {
      const float a = std::fabs(x[t * k + j]);
      mx = std::max(mx, a);
      sum += a;
      n += a > threshold;
    }
    EXPECT_EQ(abs_max[j], mx);
    EXPECT_NEAR(abs_sum[j], 2 * sum, 1e-9 * sum);
    EXPECT_EQ(count[j], 2 * n);
  }
  // SSYRK(lower, no transpose) of column-major A = Xᵀ (k x rows, lda k), then the H update.
  std::vector<float> s(k * k, -1.0f);  // the upper triangle stays garbage, as cuBLAS leaves it
  for (int64_t jj = 0; jj < k; ++jj)
    for (int64_t i = jj; i < k; ++i) {
      float acc = 0;
      for (int64_t t = 0; t < rows; ++t) acc += x[i + t * k] * x[jj + t * k];
      s[i + jj * k] = acc;
    }
  for (int64_t r = 0; r < k; ++r)
    for (int64_t c = 0; c < k; ++c) {
      double direct = 0;
      for (int64_t t = 0; t < rows; ++t) direct += static_cast<double>(x[t * k + r]) * x[t * k + c];
      EXPECT_NEAR(s[stats_columns::LowerIndex(k, r, c)], direct, 1e-4 * (1 + std::fabs(direct))) << r << "," << c;
    }
}

TEST(DeviceStatsColumns, Negative_NonFiniteIsReported) {
  const float x[] = {1.0f, NAN, 2.0f, INFINITY};
  float mx[2];  // [chunks = 1, k = 2] partials
  double sum[2];
  long long n[2];
  EXPECT_FALSE(stats_columns::ColumnPartials(x, 2, 2, 1.0f, 1, 0, mx, sum, n));  // column 1: NaN, inf
  EXPECT_TRUE(stats_columns::ColumnPartials(x, 2, 2, 1.0f, 0, 0, mx, sum, n));   // column 0: 1, 2
  EXPECT_EQ(mx[0], 2.0f);
  EXPECT_EQ(n[0], 1);
}

}  // namespace
}  // namespace qc
