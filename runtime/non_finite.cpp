#include "runtime/non_finite.h"

#include <cmath>
#include <memory>
#include <utility>
#include <vector>

namespace qc {

int64_t CountNonFinite(const Tensor& host) {
  int64_t bad = 0;
  if (host.dtype() == DType::kFloat64) {  // through float, a large finite double would read as Inf
    const double* p = host.data<double>();
    for (int64_t i = 0; i < host.numel(); ++i) bad += std::isfinite(p[i]) ? 0 : 1;
    return bad;
  }
  for (float v : host.ToFloats()) bad += std::isfinite(v) ? 0 : 1;
  return bad;
}

std::string NonFiniteSite::Describe() const {
  return "node '" + node + "' (" + op_type + "), output '" + output + "': " + std::to_string(count) + " of " +
         std::to_string(numel) + " values are NaN or Inf";
}

StatusOr<std::optional<NonFiniteSite>> FindFirstNonFinite(const Session& session, const Graph& graph,
                                                          const NamedTensors& feeds) {
  // The values each step produces, with the node that names them.
  std::vector<std::vector<std::pair<const Node*, std::string>>> by_step(session.num_steps());
  for (const Node& node : graph.nodes)
    for (const std::string& out : node.outputs) {
      const int step = out.empty() ? -1 : session.StepProducing(out);
      if (step >= 0 && step < session.num_steps()) by_step[step].emplace_back(&node, out);
    }
  QC_ASSIGN_OR_RETURN(std::unique_ptr<Execution> run, session.Start(feeds));
  for (int step = 0; step < session.num_steps(); ++step) {
    QC_RETURN_IF_ERROR(run->RunUntil(step + 1));
    for (const auto& [node, name] : by_step[step]) {
      const Tensor* value = run->Value(name);
      if (value == nullptr || !IsFloatingPoint(value->dtype()) || value->numel() == 0) continue;
      QC_ASSIGN_OR_RETURN(Tensor host, session.ToHost(*value));
      const int64_t bad = CountNonFinite(host);
      if (bad > 0) return std::optional<NonFiniteSite>(NonFiniteSite{node->name, node->op_type, name, bad, host.numel()});
    }
  }
  return std::optional<NonFiniteSite>();
}

}  // namespace qc
