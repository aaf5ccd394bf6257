// .npy reading and writing.
#include <gtest/gtest.h>

#include <filesystem>

#include "formats/npy.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

TEST(NpyTest, RoundTripTypesAndShapes) {
  fs::path p = fs::temp_directory_path() / ("qc_npy_" + std::to_string(::getpid()) + ".npy");
  for (const Tensor& t : {Tensor::FromVector<float>({1.5f, -2, 3, 4, 5, 6}, {2, 3}), Tensor::FromVector<int64_t>({7}, {1}),
                          Tensor::FromVector<int32_t>({1, 2, 3}, {3}), Tensor::Scalar<float>(2.5f), Tensor(DType::kFloat32, {0, 4})}) {
    ASSERT_TRUE(WriteNpy(t, p.string()).ok());
    auto r = ReadNpy(p.string());
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_TRUE(r->BitEqual(t)) << ShapeToString(t.shape());
  }
  fs::remove(p);
}

TEST(NpyTest, ReadsRealReferenceFile) {
  std::string path = std::string(QC_SHARED_DIR) + "/models/docs-llama-12m/sample_input_ids.npy";
  if (!fs::exists(path)) GTEST_SKIP() << "../shared is absent";
  auto r = ReadNpy(path);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->shape(), (Shape{2, 128}));
}

TEST(NpyTest, Negative_BadFiles) {
  EXPECT_FALSE(ParseNpy("").ok());
  EXPECT_FALSE(ParseNpy("not numpy at all").ok());
  std::string header = std::string("\x93NUMPY\x01\x00", 8);
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }";
  dict.resize(54, ' ');
  dict += '\n';
  std::string good = header + std::string(1, static_cast<char>(dict.size())) + std::string(1, '\0') + dict + std::string(16, '\0');
  EXPECT_TRUE(ParseNpy(good).ok());
  EXPECT_FALSE(ParseNpy(good.substr(0, good.size() - 1)).ok());  // truncated data
  std::string fortran = good;
  fortran.replace(fortran.find("False"), 5, "True ");
  EXPECT_FALSE(ParseNpy(fortran).ok());
  std::string object = good;
  object.replace(object.find("<f4"), 3, "|O8");
  EXPECT_FALSE(ParseNpy(object).ok());
}

}  // namespace
}  // namespace qc
