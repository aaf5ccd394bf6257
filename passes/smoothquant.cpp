// `smoothquant`: activation-to-weight difficulty migration and W8A8 encoding (see smoothquant.h).
#include "passes/smoothquant.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include "calibrate/calibrator.h"
#include "passes/channel_scaling.h"
#include "passes/int8_linear.h"
#include "passes/weight_quant.h"

namespace qc {
namespace {

// What the pass decided for one group of layers reading one X.
struct GroupPlan {
  std::vector<std::string> outputs;  // the layers' output values: stable names across rewrites
  bool smooth = false;               // some layer of the group is quantized
  std::vector<float> s;              // smoothing factors, [K] (empty: not smoothed)
  std::string folded_into;
  int64_t floored = 0;               // channels whose calibration max was raised to the floor
};

std::string FormatDouble(const char* format, double v) {
  char text[64];
  std::snprintf(text, sizeof(text), format, v);
  return text;
}

}  // namespace

std::vector<float> SmoothingFactors(const std::vector<float>& act_abs_max,
                                    const std::vector<std::vector<float>>& weights, int64_t k, double alpha,
                                    int64_t* floored) {
  QC_CHECK(static_cast<int64_t>(act_abs_max.size()) == k);
  std::vector<float> w_max(k, 0.0f);
  for (const std::vector<float>& w : weights) {
    QC_CHECK(k > 0 && w.size() % k == 0);
    const int64_t n = static_cast<int64_t>(w.size()) / k;
    for (int64_t j = 0; j < k; ++j)
      for (int64_t c = 0; c < n; ++c) w_max[j] = std::max(w_max[j], std::fabs(w[j * n + c]));
  }
  // A channel (nearly) silent on the calibration tokens, say a ReLU unit that happened not to
  // fire, would get a tiny s_j and have its activations blown up by 1/s_j whenever it does fire,
  // swamping its tokens' int8 scale. Its max is floored at a fraction of the group's median.
  std::vector<float> sorted = act_abs_max;
  std::nth_element(sorted.begin(), sorted.begin() + k / 2, sorted.end());
  const float act_floor = std::max(kSmoothActFloorFraction * sorted[k / 2], kSmoothMinValue);
  std::vector<float> s(k);
  if (floored) *floored = 0;
  for (int64_t j = 0; j < k; ++j) {
    if (floored && act_abs_max[j] < act_floor) ++*floored;
    // Eq. 4: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha).
    const double a = std::max(act_abs_max[j], act_floor);
    const double w = std::max(w_max[j], kSmoothMinValue);
    s[j] = std::max(static_cast<float>(std::pow(a, alpha) / std::pow(w, 1.0 - alpha)), kSmoothMinValue);
  }
  return s;
}

Status SmoothQuantPass::Run(Model& model, PassContext& context) {
  QC_CHECK(context.layers != nullptr);
  const QuantOptions& o = context.options;
  if (context.calibrator == nullptr)
    return InvalidArgument("smoothquant needs calibration data: pass --calib TEXT (with --tokenizer) so the "
                           "activation ranges can be measured");
  if (!(o.alpha >= 0.0 && o.alpha <= 1.0))
    return InvalidArgument("--alpha (SmoothQuant migration strength) must be in [0, 1], got " + std::to_string(o.alpha));
  QC_ASSIGN_OR_RETURN(LayerFilter filter, W8A8LayerFilter(o));
  if (context.quantize_weights) QC_RETURN_IF_ERROR(W8A8Rewriter::Create(model).status());

  // Layers that can be touched: float32 constant weights. The others are reported and left alone.
  std::vector<LinearLayer> usable;
  for (const LinearLayer& l : FindLinearLayers(model.graph)) {
    if (auto reason = MatMulNBitsUnsupportedReason(model.graph, l)) {
      if (filter.Excluded(l)) continue;
      LayerReport r = StartLayerReport(l, Name(), "float");
      r.notes.push_back("left in float: " + *reason);
      context.layers->push_back(std::move(r));
      continue;
    }
    usable.push_back(l);
  }
  if (usable.empty()) return Status::Ok();

  // The smoothing factors need max |x| per channel only: K floats per group, no Hessians.
  QC_ASSIGN_OR_RETURN(std::vector<InputStats> stats, context.calibrator->CollectStats(model, usable, StatsRequest{}));
  const std::vector<LayerGroup> groups = GroupLayersByInput(usable);
  QC_CHECK(stats.size() == groups.size());

  // Smoothing factors from the float model, one group at a time, in node order.
  std::vector<GroupPlan> plans(groups.size());
  std::map<std::string, size_t> group_of_output;
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    GroupPlan& plan = plans[gi];
    for (const LinearLayer& l : groups[gi].layers) {
      plan.outputs.push_back(model.graph.nodes[l.node_index].outputs[0]);
      group_of_output[plan.outputs.back()] = gi;
      plan.smooth |= !filter.Excluded(l);
    }
  }
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    GroupPlan& plan = plans[gi];
    if (!plan.smooth) continue;
    // Re-find the group: earlier groups may have inserted nodes or folded 1/s into these weights.
    LayerGroup group{groups[gi].input, {}};
    for (const LinearLayer& l : FindLinearLayers(model.graph))
      if (group_of_output.count(model.graph.nodes[l.node_index].outputs[0]) &&
          group_of_output.at(model.graph.nodes[l.node_index].outputs[0]) == gi)
        group.layers.push_back(l);
    if (group.layers.size() != plan.outputs.size())
      return Internal("smoothquant: the layers reading '" + groups[gi].input + "' changed while smoothing");
    std::vector<std::vector<float>> weights;
    for (const LinearLayer& l : group.layers) {
      QC_ASSIGN_OR_RETURN(std::vector<float> w, ReadLinearWeight(model.graph, l));
      weights.push_back(std::move(w));
    }
    plan.s = SmoothingFactors(stats[gi].abs_max, weights, stats[gi].k, o.alpha, &plan.floored);
    StatusOr<ChannelScaleResult> applied = ApplyInputChannelScale(model, group, plan.s);
    if (!applied.ok()) return applied.status().WithContext("smoothing the input of " + group.layers[0].node_name);
    plan.folded_into = applied->folded_into;
  }

  auto base_report = [&](const LinearLayer& l, const GroupPlan& plan, const std::string& scheme) {
    LayerReport r = StartLayerReport(l, Name(), scheme);
    if (!plan.s.empty())
      r.notes.push_back("smoothed with alpha " + FormatDouble("%g", o.alpha) + " (s in [" +
                        FormatDouble("%.3g", *std::min_element(plan.s.begin(), plan.s.end())) + ", " +
                        FormatDouble("%.3g", *std::max_element(plan.s.begin(), plan.s.end())) +
                        "]), 1/s folded into " + plan.folded_into);
    if (plan.floored > 0)
      r.notes.push_back(std::to_string(plan.floored) + " input channels nearly silent in calibration: max |x| raised "
                        "to 0.1 x the median channel's");
    return r;
  };

  const std::vector<LinearLayer> layers = FindLinearLayers(model.graph);
  if (!context.quantize_weights) {
    for (const LinearLayer& l : layers) {
      auto it = group_of_output.find(model.graph.nodes[l.node_index].outputs[0]);
      if (it == group_of_output.end() || plans[it->second].s.empty()) continue;
      LayerReport r = base_report(l, plans[it->second], "smoothed");
      r.notes.push_back("weights left in float for the next pass to quantize");
      context.layers->push_back(std::move(r));
    }
    return Status::Ok();
  }

  // Quantize group by group on the smoothed float model (Calibrator::RunSequential over the first
  // kW8A8ErrorWindows windows, float weights kept): each layer's error as a whole W8A8 layer,
  // activation rounding included, is measured on its input while that is at hand, the weight
  // rounding alone from the Hessian of the same tokens, and the layer put in place. Only one
  // group's input statistics exist at a time (docs/MEMORY.md).
  std::vector<LinearLayer> targets;
  for (const LinearLayer& l : layers)
    if (group_of_output.count(model.graph.nodes[l.node_index].outputs[0]) && !filter.Excluded(l)) targets.push_back(l);
  if (targets.empty()) return Status::Ok();
  const Calibrator measuring = context.calibrator->FirstWindows(kW8A8ErrorWindows);
  QC_ASSIGN_OR_RETURN(W8A8Rewriter rewriter, W8A8Rewriter::Create(model));
  std::map<int, LayerReport> reports;  // by node index: emitted in layer order
  StatsRequest request;
  request.hessian = true;
  request.host_windows = kW8A8ErrorWindows;  // MeasureW8A8Error reads X on the CPU
  SequentialVisitor visit = [&](const LayerGroup& group, const InputStats& st,
                                const std::vector<const Tensor*>& inputs) -> StatusOr<GroupWeights> {
    for (const LinearLayer& l : group.layers) {
      const auto start = std::chrono::steady_clock::now();
      const GroupPlan& plan = plans[group_of_output.at(model.graph.nodes[l.node_index].outputs[0])];
      QC_ASSIGN_OR_RETURN(std::vector<float> w, ReadLinearWeight(model.graph, l));
      const Int8Weight q = QuantizeWeightInt8(w, l.k, l.n);
      const std::vector<float> w_hat = q.Dequantize();
      QC_ASSIGN_OR_RETURN(const OutputError measured, MeasureW8A8Error(inputs, {&w, &q, {}}));
      // The weight rounding alone; X is the smoothed input here, so H is that of X / s.
      const OutputError weight_only = OutputErrorFromHessian(st.hessian, l.k, w, w_hat, l.n);
      LayerReport r = base_report(l, plan, "w8a8");
      r.bits = 8;
      r.group_size = -1;
      r.weight_rel_error = RelativeError(w, w_hat);
      r.output_rel_error = measured.rel_error;
      r.sqnr_db = measured.sqnr_db;
      r.notes.push_back("output error measured on " + std::to_string(inputs.size()) +
                        " calibration windows with int8 weights and per-token int8 activations; the weight rounding "
                        "alone gives " + FormatDouble("%.3g", weight_only.rel_error) + " (from the Hessian)");
      if (l.tied) r.notes.push_back("tied to an embedding Gather, which keeps reading the float table");
      QC_RETURN_IF_ERROR(rewriter.Replace(l, q, "qconvert smoothquant w8a8 alpha=" + FormatDouble("%g", o.alpha))
                             .WithContext("quantizing " + l.node_name));
      r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      reports[l.node_index] = std::move(r);
    }
    return GroupWeights(group.layers.size());  // empty: later groups see the smoothed float model
  };
  QC_RETURN_IF_ERROR(measuring.RunSequential(model, targets, request, visit));
  for (const LinearLayer& l : targets)
    if (!reports.count(l.node_index)) return Internal("calibration never reached layer " + l.node_name);
  rewriter.Finish();
  for (auto& [index, r] : reports) context.layers->push_back(std::move(r));
  return Status::Ok();
}

std::unique_ptr<Pass> CreateSmoothQuantPass() { return std::make_unique<SmoothQuantPass>(); }

}  // namespace qc
