// SessionOptions::device on any machine: a CUDA session either works (a GPU and a CUDA build) or
// fails cleanly with FailedPrecondition and a message saying why; the CPU path is unaffected.
#include <gtest/gtest.h>

#include "formats/model_builder.h"
#include "runtime/executor.h"

namespace qc {
namespace {

TEST(ExecutorDevice, CudaSessionRunsOrFailsCleanly) {
  GraphBuilder b(3);
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{2, ""}, Dim{3, ""}});
  b.AddOutput(b.Op("Add", {x, x}), DType::kFloat32, {});
  auto model = b.Build({{"", 17}});
  ASSERT_TRUE(model.ok()) << model.status().message();
  SessionOptions options;
  options.device = Device::kCuda;
  auto session = Session::Create(*model, options);
  if (!session.ok()) {
    EXPECT_EQ(session.status().code(), StatusCode::kFailedPrecondition) << session.status().message();
    EXPECT_TRUE(session.status().IsInputError());
    EXPECT_FALSE(session.status().message().empty());
    return;
  }
  auto out = (*session)->Run({{"x", Tensor::FromVector<float>({1, 2, 3, 4, 5, 6}, {2, 3})}});
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_EQ((*out)[0].ToFloats(), (std::vector<float>{2, 4, 6, 8, 10, 12}));
  EXPECT_FALSE((*session)->DeviceSummary().empty());
}

TEST(ExecutorDevice, CpuSessionHasNoDeviceSummary) {
  GraphBuilder b(4);
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{2, ""}});
  b.AddOutput(b.Op("Neg", {x}), DType::kFloat32, {});
  auto model = b.Build({{"", 17}});
  ASSERT_TRUE(model.ok());
  auto session = Session::Create(*model);
  ASSERT_TRUE(session.ok());
  EXPECT_TRUE((*session)->DeviceSummary().empty());
  EXPECT_STREQ(DeviceName(Device::kCuda), "cuda");
}

// On a CPU session an Execution has nothing to park, holds no device bytes, and refuses a device
// tensor as a replacement.
TEST(ExecutorDevice, CpuExecutionParkIsANoOp) {
  GraphBuilder b(5);
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{2, ""}});
  const std::string w = b.AddInitializer("w", Tensor::FromVector<float>({1, 2}, {2}));
  b.AddOutput(b.Op("Mul", {x, w}), DType::kFloat32, {});
  auto model = b.Build({{"", 17}});
  ASSERT_TRUE(model.ok());
  auto session = Session::Create(*model);
  ASSERT_TRUE(session.ok());
  EXPECT_EQ((*session)->device(), Device::kCpu);
  EXPECT_EQ((*session)->cuda_context(), nullptr);
  EXPECT_FALSE((*session)->ToDevice(Tensor::FromVector<float>({1}, {1})).ok());
  auto run = (*session)->Start({{"x", Tensor::FromVector<float>({3, 4}, {2})}});
  ASSERT_TRUE(run.ok());
  EXPECT_TRUE((*run)->Park().ok());
  EXPECT_EQ((*run)->DeviceBytes(), 0);
  static const float kFake = 0;
  const Tensor device = Tensor::OnDevice(DType::kFloat32, {2}, nullptr, &kFake);
  const Status s = (*run)->SetValue("w", device);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  ASSERT_TRUE((*run)->SetValue("w", Tensor::FromVector<float>({10, 20}, {2})).ok());
  auto out = (*run)->Finish();
  ASSERT_TRUE(out.ok());
  EXPECT_EQ((*out)[0].ToFloats(), (std::vector<float>{30, 80}));
}

}  // namespace
}  // namespace qc
