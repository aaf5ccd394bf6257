// `awq`: activation-aware scaling search, clipping search and round-to-nearest (see awq.h).
#include "passes/awq.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <Eigen/Dense>

#include "calibrate/calibrator.h"
#include "passes/channel_scaling.h"
#include "passes/weight_quant.h"
#include "runtime/cpu/gemm_core.h"

namespace qc {
namespace {

std::string Format(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), fmt, v);
  return buf;
}

// H_s = diag(1/s) H diag(1/s): the Hessian of the scaled input X diag(s)^-1, in float32 for the
// searches (they only compare candidates; the report uses the float64 H).
std::vector<float> ScaledHessian(const std::vector<double>& h, const std::vector<float>& s) {
  const int64_t k = static_cast<int64_t>(s.size());
  std::vector<float> h_s(k * k);
  for (int64_t a = 0; a < k; ++a)
    for (int64_t b = 0; b < k; ++b) h_s[a * k + b] = static_cast<float>(h[a * k + b] / (static_cast<double>(s[a]) * s[b]));
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
std::vector<float> SearchClip(const std::vector<float>& w, int64_t k, int64_t n, const WeightQuantSpec& spec,
                              const std::vector<float>& h_s, double* mean_shrink) {
  using MatrixRM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const int64_t rows = GroupRows(spec, k), groups = (k + rows - 1) / rows;
  const int steps = static_cast<int>(kAwqMaxShrink * kAwqClipGrid);
  const Eigen::Map<const MatrixRM> h(h_s.data(), k, k);
  std::vector<float> max_val(n * groups);
  std::vector<float> wt(k * n);
  for (int64_t r = 0; r < k; ++r)
    for (int64_t j = 0; j < n; ++j) wt[j * k + r] = w[r * n + j];
  double shrink_sum = 0;
#pragma omp parallel for schedule(dynamic, 8) reduction(+ : shrink_sum)
  for (int64_t j = 0; j < n; ++j) {
    const float* wj = wt.data() + j * k;
    // d.col(c) rows [k0, k0 + count): group g's error with candidate c; hd: H_gg d per group.
    Eigen::MatrixXf d(k, steps), hd(k, steps);
    std::vector<float> amax(groups);
    std::vector<int> choice(groups);
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t k0 = g * rows, count = std::min(rows, k - k0);
      for (int64_t i = 0; i < count; ++i) amax[g] = std::max(amax[g], std::fabs(wj[k0 + i]));
      for (int c = 0; c < steps; ++c) {
        const GroupParams p = ClippedParams(wj + k0, count, amax[g] * (1.0f - static_cast<float>(c) / kAwqClipGrid), spec);
        for (int64_t i = 0; i < count; ++i)
          d(k0 + i, c) = wj[k0 + i] - DequantizeValue(QuantizeValue(wj[k0 + i], p, spec.bits), p);
      }
      hd.middleRows(k0, count).noalias() = h.block(k0, k0, count, count) * d.middleRows(k0, count);
      int best = 0;
      float best_err = std::numeric_limits<float>::infinity();
      for (int c = 0; c < steps; ++c) {
        const float err = d.col(c).segment(k0, count).dot(hd.col(c).segment(k0, count));
        if (err < best_err) best_err = err, best = c;  // strict: ties keep the wider range
      }
      choice[g] = best;
    }
    Eigen::VectorXf delta(k), delta_rtn(k);
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t k0 = g * rows, count = std::min(rows, k - k0);
      delta.segment(k0, count) = d.col(choice[g]).segment(k0, count);
      delta_rtn.segment(k0, count) = d.col(0).segment(k0, count);
    }
    Eigen::VectorXf u = h * delta;  // H δ, kept up to date as groups change
    for (int sweep = 0; sweep < 2 && groups > 1; ++sweep) {
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t k0 = g * rows, count = std::min(rows, k - k0);
        // r = (H δ)_g without the group's own block: what the other groups contribute.
        const Eigen::VectorXf r = u.segment(k0, count) - hd.col(choice[g]).segment(k0, count);
        int best = choice[g];
        float best_err = std::numeric_limits<float>::infinity();
        for (int c = 0; c < steps; ++c) {
          const auto dc = d.col(c).segment(k0, count);
          const float err = dc.dot(hd.col(c).segment(k0, count)) + 2.0f * dc.dot(r);
          if (err < best_err) best_err = err, best = c;
        }
        if (best == choice[g]) continue;
        const Eigen::VectorXf change = d.col(best).segment(k0, count) - d.col(choice[g]).segment(k0, count);
        u.noalias() += h.middleCols(k0, count) * change;
        delta.segment(k0, count) = d.col(best).segment(k0, count);
        choice[g] = best;
      }
    }
    if (delta_rtn.dot(h * delta_rtn) <= delta.dot(u)) std::fill(choice.begin(), choice.end(), 0);
    for (int64_t g = 0; g < groups; ++g) {
      const float keep = 1.0f - static_cast<float>(choice[g]) / kAwqClipGrid;
      max_val[j * groups + g] = amax[g] * keep;
      shrink_sum += keep;
    }
  }
  *mean_shrink = shrink_sum / static_cast<double>(n * groups);
  return max_val;
}

// What phase 1 decided for one layer group.
struct GroupState {
  std::vector<double> hessian;  // H of the unscaled X, [k * k]
  std::vector<float> s;         // the applied scale (all ones when not scaled)
  std::vector<float> h_s;       // diag(1/s) H diag(1/s), float32
  std::string note;             // alpha, error ratio, where 1/s went
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

  const std::vector<LinearLayer> layers = FindLinearLayers(model.graph);
  const std::vector<LayerGroup> groups = GroupLayersByInput(layers);
  StatsRequest request;
  request.hessian = true;
  QC_ASSIGN_OR_RETURN(std::vector<InputStats> stats, context.calibrator->CollectStats(model, layers, request));
  QC_CHECK(stats.size() == groups.size());

  // Layers are tracked by their output value: node indices move when a Mul is inserted, outputs
  // never change.
  std::vector<std::vector<std::string>> group_outputs(groups.size());
  for (size_t gi = 0; gi < groups.size(); ++gi)
    for (const LinearLayer& l : groups[gi].layers) group_outputs[gi].push_back(model.graph.nodes[l.node_index].outputs[0]);

  // Phase 1 (paper Sec. 3.2): per group, the scale of least quantized output error, applied in float.
  std::vector<GroupState> states(groups.size());
  std::map<std::string, size_t> group_of_output;
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    for (const std::string& o : group_outputs[gi]) group_of_output[o] = gi;
    GroupState& state = states[gi];
    const InputStats& st = stats[gi];
    const int64_t k = st.k;
    state.hessian = std::move(stats[gi].hessian);
    state.s.assign(k, 1.0f);
    QC_ASSIGN_OR_RETURN(LayerGroup group, CurrentGroup(model, group_outputs[gi]));
    std::vector<const LinearLayer*> targets;
    std::string skip;
    for (const LinearLayer& l : group.layers) {
      const std::optional<std::string> reason = MatMulNBitsUnsupportedReason(model.graph, l);
      if (reason) skip = "not scaled: " + *reason;
      else if (!filter.Excluded(l)) targets.push_back(&l);
    }
    if (targets.empty()) skip = "not scaled: no layer of the group is quantized";
    // Scaling a weight the embedding Gather also reads needs a second, scaled copy of the table,
    // and then the table can no longer be stored once with the head's codes (GatherBlockQuantized):
    // on docs-llama-12m that is 12.6 MB back in float for a head that --head-bits keeps at 8 bits.
    for (const LinearLayer* l : targets)
      if (l->tied) skip = "not scaled: the weight is the tied embedding table";
    if (!skip.empty()) {
      state.note = skip;
      state.h_s = ScaledHessian(state.hessian, state.s);
      continue;
    }
    std::vector<std::vector<float>> w(targets.size());
    for (size_t t = 0; t < targets.size(); ++t) {
      QC_ASSIGN_OR_RETURN(w[t], ReadLinearWeight(model.graph, *targets[t]));
    }
    std::vector<float> h(k * k);
    for (int64_t i = 0; i < k * k; ++i) h[i] = static_cast<float>(state.hessian[i]);
    // Output error of the group for one candidate s: Σ_layers tr(Δᵀ H Δ) with
    // Δ = W - diag(1/s) Q(diag(s) W).
    auto loss = [&](const std::vector<float>& s) -> StatusOr<double> {
      double total = 0;
      for (size_t t = 0; t < targets.size(); ++t) {
        const int64_t n = targets[t]->n;
        std::vector<float> ws(w[t]);
        for (int64_t r = 0; r < k; ++r)
          for (int64_t j = 0; j < n; ++j) ws[r * n + j] *= s[r];
        QC_ASSIGN_OR_RETURN(QuantizedWeight qw, QuantizeRtn(ws, k, n, filter.SpecFor(*targets[t], spec)));
        const std::vector<float> q = qw.Dequantize();
        std::vector<float> delta(k * n);
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
      StatusOr<ChannelScaleResult> r = ApplyInputChannelScale(model, group, best_s);
      if (!r.ok()) return r.status().WithContext("awq: scaling the input '" + group.input + "'");
      state.s = std::move(best_s);
      state.note += "; 1/s folded into " + r->folded_into;
    }
    state.h_s = ScaledHessian(state.hessian, state.s);
  }

  // Phase 2 (reference auto_clip + pseudo-quantize): clip search and rounding per layer.
  const std::vector<LinearLayer> scaled_layers = FindLinearLayers(model.graph);
  if (!context.quantize_weights) {
    for (const LinearLayer& l : scaled_layers) {
      auto it = group_of_output.find(model.graph.nodes[l.node_index].outputs[0]);
      if (it == group_of_output.end() || filter.Excluded(l)) continue;
      LayerReport r;
      r.name = l.node_name;
      r.weight = l.weight;
      r.k = l.k;
      r.n = l.n;
      r.pass = Name();
      r.scheme = "float";
      r.notes.push_back("scaled only (a later pass quantizes): " + states[it->second].note);
      context.layers->push_back(std::move(r));
    }
    return Status::Ok();
  }
  const std::set<int> query_key = QueryKeyLayers(model.graph, scaled_layers);
  MatMulNBitsRewriter rewriter(model);
  for (const LinearLayer& l : scaled_layers) {
    if (filter.Excluded(l)) continue;
    auto it = group_of_output.find(model.graph.nodes[l.node_index].outputs[0]);
    if (it == group_of_output.end()) return Internal("awq: layer '" + l.node_name + "' appeared while scaling");
    const GroupState& state = states[it->second];
    const auto start = std::chrono::steady_clock::now();
    const WeightQuantSpec layer_spec = filter.SpecFor(l, spec);
    const std::string scheme = SchemeName(layer_spec);
    LayerReport r = WeightOnlyLayerReport(model.graph, l, Name(), scheme, layer_spec);
    if (r.bits == 0) {  // MatMulNBits cannot encode it; the report says why
      context.layers->push_back(std::move(r));
      continue;
    }
    QC_ASSIGN_OR_RETURN(std::vector<float> w_s, ReadLinearWeight(model.graph, l));
    std::vector<float> max_val;
    std::string clip_note = "no clipping (query/key projection, as in the reference)";
    if (!query_key.count(l.node_index)) {
      double mean_shrink = 1;
      max_val = SearchClip(w_s, l.k, l.n, layer_spec, state.h_s, &mean_shrink);
      clip_note = "clip search: mean max|w| kept " + Format("%.3f", mean_shrink);
    }
    const QuantizedWeight qw = QuantizeClipped(w_s, l.k, l.n, layer_spec, max_val);
    const std::vector<float> w_hat = qw.Dequantize();
    r.weight_rel_error = RelativeError(w_s, w_hat);
    // ||X W - X W~|| with X W = (X / s)(diag(s) W): the scaled weight against H_s.
    std::vector<double> h_s(state.hessian.size());
    for (int64_t a = 0; a < l.k; ++a)
      for (int64_t b = 0; b < l.k; ++b)
        h_s[a * l.k + b] = state.hessian[a * l.k + b] / (static_cast<double>(state.s[a]) * state.s[b]);
    const OutputError e = OutputErrorFromHessian(h_s, l.k, w_s, w_hat, l.n);
    r.output_rel_error = e.rel_error;
    r.sqnr_db = e.sqnr_db;
    r.notes.push_back(state.note);
    r.notes.push_back(clip_note);
    QC_RETURN_IF_ERROR(rewriter.Replace(l, qw, "qconvert awq " + scheme).WithContext("quantizing " + l.node_name));
    AddWeightNotes(l, layer_spec, r);
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    context.layers->push_back(std::move(r));
  }
  rewriter.Finish();
  return Status::Ok();
}

std::unique_ptr<Pass> CreateAwqPass() { return std::make_unique<AwqPass>(); }

}  // namespace qc
