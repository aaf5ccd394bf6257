// Runs calibration windows through the executor and collects what the passes need about the
// inputs X of the linear layers: per-channel magnitudes, the Hessian H = 2 XᵀX / rows, outlier
// counts; either in one float pass (CollectStats) or layer group by layer group with earlier
// layers already quantized (RunSequential, GPTQ's "true sequential" mode).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "formats/graph.h"
#include "formats/linear_layers.h"
#include "formats/status.h"
#include "formats/tensor.h"
#include "runtime/executor.h"

namespace qc {

/// What to collect besides the always-collected per-channel abs max and mean |x|.
struct StatsRequest {
  bool hessian = false;           // H = 2 XᵀX / rows, accumulated in float64
  double outlier_threshold = 0;   // > 0: count per channel the tokens with |x| > threshold
  // RunSequential on a kCuda calibrator: the first `host_windows` windows' inputs are handed to
  // the visitor as host tensors (copied back per group), for visitors that compute on X itself on
  // the CPU; the other windows' inputs may be device tensors. No effect on the CPU.
  size_t host_windows = 0;
};

/// Statistics of one value X that one or more linear layers read (q/k/v projections share one).
/// X is seen as a [rows, k] matrix: every leading axis is a row (token).
struct InputStats {
  std::string input;  // the value name
  int64_t k = 0;
  int64_t rows = 0;                    // tokens observed over all windows
  std::vector<float> abs_max;          // [k] max_t |x_tj|
  std::vector<double> abs_mean;        // [k] mean_t |x_tj|
  std::vector<double> hessian;         // [k * k] row-major, symmetric; empty unless requested
  std::vector<int64_t> outlier_count;  // [k] tokens with |x_tj| > threshold; empty unless requested
};

/// The linear layers that read one value, in node order, with the statistics of that value.
struct LayerGroup {
  std::string input;
  std::vector<LinearLayer> layers;
};

/// Groups `layers` by the value they read as X (node input 0 of the MatMul/Gemm), ordered by the
/// first node of each group.
std::vector<LayerGroup> GroupLayersByInput(const std::vector<LinearLayer>& layers);

/// Replacement float weights for the layers of one group, in the group's order, each a row-major
/// logical [k, n] matrix (what the downstream layers of the calibration run should see: the
/// dequantized weight). An empty vector keeps that layer's weight unchanged.
using GroupWeights = std::vector<std::vector<float>>;

/// Called once per group by RunSequential with the statistics of the group's input as produced by
/// the model with every earlier group already replaced, and that input itself: one tensor per
/// calibration window, in window order, valid only during the call (the W8A8 passes measure the
/// error activation rounding adds, which statistics cannot give). On a kCuda calibrator a window's
/// tensor may be a device tensor (Tensor::on_device()).
using SequentialVisitor = std::function<StatusOr<GroupWeights>(const LayerGroup& group, const InputStats& stats,
                                                               const std::vector<const Tensor*>& inputs)>;

/// ||X W - X W~||_F relative to ||X W||_F, and the SQNR in dB, from the Hessian of X alone:
/// ||X D||_F^2 = rows/2 * tr(Dᵀ H D). W and W~ are row-major [k, n]. When X W is zero the
/// relative error is 0 (or +inf if W~ differs) and the SQNR +inf.
struct OutputError {
  double rel_error = 0;
  double sqnr_db = 0;
};
/// The OutputError of an output whose squared norm is `signal` with an error of squared norm `noise`.
OutputError OutputErrorFromEnergies(double signal, double noise);
OutputError OutputErrorFromHessian(const std::vector<double>& hessian, int64_t k, const std::vector<float>& w,
                                   const std::vector<float>& w_hat, int64_t n);

/// Holds the calibration windows and runs them through models.
class Calibrator {
 public:
  /// `windows`: int64 [1, seqlen] token ids (calibrate/calibration_data.h), bound to the model's
  /// inputs as runtime/input_binding.h does (mask of ones, positions 0..seqlen-1, empty past).
  explicit Calibrator(std::vector<Tensor> windows) : windows_(std::move(windows)) {}

  const std::vector<Tensor>& windows() const { return windows_; }
  /// A calibrator over the first `count` windows (all of them when there are fewer), logging to the
  /// same place.
  Calibrator FirstWindows(size_t count) const;
  /// Receives one-line progress messages (may be empty).
  void set_log(std::function<void(const std::string&)> log) { log_ = std::move(log); }
  /// Where RunSequential and CollectStats run the windows and accumulate the statistics. With kCuda
  /// CollectStats is a RunSequential that replaces nothing (the CUDA executor has no node
  /// observers; the statistics are the same up to the order of float64 sums), and the session
  /// streams the float weights (SessionOptions::stream_constants), the Hessians are accumulated on
  /// the device (calibrate/device_stats.h) and each window's activations stay on the device while
  /// the windows' total stays within `activation_budget_bytes`; the windows after that are parked
  /// in host memory at each group boundary (Execution::Park). Statistics do not depend on the budget.
  void set_device(Device device, int64_t activation_budget_bytes = int64_t{1} << 30) {
    device_ = device;
    activation_budget_ = activation_budget_bytes;
  }
  Device device() const { return device_; }

  /// One float pass over every window of `model` as it is now, one window at a time, collecting
  /// the statistics of every group's input. Result order follows GroupLayersByInput(layers).
  StatusOr<std::vector<InputStats>> CollectStats(const Model& model, const std::vector<LinearLayer>& layers,
                                                 const StatsRequest& request) const;

  /// Sequential calibration: starts every window as an incremental execution of `model`, then
  /// for each group in execution order advances all windows to the group's first layer, collects
  /// the statistics of its input and calls `visit`. The weights it returns replace the group's
  /// weights in every window's execution, so each later group sees inputs that flowed through the
  /// quantized earlier layers. Only the values still needed are alive (one execution frame per
  /// window), never the activations of the whole model; a replacement weight is freed once every
  /// window has run the layer, and only one group's statistics exist at a time. RunSequential does
  /// not modify `model`, and reads nothing of it after the first visit, so `visit` may rewrite
  /// it (e.g. put each quantized layer in place at once, docs/MEMORY.md).
  Status RunSequential(const Model& model, const std::vector<LinearLayer>& layers, const StatsRequest& request,
                       const SequentialVisitor& visit) const;

 private:
  std::vector<Tensor> windows_;
  std::function<void(const std::string&)> log_;
  Device device_ = Device::kCpu;
  int64_t activation_budget_ = int64_t{1} << 30;
};

}  // namespace qc
