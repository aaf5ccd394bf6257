// `awq`: activation-aware scaling search, clipping search and round-to-nearest (see awq.h).
#include "passes/awq.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <Eigen/Dense>

#include "calibrate/calibrator.h"
#include "passes/channel_scaling.h"
#include "passes/hessian_product_cuda.h"
#include "passes/weight_quant.h"
#include "runtime/cpu/gemm_core.h"

namespace qc {
namespace {

std::string Format(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), fmt, v);
  return buf;
}

// H_s = diag(1/s) H diag(1/s): the Hessian of the scaled input X diag(s)^-1.
std::vector<double> ScaledHessian(const std::vector<double>& h, const std::vector<float>& s) {
  const int64_t k = static_cast<int64_t>(s.size());
  std::vector<double> h_s(k * k);
  for (int64_t a = 0; a < k; ++a)
    for (int64_t b = 0; b < k; ++b) h_s[a * k + b] = h[a * k + b] / (static_cast<double>(s[a]) * s[b]);
  return h_s;
}

// tr(Δᵀ H Δ) for Δ [k, n] row-major: the output squared error up to the factor rows / 2.
double Quadratic(const std::vector<float>& h, const std::vector<float>& delta, int64_t k, int64_t n) {
  std::vector<float> hd(k * n);
  GemmF32(false, false, k, n, k, 1.0f, h.data(), k, delta.data(), n, 0.0f, hd.data(), n, /*threaded=*/true);
  double sum = 0;
  for (int64_t i = 0; i < k * n; ++i) sum += static_cast<double>(delta[i]) * hd[i];
  return sum;
}

// AWQ's per-channel scale for ratio alpha (reference auto_scale: x_max.pow(ratio).clamp(min=1e-4),
// then divided by sqrt(max * min) so the scales straddle 1).
std::vector<float> ScalesForAlpha(const std::vector<double>& x_mean, double alpha) {
  std::vector<float> s(x_mean.size());
  double lo = std::numeric_limits<double>::infinity(), hi = 0;
  std::vector<double> raw(x_mean.size());
  for (size_t c = 0; c < x_mean.size(); ++c) {
    raw[c] = std::max(std::pow(x_mean[c], alpha), 1e-4);
    lo = std::min(lo, raw[c]);
    hi = std::max(hi, raw[c]);
  }
  const double norm = std::sqrt(hi * lo);
  for (size_t c = 0; c < x_mean.size(); ++c) s[c] = static_cast<float>(raw[c] / norm);
  return s;
}

// The node indices of the layers whose output reaches a Softmax before any other linear layer:
// the query and key projections (Q Kᵀ feeds the attention softmax; V only meets it in P·V).
// The reference leaves these unclipped, since their error acts through the softmax, which the
// layer's output error does not measure. Found structurally: exports often anonymise names.
std::set<int> QueryKeyLayers(const Graph& g, const std::vector<LinearLayer>& layers) {
  std::map<std::string, std::vector<int>> readers;
  for (size_t i = 0; i < g.nodes.size(); ++i)
    for (const std::string& in : g.nodes[i].inputs)
      if (!in.empty()) readers[in].push_back(static_cast<int>(i));
  std::set<int> linear;
  for (const LinearLayer& l : layers) linear.insert(l.node_index);
  std::set<int> result;
  for (const LinearLayer& l : layers) {
    std::vector<std::pair<std::string, int>> queue = {{g.nodes[l.node_index].outputs[0], 0}};
    std::set<std::string> seen;
    bool softmax = false;
    // 32 nodes is beyond any rotary embedding + score path of the exporters; it bounds the walk.
    for (size_t q = 0; q < queue.size() && !softmax; ++q) {
      const auto [value, depth] = queue[q];
      if (depth > 32 || !seen.insert(value).second) continue;
      for (int r : readers[value]) {
        const Node& n = g.nodes[r];
        if (linear.count(r) || n.op_type == "MatMulNBits") continue;
        if (n.op_type == "Softmax") softmax = true;
        for (const std::string& o : n.outputs)
          if (!o.empty()) queue.emplace_back(o, depth + 1);
      }
    }
    if (softmax) result.insert(l.node_index);
  }
  return result;
}

// Rows per group and group count along K.
int64_t GroupRows(const WeightQuantSpec& spec, int64_t k) { return spec.group_size == -1 ? k : spec.group_size; }

// Group parameters for column group w[0..count) with its range clipped to [-max_val, max_val]
// (reference apply_clip: torch.clamp(w, -max_val, max_val) before quantizing).
GroupParams ClippedParams(const float* w, int64_t count, float max_val, const WeightQuantSpec& spec) {
  float lo = std::numeric_limits<float>::infinity(), hi = -lo;
  for (int64_t i = 0; i < count; ++i) lo = std::min(lo, w[i]), hi = std::max(hi, w[i]);
  return ParamsFromRange(std::max(lo, -max_val), std::min(hi, max_val), spec.bits, spec.sym);
}

// Round-to-nearest of W [k, n] with per (column, group) clip values `max_val` [n][groups]
// (empty: no clipping), in QuantizeRtn's layout.
QuantizedWeight QuantizeClipped(const std::vector<float>& w, int64_t k, int64_t n, const WeightQuantSpec& spec,
                                const std::vector<float>& max_val) {
  QuantizedWeight qw;
  qw.bits = spec.bits;
  qw.k = k;
  qw.n = n;
  qw.block_size = BlockSizeFor(spec.group_size, k);
  qw.group_size = spec.group_size;
  const int64_t rows = GroupRows(spec, k), bs = qw.block_size, nb = qw.n_blocks(), groups = (k + rows - 1) / rows;
  qw.q.resize(k * n);
  qw.scales.resize(n * nb);
  if (!spec.sym) qw.zero_points.resize(n * nb);
  std::vector<float> wt(k * n);  // W^T: each group contiguous
  for (int64_t r = 0; r < k; ++r)
    for (int64_t j = 0; j < n; ++j) wt[j * k + r] = w[r * n + j];
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t k0 = g * rows, count = std::min(rows, k - k0);
      const float* group = wt.data() + j * k + k0;
      const GroupParams p = max_val.empty() ? ComputeGroupParams(group, count, 1, spec)
                                            : ClippedParams(group, count, max_val[j * groups + g], spec);
      for (int64_t b = k0 / bs; b <= (k0 + count - 1) / bs; ++b) {
        qw.scales[j * nb + b] = p.scale;
        if (!spec.sym) qw.zero_points[j * nb + b] = static_cast<uint8_t>(p.zero_point);
      }
      QuantizeGroup(group, count, 1, p, spec.bits, qw.q.data() + j * k + k0, nullptr);
    }
  }
  return qw;
}

// Reference auto_clip_layer, with the exact output error of each output column j instead of the
// reference's per-group partial outputs on sampled tokens: per (column, group) the clip value is
// max|w| * (1 - i / n_grid), i < max_shrink * n_grid, chosen to minimise δ_jᵀ H_s δ_j (δ_j the
// column's rounding error). Start from each group on its own (the diagonal block H_gg, as the
// reference scores groups), then two sweeps of coordinate descent over the groups with the
// cross terms 2 δ_gᵀ (H δ)_{g, others}; a column keeps no clipping when that is better still.
// Returns max_val [n][groups].
//
// H δ_j for every column is one GEMM per chunk of columns rather than a matrix-vector product per
// column: each of those streamed all of H from memory (127 MB at K = 5632), 3 times per column.
// With `gpu` (holding h_s) those GEMMs run on the GPU.
StatusOr<std::vector<float>> SearchClip(const std::vector<float>& w, int64_t k, int64_t n, const WeightQuantSpec& spec,
                                        const std::vector<float>& h_s, HessianProductCuda* gpu, double* mean_shrink) {
  using MatrixRM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const int64_t rows = GroupRows(spec, k), groups = (k + rows - 1) / rows;
  const int steps = static_cast<int>(kAwqMaxShrink * kAwqClipGrid);
  const Eigen::Map<const MatrixRM> h(h_s.data(), k, k);
  std::vector<float> max_val(n * groups);
  std::vector<float> wt(k * n);
  for (int64_t r = 0; r < k; ++r)
    for (int64_t j = 0; j < n; ++j) wt[j * k + r] = w[r * n + j];
  // One column's candidates: d.col(c) rows [k0, k0 + count) is group g's error with candidate c,
  // hd the same times the group's own block H_gg; amax the groups' max |w|.
  auto candidates = [&](int64_t j, Eigen::MatrixXf& d, Eigen::MatrixXf& hd, std::vector<float>& amax) {
    const float* wj = wt.data() + j * k;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t k0 = g * rows, count = std::min(rows, k - k0);
      amax[g] = 0;
      for (int64_t i = 0; i < count; ++i) amax[g] = std::max(amax[g], std::fabs(wj[k0 + i]));
      for (int c = 0; c < steps; ++c) {
        const GroupParams p = ClippedParams(wj + k0, count, amax[g] * (1.0f - static_cast<float>(c) / kAwqClipGrid), spec);
        for (int64_t i = 0; i < count; ++i)
          d(k0 + i, c) = wj[k0 + i] - DequantizeValue(QuantizeValue(wj[k0 + i], p, spec.bits), p);
      }
      hd.middleRows(k0, count).noalias() = h.block(k0, k0, count, count) * d.middleRows(k0, count);
    }
  };
  constexpr int64_t kChunk = 256;  // columns per GEMM: 4 x K x 256 floats of buffers
  MatrixRM delta(std::min(n, kChunk), k), delta_rtn(delta.rows(), k), u(delta.rows(), k), u_rtn(delta.rows(), k);
  std::vector<std::vector<int>> choice(std::min(n, kChunk), std::vector<int>(groups));
  double shrink_sum = 0;
  for (int64_t j0 = 0; j0 < n; j0 += kChunk) {
    const int64_t cols = std::min(kChunk, n - j0);
    // Each group on its own.
#pragma omp parallel for schedule(dynamic, 8)
    for (int64_t jc = 0; jc < cols; ++jc) {
      Eigen::MatrixXf d(k, steps), hd(k, steps);
      std::vector<float> amax(groups);
      candidates(j0 + jc, d, hd, amax);
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t k0 = g * rows, count = std::min(rows, k - k0);
        int best = 0;
        float best_err = std::numeric_limits<float>::infinity();
        for (int c = 0; c < steps; ++c) {
          const float err = d.col(c).segment(k0, count).dot(hd.col(c).segment(k0, count));
          if (err < best_err) best_err = err, best = c;  // strict: ties keep the wider range
        }
        choice[jc][g] = best;
        delta.row(jc).segment(k0, count) = d.col(best).segment(k0, count).transpose();
        delta_rtn.row(jc).segment(k0, count) = d.col(0).segment(k0, count).transpose();
      }
    }
    // (H δ)ᵀ for the chunk's columns: δᵀ H, H symmetric.
    if (gpu) {
      QC_RETURN_IF_ERROR(gpu->Multiply(delta.data(), cols, u.data()));
      QC_RETURN_IF_ERROR(gpu->Multiply(delta_rtn.data(), cols, u_rtn.data()));
    } else {
      GemmF32(false, false, cols, k, k, 1.0f, delta.data(), k, h_s.data(), k, 0.0f, u.data(), k, /*threaded=*/true);
      GemmF32(false, false, cols, k, k, 1.0f, delta_rtn.data(), k, h_s.data(), k, 0.0f, u_rtn.data(), k, true);
    }
    // Coordinate descent over the groups with the cross terms.
#pragma omp parallel for schedule(dynamic, 8) reduction(+ : shrink_sum)
    for (int64_t jc = 0; jc < cols; ++jc) {
      const int64_t j = j0 + jc;
      Eigen::MatrixXf d(k, steps), hd(k, steps);
      std::vector<float> amax(groups);
      candidates(j, d, hd, amax);
      std::vector<int>& chosen = choice[jc];
      Eigen::VectorXf uj = u.row(jc).transpose();  // H δ, kept up to date as groups change
      Eigen::VectorXf dj = delta.row(jc).transpose();
      for (int sweep = 0; sweep < 2 && groups > 1; ++sweep) {
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t k0 = g * rows, count = std::min(rows, k - k0);
          // r = (H δ)_g without the group's own block: what the other groups contribute.
          const Eigen::VectorXf r = uj.segment(k0, count) - hd.col(chosen[g]).segment(k0, count);
          int best = chosen[g];
          float best_err = std::numeric_limits<float>::infinity();
          for (int c = 0; c < steps; ++c) {
            const auto dc = d.col(c).segment(k0, count);
            const float err = dc.dot(hd.col(c).segment(k0, count)) + 2.0f * dc.dot(r);
            if (err < best_err) best_err = err, best = c;
          }
          if (best == chosen[g]) continue;
          const Eigen::VectorXf change = d.col(best).segment(k0, count) - d.col(chosen[g]).segment(k0, count);
          uj.noalias() += h.middleCols(k0, count) * change;
          dj.segment(k0, count) = d.col(best).segment(k0, count);
          chosen[g] = best;
        }
      }
      if (delta_rtn.row(jc).dot(u_rtn.row(jc)) <= dj.dot(uj)) std::fill(chosen.begin(), chosen.end(), 0);
      for (int64_t g = 0; g < groups; ++g) {
        const float keep = 1.0f - static_cast<float>(chosen[g]) / kAwqClipGrid;
        max_val[j * groups + g] = amax[g] * keep;
        shrink_sum += keep;
      }
    }
  }
  *mean_shrink = shrink_sum / static_cast<double>(n * groups);
  return max_val;
}

// What the scale search decided for one layer group; kept until its last layer is quantized.
struct GroupState {
  std::vector<double> h_s;      // diag(1/s) H diag(1/s) for the applied s, [k * k]: the reports
  std::vector<float> h_s_f32;   // the same in float32 for the clip search (it only compares)
  std::string note;             // alpha, error ratio, where 1/s went
  size_t layers_left = 0;       // layers of the group not quantized yet
};

// The layers of the current graph whose outputs are `outputs`, in node order, as one group.
StatusOr<LayerGroup> CurrentGroup(const Model& model, const std::vector<std::string>& outputs) {
  const std::set<std::string> wanted(outputs.begin(), outputs.end());
  LayerGroup group;
  for (const LinearLayer& l : FindLinearLayers(model.graph))
    if (wanted.count(model.graph.nodes[l.node_index].outputs[0])) group.layers.push_back(l);
  if (group.layers.size() != outputs.size()) return Internal("awq: a layer group changed while scaling");
  group.input = group.layers.front().input;
  return group;
}

// One run of the pass: the scale search per group (paper Sec. 3.2), then, once no later group
// folds its 1/s into a layer, that layer's clip search and rounding (reference auto_clip +
// pseudo-quantize).
class AwqRun {
 public:
  AwqRun(Model& model, PassContext& context, const WeightQuantSpec& spec, const LayerFilter& filter, const char* name)
      : model_(model), context_(context), spec_(spec), filter_(filter), name_(name) {}

  Status Run() {
    const std::vector<LinearLayer> layers = FindLinearLayers(model_.graph);
    const std::vector<LayerGroup> groups = GroupLayersByInput(layers);
    // Layers are tracked by their output value: node indices move when a Mul is inserted, outputs
    // never change.
    states_.resize(groups.size());
    // --device cuda: the searches' products with the Hessians run on the GPU.
    if (context_.calibrator->device() == Device::kCuda) {
      QC_ASSIGN_OR_RETURN(gpu_, HessianProductCuda::Create());
    }
    group_outputs_.resize(groups.size());
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      group_index_[groups[gi].input] = gi;
      for (const LinearLayer& l : groups[gi].layers) {
        const std::string& out = model_.graph.nodes[l.node_index].outputs[0];
        group_outputs_[gi].push_back(out);
        layer_order_.push_back(out);
      }
    }
    // A layer is quantized once its own group and every group that folds 1/s into its output
    // columns (v_proj waits for o_proj, up_proj for down_proj) have been scaled. Predicted on
    // the float model; if the numeric probe later rejects a fold, the wait was merely early.
    for (size_t gi = 0; gi < groups.size(); ++gi)
      if (std::optional<std::string> target = PlannedLinearFoldTarget(model_, groups[gi])) {
        ++folds_pending_[*target];
        fold_target_[gi] = *target;
      }
    for (int node : QueryKeyLayers(model_.graph, layers)) query_key_.insert(model_.graph.nodes[node].outputs[0]);

    // One float pass, group by group in execution order (the weights are kept float: AWQ searches
    // on the float model), so only the statistics of the groups in flight exist at a time.
    if (context_.quantize_weights) rewriter_.emplace(model_);
    StatsRequest request;
    request.hessian = true;
    SequentialVisitor visit = [&](const LayerGroup& group, const InputStats& stats,
                                  const std::vector<const Tensor*>&) -> StatusOr<GroupWeights> {
      const size_t gi = group_index_.at(group.input);
      QC_RETURN_IF_ERROR(ScaleGroup(gi, stats));
      if (auto it = fold_target_.find(gi); it != fold_target_.end()) --folds_pending_[it->second];
      for (const std::string& out : group_outputs_[gi]) pending_.push_back(out);
      QC_RETURN_IF_ERROR(QuantizeReadyLayers());
      return GroupWeights(group.layers.size());  // empty: later groups see the float model's inputs
    };
    QC_RETURN_IF_ERROR(context_.calibrator->RunSequential(model_, layers, request, visit));
    folds_pending_.clear();  // every group has been visited
    QC_RETURN_IF_ERROR(QuantizeReadyLayers());
    if (rewriter_) rewriter_->Finish();
    for (const std::string& out : layer_order_)
      if (auto it = reports_.find(out); it != reports_.end()) context_.layers->push_back(std::move(it->second));
    return Status::Ok();
  }

 private:
  // Searches the group's scale on the grid and folds it into the model (in float: the function is
  // unchanged).
  Status ScaleGroup(size_t gi, const InputStats& st) {
    GroupState& state = states_[gi];
    const int64_t k = st.k;
    std::vector<float> applied(k, 1.0f);  // the scale folded in (all ones when not scaled)
    state.layers_left = group_outputs_[gi].size();
    QC_ASSIGN_OR_RETURN(LayerGroup group, CurrentGroup(model_, group_outputs_[gi]));
    std::vector<const LinearLayer*> targets;
    std::string skip;
    for (const LinearLayer& l : group.layers) {
      const std::optional<std::string> reason = MatMulNBitsUnsupportedReason(model_.graph, l);
      if (reason) skip = "not scaled: " + *reason;
      else if (!filter_.Excluded(l)) targets.push_back(&l);
    }
    if (targets.empty()) skip = "not scaled: no layer of the group is quantized";
    // Scaling a weight the embedding Gather also reads needs a second, scaled copy of the table,
    // and then the table can no longer be stored once with the head's codes (GatherBlockQuantized):
    // on docs-llama-12m that is 12.6 MB back in float for a head that --head-bits keeps at 8 bits.
    for (const LinearLayer* l : targets)
      if (l->tied) skip = "not scaled: the weight is the tied embedding table";
    if (skip.empty()) {
      std::vector<std::vector<float>> w(targets.size());
      for (size_t t = 0; t < targets.size(); ++t) {
        QC_ASSIGN_OR_RETURN(w[t], ReadLinearWeight(model_.graph, *targets[t]));
      }
      std::vector<float> h(k * k);
      for (int64_t i = 0; i < k * k; ++i) h[i] = static_cast<float>(st.hessian[i]);
      if (gpu_) QC_RETURN_IF_ERROR(gpu_->SetHessian(h, k));
      // Output error of the group for one candidate s: Σ_layers tr(Δᵀ H Δ) with
      // Δ = W - diag(1/s) Q(diag(s) W).
      auto loss = [&](const std::vector<float>& s) -> StatusOr<double> {
        double total = 0;
        for (size_t t = 0; t < targets.size(); ++t) {
          const int64_t n = targets[t]->n;
          std::vector<float> ws(w[t]);
          for (int64_t r = 0; r < k; ++r)
            for (int64_t j = 0; j < n; ++j) ws[r * n + j] *= s[r];
          QC_ASSIGN_OR_RETURN(QuantizedWeight qw, QuantizeRtn(ws, k, n, filter_.SpecFor(*targets[t], spec_)));
          const std::vector<float> q = qw.Dequantize();
          std::vector<float> delta(k * n);
          if (gpu_) {
            // Δᵀ [n, k]: one row per output column, as HessianProductCuda::Quadratic sums.
            for (int64_t r = 0; r < k; ++r)
              for (int64_t j = 0; j < n; ++j) delta[j * k + r] = w[t][r * n + j] - q[r * n + j] / s[r];
            QC_ASSIGN_OR_RETURN(const double quadratic, gpu_->Quadratic(delta.data(), n));
            total += quadratic;
            continue;
          }
          for (int64_t r = 0; r < k; ++r)
            for (int64_t j = 0; j < n; ++j) delta[r * n + j] = w[t][r * n + j] - q[r * n + j] / s[r];
          total += Quadratic(h, delta, k, n);
        }
        return total;
      };
      double best_alpha = 0, best_loss = std::numeric_limits<double>::infinity(), rtn_loss = 0;
      std::vector<float> best_s;
      for (int i = 0; i < kAwqScaleGrid; ++i) {
        const double alpha = static_cast<double>(i) / kAwqScaleGrid;
        std::vector<float> s = ScalesForAlpha(st.abs_mean, alpha);
        QC_ASSIGN_OR_RETURN(double l, loss(s));
        if (i == 0) rtn_loss = l;
        if (l < best_loss) {  // strict: ties keep the smaller alpha (alpha 0 is plain RTN)
          best_loss = l;
          best_alpha = alpha;
          best_s = std::move(s);
        }
      }
      state.note = "alpha " + Format("%.2f", best_alpha) + " (group output error " +
                   Format("%.3f", rtn_loss > 0 ? best_loss / rtn_loss : 1.0) + "x RTN's)";
      if (best_alpha > 0) {
        StatusOr<ChannelScaleResult> r = ApplyInputChannelScale(model_, group, best_s);
        if (!r.ok()) return r.status().WithContext("awq: scaling the input '" + group.input + "'");
        if (rewriter_) rewriter_->NoteGraphNames();
        applied = std::move(best_s);
        state.note += "; 1/s folded into " + r->folded_into;
      }
    } else {
      state.note = skip;
    }
    if (!context_.quantize_weights) {
      // `--pass awq,gptq`: scaled only; the next pass quantizes.
      QC_ASSIGN_OR_RETURN(LayerGroup scaled, CurrentGroup(model_, group_outputs_[gi]));
      for (const LinearLayer& l : scaled.layers) {
        if (filter_.Excluded(l)) continue;
        LayerReport r = StartLayerReport(l, name_, "float");
        r.notes.push_back("scaled only (a later pass quantizes): " + state.note);
        reports_[model_.graph.nodes[l.node_index].outputs[0]] = std::move(r);
      }
      state = GroupState{};
      return Status::Ok();
    }
    state.h_s = ScaledHessian(st.hessian, applied);
    state.h_s_f32.assign(state.h_s.begin(), state.h_s.end());
    return Status::Ok();
  }

  // Quantizes every pending layer that no group still to come folds into, in order.
  Status QuantizeReadyLayers() {
    if (!context_.quantize_weights) {
      pending_.clear();
      return Status::Ok();
    }
    std::vector<std::string> waiting;
    for (const std::string& out : pending_) {
      if (auto it = folds_pending_.find(out); it != folds_pending_.end() && it->second > 0) {
        waiting.push_back(out);
        continue;
      }
      QC_RETURN_IF_ERROR(QuantizeLayer(out));
    }
    pending_ = std::move(waiting);
    return Status::Ok();
  }

  // Clip search and rounding of the layer whose node writes `out`, then the MatMulNBits in place.
  Status QuantizeLayer(const std::string& out) {
    size_t gi = 0;
    while (std::find(group_outputs_[gi].begin(), group_outputs_[gi].end(), out) == group_outputs_[gi].end()) ++gi;
    GroupState& state = states_[gi];
    QC_ASSIGN_OR_RETURN(LayerGroup current, CurrentGroup(model_, {out}));
    const LinearLayer& l = current.layers.front();
    const bool last_of_group = --state.layers_left == 0;
    if (!filter_.Excluded(l)) {
      const auto start = std::chrono::steady_clock::now();
      const WeightQuantSpec layer_spec = filter_.SpecFor(l, spec_);
      const std::string scheme = SchemeName(layer_spec);
      LayerReport r = WeightOnlyLayerReport(model_.graph, l, name_, scheme, layer_spec);
      if (r.bits > 0) {
        QC_ASSIGN_OR_RETURN(std::vector<float> w_s, ReadLinearWeight(model_.graph, l));
        std::vector<float> max_val;
        std::string clip_note = "no clipping (query/key projection, as in the reference)";
        if (!query_key_.count(out)) {
          double mean_shrink = 1;
          if (gpu_) QC_RETURN_IF_ERROR(gpu_->SetHessian(state.h_s_f32, l.k));
          QC_ASSIGN_OR_RETURN(max_val, SearchClip(w_s, l.k, l.n, layer_spec, state.h_s_f32, gpu_.get(), &mean_shrink));
          clip_note = "clip search: mean max|w| kept " + Format("%.3f", mean_shrink);
        }
        const QuantizedWeight qw = QuantizeClipped(w_s, l.k, l.n, layer_spec, max_val);
        const std::vector<float> w_hat = qw.Dequantize();
        r.weight_rel_error = RelativeError(w_s, w_hat);
        // ||X W - X W~|| with X W = (X / s)(diag(s) W): the scaled weight against H_s.
        const OutputError e = OutputErrorFromHessian(state.h_s, l.k, w_s, w_hat, l.n);
        r.output_rel_error = e.rel_error;
        r.sqnr_db = e.sqnr_db;
        r.notes.push_back(state.note);
        r.notes.push_back(clip_note);
        QC_RETURN_IF_ERROR(rewriter_->Replace(l, qw, "qconvert awq " + scheme).WithContext("quantizing " + l.node_name));
        AddWeightNotes(l, layer_spec, r);
        r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      }
      reports_[out] = std::move(r);
    }
    if (last_of_group) state = GroupState{};  // its Hessians are no longer needed
    return Status::Ok();
  }

  Model& model_;
  PassContext& context_;
  const WeightQuantSpec spec_;
  const LayerFilter& filter_;
  const char* name_;
  std::vector<GroupState> states_;
  std::vector<std::vector<std::string>> group_outputs_;  // per group: its layers' output values
  std::map<std::string, size_t> group_index_;            // group input (as calibrated) -> group
  std::vector<std::string> layer_order_;                 // every layer's output, in node order
  std::map<size_t, std::string> fold_target_;            // group -> the layer it folds 1/s into
  std::map<std::string, int> folds_pending_;             // layer -> groups still to fold into it
  std::set<std::string> query_key_;                      // query/key projections: not clipped
  std::vector<std::string> pending_;                     // scaled layers not quantized yet
  std::optional<MatMulNBitsRewriter> rewriter_;
  std::unique_ptr<HessianProductCuda> gpu_;  // --device cuda
  std::map<std::string, LayerReport> reports_;           // by layer output
};

}  // namespace

Status AwqPass::Run(Model& model, PassContext& context) {
  QC_CHECK(context.layers != nullptr);
  if (context.calibrator == nullptr)
    return FailedPrecondition("awq needs calibration data to weigh input channels by their activations: give --calib "
                              "FILE (text with --tokenizer, or .npy ids)");
  WeightQuantSpec spec = SpecFromOptions(context.options, context.options.sym);
  spec.scale_search = false;  // AWQ's clip search takes the place of the per-group range search
  QC_RETURN_IF_ERROR(ValidateWeightQuantSpec(spec));
  QC_ASSIGN_OR_RETURN(LayerFilter filter, LayerFilter::Create(context.options.exclude_regex, context.options.head_bits));
  AwqRun run(model, context, spec, filter, Name());
  return run.Run();
}

std::unique_ptr<Pass> CreateAwqPass() { return std::make_unique<AwqPass>(); }

}  // namespace qc
