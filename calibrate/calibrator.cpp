// Calibration runs and activation statistics (see calibrator.h).
#include "calibrate/calibrator.h"

#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <optional>

#include "calibrate/device_stats.h"
#include "runtime/cpu/gemm_core.h"
#include "runtime/executor.h"
#include "runtime/float_precision.h"
#include "runtime/input_binding.h"

namespace qc {
namespace {

// Accumulates the statistics of one input over windows.
class StatsAccumulator {
 public:
  StatsAccumulator(std::string input, int64_t k, const StatsRequest& request) : request_(request) {
    stats_.input = std::move(input);
    stats_.k = k;
    stats_.abs_max.assign(k, 0.0f);
    abs_sum_.assign(k, 0.0);
    if (request.hessian) stats_.hessian.assign(k * k, 0.0);
    if (request.outlier_threshold > 0) stats_.outlier_count.assign(k, 0);
  }

  /// `scratch` holds one window's XᵀX while it is added; callers share one across accumulators, so
  /// a CollectStats run does not keep K x K floats per group.
  Status Add(const Tensor& x, std::vector<float>* scratch) {
    const int64_t k = stats_.k;
    if (!IsComputeFloat(x.dtype()))
      return Unimplemented("calibration needs float activations, but '" + stats_.input + "' is " +
                           DTypeName(x.dtype()));
    if (x.rank() < 1 || x.dim(-1) != k)
      return InvalidArgument("activation '" + stats_.input + "' has shape " + ShapeToString(x.shape()) +
                             ", expected a last axis of " + std::to_string(k));
    const int64_t rows = x.numel() / k;
    // A float16/bfloat16 model's activations are widened exactly; statistics are float32/float64.
    std::vector<float> widened;
    if (x.dtype() != DType::kFloat32) widened = x.ToFloats();
    const float* data = widened.empty() ? x.data<float>() : widened.data();
    for (int64_t t = 0; t < rows; ++t) {
      const float* row = data + t * k;
      for (int64_t j = 0; j < k; ++j) {
        const float a = std::fabs(row[j]);
        if (!std::isfinite(a))
          return InvalidArgument("activation '" + stats_.input + "' holds a non-finite value on a calibration window");
        stats_.abs_max[j] = std::max(stats_.abs_max[j], a);
        abs_sum_[j] += a;
      }
    }
    if (!stats_.outlier_count.empty()) {
      const float threshold = static_cast<float>(request_.outlier_threshold);
      for (int64_t t = 0; t < rows; ++t)
        for (int64_t j = 0; j < k; ++j) stats_.outlier_count[j] += std::fabs(data[t * k + j]) > threshold;
    }
    if (!stats_.hessian.empty()) {
      // XᵀX of this window in float32 through the fast GEMM (a window is at most a few thousand
      // rows, so float32 partial sums lose ~1e-7 relative), summed across windows in float64.
      std::vector<float>& window_xtx = *scratch;
      window_xtx.resize(k * k);
      GemmF32(/*trans_a=*/true, /*trans_b=*/false, k, k, rows, 1.0f, data, k, data, k, 0.0f, window_xtx.data(), k,
              /*threaded=*/true);
      for (int64_t i = 0; i < k * k; ++i) stats_.hessian[i] += window_xtx[i];
    }
    stats_.rows += rows;
    return Status::Ok();
  }

  InputStats Finish() {
    const double rows = static_cast<double>(std::max<int64_t>(stats_.rows, 1));
    stats_.abs_mean.resize(stats_.k);
    for (int64_t j = 0; j < stats_.k; ++j) stats_.abs_mean[j] = abs_sum_[j] / rows;
    for (double& h : stats_.hessian) h *= 2.0 / rows;
    return std::move(stats_);
  }

 private:
  StatsRequest request_;
  InputStats stats_;
  std::vector<double> abs_sum_;
};

// Whether the node reads its weight as [n, k] (Gemm with transB) rather than [k, n].
bool ReadsWeightNK(const Node& node) { return node.op_type == "Gemm" && node.GetInt("transB", 0) != 0; }

// The weight as the node reads it: Gemm with transB reads [n, k], everything else [k, n].
Tensor WeightAsRead(bool reads_nk, const LinearLayer& layer, std::vector<float> w_kn) {
  if (!reads_nk) return Tensor::Adopt(std::move(w_kn), {layer.k, layer.n});
  std::vector<float> w_nk(w_kn.size());
  for (int64_t r = 0; r < layer.k; ++r)
    for (int64_t c = 0; c < layer.n; ++c) w_nk[c * layer.k + r] = w_kn[r * layer.n + c];
  return Tensor::FromVector(w_nk, {layer.n, layer.k});
}

}  // namespace

std::vector<LayerGroup> GroupLayersByInput(const std::vector<LinearLayer>& layers) {
  std::vector<const LinearLayer*> sorted;
  for (const LinearLayer& l : layers) sorted.push_back(&l);
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const LinearLayer* a, const LinearLayer* b) { return a->node_index < b->node_index; });
  std::vector<LayerGroup> groups;
  std::map<std::string, size_t> index;
  for (const LinearLayer* l : sorted) {
    auto [it, inserted] = index.emplace(l->input, groups.size());
    if (inserted) groups.push_back(LayerGroup{l->input, {}});
    groups[it->second].layers.push_back(*l);
  }
  return groups;
}

OutputError OutputErrorFromHessian(const std::vector<double>& hessian, int64_t k, const std::vector<float>& w,
                                   const std::vector<float>& w_hat, int64_t n) {
  QC_CHECK(static_cast<int64_t>(hessian.size()) == k * k);
  QC_CHECK(static_cast<int64_t>(w.size()) == k * n && w_hat.size() == w.size());
  // tr(Mᵀ H M) = sum_ij M_ij (H M)_ij, for M = W and M = W~ - W, over blocks of columns: whole
  // copies of M and H M would be three times the layer in memory (a 32000 x 2048 head).
  // H M in float32 (the fast GEMM kernels; relative error ~1e-6, far below the reports' digits:
  // in float64 these products were a third of a calibrated absmax conversion), the traces in float64.
  constexpr int64_t kColumns = 256;
  const std::vector<float> h(hessian.begin(), hessian.end());
  std::vector<float> m_w(k * std::min(n, kColumns)), m_delta(m_w.size()), hm(m_w.size());
  double signal = 0, noise = 0;
  for (int64_t c0 = 0; c0 < n; c0 += kColumns) {
    const int64_t c = std::min(kColumns, n - c0);
    for (int64_t r = 0; r < k; ++r)
      for (int64_t j = 0; j < c; ++j) {
        const size_t i = static_cast<size_t>(r * n + c0 + j);
        m_w[r * c + j] = w[i];
        m_delta[r * c + j] = w_hat[i] - w[i];
      }
    for (auto [m, sum] : {std::pair{&m_w, &signal}, std::pair{&m_delta, &noise}}) {
      GemmF32(false, false, k, c, k, 1.0f, h.data(), k, m->data(), c, 0.0f, hm.data(), c, /*threaded=*/true);
      for (int64_t i = 0; i < k * c; ++i) *sum += static_cast<double>((*m)[i]) * hm[i];
    }
  }
  return OutputErrorFromEnergies(std::max(signal, 0.0), std::max(noise, 0.0));
}

OutputError OutputErrorFromEnergies(double signal, double noise) {
  OutputError e;
  const double inf = std::numeric_limits<double>::infinity();
  if (signal == 0) {
    e.rel_error = noise == 0 ? 0 : inf;
    e.sqnr_db = inf;
    return e;
  }
  e.rel_error = std::sqrt(noise / signal);
  e.sqnr_db = noise == 0 ? inf : 10.0 * std::log10(signal / noise);
  return e;
}

Calibrator Calibrator::FirstWindows(size_t count) const {
  Calibrator c(std::vector<Tensor>(windows_.begin(), windows_.begin() + std::min(count, windows_.size())));
  c.log_ = log_;
  c.device_ = device_;
  c.activation_budget_ = activation_budget_;
  return c;
}

StatusOr<std::vector<InputStats>> Calibrator::CollectStats(const Model& model, const std::vector<LinearLayer>& layers,
                                                           const StatsRequest& request) const {
  if (windows_.empty()) return InvalidArgument("no calibration windows");
  const std::vector<LayerGroup> groups = GroupLayersByInput(layers);
  if (device_ == Device::kCuda) {
    // Every group's statistics from one sequential run that replaces no weight.
    std::map<std::string, size_t> index;
    for (size_t g = 0; g < groups.size(); ++g) index[groups[g].input] = g;
    std::vector<InputStats> stats(groups.size());
    std::vector<bool> seen(groups.size());
    if (log_) log_("collecting activation statistics over " + std::to_string(windows_.size()) + " calibration windows on the GPU");
    QC_RETURN_IF_ERROR(RunSequential(model, layers, request,
                                     [&](const LayerGroup& group, const InputStats& st,
                                         const std::vector<const Tensor*>&) -> StatusOr<GroupWeights> {
                                       const size_t g = index.at(group.input);
                                       stats[g] = st;
                                       seen[g] = true;
                                       return GroupWeights(group.layers.size());
                                     }));
    for (size_t g = 0; g < groups.size(); ++g)
      if (!seen[g]) return Internal("linear layer " + groups[g].layers.front().node_name + " did not run during calibration");
    return stats;
  }
  std::vector<StatsAccumulator> accumulators;
  std::vector<float> scratch;  // one window's XᵀX, shared by the accumulators
  // Keyed by the node's output: node names may be empty or repeated, value names may not.
  std::map<std::string, size_t> group_of_output;
  for (size_t g = 0; g < groups.size(); ++g) {
    accumulators.emplace_back(groups[g].input, groups[g].layers.front().k, request);
    for (const LinearLayer& l : groups[g].layers) group_of_output[model.graph.nodes[l.node_index].outputs[0]] = g;
  }
  QC_ASSIGN_OR_RETURN(auto session, Session::Create(model));
  // The first layer of a group to execute supplies X; later ones read the same tensor.
  std::vector<bool> seen_in_window(groups.size());
  NodeObserver observer = [&](const Node& node, const std::vector<const Tensor*>& inputs,
                              const std::vector<Tensor>&) -> Status {
    if (node.outputs.empty()) return Status::Ok();
    auto it = group_of_output.find(node.outputs[0]);
    if (it == group_of_output.end() || seen_in_window[it->second]) return Status::Ok();
    seen_in_window[it->second] = true;
    if (inputs.empty() || inputs[0] == nullptr) return Internal(node.Describe() + " ran without its input");
    return accumulators[it->second].Add(*inputs[0], &scratch);
  };
  if (log_) log_("collecting activation statistics over " + std::to_string(windows_.size()) + " calibration windows");
  for (size_t w = 0; w < windows_.size(); ++w) {
    std::fill(seen_in_window.begin(), seen_in_window.end(), false);
    QC_ASSIGN_OR_RETURN(NamedTensors feeds, BindInputs(*session, windows_[w]));
    QC_ASSIGN_OR_RETURN(std::vector<Tensor> outputs, session->Run(feeds, {}, &observer));
    for (size_t g = 0; g < groups.size(); ++g)
      if (!seen_in_window[g])
        return Internal("linear layer " + groups[g].layers.front().node_name + " did not run during calibration");
  }
  std::vector<InputStats> stats;
  for (StatsAccumulator& a : accumulators) stats.push_back(a.Finish());
  return stats;
}

Status Calibrator::RunSequential(const Model& model, const std::vector<LinearLayer>& layers,
                                 const StatsRequest& request, const SequentialVisitor& visit) const {
  if (windows_.empty()) return InvalidArgument("no calibration windows");
  SessionOptions session_options;
  session_options.device = device_;
  // On the GPU a float weight is uploaded when the first window reaches it and freed when the
  // last one has passed it: the float model never has to fit on the device.
  session_options.stream_constants = device_ == Device::kCuda;
  QC_ASSIGN_OR_RETURN(auto session, Session::Create(model, session_options));
  cuda::Context* device = session->cuda_context();
  std::vector<LayerGroup> groups = GroupLayersByInput(layers);
  // Visit groups in plan order: a group's X is complete once the plan reaches its first layer.
  std::vector<std::pair<int, size_t>> order;
  for (size_t g = 0; g < groups.size(); ++g) {
    int first = -1;
    for (const LinearLayer& l : groups[g].layers) {
      const int step = session->StepProducing(model.graph.nodes[l.node_index].outputs[0]);
      if (step < 0) return Internal("linear layer " + l.node_name + " has no step in the execution plan");
      first = first < 0 ? step : std::min(first, step);
    }
    order.emplace_back(first, g);
  }
  std::stable_sort(order.begin(), order.end());
  // What the replacements need from the graph, taken now: `visit` may rewrite `model` (the runs
  // execute the session's own copy).
  std::vector<std::vector<std::pair<std::string, bool>>> read_as(groups.size());  // value read, [n, k]?
  for (size_t g = 0; g < groups.size(); ++g)
    for (const LinearLayer& l : groups[g].layers) {
      const Node& node = model.graph.nodes[l.node_index];
      read_as[g].emplace_back(node.inputs[l.weight_input], ReadsWeightNK(node));
    }

  std::vector<std::unique_ptr<Execution>> runs;
  std::vector<float> scratch;  // one window's XᵀX
  for (const Tensor& window : windows_) {
    QC_ASSIGN_OR_RETURN(NamedTensors feeds, BindInputs(*session, window));
    QC_ASSIGN_OR_RETURN(auto run, session->Start(feeds));
    runs.push_back(std::move(run));
  }
  for (size_t i = 0; i < order.size(); ++i) {
    const auto [step, g] = order[i];
    const LayerGroup& group = groups[g];
    if (log_)
      log_("calibrating " + group.layers.front().node_name + " (" + std::to_string(i + 1) + "/" +
           std::to_string(order.size()) + ")");
    const int64_t k = group.layers.front().k;
    // One of the two: the host one would hold a K x K float64 H of its own.
    std::optional<StatsAccumulator> accumulator;
    std::unique_ptr<DeviceStatsAccumulator> device_accumulator;
    if (device) {
      QC_ASSIGN_OR_RETURN(device_accumulator, DeviceStatsAccumulator::Create(*device, group.input, k, request));
    } else {
      accumulator.emplace(group.input, k, request);
    }
    std::vector<const Tensor*> inputs;
    std::vector<Tensor> host_copies;  // request.host_windows: those windows' X on the host
    host_copies.reserve(std::min(request.host_windows, runs.size()));
    int64_t resident_bytes = 0;  // device activations of the windows not parked
    for (auto& run : runs) {
      QC_RETURN_IF_ERROR(run->RunUntil(step));
      const Tensor* x = run->Value(group.input);
      if (x == nullptr) return Internal("input '" + group.input + "' of " + group.layers.front().node_name + " is not available");
      if (device_accumulator) {
        // A float16/bfloat16 model's activations are widened exactly on the device.
        QC_RETURN_IF_ERROR(device_accumulator->Add(*x));
        // Parking keeps the slot (the pointer stays valid) and moves its value to the host.
        const int64_t bytes = run->DeviceBytes();
        if (resident_bytes + bytes > activation_budget_) QC_RETURN_IF_ERROR(run->Park());
        else resident_bytes += bytes;
      } else {
        QC_RETURN_IF_ERROR(accumulator->Add(*x, &scratch));
      }
      if (x->on_device() && inputs.size() < request.host_windows) {
        QC_ASSIGN_OR_RETURN(Tensor host, session->ToHost(*x));
        host_copies.push_back(std::move(host));
        x = &host_copies.back();
      }
      inputs.push_back(x);
    }
    std::vector<float>().swap(scratch);  // K x K floats the visitor's solver can use instead
    InputStats stats;
    if (device_accumulator) {
      QC_ASSIGN_OR_RETURN(stats, device_accumulator->Finish());
      device_accumulator.reset();
      // The forward passes' blocks go back to the driver before the solver allocates its own.
      QC_RETURN_IF_ERROR(ReleaseCachedDeviceMemory());
    } else {
      stats = accumulator->Finish();
    }
    QC_ASSIGN_OR_RETURN(GroupWeights weights, visit(group, stats, inputs));
#ifdef __GLIBC__
    // The group's statistics and the visitor's work buffers are freed now. glibc keeps freed heap
    // pages that long-lived small allocations made since (a layer's scales, graph nodes) pin below
    // the top of the heap: on a 1.1 B Llama that grew the process by ~25 MB per layer. Hand the
    // free pages back (a few ms per group).
    malloc_trim(0);
#endif
    if (weights.size() != group.layers.size())
      return Internal("sequential visitor returned " + std::to_string(weights.size()) + " weights for " +
                      std::to_string(group.layers.size()) + " layers");
    for (size_t l = 0; l < weights.size(); ++l) {
      if (weights[l].empty()) continue;
      const LinearLayer& layer = group.layers[l];
      if (static_cast<int64_t>(weights[l].size()) != layer.k * layer.n)
        return Internal("replacement weight of " + layer.node_name + " has the wrong size");
      const auto& [read_name, reads_nk] = read_as[g][l];
      Tensor replacement = WeightAsRead(reads_nk, layer, std::move(weights[l]));
      // A float16/bfloat16 model reads its weights in that type: the replacement is rounded to it.
      const Tensor* stored = model.graph.FindInitializer(layer.weight);
      if (stored != nullptr && stored->dtype() != DType::kFloat32) replacement = ConvertFloatTensor(replacement, stored->dtype());
      // One device copy shared by every window (freed once all have run the layer).
      if (device) {
        QC_ASSIGN_OR_RETURN(replacement, session->ToDevice(replacement));
      }
      for (auto& run : runs) QC_RETURN_IF_ERROR(run->SetValue(read_name, replacement));
    }
    if (device) QC_RETURN_IF_ERROR(ReleaseCachedDeviceMemory());
  }
  return Status::Ok();
}

}  // namespace qc
