// `qconvert diff BASE.json NEW.json`: what changed per layer, worst regression first, and a gate
// (exit code 3) for build pipelines.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "converter/commands.h"
#include "formats/report.h"

namespace qc {
namespace {

// Percent change from `base` to `next`; NaN when either is unmeasured (-1). A metric that was 0
// and grew is an infinite increase.
double PercentChange(double base, double next) {
  if (base < 0 || next < 0) return NAN;
  if (base == 0) return next == 0 ? 0.0 : INFINITY;
  return 100.0 * (next - base) / base;
}

std::string Metric(double v) {
  if (v < 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.5f", v);
  return buf;
}

std::string Change(double pct) {
  if (std::isnan(pct)) return "-";
  if (std::isinf(pct)) return "+inf%";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%+.2f%%", pct);
  return buf;
}

struct Row {
  std::string name;
  const LayerReport* base = nullptr;
  const LayerReport* next = nullptr;
  double weight_change = NAN;
  double output_change = NAN;
  // The larger of the two changes; the table is sorted by it, worst first.
  double Regression() const {
    double r = -INFINITY;
    if (!std::isnan(weight_change)) r = std::max(r, weight_change);
    if (!std::isnan(output_change)) r = std::max(r, output_change);
    return r;
  }
};

// The final entry of each layer: with composed passes (awq,gptq) a layer is reported once per pass
// and the last one describes the artifact.
std::map<std::string, const LayerReport*> FinalEntries(const QuantReport& r) {
  std::map<std::string, const LayerReport*> m;
  for (const LayerReport& l : r.layers) m[l.name] = &l;
  return m;
}

}  // namespace

StatusOr<bool> RunDiff(const DiffOptions& options) {
  QC_ASSIGN_OR_RETURN(QuantReport base, ReadReport(options.base));
  QC_ASSIGN_OR_RETURN(QuantReport next, ReadReport(options.next));
  const double ppl_change = PercentChange(base.ppl_after, next.ppl_after);
  if (options.max_ppl_increase >= 0 && std::isnan(ppl_change))
    return InvalidArgument("--max-ppl-increase needs the quantized perplexity in both reports (convert with --eval)");

  const auto base_layers = FinalEntries(base), next_layers = FinalEntries(next);
  std::vector<Row> rows;
  for (const auto& [name, b] : base_layers) {
    Row row;
    row.name = name;
    row.base = b;
    auto it = next_layers.find(name);
    if (it != next_layers.end()) {
      row.next = it->second;
      row.weight_change = PercentChange(b->weight_rel_error, it->second->weight_rel_error);
      row.output_change = PercentChange(b->output_rel_error, it->second->output_rel_error);
    }
    rows.push_back(row);
  }
  for (const auto& [name, n] : next_layers)
    if (!base_layers.count(name)) rows.push_back(Row{name, nullptr, n});
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    if (a.Regression() != b.Regression()) return a.Regression() > b.Regression();
    return a.name < b.name;
  });

  std::printf("base: %s (%s)\nnew:  %s (%s)\n", options.base.c_str(), base.command.c_str(), options.next.c_str(),
              next.command.c_str());
  std::printf("perplexity: %s -> %s (%s)\n", Metric(base.ppl_after).c_str(), Metric(next.ppl_after).c_str(),
              Change(ppl_change).c_str());
  std::printf("size: %lld -> %lld bytes\n", static_cast<long long>(base.output_bytes),
              static_cast<long long>(next.output_bytes));
  std::printf("%-32s %-24s %-24s %9s %9s %9s %9s %9s %9s\n", "layer", "base", "new", "w_err", "w_err", "change",
              "out_err", "out_err", "change");
  std::printf("%-32s %-24s %-24s %9s %9s %9s %9s %9s %9s\n", "", "", "", "base", "new", "", "base", "new", "");
  bool layer_exceeded = false;
  for (const Row& r : rows) {
    const std::string b = r.base ? r.base->pass + " " + r.base->scheme : "(absent)";
    const std::string n = r.next ? r.next->pass + " " + r.next->scheme : "(absent)";
    bool over = false;
    if (options.max_layer_error_increase >= 0) {
      over |= !std::isnan(r.weight_change) && r.weight_change > options.max_layer_error_increase;
      over |= !std::isnan(r.output_change) && r.output_change > options.max_layer_error_increase;
    }
    layer_exceeded |= over;
    std::printf("%-32s %-24s %-24s %9s %9s %9s %9s %9s %9s%s\n", r.name.c_str(), b.c_str(), n.c_str(),
                Metric(r.base ? r.base->weight_rel_error : -1).c_str(),
                Metric(r.next ? r.next->weight_rel_error : -1).c_str(), Change(r.weight_change).c_str(),
                Metric(r.base ? r.base->output_rel_error : -1).c_str(),
                Metric(r.next ? r.next->output_rel_error : -1).c_str(), Change(r.output_change).c_str(),
                over ? "  EXCEEDED" : "");
  }
  bool exceeded = layer_exceeded;
  if (layer_exceeded)
    std::printf("layer error increase exceeds --max-layer-error-increase %.2f%%\n", options.max_layer_error_increase);
  if (options.max_ppl_increase >= 0 && ppl_change > options.max_ppl_increase) {
    std::printf("perplexity increase %s exceeds --max-ppl-increase %.2f%%\n", Change(ppl_change).c_str(),
                options.max_ppl_increase);
    exceeded = true;
  }
  return exceeded;
}

}  // namespace qc
