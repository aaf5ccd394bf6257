// The convert driver (see pipeline.h).
#include "converter/pipeline.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "calibrate/calibration_data.h"
#include "calibrate/calibrator.h"
#include "formats/interrupt_cleanup.h"
#include "formats/onnx_reader.h"
#include "formats/onnx_writer.h"
#include "formats/sha256.h"
#include "formats/spill_store.h"
#include "passes/merged_decoder.h"
#include "passes/registry.h"
#include "passes/weight_quant.h"
#include "runtime/cuda_executor.h"
#include "runtime/executor.h"
#include "runtime/input_binding.h"
#include "runtime/non_finite.h"
#include "runtime/perplexity.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> SplitPasses(const std::string& passes) {
  std::vector<std::string> names;
  std::stringstream ss(passes);
  std::string name;
  while (std::getline(ss, name, ',')) names.push_back(name);
  return names;
}

// Removes the artifact (and its external-data side file) unless the run completed.
class OutputGuard {
 public:
  OutputGuard(std::string path, bool external_data) : path_(std::move(path)), external_data_(external_data) {}
  ~OutputGuard() {
    if (committed_ || !armed_) return;
    std::error_code ec;
    fs::remove(path_, ec);
    if (external_data_) fs::remove(path_ + ".data", ec);
  }
  // From Arm() to Commit() the output also goes away if the process is interrupted.
  void Arm() {
    armed_ = true;
    on_signal_ = std::make_unique<ScopedInterruptCleanup>(path_);
    if (external_data_) on_signal_data_ = std::make_unique<ScopedInterruptCleanup>(path_ + ".data");
  }
  void Commit() {
    committed_ = true;
    on_signal_.reset();
    on_signal_data_.reset();
  }

 private:
  std::string path_;
  bool external_data_;
  std::unique_ptr<ScopedInterruptCleanup> on_signal_, on_signal_data_;
  bool armed_ = false;
  bool committed_ = false;
};

// Temp file + rename, so a reader never sees a half-written report.
Status WriteTextAtomic(const std::string& path, const std::string& text) {
  const std::string temp = path + ".tmp." + std::to_string(::getpid());
  ScopedInterruptCleanup on_signal(temp);
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out) return NotFound("cannot create '" + path + "': " + std::strerror(errno));
    out << text;
    out.close();
    if (!out) {
      std::remove(temp.c_str());
      return DataLoss("writing '" + path + "' failed (disk full?)");
    }
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(temp.c_str());
    return DataLoss("cannot rename '" + temp + "' to '" + path + "': " + why);
  }
  return Status::Ok();
}

// The .onnx file's digest; bytes include the `<file>.data` side file when there is one, since
// that is what the model costs on disk.
StatusOr<FileDigest> DigestModel(const std::string& path, bool count_side_file) {
  QC_ASSIGN_OR_RETURN(FileDigest d, Sha256File(path));
  if (!count_side_file) return d;
  std::error_code ec;
  const auto data_size = fs::file_size(path + ".data", ec);
  if (!ec) d.bytes += static_cast<int64_t>(data_size);
  return d;
}

bool SamePath(const std::string& a, const std::string& b) {
  std::error_code ec;
  if (fs::exists(a, ec) && fs::exists(b, ec)) return fs::equivalent(a, b, ec);
  return fs::weakly_canonical(a, ec) == fs::weakly_canonical(b, ec);
}

Device DeviceOf(const ConvertOptions& options) { return options.device == "cuda" ? Device::kCuda : Device::kCpu; }

SessionOptions EvalSessionOptions(const ConvertOptions& options) {
  SessionOptions so;
  so.device = DeviceOf(options);
  return so;
}

StatusOr<double> Perplexity(const Model& model, const std::vector<int32_t>& ids, const ConvertOptions& options) {
  QC_ASSIGN_OR_RETURN(auto session, Session::Create(model, EvalSessionOptions(options)));
  PerplexityOptions po;
  po.seqlen = options.seqlen;
  po.max_windows = options.eval_windows;
  QC_ASSIGN_OR_RETURN(PerplexityResult r, EvaluatePerplexity(*session, ids, po));
  return r.ppl;
}

}  // namespace

std::string DefaultOutputPath(const std::string& model, const std::string& passes, int bits) {
  fs::path p(model);
  const std::string stem = (p.extension() == ".onnx" ? p.stem() : p.filename()).string();
  std::string joined;
  for (const std::string& name : SplitPasses(passes)) joined += (joined.empty() ? "" : "+") + name;
  return (p.parent_path() / (stem + "." + joined + "-w" + std::to_string(bits) + ".onnx")).string();
}

std::string OptionsJson(const ConvertOptions& o) {
  nlohmann::ordered_json j;
  j["pass"] = o.passes;
  j["bits"] = o.quant.bits;
  j["group_size"] = o.quant.group_size;
  j["sym"] = o.quant.sym;
  j["scale_search"] = o.quant.scale_search;
  j["act_order"] = o.quant.act_order;
  j["static_groups"] = o.quant.static_groups;
  j["damp"] = o.quant.damp;
  j["block_size"] = o.quant.block_size;
  j["alpha"] = o.quant.alpha;
  j["threshold"] = o.quant.threshold;
  j["exclude"] = o.quant.exclude_regex;
  j["head_bits"] = o.quant.head_bits;
  j["calib"] = o.calib;
  j["tokenizer"] = o.tokenizer;
  j["nsamples"] = o.nsamples;
  j["seqlen"] = o.seqlen;
  j["eval"] = o.eval;
  j["eval_windows"] = o.eval_windows;
  j["device"] = o.device;
  j["external_data"] = o.external_data;
  j["seed"] = o.quant.seed;
  return j.dump();
}

Status ValidateConvertOptions(const ConvertOptions& o) {
  if (o.model.empty()) return InvalidArgument("no model given: qconvert MODEL.onnx --pass PASS");
  QC_ASSIGN_OR_RETURN(auto pipeline, CreatePipeline(o.passes));
  // Every weight-quantizing pass takes --bits and --group-size the same way; check them up front.
  QC_RETURN_IF_ERROR(ValidateWeightQuantSpec(SpecFromOptions(o.quant, /*sym=*/true)));
  if (o.sym_flag && o.asym_flag) return InvalidArgument("--sym and --asym contradict each other; give one");
  if (o.device != "cpu" && o.device != "cuda") return InvalidArgument("--device must be cpu or cuda, got '" + o.device + "'");
  // --device cuda moves the calibration runs (and GPTQ's solver, perplexity) to the GPU; weight
  // rounding alone stays on the CPU, so without --calib or --eval it would have nothing to do.
  if (o.device == "cuda" && o.calib.empty() && o.eval.empty())
    return InvalidArgument("--device cuda runs calibration and evaluation on the GPU, but neither --calib nor --eval is given "
                           "(use --device cpu)");
  if (o.calib_device_mib < 0) return InvalidArgument("--calib-device-memory must be >= 0");
  if (o.nsamples < 1) return InvalidArgument("--nsamples must be at least 1");
  if (o.seqlen < 2) return InvalidArgument("--seqlen must be at least 2");
  if (o.eval_windows == 0 || o.eval_windows < -1)
    return InvalidArgument("--eval-windows must be a positive count or -1 (every window)");
  if (o.quant.damp < 0) return InvalidArgument("--damp must be >= 0");
  if (o.quant.block_size < 1) return InvalidArgument("--block-size must be at least 1");
  for (size_t i = 0; i < pipeline.size(); ++i) {
    const Pass& pass = *pipeline[i];
    const std::string name = pass.Name();
    if (name == "absmax" && o.asym_flag)
      return InvalidArgument("absmax is symmetric; use --pass zeropoint for asymmetric quantization");
    if (name == "zeropoint" && o.sym_flag)
      return InvalidArgument("zeropoint is asymmetric; use --pass absmax for symmetric quantization");
    if (pass.NeedsCalibration() && o.calib.empty())
      return InvalidArgument("pass '" + name + "' needs calibration data: give --calib FILE (text with --tokenizer, or .npy ids)");
    // Once a pass has quantized the weights no linear layer is left for a later pass.
    if (i + 1 < pipeline.size() && !pass.CanDeferQuantization())
      return InvalidArgument("pass '" + name + "' quantizes the weights, so it must come last in --pass '" + o.passes +
                             "' (only rescaling passes such as awq or smoothquant can precede another pass)");
  }
  const std::string output = o.output.empty() ? DefaultOutputPath(o.model, o.passes, o.quant.bits) : o.output;
  if (SamePath(output, o.model)) return InvalidArgument("output '" + output + "' is the input model; give another -o");
  const fs::path dir = fs::path(output).parent_path();
  std::error_code ec;
  if (!dir.empty() && !fs::is_directory(dir, ec))
    return NotFound("output directory '" + dir.string() + "' does not exist");
  if (!o.report.empty() && SamePath(o.report, o.model))
    return InvalidArgument("--report '" + o.report + "' is the input model");
  return Status::Ok();
}

StatusOr<QuantReport> RunConvertPipeline(const ConvertOptions& options,
                                         const std::function<void(const std::string&)>& log) {
  const auto start = std::chrono::steady_clock::now();
  auto say = [&](const std::string& m) {
    if (log) log(m);
  };
  QC_RETURN_IF_ERROR(ValidateConvertOptions(options));
  ConvertOptions o = options;
  {
    QC_ASSIGN_OR_RETURN(auto pipeline, CreatePipeline(o.passes));
    o.quant.sym = pipeline.back()->DefaultSymmetric();
  }
  if (o.asym_flag) o.quant.sym = false;
  if (o.sym_flag) o.quant.sym = true;
  for (const std::string& name : SplitPasses(o.passes)) {
    if (name == "absmax") o.quant.sym = true;
    if (name == "zeropoint") o.quant.sym = false;
  }
  const std::string output = o.output.empty() ? DefaultOutputPath(o.model, o.passes, o.quant.bits) : o.output;

  QuantReport report;
  report.tool_version = o.tool_version;
  report.command = o.command_line;
  report.options_json = OptionsJson(o);
  report.seed = o.quant.seed;
  report.input_path = o.model;
  report.output_path = output;

  QC_ASSIGN_OR_RETURN(FileDigest input_digest, DigestModel(o.model, true));
  report.input_sha256 = input_digest.sha256;
  report.input_bytes = input_digest.bytes;
  say("reading " + o.model);
  QC_ASSIGN_OR_RETURN(Model model, ReadOnnxModel(o.model));
  // Weights stay in their mapped files; the large tensors the passes create (quantized weights)
  // go to a scratch file beside the output, so memory does not grow with the model
  // (docs/MEMORY.md). The scratch file has no name and vanishes with the process.
  {
    const fs::path out_dir = fs::path(output).parent_path();
    StatusOr<std::shared_ptr<SpillStore>> spill = SpillStore::Create(out_dir.empty() ? "." : out_dir.string());
    if (!spill.ok()) return spill.status();
    model.graph.set_spill_store(*spill);
  }

  std::vector<Tensor> calib_windows;
  if (!o.calib.empty()) {
    say("loading calibration data " + o.calib);
    QC_ASSIGN_OR_RETURN(std::vector<int32_t> ids, LoadIds(o.calib, o.tokenizer));
    StatusOr<std::vector<Tensor>> windows = SampleCalibrationWindows(ids, o.nsamples, o.seqlen, o.quant.seed);
    if (!windows.ok()) return windows.status().WithContext("--calib " + o.calib);
    calib_windows = std::move(windows).value();
  }
  std::vector<int32_t> eval_ids;
  if (!o.eval.empty()) {
    QC_ASSIGN_OR_RETURN(eval_ids, LoadIds(o.eval, o.tokenizer));
    if (static_cast<int64_t>(eval_ids.size()) < o.seqlen)
      return InvalidArgument("--eval " + o.eval + " has " + std::to_string(eval_ids.size()) +
                             " tokens, fewer than one window of --seqlen " + std::to_string(o.seqlen));
    say("measuring float perplexity on " + o.eval);
    StatusOr<double> ppl = Perplexity(model, eval_ids, o);
    if (!ppl.ok()) return ppl.status().WithContext("evaluating the input model");
    report.ppl_before = *ppl;
  }

  std::unique_ptr<Calibrator> calibrator;
  if (!calib_windows.empty()) {
    calibrator = std::make_unique<Calibrator>(calib_windows);
    calibrator->set_log(say);
    calibrator->set_device(DeviceOf(o), o.calib_device_mib << 20);
  }
  QC_ASSIGN_OR_RETURN(auto pipeline, CreatePipeline(o.passes));
  // A merged decoder's layers live in If branches: the passes run on the prefill branch inlined
  // (what calibration executes) and the weight quantization is then carried into both branches.
  const bool merged = HasLinearLayersInBranches(model);
  Model view;
  std::map<std::string, LinearLayer> view_layers;
  if (merged) {
    for (const auto& pass : pipeline)
      if (!pass->OnlyReplacesLinearLayers())
        return Unimplemented(std::string("pass '") + pass->Name() +
                             "' cannot rewrite a merged decoder (linear layers inside If branches) yet; use absmax, "
                             "zeropoint or gptq, or quantize the unmerged decoder_model.onnx");
    say("merged decoder: running the passes on the prefill branch, then carrying them into every branch");
    QC_ASSIGN_OR_RETURN(view, InlinePrefillBranches(model));
    view_layers = LinearLayersByOutput(view);
  }
  Model& target = merged ? view : model;
  for (size_t i = 0; i < pipeline.size(); ++i) {
    Pass& pass = *pipeline[i];
    PassContext context{o.quant};
    context.calibrator = calibrator.get();
    context.layers = &report.layers;
    context.quantize_weights = !(pass.CanDeferQuantization() && i + 1 < pipeline.size());
    say(std::string("running pass ") + pass.Name());
    QC_RETURN_IF_ERROR(pass.Run(target, context).WithContext(std::string("pass '") + pass.Name() + "'"));
  }
  if (merged) {
    std::vector<std::string> notes;
    QC_RETURN_IF_ERROR(CarryWeightQuantization(view, view_layers, model, &notes));
    for (const std::string& note : notes) say(note);
  }
  QC_RETURN_IF_ERROR(model.graph.spill_store()->status().WithContext("moving quantized weights to scratch space"));

  OnnxWriteOptions wo;
  wo.external_data = o.external_data;
  const bool external_data = WritesExternalData(model, wo);  // also when the weights exceed 2 GB
  OutputGuard guard(output, external_data);
  guard.Arm();  // from here on, any failure removes what was written at `output`
  say("writing " + output);
  QC_RETURN_IF_ERROR(WriteOnnxModel(model, output, wo));
  // The converted model is on disk now; keeping it would hold its weights (and the input's
  // mappings) through validation next to the artifact's.
  model = Model();
  view = Model();

  // Validate what was written, not what is in memory: the file is what users ship.
  say("validating " + output);
  StatusOr<Model> written = ReadOnnxModel(output);
  if (!written.ok()) return Internal("the written artifact cannot be read back: " + written.status().message());
  if (DeviceOf(o) == Device::kCuda) {
    const CudaMemoryStats mem = CudaMemory();
    say("device memory: peak " + std::to_string(mem.peak_bytes_in_use >> 20) + " MiB in use (" +
        std::to_string(mem.bytes_cached >> 20) + " MiB cached now; " + std::to_string(mem.pinned_host_bytes >> 20) +
        " MiB of page-locked host memory for parked activations)");
  }
  StatusOr<std::unique_ptr<Session>> session = Session::Create(*written, EvalSessionOptions(o));
  if (!session.ok()) return Internal("the written artifact does not load in our runtime: " + session.status().message());
  Tensor window;
  if (!calib_windows.empty()) {
    window = calib_windows[0];
  } else if (!eval_ids.empty()) {
    window = Tensor(DType::kInt64, {1, o.seqlen});
    for (int64_t i = 0; i < o.seqlen; ++i) window.mutable_data<int64_t>()[i] = eval_ids[i];
  } else {
    window = Tensor(DType::kInt64, {1, std::min<int64_t>(o.seqlen, 16)});  // token 0 exists in every vocabulary
  }
  StatusOr<NamedTensors> feeds = BindInputs(**session, window);
  if (!feeds.ok()) return Internal("cannot bind inputs of the written artifact: " + feeds.status().message());
  StatusOr<std::vector<Tensor>> outputs = (*session)->Run(*feeds);
  if (!outputs.ok()) return Internal("the written artifact fails to run: " + outputs.status().message());
  const Tensor& logits = (*outputs)[LogitsOutputIndex(**session)];
  if (IsFloatingPoint(logits.dtype()) && CountNonFinite(logits) > 0) {
    // Name the node that made the first NaN/Inf: a quantized layer's output points at the
    // artifact, an unquantized op's at the runtime (or the model itself).
    std::string where;
    StatusOr<std::optional<NonFiniteSite>> site = FindFirstNonFinite(**session, written->graph, *feeds);
    if (site.ok() && site->has_value()) where = "; the first comes from " + (*site)->Describe();
    return Internal("the written artifact produces non-finite outputs on a validation window" + where);
  }
  if (!eval_ids.empty()) {
    say("measuring quantized perplexity on " + o.eval);
    StatusOr<double> ppl = Perplexity(*written, eval_ids, o);
    if (!ppl.ok()) return Internal("evaluating the written artifact failed: " + ppl.status().message());
    report.ppl_after = *ppl;
  }

  QC_ASSIGN_OR_RETURN(FileDigest output_digest, DigestModel(output, external_data));
  report.output_sha256 = output_digest.sha256;
  report.output_bytes = output_digest.bytes;
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!o.report.empty()) QC_RETURN_IF_ERROR(WriteTextAtomic(o.report, ReportToJson(report)));
  guard.Commit();
  return report;
}

}  // namespace qc
