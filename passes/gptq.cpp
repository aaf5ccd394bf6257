// `gptq`: true-sequential GPTQ over every linear layer (see gptq.h).
#include "passes/gptq.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <optional>
#include <utility>

#include "calibrate/calibrator.h"
#include "formats/linear_layers.h"
#include "passes/gptq_solver_cuda.h"
#include "passes/weight_quant.h"

namespace qc {
namespace {

// ONNX Runtime's g_idx path runs 4-bit storage only, so other widths keep static groups.
bool StaticGroups(bool requested, int bits) { return requested || StorageBits(bits) != 4; }

}  // namespace

GptqSpec GptqSpecFromOptions(const QuantOptions& options) {
  GptqSpec spec;
  spec.quant = SpecFromOptions(options, options.sym);
  spec.act_order = options.act_order;
  // Act-order keeps its groups in input order by default ("static groups"): on docs-llama-12m
  // (128 x 512 calibration, 48 windows, asymmetric w4 g128) 14.92 against 15.00 with groups formed
  // in act-order, and no g_idx is needed, so the artifact has the same format and kernels as
  // round-to-nearest. --g-idx forms the groups in act-order and records them in g_idx.
  spec.static_groups = StaticGroups(options.static_groups, options.bits);
  spec.percdamp = options.damp;
  spec.block_size = options.block_size;
  return spec;
}

Status GptqPass::Run(Model& model, PassContext& context) {
  QC_CHECK(context.layers != nullptr);
  const QuantOptions& options = context.options;
  if (context.calibrator == nullptr)
    return FailedPrecondition("gptq weighs each layer's rounding errors by its input Hessian and so needs "
                              "calibration data: give --calib FILE (text with --tokenizer, or .npy ids)");
  const GptqSpec spec = GptqSpecFromOptions(options);
  QC_RETURN_IF_ERROR(ValidateWeightQuantSpec(spec.quant));
  if (spec.block_size < 1)
    return InvalidArgument("GPTQ block size must be at least 1, got " + std::to_string(spec.block_size));
  if (!(spec.percdamp >= 0)) return InvalidArgument("--damp must be >= 0");
  QC_ASSIGN_OR_RETURN(LayerFilter filter, LayerFilter::Create(options.exclude_regex, options.head_bits));
  // The layer's spec: the output head may have its own bits (--head-bits).
  auto spec_for = [&](const LinearLayer& layer) {
    GptqSpec s = spec;
    s.quant = filter.SpecFor(layer, spec.quant);
    s.static_groups = StaticGroups(options.static_groups, s.quant.bits);
    return s;
  };
  auto scheme_of = [&](const GptqSpec& s) { return SchemeName(s.quant) + (s.act_order ? "+act-order" : ""); };

  // One report per layer not excluded, in layer order; unsupported layers are reported as float
  // and left out of the calibration run.
  const std::vector<LinearLayer> layers = FindLinearLayers(model.graph);
  std::vector<LayerReport> reports;
  std::vector<bool> placed;  // per report: the MatMulNBits is in the graph
  std::map<int, size_t> slot_of_node;
  std::vector<LinearLayer> todo;
  for (const LinearLayer& layer : layers) {
    if (filter.Excluded(layer)) continue;
    const GptqSpec layer_spec = spec_for(layer);
    LayerReport r = WeightOnlyLayerReport(model.graph, layer, Name(), scheme_of(layer_spec), layer_spec.quant);
    if (r.bits > 0) {
      slot_of_node[layer.node_index] = reports.size();
      todo.push_back(layer);
    }
    reports.push_back(std::move(r));
    placed.push_back(false);
  }

  // Each layer is put in place as soon as it is solved (RunSequential allows rewriting the model
  // from the visitor): its packed form replaces the float weight at once, instead of every
  // layer's codes waiting in memory until the end (docs/MEMORY.md).
  MatMulNBitsRewriter rewriter(model);
  if (!todo.empty()) {
    // --device cuda: the calibrator accumulates the Hessians on the GPU and the layers are solved
    // there too (same algorithm; see gptq_solver_cuda.h).
    std::unique_ptr<GptqCudaSolver> gpu;
    if (context.calibrator->device() == Device::kCuda) {
      QC_ASSIGN_OR_RETURN(gpu, GptqCudaSolver::Create());
    }
    StatsRequest request;
    request.hessian = true;
    const Graph& graph = model.graph;
    SequentialVisitor visit = [&](const LayerGroup& group, const InputStats& stats, const std::vector<const Tensor*>&) -> StatusOr<GroupWeights> {
      GroupWeights dequantized;
      for (const LinearLayer& layer : group.layers) {
        const auto start = std::chrono::steady_clock::now();
        LayerReport& r = reports[slot_of_node.at(layer.node_index)];
        const std::string where = "GPTQ of layer " + layer.node_name + " (weight " + layer.weight + ")";
        const GptqSpec layer_spec = spec_for(layer);
        QC_ASSIGN_OR_RETURN(std::vector<float> w, ReadLinearWeight(graph, layer));
        StatusOr<GptqResult> solved = gpu ? gpu->Quantize(w, layer.k, layer.n, stats.hessian, layer_spec)
                                          : GptqQuantize(w, layer.k, layer.n, stats.hessian, layer_spec);
        if (!solved.ok()) return solved.status().WithContext(where);
        GptqResult& result = *solved;
        r.weight_rel_error = RelativeError(w, result.w_hat);
        OutputError e;
        if (gpu) {
          StatusOr<std::pair<double, double>> energies =
              gpu->OutputEnergies(stats.hessian, layer.k, w, result.w_hat, layer.n);
          if (!energies.ok()) return energies.status().WithContext(where);
          e = OutputErrorFromEnergies(std::max(energies->first, 0.0), std::max(energies->second, 0.0));
        } else {
          e = OutputErrorFromHessian(stats.hessian, layer.k, w, result.w_hat, layer.n);
        }
        r.output_rel_error = e.rel_error;
        r.sqnr_db = e.sqnr_db;
        r.damping = result.percdamp;
        for (std::string& note : result.notes) r.notes.push_back(std::move(note));
        if (spec.act_order && spec.quant.group_size != -1)
          r.notes.push_back(result.reordered_groups ? "act-order groups reordered (g_idx)"
                            : layer_spec.static_groups ? "act-order with static groups (input order, no g_idx)"
                                                 : "act-order kept every row in its input-order group (no g_idx needed)");
        r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        QC_RETURN_IF_ERROR(rewriter.Replace(layer, result.weight, "qconvert gptq " + scheme_of(layer_spec))
                               .WithContext("quantizing " + layer.node_name));
        placed[slot_of_node.at(layer.node_index)] = true;
        dequantized.push_back(std::move(result.w_hat));
      }
      return dequantized;
    };
    QC_RETURN_IF_ERROR(context.calibrator->RunSequential(model, todo, request, visit));
  }

  for (const LinearLayer& layer : todo) {
    const size_t slot = slot_of_node.at(layer.node_index);
    LayerReport& r = reports[slot];
    if (!placed[slot]) return Internal("calibration never reached layer " + layer.node_name);
    AddWeightNotes(layer, spec_for(layer).quant, r);
  }
  rewriter.Finish();
  for (LayerReport& r : reports) context.layers->push_back(std::move(r));
  return Status::Ok();
}

std::unique_ptr<Pass> CreateGptqPass() { return std::make_unique<GptqPass>(); }

}  // namespace qc
