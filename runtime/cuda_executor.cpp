// The CUDA side of Session (cuda_executor.h): where each value lives, and which kernel runs a step.
#include "runtime/cuda_executor.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <tuple>

#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/half_widening.h"
#include "runtime/plan.h"

#ifdef QC_HAVE_CUDA
#include "runtime/cuda/context.h"
#include "runtime/cuda/cuda_check.h"
#include "runtime/cuda/graph.h"
#include "runtime/cuda/ops/op_kernel.h"
#include "runtime/cuda/pinned_pool.h"
#endif

namespace qc {

#ifndef QC_HAVE_CUDA

struct CudaExecutor::Impl {};
CudaExecutor::CudaExecutor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaExecutor::~CudaExecutor() = default;
StatusOr<std::unique_ptr<CudaExecutor>> CudaExecutor::Create(const Plan&, const Graph&, const SessionOptions&) {
  return FailedPrecondition("this qconvert was built without the CUDA backend (nvcc was not found at build time); use --device cpu");
}
Status CudaExecutor::Run(std::vector<Tensor>&, const std::vector<int>&) const { return FailedPrecondition("built without CUDA"); }
std::vector<OpProfile> CudaExecutor::Profile() const { return {}; }
std::vector<std::string> CudaExecutor::Summary() const { return {}; }
CudaRunState::~CudaRunState() = default;
CudaMemoryStats CudaMemory() { return {}; }
Status PoisonDeviceAllocations() { return FailedPrecondition("built without CUDA"); }
std::unique_ptr<CudaRunState> CudaExecutor::Begin(size_t) const { return std::make_unique<CudaRunState>(); }
Status CudaExecutor::RunSteps(std::vector<Tensor>&, CudaRunState&, int) const { return FailedPrecondition("built without CUDA"); }
Status CudaExecutor::Park(std::vector<Tensor>&, CudaRunState&) const { return FailedPrecondition("built without CUDA"); }
int64_t CudaExecutor::DeviceBytes(const std::vector<Tensor>&, const CudaRunState&) const { return 0; }
StatusOr<Tensor> CudaExecutor::Upload(const Tensor&) const { return FailedPrecondition("built without CUDA"); }
StatusOr<Tensor> CudaExecutor::Download(const Tensor&) const { return FailedPrecondition("built without CUDA"); }
cuda::Context& CudaExecutor::context() const { QC_CHECK(false && "built without CUDA"); std::abort(); }

#else

namespace {

// A step whose inputs are all on the host and together at most this size runs its CPU kernel
// there: shape arithmetic on int64 (Shape -> Gather -> Concat -> Reshape) costs a launch and two
// copies on the GPU and nothing on the CPU.
constexpr int64_t kHostStepBytes = int64_t{64} << 10;

// Ops whose CPU kernels only read their first input's shape (and small host inputs), so they run
// unchanged on device tensors: a Reshape of a device tensor is a device view.
bool IsViewOp(const Node& node) {
  static const std::set<std::string> kViews = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Size"};
  return (node.domain.empty() || node.domain == "ai.onnx") && kViews.count(node.op_type);
}

// Whether the step's inputs broadcast to more than kHostStepBytes: small host inputs whose
// elementwise result is large (the causal mask: a [S] x [S, 1] comparison gives [S, S]) run on the
// GPU, where the result is wanted next. Ops whose inputs do not broadcast together are left to
// the size of their inputs.
bool BroadcastsLarge(const Plan::Step& step, const std::vector<Tensor>& frame) {
  std::vector<Shape> shapes;
  int bits = 8;
  for (int s : step.in) {
    if (s < 0) continue;
    if (shapes.empty()) bits = DTypeBits(frame[s].dtype());
    shapes.push_back(frame[s].shape());
  }
  if (shapes.size() < 2) return false;
  auto shape = BroadcastShapes(shapes);
  return shape.ok() && NumElements(*shape) * std::max(bits / 8, 1) > kHostStepBytes;
}

double MiB(int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }
std::string FormatMs(double seconds) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f ms", 1e3 * seconds);
  return buf;
}

}  // namespace

struct CudaExecutor::Impl {
  enum class Where { kCuda, kView, kHost, kFallback, kFused };
  /// A MatMulInteger step whose Cast<float> -> Mul(s_w) -> Mul(s_x) chain (the W8A8 layer's
  /// epilogue, each value read once) runs inside the GEMM: the three steps are skipped when it does.
  struct Epilogue {
    int steps[3] = {-1, -1, -1};  // Cast, Mul, Mul
    int col = -1, row = -1;       // slots of s_w and s_x
    int out = -1;                 // the second Mul's output
    DType dtype = DType::kFloat32;  // the Cast's target: float32, or the compute type of --dtype
  };
  struct StepInfo {
    const cuda::OpKernel* kernel = nullptr;
    bool view = false;
    std::unique_ptr<cuda::OpState> state;
    Epilogue epilogue;
    double host_seconds = 0;  // wall time the host spent on this step over all runs (queueing it)
  };
  struct Copies {
    int64_t count = 0, bytes = 0;
  };

  const Plan* plan = nullptr;
  SessionOptions options;
  std::unique_ptr<cuda::Context> cuda;
  mutable std::vector<StepInfo> steps;  // kernels keep their state across runs
  std::vector<bool> constant;           // slot holds a session constant (not an overridable input)
  std::vector<Tensor> device_constants;  // slot-indexed device copies of constants
  int64_t constant_bytes = 0;
  // SessionOptions::stream_constants: device copies made when a step first needs them, shared by
  // every run, and freed once every live run has passed release_step (the constant's last reader).
  mutable std::vector<Tensor> streamed;
  std::vector<int> release_step;
  mutable std::vector<CudaRunState*> live;

  // Statistics over all runs.
  mutable int64_t runs = 0;
  // Wall time of Run(): until every step was queued, and until its outputs were on the host. When
  // the two are close the GPU waited for the host (launch-bound); far apart, the host waited.
  mutable double queued_seconds = 0, run_seconds = 0;
  mutable Copies to_device, to_host;
  mutable std::map<std::string, int64_t> fallbacks;  // "Op: reason" -> calls
  // Device values a step read on the host mid-run (each a copy that waits for the GPU, and what
  // keeps a run from being captured): "'value' (made by Op) for Op" -> copies.
  mutable std::map<std::string, int64_t> mid_run_reads;
  mutable int current_step = -1;  // the step RunSteps is running, -1 outside it
  mutable std::map<Where, int64_t> step_counts;
  mutable std::map<std::string, OpProfile> profile;

  // SessionOptions::cuda_graphs. A run's signature: each feed's dtype and shape, and the outputs wanted.
  // (Runs with a feed already on the device run as steps: a graph would keep its address.)
  struct Signature {
    std::vector<std::pair<DType, Shape>> feeds;
    std::vector<int> wanted;
    bool operator==(const Signature&) const = default;
  };
  // A run captured as a CUDA graph, and what a replay needs besides it.
  struct GraphRun {
    Signature signature;
    std::unique_ptr<cuda::CapturedGraph> graph;
    std::shared_ptr<cuda::CachingAllocator::Reservation> blocks;  // every device block it addresses
    // Host bytes the graph copies to the device, staged in page-locked memory. Those that are a
    // feed (or a host view of one) are refreshed from it before each replay; the others are values
    // of host steps, the same while the signature and the feeds the host reads are.
    struct Staged {
      int feed = -1;
      size_t offset = 0, bytes = 0;
      std::shared_ptr<void> pinned;
    };
    std::vector<Staged> staged;
    std::vector<std::pair<int, Tensor>> host_read;  // feeds the host steps read, as captured
    // Kernels' own uploads (Context::Upload: shapes, offsets, zero points the host worked out from
    // values the host read), staged for the replays.
    std::vector<std::shared_ptr<void>> kernel_uploads;
    std::vector<std::pair<int, Tensor>> outputs;    // the output slots' values after the run
    // While capturing: the frame as the run began. A feed's slot is freed after its last reader,
    // but a view of it may still be uploaded or read later, and must be traced back to the feed.
    std::vector<Tensor> feeds;
  };
  std::vector<int> feed_slots;  // the graph inputs' slots
  mutable std::unique_ptr<GraphRun> graph_run;
  mutable GraphRun* capturing = nullptr;  // set while a run is being captured
  mutable std::optional<Signature> last_signature;
  mutable bool graphs_off = false;
  mutable std::string graphs_off_reason;
  mutable int64_t graph_replays = 0;

  bool GraphsOn() const { return options.cuda_graphs && !options.profile && !options.stream_constants && !graphs_off; }

  // The feed in `frame` (the frame as a run began) whose host bytes hold all of `t`'s (a feed, or a
  // view of one), or -1.
  int FeedHolding(const std::vector<Tensor>& frame, const Tensor& t, size_t* offset) const {
    if (!t.defined() || t.on_device() || t.nbytes() == 0) return -1;
    const char* p = static_cast<const char*>(t.raw());
    for (int f : feed_slots) {
      const Tensor& feed = frame[f];
      if (!feed.defined() || feed.on_device()) continue;
      const char* base = static_cast<const char*>(feed.raw());
      if (p >= base && p + t.nbytes() <= base + feed.nbytes()) {
        *offset = static_cast<size_t>(p - base);
        return f;
      }
    }
    return -1;
  }

  // "'value' (made by Op) for Op": device value `s` read on the host by the current step.
  std::string MidRunRead(int s) const {
    std::string text = "'" + plan->SlotName(s) + "'";
    for (const Plan::Step& step : plan->steps())
      if (std::find(step.out.begin(), step.out.end(), s) != step.out.end()) text += " (made by " + step.node->op_type + ")";
    if (current_step >= 0) text += " for " + plan->steps()[current_step].node->Describe();
    return text;
  }

  // During a capture: the upload of host value `s`, staged through page-locked memory (a graph
  // cannot hold a copy from pageable memory) and recorded for replays.
  StatusOr<Tensor> StagedUpload(const std::vector<Tensor>& frame, int s) const;

  // Per run: frame[s] is the value, mirror[s] its copy on the other side (if made); overridden[s]
  // when an Execution replaced a constant (the replacement is no session constant).
  struct Run {
    std::vector<Tensor>& frame;
    std::vector<Tensor>& mirror;
    const std::vector<char>& overridden;
  };
  bool SessionConstant(const Run& r, int s) const { return constant[s] && !r.overridden[s]; }

  bool OnHost(const Run& r, int s) const {
    return !r.frame[s].on_device() || (r.mirror[s].defined() && !r.mirror[s].on_device());
  }
  StatusOr<const Tensor*> HostOf(Run& r, int s) const {
    if (capturing != nullptr) {  // a host step reads this value: a feed it comes from must not change
      size_t offset = 0;
      const int f = FeedHolding(capturing->feeds, r.frame[s], &offset);
      if (f >= 0 && std::none_of(capturing->host_read.begin(), capturing->host_read.end(), [&](const auto& h) { return h.first == f; }))
        capturing->host_read.emplace_back(f, capturing->feeds[f].Clone());  // a copy: a caller may refill the buffer
    }
    if (!r.frame[s].on_device()) return &r.frame[s];
    if (!r.mirror[s].defined()) {
      // A copy to the host waits for the stream, which a capture cannot (named for the summary).
      if (capturing != nullptr) return FailedPrecondition(MidRunRead(s) + " is needed on the host mid-run");
      if (current_step >= 0) mid_run_reads[MidRunRead(s)]++;
      QC_ASSIGN_OR_RETURN(r.mirror[s], cuda->Download(r.frame[s]));
      to_host.count++;
      to_host.bytes += r.frame[s].nbytes();
    }
    return &r.mirror[s];
  }
  StatusOr<const Tensor*> DeviceOf(Run& r, int s) const {
    if (r.frame[s].on_device()) return &r.frame[s];
    if (!r.mirror[s].defined() && options.stream_constants && SessionConstant(r, s)) {
      if (!streamed[s].defined()) {
        QC_ASSIGN_OR_RETURN(streamed[s], cuda->Upload(r.frame[s]));
        to_device.count++;
        to_device.bytes += r.frame[s].nbytes();
      }
      r.mirror[s] = streamed[s];
    }
    if (!r.mirror[s].defined()) {
      if (capturing != nullptr) {
        QC_ASSIGN_OR_RETURN(r.mirror[s], StagedUpload(r.frame, s));
      } else {
        QC_ASSIGN_OR_RETURN(r.mirror[s], cuda->Upload(r.frame[s]));
      }
      to_device.count++;
      to_device.bytes += r.frame[s].nbytes();
    }
    return &r.mirror[s];
  }

  // SessionOptions::cuda_graphs: replays the captured graph when the run has its signature (*ran),
  // captures and launches one on the second run in a row with the same signature, and otherwise
  // leaves the run to the steps. A capture that fails turns graphs off for the session (the caller
  // then runs the steps on a fresh run state; `frame` is as it came).
  Status RunAsGraph(const CudaExecutor& executor, std::vector<Tensor>& frame, CudaRunState& run,
                    const std::vector<int>& wanted, bool* ran) const;
  // Waits for the stream; an InvalidArgument when a kernel flagged its input (cuda::DeviceError).
  Status CheckDeviceErrors() const {
    QC_ASSIGN_OR_RETURN(unsigned errors, cuda->TakeDeviceErrors());
    if (errors & cuda::kIndexOutOfRange)
      return InvalidArgument("a Gather, GatherND or GatherBlockQuantized index is outside its axis [-n, n) (checked on the GPU)");
    if (errors & cuda::kTokenOutOfVocabulary)
      return InvalidArgument("a token id to score is outside the model's vocabulary (checked on the GPU)");
    if (errors != 0) return Internal("unknown device error bits " + std::to_string(errors));
    return Status::Ok();
  }
  void DropGraphs(std::string reason) const {
    graph_run.reset();
    cuda->nbits_workspace().set_keep_outgrown(false);
    graphs_off = true;
    graphs_off_reason = std::move(reason);
  }
  // After a capture that made no graph, or one thrown away unlaunched: what the kernels set up
  // inside it (a new state's uploads, a grown workspace's zeroed counters) was only recorded, never
  // run. Their states and the MatMulNBits workspace are dropped; the steps make them again.
  void ForgetCapturedSetUp() const {
    for (StepInfo& info : steps) info.state.reset();
    cuda->nbits_workspace().Release();
  }

  // `widen`: host inputs of float16/bfloat16 may be widened for a kernel without a 16-bit path
  // (runtime/cpu/half_widening.h); a view's input may be on the device and is never read.
  Status RunCpu(const Plan::Step& step, Run& r, std::vector<const Tensor*> inputs, std::vector<Tensor>* outputs, bool widen) const {
    KernelContext ctx{*step.node, std::move(inputs), std::vector<Tensor>(step.out.size()), step.opset, nullptr};
    QC_RETURN_IF_ERROR(widen ? RunKernelWidening(step.fn, ctx) : step.fn(ctx));
    *outputs = std::move(ctx.outputs);
    return Status::Ok();
  }

  // The step's inputs for its CUDA kernel: on the device, except those the kernel's host_inputs
  // mask asks for on the host; and which of them are session constants.
  Status BindKernelInputs(const Plan::Step& step, const StepInfo& info, Run& r, cuda::OpContext& ctx) const {
    for (size_t i = 0; i < step.in.size(); ++i) {
      const int s = step.in[i];
      ctx.constant.push_back(s >= 0 && SessionConstant(r, s));
      if (s < 0) {
        ctx.inputs.push_back(nullptr);
        continue;
      }
      const bool host = i < 32 && (info.kernel->host_inputs >> i) & 1u;
      QC_ASSIGN_OR_RETURN(const Tensor* t, host ? HostOf(r, s) : DeviceOf(r, s));
      ctx.inputs.push_back(t);
    }
    return Status::Ok();
  }

  // Runs step `index` with its fused epilogue; *fused is false (and nothing ran) when the kernel
  // declines the shapes or s_x is not computed yet, so the steps run one by one.
  Status RunFused(int index, Run& r, bool* fused) const {
    const Plan::Step& step = plan->steps()[index];
    StepInfo& info = steps[index];
    const Epilogue& e = info.epilogue;
    *fused = false;
    if (!r.frame[e.row].defined() || !r.frame[e.col].defined()) return Status::Ok();
    cuda::OpContext ctx{*step.node, {}, {}, std::vector<Tensor>(step.out.size()), step.opset, *cuda, info.state, {}};
    QC_RETURN_IF_ERROR(BindKernelInputs(step, info, r, ctx));
    QC_ASSIGN_OR_RETURN(const Tensor* col, DeviceOf(r, e.col));
    QC_ASSIGN_OR_RETURN(const Tensor* row, DeviceOf(r, e.row));
    QC_RETURN_IF_ERROR(cuda::MatMulIntegerScaledCuda(ctx, *col, *row, e.dtype));
    if (!ctx.declined.empty()) return Status::Ok();
    r.frame[e.out] = std::move(ctx.outputs[0]);
    r.mirror[e.out] = Tensor();
    *fused = true;
    return Status::Ok();
  }

  Status RunStep(int index, Run& r, Where* where) const {
    const Plan::Step& step = plan->steps()[index];
    StepInfo& info = steps[index];
    if (!step.fn)
      return Unimplemented(step.node->Describe() + ": If subgraphs are not supported with --device cuda yet; use --device cpu");
    for (size_t i = 0; i < step.in.size(); ++i)
      if (step.in[i] >= 0 && !r.frame[step.in[i]].defined())
        return Internal(step.node->Describe() + ": input '" + step.node->inputs[i] + "' was not computed");
    std::vector<Tensor> outputs;
    auto host_inputs = [&]() -> StatusOr<std::vector<const Tensor*>> {
      std::vector<const Tensor*> in;
      for (int s : step.in) {
        if (s < 0) {
          in.push_back(nullptr);
          continue;
        }
        QC_ASSIGN_OR_RETURN(const Tensor* t, HostOf(r, s));
        in.push_back(t);
      }
      return in;
    };

    if (info.view) {
      *where = Where::kView;
      std::vector<const Tensor*> in;
      for (size_t i = 0; i < step.in.size(); ++i) {
        const int s = step.in[i];
        if (s < 0) {
          in.push_back(nullptr);
        } else if (i == 0) {
          if (options.stream_constants && SessionConstant(r, s) && r.frame[s].nbytes() > kHostStepBytes)
            QC_RETURN_IF_ERROR(DeviceOf(r, s).status());
          // A view of a constant uses its device copy, so the view's readers find it there.
          in.push_back(r.mirror[s].defined() && r.mirror[s].on_device() ? &r.mirror[s] : &r.frame[s]);
        } else {
          QC_ASSIGN_OR_RETURN(const Tensor* t, HostOf(r, s));
          in.push_back(t);
        }
      }
      QC_RETURN_IF_ERROR(RunCpu(step, r, std::move(in), &outputs, /*widen=*/false));
    } else {
      bool small_on_host = true;
      int64_t bytes = 0;
      for (int s : step.in) {
        if (s < 0) continue;
        small_on_host &= OnHost(r, s);
        bytes += r.frame[s].nbytes();
      }
      small_on_host &= bytes <= kHostStepBytes && !(info.kernel && BroadcastsLarge(step, r.frame));
      std::string declined = info.kernel ? "" : "no CUDA kernel";
      if (info.kernel && !small_on_host) {
        cuda::OpContext ctx{*step.node, {}, {}, std::vector<Tensor>(step.out.size()), step.opset, *cuda, info.state, {}};
        QC_RETURN_IF_ERROR(BindKernelInputs(step, info, r, ctx));
        QC_RETURN_IF_ERROR(info.kernel->fn(ctx));
        declined = ctx.declined;
        if (declined.empty()) {
          *where = Where::kCuda;
          outputs = std::move(ctx.outputs);
        }
      }
      if (small_on_host || !declined.empty()) {
        *where = small_on_host ? Where::kHost : Where::kFallback;
        if (!small_on_host) fallbacks[step.node->op_type + ": " + declined]++;
        QC_ASSIGN_OR_RETURN(std::vector<const Tensor*> in, host_inputs());
        QC_RETURN_IF_ERROR(RunCpu(step, r, std::move(in), &outputs, /*widen=*/true));
      }
    }
    for (size_t i = 0; i < step.out.size(); ++i) {
      if (step.out[i] < 0) continue;
      if (!outputs[i].defined())
        return Internal(step.node->Describe() + ": kernel did not produce output " + std::to_string(i));
      r.frame[step.out[i]] = std::move(outputs[i]);
      r.mirror[step.out[i]] = Tensor();
    }
    return Status::Ok();
  }
};

CudaExecutor::CudaExecutor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaExecutor::~CudaExecutor() = default;

namespace {

bool IsOp(const Node& node, const char* op_type) { return (node.domain.empty() || node.domain == "ai.onnx") && node.op_type == op_type; }

// Marks MatMulInteger -> Cast<F> -> Mul(constant s_w) -> Mul(s_x) chains (F float32, or float16 /
// bfloat16 under --dtype) whose intermediate values have no other reader (and are no graph
// output) for the fused epilogue. In float16 the unfused Cast of the int32 sums could overflow
// (65504); the epilogue computes in float32 and rounds once.
void FindEpilogues(const Plan& plan, CudaExecutor::Impl& impl) {
  const auto& steps = plan.steps();
  std::vector<int> readers(plan.slots(), 0), reader(plan.slots(), -1);
  for (size_t i = 0; i < steps.size(); ++i)
    for (int s : steps[i].in)
      if (s >= 0) {
        readers[s]++;
        reader[s] = static_cast<int>(i);
      }
  for (int s : plan.output_slots()) readers[s] += 2;  // never fused away
  // The only reader of `slot`, if it is a step of `op_type` with `arity` inputs.
  auto sole_reader = [&](int slot, const char* op_type, size_t arity) -> int {
    if (slot < 0 || readers[slot] != 1) return -1;
    const int j = reader[slot];
    return steps[j].fn && IsOp(*steps[j].node, op_type) && steps[j].in.size() == arity && steps[j].out.size() == 1 ? j : -1;
  };
  auto other_input = [&](int step, int slot) { return steps[step].in[0] == slot ? steps[step].in[1] : steps[step].in[0]; };
  for (size_t i = 0; i < steps.size(); ++i) {
    if (!steps[i].fn || !impl.steps[i].kernel || !IsOp(*steps[i].node, "MatMulInteger") || steps[i].out.size() != 1) continue;
    const int cast = sole_reader(steps[i].out[0], "Cast", 1);
    if (cast < 0) continue;
    const DType to = static_cast<DType>(steps[cast].node->GetInt("to", 0));
    if (!IsComputeFloat(to)) continue;
    const int mul_col = sole_reader(steps[cast].out[0], "Mul", 2);
    if (mul_col < 0) continue;
    const int col = other_input(mul_col, steps[cast].out[0]);
    if (col < 0 || !impl.constant[col]) continue;
    const int mul_row = sole_reader(steps[mul_col].out[0], "Mul", 2);
    if (mul_row < 0) continue;
    const int row = other_input(mul_row, steps[mul_col].out[0]);
    if (row < 0 || steps[mul_row].out[0] < 0) continue;
    CudaExecutor::Impl::Epilogue& e = impl.steps[i].epilogue;
    e = {{cast, mul_col, mul_row}, col, row, steps[mul_row].out[0], to};
  }
}

}  // namespace

StatusOr<std::unique_ptr<CudaExecutor>> CudaExecutor::Create(const Plan& plan, const Graph& graph,
                                                             const SessionOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->plan = &plan;
  impl->options = options;
  QC_ASSIGN_OR_RETURN(impl->cuda, cuda::Context::Create());
  const int slots = plan.slots();
  impl->constant.assign(slots, false);
  for (int s = 0; s < slots; ++s) impl->constant[s] = plan.constants()[s].defined();
  for (const ValueInfo& in : graph.inputs) {  // initializer defaults a caller may override
    const int s = plan.SlotOf(in.name);
    if (s >= 0) impl->constant[s] = false;
    if (s >= 0) impl->feed_slots.push_back(s);
  }
  impl->device_constants.resize(slots);
  impl->streamed.resize(slots);
  impl->release_step.assign(slots, -1);
  for (size_t i = 0; i < plan.steps().size(); ++i)
    for (int s : plan.steps()[i].release_after) impl->release_step[s] = static_cast<int>(i);
  auto upload = [&](int s) -> Status {
    // Streamed constants are uploaded by the first step that reads them (Impl::DeviceOf).
    if (options.stream_constants) return Status::Ok();
    if (s < 0 || !impl->constant[s] || impl->device_constants[s].defined()) return Status::Ok();
    QC_ASSIGN_OR_RETURN(impl->device_constants[s], impl->cuda->Upload(plan.constants()[s]));
    impl->constant_bytes += plan.constants()[s].nbytes();
    return Status::Ok();
  };
  impl->steps.resize(plan.steps().size());
  for (size_t i = 0; i < plan.steps().size(); ++i) {
    const Plan::Step& step = plan.steps()[i];
    Impl::StepInfo& info = impl->steps[i];
    info.view = step.fn && IsViewOp(*step.node);
    info.kernel = info.view ? nullptr : cuda::FindOpKernel(step.node->domain, step.node->op_type);
    if (info.view && !step.in.empty() && step.in[0] >= 0 && plan.constants()[step.in[0]].nbytes() > kHostStepBytes)
      QC_RETURN_IF_ERROR(upload(step.in[0]));
    if (!info.kernel) continue;
    // Small constants of steps that will run on the host stay there.
    int64_t bytes = 0;
    bool all_constant = true;
    for (int s : step.in) {
      if (s < 0) continue;
      all_constant &= impl->constant[s];
      bytes += plan.constants()[s].defined() ? plan.constants()[s].nbytes() : 0;
    }
    if (all_constant && bytes <= kHostStepBytes) continue;
    for (size_t k = 0; k < step.in.size(); ++k)
      if (!(k < 32 && (info.kernel->host_inputs >> k) & 1u)) QC_RETURN_IF_ERROR(upload(step.in[k]));
  }
  FindEpilogues(plan, *impl);
  QC_RETURN_IF_ERROR(impl->cuda->Synchronize());
  return std::unique_ptr<CudaExecutor>(new CudaExecutor(std::move(impl)));
}

StatusOr<Tensor> CudaExecutor::Impl::StagedUpload(const std::vector<Tensor>& frame, int s) const {
  const Tensor& host = frame[s];
  const size_t bytes = static_cast<size_t>(host.nbytes());
  QC_ASSIGN_OR_RETURN(Tensor t, cuda->Empty(host.dtype(), host.shape()));
  GraphRun::Staged staged;
  staged.bytes = bytes;
  QC_ASSIGN_OR_RETURN(staged.pinned, cuda::AllocatePinned(bytes));
  if (bytes > 0) {
    std::memcpy(staged.pinned.get(), host.raw(), bytes);
    QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(t.mutable_raw(), staged.pinned.get(), bytes, cudaMemcpyHostToDevice, cuda->stream()));
  }
  // A feed's own slot is its own source (two feeds may share one buffer now, and not later).
  if (std::find(feed_slots.begin(), feed_slots.end(), s) != feed_slots.end()) {
    staged.feed = s;
    staged.offset = 0;
  } else {
    staged.feed = FeedHolding(capturing->feeds, host, &staged.offset);
  }
  capturing->staged.push_back(std::move(staged));
  return t;
}

Status CudaExecutor::Impl::RunAsGraph(const CudaExecutor& executor, std::vector<Tensor>& frame, CudaRunState& run,
                                      const std::vector<int>& wanted, bool* ran) const {
  *ran = false;
  for (int f : feed_slots)
    if (frame[f].defined() && frame[f].on_device()) return Status::Ok();  // see Signature
  Signature signature{{}, wanted};
  for (int f : feed_slots)
    signature.feeds.emplace_back(frame[f].defined() ? frame[f].dtype() : DType::kUndefined,
                                 frame[f].defined() ? frame[f].shape() : Shape{});
  if (graph_run && graph_run->signature == signature) {
    for (const auto& [f, value] : graph_run->host_read)
      if (frame[f].on_device() || std::memcmp(value.raw(), frame[f].raw(), static_cast<size_t>(value.nbytes())) != 0) {
        DropGraphs("a feed the host steps read changed");
        return Status::Ok();
      }
    for (GraphRun::Staged& staged : graph_run->staged)
      if (staged.feed >= 0 && staged.bytes > 0)
        std::memcpy(staged.pinned.get(), static_cast<const char*>(frame[staged.feed].raw()) + staged.offset, staged.bytes);
    QC_RETURN_IF_ERROR(graph_run->graph->Launch(cuda->stream()));
    for (const auto& [s, value] : graph_run->outputs) frame[s] = value;
    graph_replays++;
    *ran = true;
    return Status::Ok();
  }
  if (!last_signature || !(*last_signature == signature)) {  // a first run of its kind runs as steps
    last_signature = signature;
    return Status::Ok();
  }
  // The second run in a row with this signature: capture it. Everything it allocates stays reserved
  // for the graph, which replays into the same blocks.
  graph_run.reset();
  cuda->nbits_workspace().set_keep_outgrown(false);  // the old graph's buffers go
  cuda->nbits_workspace().set_keep_outgrown(true);   // the new one's stay, outgrown mid-capture too
  auto captured = std::make_unique<GraphRun>();
  captured->signature = signature;
  QC_ASSIGN_OR_RETURN(captured->blocks, cuda->allocator().BeginReserving());
  captured->feeds = frame;
  const std::vector<Tensor>& feeds = captured->feeds;
  capturing = captured.get();
  cuda->set_capture_pins(&captured->kernel_uploads);
  Status status = cuda::CapturedGraph::BeginCapture(cuda->stream());
  std::unique_ptr<cuda::CapturedGraph> graph;
  if (status.ok()) {
    status = executor.RunSteps(frame, run, plan->num_steps());
    StatusOr<std::unique_ptr<cuda::CapturedGraph>> ended = cuda::CapturedGraph::EndCapture(cuda->stream());
    if (status.ok() && !ended.ok()) status = ended.status();
    if (ended.ok()) graph = std::move(ended).value();
  }
  capturing = nullptr;
  cuda->set_capture_pins(nullptr);
  cuda->allocator().EndReserving();
  if (!status.ok()) {  // not capturable (a step synchronised, or failed): steps from now on
    DropGraphs("the run could not be captured: " + status.message());
    ForgetCapturedSetUp();
    frame = feeds;
    return Status::Ok();
  }
  captured->graph = std::move(graph);
  for (int s : plan->output_slots()) {
    size_t offset = 0;
    if (!frame[s].defined()) continue;
    if (FeedHolding(feeds, frame[s], &offset) >= 0) {  // a host view of a feed: a replay would return the old one
      DropGraphs("an output is a view of a feed");
      ForgetCapturedSetUp();
      frame = feeds;
      return Status::Ok();
    }
    captured->outputs.emplace_back(s, frame[s]);
  }
  captured->feeds.clear();  // a replay reads the run's own frame
  QC_RETURN_IF_ERROR(captured->graph->Launch(cuda->stream()));
  graph_run = std::move(captured);
  *ran = true;
  return Status::Ok();
}

Status CudaExecutor::Run(std::vector<Tensor>& frame, const std::vector<int>& wanted) const {
  Impl& m = *impl_;
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_ptr<CudaRunState> run = Begin(frame.size());
  // Clean device error bits, unless another run is live (stepwise executions interleaved with this
  // one: a bit one of them set must reach it): one that failed earlier may have left some.
  if (m.live.size() == 1) QC_RETURN_IF_ERROR(m.cuda->ClearDeviceErrors());
  bool ran = false;
  if (m.GraphsOn()) {
    QC_RETURN_IF_ERROR(m.RunAsGraph(*this, frame, *run, wanted, &ran));
    if (!ran && run->cursor > 0) run = Begin(frame.size());  // after a failed capture
  }
  if (!ran) QC_RETURN_IF_ERROR(RunSteps(frame, *run, m.plan->num_steps()));
  const auto queued = std::chrono::steady_clock::now();
  Impl::Run r{frame, run->mirror, run->overridden};
  for (int s : m.plan->output_slots()) {
    if (!frame[s].defined() || !frame[s].on_device()) continue;
    if (std::find(wanted.begin(), wanted.end(), s) == wanted.end()) {
      frame[s] = r.mirror[s] = Tensor();
      continue;
    }
    QC_ASSIGN_OR_RETURN(const Tensor* host, m.HostOf(r, s));
    frame[s] = *host;
  }
  QC_RETURN_IF_ERROR(m.CheckDeviceErrors());  // waits for the stream
  m.runs++;
  m.queued_seconds += std::chrono::duration<double>(queued - t0).count();
  m.run_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return Status::Ok();
}

CudaMemoryStats CudaMemory() {
  const cuda::CachingAllocator::Stats s = cuda::CachingAllocator::Default().stats();
  return {static_cast<int64_t>(s.bytes_in_use), static_cast<int64_t>(s.peak_bytes_in_use), static_cast<int64_t>(s.bytes_cached),
          cuda::PinnedPoolBytes()};
}

Status PoisonDeviceAllocations() {
  cuda::CachingAllocator::Default().set_poison(true);
  return Status::Ok();
}

CudaRunState::~CudaRunState() {
  if (!executor) return;
  auto& live = executor->impl_->live;
  live.erase(std::remove(live.begin(), live.end(), this), live.end());
}

std::unique_ptr<CudaRunState> CudaExecutor::Begin(size_t slots) const {
  auto run = std::make_unique<CudaRunState>();
  run->executor = this;
  run->mirror.resize(slots);
  run->skip.assign(impl_->plan->steps().size(), 0);
  run->overridden.assign(slots, 0);
  // Constants uploaded at creation are every run's device copies.
  for (size_t s = 0; s < slots && s < impl_->device_constants.size(); ++s)
    if (impl_->constant[s] && impl_->device_constants[s].defined()) run->mirror[s] = impl_->device_constants[s];
  impl_->live.push_back(run.get());
  return run;
}

Status CudaExecutor::RunSteps(std::vector<Tensor>& frame, CudaRunState& run, int end) const {
  Impl& m = *impl_;
  QC_CHECK(run.executor == this && frame.size() == run.mirror.size());
  Impl::Run r{frame, run.mirror, run.overridden};
  const auto& steps = m.plan->steps();
  std::vector<char>& skip = run.skip;  // steps done by a fused epilogue
  struct StepCursor {  // Impl::current_step is the running step's, and -1 again however this returns
    int& step;
    ~StepCursor() { step = -1; }
  } cursor{m.current_step};
  end = std::min(end, static_cast<int>(steps.size()));
  for (size_t i = run.cursor; i < static_cast<size_t>(std::max(end, run.cursor)); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    m.current_step = static_cast<int>(i);
    Impl::Where where = Impl::Where::kCuda;
    bool fused = false;
    if (skip[i]) {
      where = Impl::Where::kFused;
    } else if (m.steps[i].epilogue.out >= 0) {
      QC_RETURN_IF_ERROR(m.RunFused(static_cast<int>(i), r, &fused));
      if (fused)
        for (int j : m.steps[i].epilogue.steps) skip[j] = 1;
    }
    if (!skip[i] && !fused) QC_RETURN_IF_ERROR(m.RunStep(static_cast<int>(i), r, &where));
    m.step_counts[where]++;
    if (m.options.profile) {
      QC_RETURN_IF_ERROR(m.cuda->Synchronize());
      static const char* const kSuffix[] = {" (cuda)", " (view)", " (cpu)", " (fallback)", " (fused)"};
      OpProfile& p = m.profile[steps[i].node->op_type + (fused ? "+scales (cuda)" : kSuffix[static_cast<int>(where)])];
      p.calls++;
      p.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    for (int s : steps[i].free_after) frame[s] = r.mirror[s] = Tensor();
    for (int s : steps[i].release_after) {
      frame[s].ReleasePages();
      frame[s] = r.mirror[s] = Tensor();
    }
    m.steps[i].host_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    run.cursor = static_cast<int>(i) + 1;
  }
  // A finished run reports what its kernels found invalid on the device (not while captured:
  // nothing ran yet, and a capture cannot wait for the stream).
  if (run.cursor >= static_cast<int>(steps.size()) && m.capturing == nullptr) QC_RETURN_IF_ERROR(m.CheckDeviceErrors());
  if (m.options.stream_constants) {
    // A streamed constant no live run will read again is freed (queued work that still reads it
    // is ordered before any reuse of its block: one stream, a stream-ordered allocator).
    for (size_t s = 0; s < m.streamed.size(); ++s) {
      if (!m.streamed[s].defined() || m.release_step[s] < 0) continue;
      bool needed = false;
      for (const CudaRunState* other : m.live) needed |= other->cursor <= m.release_step[s];
      if (!needed) m.streamed[s] = Tensor();
    }
  }
  return Status::Ok();
}

Status CudaExecutor::Park(std::vector<Tensor>& frame, CudaRunState& run) const {
  Impl& m = *impl_;
  // Copies into page-locked memory, queued together; the device tensors are kept until they are
  // done (one synchronisation for the whole frame).
  std::vector<Tensor> moved;
  for (size_t s = 0; s < frame.size(); ++s) {
    if (m.constant[s] || run.overridden[s]) continue;  // shared by every run: stays where it is
    Tensor& mirror = run.mirror[s];
    if (frame[s].defined() && frame[s].on_device()) {
      moved.push_back(frame[s]);
      if (mirror.defined() && !mirror.on_device()) {
        frame[s] = mirror;
      } else {
        QC_ASSIGN_OR_RETURN(frame[s], cuda::DownloadToPinnedAsync(*m.cuda, frame[s]));
        m.to_host.count++;
        m.to_host.bytes += frame[s].nbytes();
      }
    }
    mirror = Tensor();
  }
  return m.cuda->Synchronize();
}

int64_t CudaExecutor::DeviceBytes(const std::vector<Tensor>& frame, const CudaRunState& run) const {
  int64_t bytes = 0;
  for (size_t s = 0; s < frame.size(); ++s) {
    if (impl_->constant[s] || run.overridden[s]) continue;
    if (frame[s].defined() && frame[s].on_device()) bytes += frame[s].nbytes();
    if (run.mirror[s].defined() && run.mirror[s].on_device()) bytes += run.mirror[s].nbytes();
  }
  return bytes;
}

StatusOr<Tensor> CudaExecutor::Upload(const Tensor& host) const { return impl_->cuda->Upload(host); }
StatusOr<Tensor> CudaExecutor::Download(const Tensor& device) const { return impl_->cuda->Download(device); }
cuda::Context& CudaExecutor::context() const { return *impl_->cuda; }

std::vector<OpProfile> CudaExecutor::Profile() const { return SortedProfile(impl_->profile); }

std::vector<std::string> CudaExecutor::Summary() const {
  const Impl& m = *impl_;
  std::vector<std::string> lines;
  char buf[512];
  auto count = [&](Impl::Where w) {
    auto it = m.step_counts.find(w);
    return static_cast<long long>(it == m.step_counts.end() ? 0 : it->second);
  };
  std::snprintf(buf, sizeof buf,
                "cuda: %zu steps, %.1f MiB of constants on the device; over %lld runs: %lld CUDA kernels, %lld views, %lld small host steps, %lld CPU fallbacks, "
                "%lld steps fused into MatMulInteger",
                m.steps.size(), MiB(m.constant_bytes), static_cast<long long>(m.runs), count(Impl::Where::kCuda),
                count(Impl::Where::kView), count(Impl::Where::kHost), count(Impl::Where::kFallback), count(Impl::Where::kFused));
  lines.push_back(buf);
  std::snprintf(buf, sizeof buf, "cuda: copies host->device %lld (%.1f MiB), device->host %lld (%.1f MiB, outputs included)",
                static_cast<long long>(m.to_device.count), MiB(m.to_device.bytes), static_cast<long long>(m.to_host.count),
                MiB(m.to_host.bytes));
  lines.push_back(buf);
  if (m.runs > 0 && m.run_seconds > 0) {
    std::snprintf(buf, sizeof buf,
                  "cuda: %.2f ms per run, all steps queued after %.2f ms (%.0f%%: near 100%%, the GPU waited for the host)",
                  1e3 * m.run_seconds / m.runs, 1e3 * m.queued_seconds / m.runs, 100.0 * m.queued_seconds / m.run_seconds);
    lines.push_back(buf);
    // Where the host's time goes, by op (the steps' own time; the rest is per-run set-up).
    std::map<std::string, std::pair<double, int>> by_op;
    double steps_seconds = 0;
    for (size_t i = 0; i < m.steps.size(); ++i) {
      auto& [seconds, count] = by_op[m.plan->steps()[i].node->op_type];
      seconds += m.steps[i].host_seconds;
      count++;
      steps_seconds += m.steps[i].host_seconds;
    }
    std::vector<std::tuple<double, std::string, int>> top;  // seconds, op, steps
    for (const auto& [op, t] : by_op) top.emplace_back(t.first, op, t.second);
    std::sort(top.rbegin(), top.rend());
    std::string text = "cuda: host time per run: steps " + FormatMs(steps_seconds / m.runs) + " (";
    for (size_t i = 0; i < top.size() && i < 6; ++i) {
      const auto& [seconds, op, count] = top[i];
      text += (i ? ", " : "") + op + " " + FormatMs(seconds / m.runs) + " in " + std::to_string(count);
    }
    lines.push_back(text + "), outside the steps " + FormatMs((m.run_seconds - steps_seconds) / m.runs));
  }
  if (m.graph_replays > 0 || m.graph_run) {
    std::snprintf(buf, sizeof buf, "cuda: %lld runs replayed as one CUDA graph (%.1f MiB of device memory reserved for it)",
                  static_cast<long long>(m.graph_replays), m.graph_run ? MiB(static_cast<int64_t>(m.graph_run->blocks->bytes())) : 0.0);
    lines.push_back(buf);
  }
  if (m.options.cuda_graphs && m.graphs_off) lines.push_back("cuda: CUDA graphs off: " + m.graphs_off_reason);
  for (const auto& [what, calls] : m.fallbacks) lines.push_back("cuda: CPU fallback " + what + " (" + std::to_string(calls) + " calls)");
  for (const auto& [what, copies] : m.mid_run_reads)
    lines.push_back("cuda: read on the host mid-run: " + what + " (" + std::to_string(copies) + " copies)");
  return lines;
}

#endif  // QC_HAVE_CUDA

}  // namespace qc
