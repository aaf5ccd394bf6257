// Incremental executions on the GPU (Session::Start with --device cuda): RunUntil, Value,
// SetValue, Park and Finish give what the CPU execution gives, with constants uploaded at
// creation or streamed (SessionOptions::stream_constants). Labelled gpu; skips without a device.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "formats/model_builder.h"
#include "runtime/cuda/device.h"
#include "runtime/executor.h"
#include "tests/random_tensor.h"

namespace qc {
namespace {

#define SKIP_WITHOUT_DEVICE() \
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device"

float MaxDiff(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.ToFloats(), y = b.ToFloats();
  EXPECT_EQ(x.size(), y.size());
  float d = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) d = std::max(d, std::fabs(x[i] - y[i]));
  return d;
}

// y = Relu(x W1) W2 with constant W1 [16, 2048] and W2 [2048, 256]: both steps' inputs exceed the
// executor's host-step size (64 KiB), so both MatMuls and the Relu run on the device.
Model TwoLayerModel() {
  GraphBuilder b(1);
  const std::string x = b.AddInput("x", DType::kFloat32, {Dim{4, ""}, Dim{16, ""}});
  const std::string w1 = b.AddInitializer("w1", Random({16, 2048}, 1, -1.0f, 1.0f));
  const std::string w2 = b.AddInitializer("w2", Random({2048, 256}, 2, -0.05f, 0.05f));
  const std::string h = b.Op("Relu", {b.Op("MatMul", {x, w1})});
  b.AddOutput(b.Op("MatMul", {h, w2}), DType::kFloat32, {});
  auto model = b.Build({{"", 17}});
  EXPECT_TRUE(model.ok());
  return *model;
}

TEST(CudaExecution, StepsValuesReplacementsAndParkingMatchTheCpu) {
  SKIP_WITHOUT_DEVICE();
  const Model model = TwoLayerModel();
  const NamedTensors feeds = {{"x", Random({4, 16}, 3, -1.0f, 1.0f)}};
  const Tensor w2_new = Random({2048, 256}, 4, -0.05f, 0.05f);
  auto cpu = Session::Create(model);
  ASSERT_TRUE(cpu.ok());
  const int last = (*cpu)->StepProducing(model.graph.outputs[0].name);  // the second MatMul
  ASSERT_GT(last, 0);
  const std::string hidden = model.graph.nodes[1].outputs[0];  // Relu's output
  auto cpu_run = (*cpu)->Start(feeds);
  ASSERT_TRUE(cpu_run.ok());
  ASSERT_TRUE((*cpu_run)->RunUntil(last).ok());
  const Tensor cpu_hidden = *(*cpu_run)->Value(hidden);
  ASSERT_TRUE((*cpu_run)->SetValue("w2", w2_new).ok());
  auto cpu_out = (*cpu_run)->Finish();
  ASSERT_TRUE(cpu_out.ok());

  for (bool stream : {false, true})
    for (bool device_replacement : {false, true}) {
      SCOPED_TRACE(std::string(stream ? "streamed" : "uploaded") + " constants, " +
                   (device_replacement ? "device" : "host") + " replacement");
      SessionOptions options;
      options.device = Device::kCuda;
      options.stream_constants = stream;
      auto gpu = Session::Create(model, options);
      ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
      ASSERT_EQ((*gpu)->num_steps(), (*cpu)->num_steps());
      std::vector<std::unique_ptr<Execution>> runs;
      for (int r = 0; r < 3; ++r) {
        auto run = (*gpu)->Start(feeds);
        ASSERT_TRUE(run.ok()) << run.status().ToString();
        runs.push_back(std::move(*run));
      }
      Tensor replacement = w2_new;
      if (device_replacement) {
        auto d = (*gpu)->ToDevice(w2_new);
        ASSERT_TRUE(d.ok());
        replacement = *d;
      }
      for (size_t r = 0; r < runs.size(); ++r) {
        ASSERT_TRUE(runs[r]->RunUntil(last).ok());
        const Tensor* h = runs[r]->Value(hidden);
        ASSERT_NE(h, nullptr);
        EXPECT_TRUE(h->on_device()) << "the MatMul and Relu kernels ran on the device";
        auto host = (*gpu)->ToHost(*h);
        ASSERT_TRUE(host.ok());
        EXPECT_LE(MaxDiff(*host, cpu_hidden), 1e-5f);
        EXPECT_GT(runs[r]->DeviceBytes(), 0);
        if (r == 1) {  // one run parked: its activations wait on the host
          ASSERT_TRUE(runs[r]->Park().ok());
          EXPECT_EQ(runs[r]->DeviceBytes(), 0);
          EXPECT_FALSE(runs[r]->Value(hidden)->on_device());
        }
        ASSERT_TRUE(runs[r]->SetValue("w2", replacement).ok());
      }
      for (auto& run : runs) {
        auto out = run->Finish();
        ASSERT_TRUE(out.ok()) << out.status().ToString();
        EXPECT_FALSE((*out)[0].on_device());
        EXPECT_LE(MaxDiff((*out)[0], (*cpu_out)[0]), 1e-4f);
      }
    }
}

}  // namespace
}  // namespace qc
