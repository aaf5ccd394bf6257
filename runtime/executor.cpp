// The executor: value slots, a topologically ordered step list, constant folding, buffer freeing.
#include "runtime/executor.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <unordered_map>

#include "runtime/cpu/half_widening.h"
#include "runtime/cpu/kernel.h"
#include "runtime/cuda_executor.h"
#include "runtime/float_precision.h"
#include "runtime/graph_fusion.h"
#include "runtime/plan.h"

namespace qc {

namespace {
constexpr const char* kIf = "If";
// Folded constants larger than this are recomputed per run instead, so folding never
// duplicates big weights in memory (e.g. a Transpose of an embedding matrix).
constexpr int64_t kMaxFoldedBytes = int64_t{64} << 20;
// A node reading more than this of mapped weights is never folded: the result would be a resident
// copy of on-disk bytes for the session's lifetime (a Transpose of every weight of a TorchScript
// export is the whole model). Shape arithmetic on small mapped constants still folds.
constexpr int64_t kMaxFoldedMappedInputBytes = int64_t{1} << 20;

}  // namespace


namespace {

Status CheckProduced(const Node& node, const std::vector<Tensor>& outputs) {
  for (size_t i = 0; i < node.outputs.size(); ++i)
    if (!node.outputs[i].empty() && !outputs[i].defined())
      return Internal(node.Describe() + ": kernel did not produce output " + std::to_string(i));
  return Status::Ok();
}

/// Orders nodes so every input is produced before use (ONNX requires it, but not every
/// exporter complies). Errors on cycles and on values nobody defines.
StatusOr<std::vector<const Node*>> TopologicalOrder(const Graph& graph, const std::set<std::string>& available) {
  std::unordered_map<std::string, int> producer;
  for (size_t i = 0; i < graph.nodes.size(); ++i)
    for (const auto& o : graph.nodes[i].outputs)
      if (!o.empty()) {
        if (available.count(o) || !producer.emplace(o, static_cast<int>(i)).second)
          return InvalidArgument(graph.nodes[i].Describe() + ": value '" + o + "' is defined more than once");
      }
  const int n = static_cast<int>(graph.nodes.size());
  std::vector<int> pending(n, 0);
  std::vector<std::vector<int>> users(n);
  // Subgraph nodes may read outer values implicitly; those count as dependencies too.
  std::function<void(const Graph&, std::set<std::string>&)> implicit_inputs = [&](const Graph& g, std::set<std::string>& out) {
    for (const auto& node : g.nodes) {
      for (const auto& in : node.inputs) out.insert(in);
      for (const auto& [k, a] : node.attributes) {
        if (a.g) implicit_inputs(*a.g, out);
        for (const auto& sg : a.graphs) implicit_inputs(*sg, out);
      }
    }
  };
  for (int i = 0; i < n; ++i) {
    const Node& node = graph.nodes[i];
    std::set<std::string> deps(node.inputs.begin(), node.inputs.end());
    for (const auto& [k, a] : node.attributes) {
      if (a.g) implicit_inputs(*a.g, deps);
      for (const auto& sg : a.graphs) implicit_inputs(*sg, deps);
    }
    for (const auto& in : deps) {
      if (in.empty()) continue;
      auto it = producer.find(in);
      if (it != producer.end()) {
        if (it->second == i) return InvalidArgument(node.Describe() + ": consumes its own output '" + in + "'");
        users[it->second].push_back(i);
        pending[i]++;
      } else if (!available.count(in) && std::find(node.inputs.begin(), node.inputs.end(), in) != node.inputs.end()) {
        return InvalidArgument(node.Describe() + ": input '" + in + "' is not produced by any node, initializer or graph input");
      }
    }
  }
  // Kahn's algorithm, always taking the lowest original index: keeps file order when valid.
  std::set<int> ready;
  for (int i = 0; i < n; ++i)
    if (pending[i] == 0) ready.insert(i);
  std::vector<const Node*> order;
  while (!ready.empty()) {
    int i = *ready.begin();
    ready.erase(ready.begin());
    order.push_back(&graph.nodes[i]);
    for (int u : users[i])
      if (--pending[u] == 0) ready.insert(u);
  }
  if (static_cast<int>(order.size()) != n) return InvalidArgument("graph '" + graph.name + "' has a cycle");
  return order;
}

}  // namespace

StatusOr<std::unique_ptr<Plan>> Plan::Compile(const Graph& graph, const OpsetMap& opsets, const SessionOptions& options,
                                              const std::set<std::string>& outer) {
  auto plan = std::make_unique<Plan>();
  plan->profiling_ = options.profile;
  auto slot = [&](const std::string& name) {
    auto [it, inserted] = plan->slot_of_.emplace(name, static_cast<int>(plan->names_.size()));
    if (inserted) plan->names_.push_back(name);
    return it->second;
  };
  std::set<std::string> available;
  for (const auto& in : graph.inputs) {
    if (in.name.empty()) return InvalidArgument("graph '" + graph.name + "' has an input without a name");
    slot(in.name);
    available.insert(in.name);
  }
  for (const auto& name : graph.initializer_names()) {
    slot(name);
    available.insert(name);
  }
  std::set<std::string> local = available;
  for (const auto& n : graph.nodes)
    for (const auto& o : n.outputs) local.insert(o);
  for (const auto& name : outer)
    if (!local.count(name)) available.insert(name);
  QC_ASSIGN_OR_RETURN(std::vector<const Node*> order, TopologicalOrder(graph, available));

  // Values read from the enclosing scope get a slot filled at execution time.
  for (const Node* node : order)
    for (const auto& in : node->inputs)
      if (!in.empty() && !local.count(in) && outer.count(in) && !plan->slot_of_.count(in))
        plan->outer_slots_.emplace_back(in, slot(in));

  std::set<std::string> outer_for_branches = outer;
  outer_for_branches.insert(local.begin(), local.end());
  for (const Node* node : order) {
    Step step;
    step.node = node;
    auto op = opsets.find(node->domain);
    step.opset = op == opsets.end() ? 0 : op->second;
    if (node->domain.empty() && node->op_type == kIf) {
      if (node->inputs.size() != 1) return InvalidArgument(node->Describe() + ": If takes exactly one input (cond)");
      for (const char* branch : {"then_branch", "else_branch"}) {
        auto it = node->attributes.find(branch);
        if (it == node->attributes.end() || !it->second.g)
          return InvalidArgument(node->Describe() + ": missing graph attribute '" + branch + "'");
        auto sub = Compile(*it->second.g, opsets, options, outer_for_branches);
        if (!sub.ok()) return sub.status().WithContext(node->Describe() + " " + branch);
        if ((*sub)->output_slots().size() != node->outputs.size())
          return InvalidArgument(node->Describe() + ": " + branch + " has " + std::to_string((*sub)->output_slots().size()) +
                                 " outputs, the node has " + std::to_string(node->outputs.size()));
        step.branches.push_back(std::move(*sub));
      }
    } else {
      const OpKernels* k = FindOpKernels(node->domain, node->op_type);
      if (!k)
        return Unimplemented("unsupported op '" + (node->domain.empty() ? "" : node->domain + ".") + node->op_type +
                             "' at node '" + node->name + "'");
      step.fn = options.use_reference_kernels || !k->fast ? k->reference : k->fast;
    }
    for (const auto& in : node->inputs) step.in.push_back(in.empty() ? -1 : slot(in));
    for (const auto& out : node->outputs) step.out.push_back(out.empty() ? -1 : slot(out));
    plan->steps_.push_back(std::move(step));
  }
  for (const auto& out : graph.outputs) {
    if (!plan->slot_of_.count(out.name) && !outer.count(out.name))
      return InvalidArgument("graph output '" + out.name + "' is not produced by any node");
    plan->output_slots_.push_back(slot(out.name));
  }

  plan->constants_.resize(plan->names_.size());
  for (const auto& name : graph.initializer_names()) plan->constants_[plan->slot_of_[name]] = *graph.FindInitializer(name);
  // Graph inputs with an initializer are overridable defaults, not constants (IR < 4 style).
  std::vector<bool> overridable(plan->names_.size(), false);
  for (const auto& in : graph.inputs) overridable[plan->slot_of_[in.name]] = true;

  if (options.fold_constants) {
    std::vector<Step> kept;
    for (Step& step : plan->steps_) {
      bool all_const = step.fn != nullptr;
      int64_t mapped_bytes = 0;
      for (int s : step.in) {
        if (s >= 0 && (!plan->constants_[s].defined() || overridable[s])) all_const = false;
        if (s >= 0 && plan->constants_[s].mapped()) mapped_bytes += plan->constants_[s].nbytes();
      }
      if (mapped_bytes > kMaxFoldedMappedInputBytes) all_const = false;
      if (all_const) {
        KernelContext ctx{*step.node, {}, std::vector<Tensor>(step.out.size()), step.opset, nullptr};
        for (int s : step.in) ctx.inputs.push_back(s >= 0 ? &plan->constants_[s] : nullptr);
        QC_RETURN_IF_ERROR(RunKernelWidening(step.fn, ctx));
        QC_RETURN_IF_ERROR(CheckProduced(*step.node, ctx.outputs));
        int64_t bytes = 0;
        for (const auto& t : ctx.outputs) bytes += t.defined() ? t.nbytes() : 0;
        if (bytes <= kMaxFoldedBytes) {
          for (size_t i = 0; i < step.out.size(); ++i)
            if (step.out[i] >= 0) plan->constants_[step.out[i]] = std::move(ctx.outputs[i]);
          continue;
        }
      }
      kept.push_back(std::move(step));
    }
    plan->steps_ = std::move(kept);
  }

  // Free each non-constant value right after its last reader (outputs are never freed).
  std::vector<int> last_use(plan->names_.size(), -1);
  for (size_t i = 0; i < plan->steps_.size(); ++i) {
    for (int s : plan->steps_[i].in)
      if (s >= 0) last_use[s] = static_cast<int>(i);
    for (int s : plan->steps_[i].out)
      if (s >= 0 && last_use[s] < static_cast<int>(i)) last_use[s] = static_cast<int>(i);  // unused outputs die at once
  }
  // An If's branches read enclosing values at any depth (a nested If's branch looks them up
  // through its parents): those stay alive until the If has run.
  std::function<void(const Graph&, std::set<std::string>*)> reads = [&](const Graph& g, std::set<std::string>* out) {
    for (const Node& n : g.nodes) {
      out->insert(n.inputs.begin(), n.inputs.end());
      for (const auto& [key, a] : n.attributes) {
        if (a.g) reads(*a.g, out);
        for (const auto& sub : a.graphs) reads(*sub, out);
      }
    }
  };
  for (const auto& st : plan->steps_) {
    if (st.branches.empty()) continue;
    std::set<std::string> names;
    for (const auto& [key, a] : st.node->attributes)
      if (a.g) reads(*a.g, &names);
    for (const auto& [name, s] : st.branches[0]->outer_slots_) names.insert(name);
    for (const auto& [name, s] : st.branches[1]->outer_slots_) names.insert(name);
    for (const std::string& name : names) {
      const int ps = plan->SlotOf(name);
      if (ps >= 0) last_use[ps] = std::max(last_use[ps], static_cast<int>(&st - plan->steps_.data()));
    }
  }
  for (int s : plan->output_slots_) last_use[s] = -2;
  for (size_t s = 0; s < last_use.size(); ++s) {
    if (last_use[s] < 0) continue;
    auto& list = plan->constants_[s].defined() ? plan->steps_[last_use[s]].release_after : plan->steps_[last_use[s]].free_after;
    list.push_back(static_cast<int>(s));
  }
  return plan;
}

Status Plan::RunIf(const Step& step, std::vector<Tensor>& frame, const std::function<const Tensor*(const std::string&)>& parent,
                   std::vector<Tensor>* outputs) const {
  const Tensor* cond = step.in[0] >= 0 ? &frame[step.in[0]] : nullptr;
  if (!cond || !cond->defined() || cond->numel() != 1 || cond->dtype() != DType::kBool)
    return InvalidArgument(step.node->Describe() + ": cond must be a single bool");
  const Plan& branch = *step.branches[cond->data<bool>()[0] ? 0 : 1];
  std::vector<Tensor> sub(branch.constants());
  auto lookup = [&](const std::string& name) -> const Tensor* {
    int s = SlotOf(name);
    if (s >= 0 && frame[s].defined()) return &frame[s];
    return parent ? parent(name) : nullptr;
  };
  QC_RETURN_IF_ERROR(branch.Execute(sub, lookup, nullptr));
  for (size_t i = 0; i < outputs->size(); ++i) (*outputs)[i] = sub[branch.output_slots()[i]];
  return Status::Ok();
}

Status Plan::RunStep(const Step& step, std::vector<Tensor>& frame, const std::function<const Tensor*(const std::string&)>& parent,
                     const NodeObserver* observer) const {
  KernelContext ctx{*step.node, {}, std::vector<Tensor>(step.out.size()), step.opset, nullptr};
  ctx.inputs.reserve(step.in.size());
  for (size_t i = 0; i < step.in.size(); ++i) {
    int s = step.in[i];
    if (s < 0) {
      ctx.inputs.push_back(nullptr);
      continue;
    }
    if (!frame[s].defined())
      return Internal(step.node->Describe() + ": input '" + step.node->inputs[i] + "' was not computed");
    ctx.inputs.push_back(&frame[s]);
  }
  if (step.fn) {
    if (profiling_) {
      auto t0 = std::chrono::steady_clock::now();
      QC_RETURN_IF_ERROR(RunKernelWidening(step.fn, ctx));
      OpProfile& p = profile_[step.node->op_type];
      p.calls++;
      p.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    } else {
      QC_RETURN_IF_ERROR(RunKernelWidening(step.fn, ctx));
    }
  } else {
    QC_RETURN_IF_ERROR(RunIf(step, frame, parent, &ctx.outputs));
  }
  QC_RETURN_IF_ERROR(CheckProduced(*step.node, ctx.outputs));
  if (observer) QC_RETURN_IF_ERROR((*observer)(*step.node, ctx.inputs, ctx.outputs));
  for (size_t i = 0; i < step.out.size(); ++i)
    if (step.out[i] >= 0) frame[step.out[i]] = std::move(ctx.outputs[i]);
  return Status::Ok();
}

Status Plan::BindOuter(std::vector<Tensor>& frame, const std::function<const Tensor*(const std::string&)>& parent) const {
  for (const auto& [name, s] : outer_slots_) {
    const Tensor* t = parent ? parent(name) : nullptr;
    if (!t) return InvalidArgument("subgraph reads '" + name + "' which the enclosing graph did not compute");
    frame[s] = *t;
  }
  return Status::Ok();
}

Status Plan::ExecuteSteps(std::vector<Tensor>& frame, const std::function<const Tensor*(const std::string&)>& parent,
                          const NodeObserver* observer, int begin, int end) const {
  for (int i = begin; i < end; ++i) {
    const Step& step = steps_[i];
    QC_RETURN_IF_ERROR(RunStep(step, frame, parent, observer));
    for (int s : step.free_after) frame[s] = Tensor();
    for (int s : step.release_after) {
      frame[s].ReleasePages();  // mapped weights: read again from the page cache next run
      frame[s] = Tensor();
    }
  }
  return Status::Ok();
}

const char* DeviceName(Device device) { return device == Device::kCuda ? "cuda" : "cpu"; }

Session::~Session() = default;

StatusOr<std::unique_ptr<Session>> Session::Create(const Model& model, const SessionOptions& options) {
  std::unique_ptr<Session> session(new Session());
  session->model_ = model;
  session->options_ = options;
  // The reference kernels run the graph exactly as written: they are the numeric spec.
  if (!options.use_reference_kernels && options.fuse_ops) FuseForExecution(session->model_.graph);
  if (options.compute_dtype != DType::kUndefined) {
    const DType to = options.compute_dtype;
    if (!IsComputeFloat(to))
      return InvalidArgument("compute dtype must be float32, float16 or bfloat16, got " + DTypeName(to));
    if (to != DType::kFloat32 && options.device != Device::kCuda)
      return InvalidArgument("computing in " + DTypeName(to) + " needs the GPU (--device cuda): the CPU kernels compute in float32 " +
                             "and would only round their results to " + DTypeName(to) + ", slower and no smaller");
    const DType from = ModelFloatDType(session->model_.graph);
    if (from != DType::kUndefined && from != to) {
      QC_RETURN_IF_ERROR(ConvertFloatPrecision(session->model_.graph, from, to));
      session->converted_from_ = from;
      session->converted_to_ = to;
    }
  }
  OpsetMap opsets;
  for (const auto& o : model.opset_imports) opsets[o.domain] = o.version;
  if (!opsets.count("")) return InvalidArgument("model imports no default-domain opset");
  const int64_t opset = opsets[""];
  if (opset < 1 || opset > 23) return Unimplemented("opset " + std::to_string(opset) + " is not supported (supported: 1..23; tested: 13..21)");
  QC_ASSIGN_OR_RETURN(session->plan_, Plan::Compile(session->model_.graph, opsets, options, {}));
  if (options.device == Device::kCuda) {
    QC_ASSIGN_OR_RETURN(session->cuda_, CudaExecutor::Create(*session->plan_, session->model_.graph, options));
  }
  for (const auto& in : session->model_.graph.inputs)
    if (!session->model_.graph.FindInitializer(in.name)) session->required_inputs_.push_back(in);
  return session;
}

const std::vector<ValueInfo>& Session::inputs() const { return required_inputs_; }
const std::vector<ValueInfo>& Session::outputs() const { return model_.graph.outputs; }

std::vector<OpProfile> SortedProfile(const std::map<std::string, OpProfile>& by_op) {
  std::vector<OpProfile> out;
  for (auto [op, p] : by_op) {
    p.op_type = op;
    out.push_back(p);
  }
  std::sort(out.begin(), out.end(), [](const OpProfile& a, const OpProfile& b) { return a.seconds > b.seconds; });
  return out;
}

std::vector<OpProfile> Session::Profile() const {
  if (cuda_) return cuda_->Profile();
  return SortedProfile(plan_->profile_);
}

std::vector<std::string> Session::DeviceSummary() const {
  if (!cuda_) return {};
  std::vector<std::string> lines = cuda_->Summary();
  if (converted_to_ != DType::kUndefined)
    lines.push_back("cuda: computing in " + DTypeName(converted_to_) + " (the model's " + DTypeName(converted_from_) + " rewritten)");
  return lines;
}

namespace {
Status CheckFeed(const ValueInfo& info, const Tensor& t) {
  if (info.dtype != DType::kUndefined && t.dtype() != info.dtype)
    return InvalidArgument("input '" + info.name + "' expects " + DTypeName(info.dtype) + ", got " + DTypeName(t.dtype()));
  if (info.has_shape) {
    if (static_cast<size_t>(t.rank()) != info.shape.size())
      return InvalidArgument("input '" + info.name + "' expects rank " + std::to_string(info.shape.size()) + ", got shape " +
                             ShapeToString(t.shape()));
    for (size_t d = 0; d < info.shape.size(); ++d)
      if (info.shape[d].value >= 0 && info.shape[d].param.empty() && info.shape[d].value != t.shape()[d])
        return InvalidArgument("input '" + info.name + "' dimension " + std::to_string(d) + " must be " +
                               std::to_string(info.shape[d].value) + ", got shape " + ShapeToString(t.shape()));
  }
  return Status::Ok();
}
}  // namespace

StatusOr<std::vector<Tensor>> Session::BindFeeds(const NamedTensors& feeds) const {
  std::vector<Tensor> frame(plan_->constants());
  std::set<std::string> fed;
  for (const auto& [name, tensor] : feeds) {
    const ValueInfo* info = nullptr;
    for (const auto& in : model_.graph.inputs)
      if (in.name == name) info = &in;
    if (!info) return InvalidArgument("model has no input named '" + name + "'");
    QC_RETURN_IF_ERROR(CheckFeed(*info, tensor));
    frame[plan_->SlotOf(name)] = tensor;
    fed.insert(name);
  }
  for (const auto& in : required_inputs_)
    if (!fed.count(in.name)) return InvalidArgument("required input '" + in.name + "' was not provided");
  return frame;
}

namespace {
// The frame slots of the named graph outputs (every output when `output_names` is empty).
StatusOr<std::vector<int>> WantedSlots(const Graph& graph, const Plan& plan, const std::vector<std::string>& output_names) {
  if (output_names.empty()) return plan.output_slots();
  std::vector<int> wanted;
  for (const auto& name : output_names) {
    bool is_output = false;
    for (const auto& o : graph.outputs) is_output |= o.name == name;
    if (!is_output) return InvalidArgument("model has no output named '" + name + "'");
    wanted.push_back(plan.SlotOf(name));
  }
  return wanted;
}

StatusOr<std::vector<Tensor>> CollectOutputs(const std::vector<int>& wanted, const std::vector<Tensor>& frame) {
  std::vector<Tensor> result;
  for (int s : wanted) {
    if (!frame[s].defined()) return Internal("output slot " + std::to_string(s) + " was not computed");
    result.push_back(frame[s]);
  }
  return result;
}
}  // namespace

StatusOr<std::vector<Tensor>> Session::Run(const NamedTensors& feeds, const std::vector<std::string>& output_names,
                                           const NodeObserver* observer) const {
  QC_ASSIGN_OR_RETURN(std::vector<int> wanted, WantedSlots(model_.graph, *plan_, output_names));
  QC_ASSIGN_OR_RETURN(std::vector<Tensor> frame, BindFeeds(feeds));
  if (cuda_) {
    if (observer) return Unimplemented("node observers (calibration) run on the CPU only, not with --device cuda");
    QC_RETURN_IF_ERROR(cuda_->Run(frame, wanted));
  } else {
    QC_RETURN_IF_ERROR(plan_->Execute(frame, nullptr, observer));
  }
  QC_ASSIGN_OR_RETURN(std::vector<Tensor> outputs, CollectOutputs(wanted, frame));
  if (converted_to_ != DType::kUndefined) {
    // Declared outputs were cast back in the graph; undeclared ones are converted here.
    for (size_t i = 0; i < outputs.size(); ++i) {
      const std::string& name = output_names.empty() ? model_.graph.outputs[i].name : output_names[i];
      for (const ValueInfo& o : model_.graph.outputs)
        if (o.name == name && o.dtype == DType::kUndefined && outputs[i].dtype() == converted_to_)
          outputs[i] = ConvertFloatTensor(outputs[i], converted_from_);
    }
  }
  return outputs;
}

StatusOr<std::unique_ptr<Execution>> Session::Start(const NamedTensors& feeds) const {
  QC_ASSIGN_OR_RETURN(std::vector<Tensor> frame, BindFeeds(feeds));
  std::unique_ptr<Execution> run(new Execution(this, std::move(frame)));
  if (cuda_) run->cuda_ = cuda_->Begin(run->frame_.size());
  return run;
}

StatusOr<Tensor> Session::ToDevice(const Tensor& host) const {
  if (!cuda_) return FailedPrecondition("Session::ToDevice on a CPU session");
  if (host.on_device()) return host;
  return cuda_->Upload(host);
}

StatusOr<Tensor> Session::ToHost(const Tensor& tensor) const {
  if (!tensor.on_device()) return tensor;
  if (!cuda_) return FailedPrecondition("Session::ToHost of a device tensor on a CPU session");
  return cuda_->Download(tensor);
}

cuda::Context* Session::cuda_context() const { return cuda_ ? &cuda_->context() : nullptr; }

int Session::num_steps() const { return plan_->num_steps(); }
int Session::StepOfNode(const std::string& node_name) const { return plan_->StepOfNode(node_name); }
int Session::StepProducing(const std::string& value) const { return plan_->StepProducing(value); }

Execution::Execution(const Session* session, std::vector<Tensor> frame) : session_(session), frame_(std::move(frame)) {}
Execution::~Execution() = default;

Status Execution::RunUntil(int step, const NodeObserver* observer) {
  step = std::min(step, session_->plan_->num_steps());
  if (step <= cursor_) return Status::Ok();
  if (cuda_) {
    if (observer) return Unimplemented("node observers (calibration) run on the CPU only, not with --device cuda");
    QC_RETURN_IF_ERROR(session_->cuda_->RunSteps(frame_, *cuda_, step));
  } else {
    QC_RETURN_IF_ERROR(session_->plan_->ExecuteSteps(frame_, nullptr, observer, cursor_, step));
  }
  cursor_ = step;
  return Status::Ok();
}

StatusOr<std::vector<Tensor>> Execution::Finish(const std::vector<std::string>& output_names) {
  QC_RETURN_IF_ERROR(RunUntil(session_->plan_->num_steps()));
  QC_ASSIGN_OR_RETURN(std::vector<int> wanted, WantedSlots(session_->model_.graph, *session_->plan_, output_names));
  QC_ASSIGN_OR_RETURN(std::vector<Tensor> outputs, CollectOutputs(wanted, frame_));
  for (Tensor& t : outputs)  // host tensors, as from Session::Run
    if (t.on_device()) {
      QC_ASSIGN_OR_RETURN(t, session_->cuda_->Download(t));
    }
  return outputs;
}

Status Execution::Park() { return cuda_ ? session_->cuda_->Park(frame_, *cuda_) : Status::Ok(); }

int64_t Execution::DeviceBytes() const { return cuda_ ? session_->cuda_->DeviceBytes(frame_, *cuda_) : 0; }

const Tensor* Execution::Value(const std::string& name) const {
  int s = session_->plan_->SlotOf(name);
  return s >= 0 && frame_[s].defined() ? &frame_[s] : nullptr;
}

Status Execution::SetValue(const std::string& name, Tensor tensor) {
  int s = session_->plan_->SlotOf(name);
  if (s < 0) return InvalidArgument("no value named '" + name + "' in the graph");
  if (tensor.on_device() && !cuda_) return InvalidArgument("a device tensor given for '" + name + "' to a CPU execution");
  if (cuda_) {
    cuda_->overridden[s] = 1;
    cuda_->mirror[s] = Tensor();
  }
  frame_[s] = std::move(tensor);
  return Status::Ok();
}

}  // namespace qc
