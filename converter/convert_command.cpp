// `qconvert MODEL.onnx --pass ...` / `qconvert convert ...` and `qconvert --list-passes`.
#include <cstdio>
#include <functional>
#include <map>

#include "converter/commands.h"
#include "converter/pipeline.h"
#include "passes/registry.h"

namespace qc {

void PrintPasses() {
  for (const PassInfo& p : AllPasses()) std::printf("%-14s %s\n", p.name, p.description);
}

Status RunConvert(const ConvertOptions& options) {
  std::function<void(const std::string&)> log;
  if (options.progress) log = [](const std::string& m) { std::fprintf(stderr, "qconvert: %s\n", m.c_str()); };
  QC_ASSIGN_OR_RETURN(QuantReport report, RunConvertPipeline(options, log));

  // A layer appears once per pass that touched it (awq,gptq: awq rescales it, gptq quantizes it);
  // its last entry says what the artifact holds.
  std::map<std::string, const LayerReport*> last;
  for (const LayerReport& l : report.layers) last[l.name] = &l;
  int64_t skipped = 0;
  std::map<std::string, int64_t> schemes;
  for (const auto& [name, layer] : last) {
    const LayerReport& l = *layer;
    if (l.bits > 0) {
      schemes[l.pass + " " + l.scheme]++;
    } else {
      ++skipped;
    }
  }
  std::printf("wrote %s\n", report.output_path.c_str());
  for (const auto& [scheme, count] : schemes)
    std::printf("  %lld linear layer%s quantized with %s\n", static_cast<long long>(count), count == 1 ? "" : "s",
                scheme.c_str());
  if (skipped > 0)
    std::printf("  %lld linear layer%s left in float (see the report's notes)\n", static_cast<long long>(skipped),
                skipped == 1 ? "" : "s");
  std::printf("  size %.2f MB -> %.2f MB (%.1f%%) in %.2f s\n", report.input_bytes / 1e6, report.output_bytes / 1e6,
              report.input_bytes > 0 ? 100.0 * report.output_bytes / report.input_bytes : 0.0, report.seconds);
  if (report.ppl_before >= 0 && report.ppl_after >= 0)
    std::printf("  perplexity %.4f -> %.4f (%+.2f%%)\n", report.ppl_before, report.ppl_after,
                100.0 * (report.ppl_after - report.ppl_before) / report.ppl_before);
  if (!options.report.empty()) std::printf("  report %s\n", options.report.c_str());
  return Status::Ok();
}

}  // namespace qc
