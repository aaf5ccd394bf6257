// `outlier-split`: LLM.int8 mixed-precision decomposition with W8A8 for the rest (see outlier_split.h).
#include "passes/outlier_split.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>

#include "passes/int8_linear.h"
#include "passes/weight_quant.h"

namespace qc {

std::vector<int64_t> SelectOutlierChannels(const InputStats& stats, double min_token_fraction,
                                           double max_channel_fraction) {
  QC_CHECK(static_cast<int64_t>(stats.outlier_count.size()) == stats.k);
  const int64_t min_count =
      std::max<int64_t>(1, static_cast<int64_t>(std::ceil(min_token_fraction * static_cast<double>(stats.rows))));
  std::vector<int64_t> candidates;
  for (int64_t j = 0; j < stats.k; ++j)
    if (stats.outlier_count[j] >= min_count) candidates.push_back(j);
  // Keep the most frequent (then the largest) when the cap binds; never all of K.
  const int64_t cap = std::min<int64_t>(stats.k - 1, static_cast<int64_t>(max_channel_fraction * stats.k));
  if (static_cast<int64_t>(candidates.size()) > cap) {
    std::stable_sort(candidates.begin(), candidates.end(), [&](int64_t a, int64_t b) {
      if (stats.outlier_count[a] != stats.outlier_count[b]) return stats.outlier_count[a] > stats.outlier_count[b];
      return stats.abs_max[a] > stats.abs_max[b];
    });
    candidates.resize(std::max<int64_t>(cap, 0));
    std::sort(candidates.begin(), candidates.end());
  }
  return candidates;
}

Status OutlierSplitPass::Run(Model& model, PassContext& context) {
  QC_CHECK(context.layers != nullptr);
  const QuantOptions& o = context.options;
  if (context.calibrator == nullptr)
    return InvalidArgument("outlier-split needs calibration data: pass --calib TEXT (with --tokenizer) so the "
                           "outlier input channels can be found");
  if (!(o.threshold > 0.0 && std::isfinite(o.threshold)))
    return InvalidArgument("--threshold (outlier-split activation magnitude) must be > 0, got " +
                           std::to_string(o.threshold));
  QC_ASSIGN_OR_RETURN(LayerFilter filter, W8A8LayerFilter(o));
  QC_ASSIGN_OR_RETURN(W8A8Rewriter rewriter, W8A8Rewriter::Create(model));

  std::vector<LinearLayer> targets;
  for (const LinearLayer& l : FindLinearLayers(model.graph)) {
    if (filter.Excluded(l)) continue;
    if (auto reason = MatMulNBitsUnsupportedReason(model.graph, l)) {
      LayerReport r = StartLayerReport(l, Name(), "float");
      r.notes.push_back("left in float: " + *reason);
      context.layers->push_back(std::move(r));
      continue;
    }
    targets.push_back(l);
  }
  if (targets.empty()) return Status::Ok();

  // One float pass, one group at a time: the group's outliers are chosen from its statistics, its
  // layers split, quantized, measured on its input and put in place, before the next group.
  StatsRequest request;
  request.hessian = true;
  request.outlier_threshold = o.threshold;
  request.host_windows = kW8A8ErrorWindows;  // MeasureW8A8Error reads X on the CPU
  char threshold_text[32];
  std::snprintf(threshold_text, sizeof(threshold_text), "%g", o.threshold);
  std::map<int, LayerReport> reports;  // by node index: emitted in layer order
  SequentialVisitor visit = [&](const LayerGroup& group, const InputStats& st,
                                const std::vector<const Tensor*>& inputs) -> StatusOr<GroupWeights> {
    const std::vector<int64_t> outliers = SelectOutlierChannels(st);
    std::vector<bool> is_outlier(st.k, false);
    for (int64_t c : outliers) is_outlier[c] = true;
    int64_t exceeding = 0;
    for (int64_t c : st.outlier_count) exceeding += c > 0;
    const std::vector<const Tensor*> measured_on(inputs.begin(),
                                                 inputs.begin() + std::min(inputs.size(), kW8A8ErrorWindows));
    for (const LinearLayer& l : group.layers) {
      const auto start = std::chrono::steady_clock::now();
      QC_ASSIGN_OR_RETURN(std::vector<float> w, ReadLinearWeight(model.graph, l));
      // Split W by rows: W_O float, W_R int8 per output channel over the rows R only.
      std::vector<float> w_o, w_r;
      w_r.reserve((l.k - outliers.size()) * l.n);
      for (int64_t row = 0; row < l.k; ++row) {
        std::vector<float>& to = is_outlier[row] ? w_o : w_r;
        to.insert(to.end(), w.begin() + row * l.n, w.begin() + (row + 1) * l.n);
      }
      const Int8Weight q = QuantizeWeightInt8(w_r, l.k - static_cast<int64_t>(outliers.size()), l.n);
      std::vector<float>().swap(w_r);
      // W~: the rows R dequantized, the rows O exact.
      const std::vector<float> w_r_hat = q.Dequantize();
      std::vector<float> w_hat = w;
      for (int64_t row = 0, ri = 0; row < l.k; ++row)
        if (!is_outlier[row]) {
          std::copy(w_r_hat.begin() + ri * l.n, w_r_hat.begin() + (ri + 1) * l.n, w_hat.begin() + row * l.n);
          ++ri;
        }
      QC_ASSIGN_OR_RETURN(const OutputError measured, MeasureW8A8Error(measured_on, {&w, &q, outliers}));
      const OutputError weight_only = OutputErrorFromHessian(st.hessian, l.k, w, w_hat, l.n);
      LayerReport r = StartLayerReport(l, Name(), "int8+outliers");
      r.bits = 8;
      r.group_size = -1;
      r.outliers_kept = static_cast<int64_t>(outliers.size());
      r.weight_rel_error = RelativeError(w, w_hat);
      r.output_rel_error = measured.rel_error;
      r.sqnr_db = measured.sqnr_db;
      char weight_only_text[32];
      std::snprintf(weight_only_text, sizeof(weight_only_text), "%.3g", weight_only.rel_error);
      r.notes.push_back(std::to_string(outliers.size()) + " of " + std::to_string(l.k) +
                        " input channels kept in float (" + std::to_string(exceeding) + " exceed |x| > " +
                        threshold_text + " at least once in calibration)");
      r.notes.push_back("output error measured on " + std::to_string(measured_on.size()) +
                        " calibration windows with int8 weights and per-token int8 activations; the weight rounding "
                        "alone gives " + std::string(weight_only_text) + " (from the Hessian)");
      if (l.tied) r.notes.push_back("tied to an embedding Gather, which keeps reading the float table");
      QC_RETURN_IF_ERROR(rewriter
                             .ReplaceWithOutliers(l, outliers, w_o, q,
                                                  "qconvert outlier-split int8+outliers threshold=" +
                                                      std::string(threshold_text))
                             .WithContext("quantizing " + l.node_name));
      r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      reports[l.node_index] = std::move(r);
    }
    return GroupWeights(group.layers.size());  // empty: later groups see the float model's inputs
  };
  QC_RETURN_IF_ERROR(context.calibrator->RunSequential(model, targets, request, visit));
  for (const LinearLayer& l : targets)
    if (!reports.count(l.node_index)) return Internal("calibration never reached layer " + l.node_name);
  rewriter.Finish();
  for (auto& [index, r] : reports) context.layers->push_back(std::move(r));
  return Status::Ok();
}

std::unique_ptr<Pass> CreateOutlierSplitPass() { return std::make_unique<OutlierSplitPass>(); }

}  // namespace qc
