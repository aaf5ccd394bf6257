// Executes an IR graph on the CPU: compiles it once into a plan, then runs it per input batch.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "formats/graph.h"
#include "formats/status.h"

namespace qc {

/// Where a session runs its steps.
enum class Device {
  kCpu,
  /// runtime/cuda: constants are uploaded once, activations stay in device memory, ops without a
  /// CUDA kernel run on the CPU with explicit copies (counted in Session::DeviceSummary()).
  kCuda,
};
/// "cpu" / "cuda".
const char* DeviceName(Device device);

struct SessionOptions {
  /// Run the scalar reference kernels instead of the fast ones (the numeric spec; slow).
  bool use_reference_kernels = false;
  /// Evaluate nodes whose inputs are all constant once, at session creation.
  bool fold_constants = true;
  /// Apply execution-only fusions (runtime/graph_fusion.h) before planning.
  bool fuse_ops = true;
  /// Accumulate wall time per op type (see Session::Profile()).
  bool profile = false;
  /// The device the steps run on. Session::Create fails with FailedPrecondition when the build
  /// has no CUDA backend or the machine no usable GPU.
  Device device = Device::kCpu;
  /// kCuda only: upload each constant when a step first reads it, shared by every run of the
  /// session, and free it once every live run (Execution) has passed its last reader, instead of
  /// uploading every constant at creation. Sequential calibration of a model whose float weights
  /// do not fit on the device (or should not: the solver needs room) sets it.
  bool stream_constants = false;
  /// kCuda only: Session::Run captures a run as a CUDA graph once two runs in a row had the same
  /// feed shapes and wanted outputs, and replays it while they stay so (one launch instead of a
  /// launch per kernel). Feeds the host reads by value (shape arithmetic on an attention mask) must
  /// also stay the same; when they change, or a run cannot be captured (a step needs a device value
  /// on the host), the session runs step by step from then on. Not with `profile`.
  bool cuda_graphs = false;
  /// The float type the model computes in (runtime/float_precision.h): float32, float16 or
  /// bfloat16; kUndefined runs the model in its own precision. The graph's inputs and declared
  /// outputs keep their dtypes. float16 and bfloat16 need Device::kCuda (InvalidArgument on the
  /// CPU, which would only emulate them).
  DType compute_dtype = DType::kUndefined;
};

/// Wall time spent per op type across all runs of a session.
struct OpProfile {
  std::string op_type;
  int64_t calls = 0;
  double seconds = 0;
};

/// Called after every executed node of the main graph with its inputs and outputs; used by
/// calibration to observe activations. Returning an error aborts the run.
using NodeObserver =
    std::function<Status(const Node& node, const std::vector<const Tensor*>& inputs, const std::vector<Tensor>& outputs)>;

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Plan;
class Session;
class CudaExecutor;
struct CudaRunState;
namespace cuda {
class Context;
}

/// One in-flight run that can be advanced step by step, with values inspected or replaced
/// between steps. Sequential calibration uses it to stop at each linear layer, read its input,
/// and substitute the quantized weight before the rest of the model runs.
class Execution {
 public:
  ~Execution();
  /// Executes the plan's steps [cursor, step). Steps already executed are not run again.
  Status RunUntil(int step, const NodeObserver* observer = nullptr);
  /// Executes the remaining steps and returns the named outputs (all graph outputs if empty).
  StatusOr<std::vector<Tensor>> Finish(const std::vector<std::string>& output_names = {});
  /// The current value of `name` (a graph input, initializer or computed value), or nullptr if
  /// not computed yet or already freed after its last use. On a kCuda session this is the value
  /// where it lives, no copy: a device tensor (Tensor::on_device()) when a CUDA kernel computed it
  /// (or the execution was given one), a host tensor for inputs, constants, host steps, CPU
  /// fallbacks and parked values. Valid until the execution advances or is parked.
  const Tensor* Value(const std::string& name) const;
  /// Replaces a value for the rest of this execution (e.g. a weight with its quantized version).
  /// On a kCuda session `tensor` may be a host tensor (uploaded by the first step that reads it on
  /// the device, for this execution alone) or a device tensor from Session::ToDevice (shared as is:
  /// one upload for every execution).
  Status SetValue(const std::string& name, Tensor tensor);
  /// kCuda: moves this execution's activations from device to host memory, so that many
  /// executions waiting at a group boundary do not all hold device memory (the next steps upload
  /// what they read). A no-op on the CPU.
  Status Park();
  /// kCuda: device bytes this execution's activations hold; 0 on the CPU.
  int64_t DeviceBytes() const;
  int cursor() const { return cursor_; }

 private:
  friend class Session;
  Execution(const Session* session, std::vector<Tensor> frame);
  const Session* session_;
  std::vector<Tensor> frame_;
  int cursor_ = 0;
  std::unique_ptr<CudaRunState> cuda_;  // set on a kCuda session
};

/// A compiled model. Thread-compatible: one Run at a time per Session.
class Session {
 public:
  /// Validates the graph (topological order, every value defined, every op supported) and
  /// prepares the plan. Errors name the offending node or value.
  static StatusOr<std::unique_ptr<Session>> Create(const Model& model, const SessionOptions& options = {});
  ~Session();

  /// Runs the graph. `feeds` binds graph inputs by name (dtype and fixed dims are checked);
  /// returns the named outputs, or every graph output when `output_names` is empty.
  StatusOr<std::vector<Tensor>> Run(const NamedTensors& feeds, const std::vector<std::string>& output_names = {},
                                    const NodeObserver* observer = nullptr) const;

  /// Starts an incremental execution with `feeds` (checked as in Run).
  StatusOr<std::unique_ptr<Execution>> Start(const NamedTensors& feeds) const;
  /// Number of steps of the compiled plan (constant-folded nodes are not steps).
  int num_steps() const;
  /// The plan step that executes the node named `node_name`, or -1 if it was folded away or
  /// does not exist. Steps run in a topological order of the graph.
  int StepOfNode(const std::string& node_name) const;
  /// The plan step whose node outputs `value` (unlike node names, value names are unique and
  /// never empty), or -1 if it was folded away, is a graph input or does not exist.
  int StepProducing(const std::string& value) const;

  /// The graph inputs a caller must (or may) feed, i.e. inputs without an initializer default.
  const std::vector<ValueInfo>& inputs() const;
  const std::vector<ValueInfo>& outputs() const;
  /// Per-op-type timings, slowest first (empty unless SessionOptions::profile). On the GPU each
  /// op type is listed as "Op (cuda)", "Op (cpu)" (host step on small values) or "Op (fallback)".
  std::vector<OpProfile> Profile() const;
  /// The device the session runs on.
  Device device() const { return options_.device; }
  /// kCuda: a device copy of the host tensor `host`, for Execution::SetValue (one upload that
  /// every execution shares); FailedPrecondition on a CPU session.
  StatusOr<Tensor> ToDevice(const Tensor& host) const;
  /// A host copy of a tensor of this session (Execution::Value may give a device tensor); a host
  /// tensor is returned as is.
  StatusOr<Tensor> ToHost(const Tensor& tensor) const;
  /// kCuda: the session's stream, cuBLAS handle and allocator, for device work that must be
  /// ordered with its runs (calibration statistics on Execution::Value tensors); nullptr on a CPU
  /// session.
  cuda::Context* cuda_context() const;
  /// For a device session: which ops ran on the CPU for lack of a CUDA kernel and how many bytes
  /// were copied between host and device, one line each; empty for a CPU session.
  std::vector<std::string> DeviceSummary() const;

 private:
  friend class Execution;
  Session() = default;
  StatusOr<std::vector<Tensor>> BindFeeds(const NamedTensors& feeds) const;
  Model model_;
  SessionOptions options_;
  std::unique_ptr<Plan> plan_;
  std::vector<ValueInfo> required_inputs_;
  std::unique_ptr<CudaExecutor> cuda_;  // set when options_.device is kCuda
  // Set when the graph was converted to another float precision: outputs without a declared dtype
  // come back from `converted_to_` to `converted_from_`.
  DType converted_from_ = DType::kUndefined, converted_to_ = DType::kUndefined;
};

}  // namespace qc
