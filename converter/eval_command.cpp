// `qconvert eval`: perplexity with a progress bar on stderr and optional JSON on stdout.
#include <unistd.h>

#include <cstdio>

#include <nlohmann/json.hpp>

#include "converter/commands.h"
#include "formats/onnx_reader.h"
#include "runtime/float_precision.h"
#include "runtime/perplexity.h"

namespace qc {

Status RunEval(const EvalOptions& options) {
  QC_ASSIGN_OR_RETURN(SessionOptions so, DeviceSessionOptions(options.device, options.dtype));
  so.profile = options.profile;
  so.cuda_graphs = options.cuda_graphs && so.device == Device::kCuda;
  QC_ASSIGN_OR_RETURN(std::vector<int32_t> ids, LoadIds(options.data, options.tokenizer));
  QC_ASSIGN_OR_RETURN(Model model, ReadOnnxModel(options.model));
  const DType own = ModelFloatDType(model.graph);
  const DType compute = so.compute_dtype != DType::kUndefined ? so.compute_dtype : own;
  // Score in the graph: on the GPU the logits then never leave the device.
  QC_RETURN_IF_ERROR(AddNextTokenNll(model));
  QC_ASSIGN_OR_RETURN(auto session, Session::Create(model, so));
  PerplexityOptions po;
  po.seqlen = options.seqlen;
  po.max_windows = options.max_windows;
  if (options.progress) {
    const bool tty = ::isatty(STDERR_FILENO);
    po.progress = [tty](int64_t done, int64_t total) {
      // On a terminal redraw one line; in logs print every 10%.
      if (tty) {
        int width = 40, filled = static_cast<int>(width * done / total);
        std::fprintf(stderr, "\reval [%.*s%*s] %lld/%lld windows", filled, "########################################", width - filled, "",
                     static_cast<long long>(done), static_cast<long long>(total));
        if (done == total) std::fprintf(stderr, "\n");
      } else if (done == total || (done * 10 / total) != ((done - 1) * 10 / total)) {
        std::fprintf(stderr, "eval: %lld/%lld windows\n", static_cast<long long>(done), static_cast<long long>(total));
      }
    };
  }
  QC_ASSIGN_OR_RETURN(PerplexityResult r, EvaluatePerplexity(*session, ids, po));
  if (options.profile) {
    std::fprintf(stderr, "%-28s %8s %10s\n", "op", "calls", "seconds");
    for (const OpProfile& p : session->Profile())
      std::fprintf(stderr, "%-28s %8lld %10.3f\n", p.op_type.c_str(), static_cast<long long>(p.calls), p.seconds);
  }
  for (const std::string& line : session->DeviceSummary()) std::fprintf(stderr, "%s\n", line.c_str());
  if (options.json) {
    nlohmann::ordered_json j;
    j["model"] = options.model;
    j["data"] = options.data;
    j["seqlen"] = options.seqlen;
    j["ppl"] = r.ppl;
    j["mean_nll"] = r.mean_nll;
    j["windows"] = r.windows;
    j["tokens_scored"] = r.tokens_scored;
    j["seconds"] = r.seconds;
    j["first_window_seconds"] = r.first_window_seconds;
    j["tokens_per_second"] = r.tokens_per_second;
    j["device"] = options.device;
    j["dtype"] = compute == DType::kUndefined ? "none" : DTypeName(compute);
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("perplexity %.4f over %lld windows of %lld (%lld tokens scored) in %.2f s (first window %.2f s), %.0f tokens/s%s\n",
                r.ppl, static_cast<long long>(r.windows), static_cast<long long>(options.seqlen),
                static_cast<long long>(r.tokens_scored), r.seconds, r.first_window_seconds, r.tokens_per_second,
                r.windows > 1 ? " after it" : "");
  }
  return Status::Ok();
}

}  // namespace qc
