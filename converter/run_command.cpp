// `qconvert run`: logits for given token ids.
#include <cstdio>
#include <optional>

#include "converter/commands.h"
#include "formats/npy.h"
#include "formats/onnx_reader.h"
#include "runtime/cuda_executor.h"
#include "runtime/executor.h"
#include "runtime/input_binding.h"
#include "runtime/non_finite.h"

namespace qc {

StatusOr<SessionOptions> DeviceSessionOptions(const std::string& device, const std::string& dtype) {
  SessionOptions so;
  so.device = device == "cuda" ? Device::kCuda : Device::kCpu;
  if (dtype.empty()) return so;
  if (dtype == "float32") so.compute_dtype = DType::kFloat32;
  else if (dtype == "float16") so.compute_dtype = DType::kFloat16;
  else if (dtype == "bfloat16") so.compute_dtype = DType::kBFloat16;
  else return InvalidArgument("--dtype must be float32, float16 or bfloat16, got '" + dtype + "'");
  if (so.compute_dtype != DType::kFloat32 && so.device != Device::kCuda)
    return InvalidArgument("--dtype " + dtype + " needs --device cuda: the CPU kernels compute in float32 (a " + dtype +
                           " model runs on the CPU as it is, without --dtype)");
  return so;
}

Status RunRun(const RunOptions& options) {
  QC_ASSIGN_OR_RETURN(Tensor ids, ReadNpy(options.input_ids));
  NamedTensors overrides;
  for (const std::string& spec : options.inputs) {
    size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0) return InvalidArgument("--input expects NAME=FILE.npy, got '" + spec + "'");
    QC_ASSIGN_OR_RETURN(Tensor t, ReadNpy(spec.substr(eq + 1)));
    overrides.emplace_back(spec.substr(0, eq), std::move(t));
  }
  QC_ASSIGN_OR_RETURN(Model model, ReadOnnxModel(options.model));
  QC_ASSIGN_OR_RETURN(SessionOptions so, DeviceSessionOptions(options.device, options.dtype));
  so.use_reference_kernels = options.reference;
  if (options.reference && so.device == Device::kCuda) return InvalidArgument("--reference runs the CPU reference kernels; it cannot be combined with --device cuda");
  // On the GPU, blocks start as NaN: a kernel reading memory nothing wrote is then caught too.
  if (options.check_finite && so.device == Device::kCuda) QC_RETURN_IF_ERROR(PoisonDeviceAllocations());
  QC_ASSIGN_OR_RETURN(auto session, Session::Create(model, so));
  auto feeds = BindInputs(*session, ids, overrides);
  if (!feeds.ok()) return feeds.status().WithContext(options.input_ids);
  if (options.check_finite) {
    QC_ASSIGN_OR_RETURN(std::optional<NonFiniteSite> site, FindFirstNonFinite(*session, model.graph, *feeds));
    if (site) return FailedPrecondition("the first NaN/Inf comes from " + site->Describe());
    std::fprintf(stderr, "every node's output is finite\n");
  }
  const std::string logits = session->outputs()[LogitsOutputIndex(*session)].name;
  QC_ASSIGN_OR_RETURN(std::vector<Tensor> outs, session->Run(*feeds, {logits}));
  for (const std::string& line : session->DeviceSummary()) std::fprintf(stderr, "%s\n", line.c_str());
  Tensor out = outs[0];
  if (out.dtype() != DType::kFloat32) {
    if (!IsFloatingPoint(out.dtype())) return InvalidArgument("output '" + logits + "' is " + DTypeName(out.dtype()) + ", not floating point");
    out = Tensor::FromVector<float>(out.ToFloats(), out.shape());
  }
  return WriteNpy(out, options.output);
}

}  // namespace qc
