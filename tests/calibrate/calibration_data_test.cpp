// Calibration window sampling: seeded, in range, and clear errors.
#include <gtest/gtest.h>

#include <numeric>

#include "calibrate/calibration_data.h"

namespace qc {
namespace {

TEST(CalibrationDataTest, WindowsAreSeededAndInRange) {
  std::vector<int32_t> ids(1000);
  std::iota(ids.begin(), ids.end(), 0);
  auto a = SampleCalibrationWindows(ids, 16, 64, 42);
  auto b = SampleCalibrationWindows(ids, 16, 64, 42);
  auto c = SampleCalibrationWindows(ids, 16, 64, 43);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  ASSERT_EQ(a->size(), 16u);
  bool differs = false;
  for (size_t i = 0; i < a->size(); ++i) {
    const Tensor& w = (*a)[i];
    EXPECT_EQ(w.shape(), (Shape{1, 64}));
    EXPECT_TRUE(w.BitEqual((*b)[i]));
    differs |= !w.BitEqual((*c)[i]);
    const int64_t* v = w.data<int64_t>();
    for (int j = 1; j < 64; ++j) EXPECT_EQ(v[j], v[0] + j);  // consecutive tokens
    EXPECT_LE(v[63], 999);
  }
  EXPECT_TRUE(differs);
}

TEST(CalibrationDataTest, Negative_TooLittleData) {
  std::vector<int32_t> ids(10, 1);
  EXPECT_FALSE(SampleCalibrationWindows(ids, 4, 64, 0).ok());
  EXPECT_FALSE(SampleCalibrationWindows(ids, 0, 4, 0).ok());
  EXPECT_TRUE(SampleCalibrationWindows(ids, 4, 10, 0).ok());
}

}  // namespace
}  // namespace qc
