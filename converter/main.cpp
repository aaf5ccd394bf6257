// qconvert command line: parses arguments (CLI11) and maps errors to exit codes
// 0 success, 1 bad input, 2 internal error (and 3 for `diff` past a threshold). The only place
// exceptions are caught.
#include <malloc.h>

#include <csignal>
#include <cstdio>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "converter/commands.h"
#include "formats/interrupt_cleanup.h"

namespace {

int ExitCodeFor(const qc::Status& s) {
  if (s.ok()) return 0;
  std::fprintf(stderr, "qconvert: error: %s\n", s.message().c_str());
  return s.IsInputError() ? 1 : 2;
}

// `qconvert MODEL.onnx --pass absmax` is `qconvert convert MODEL.onnx --pass absmax`: when the
// first argument is neither a subcommand nor a top-level flag and some argument names an .onnx
// file, the `convert` subcommand is inserted.
std::vector<std::string> RouteToConvert(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  static const char* const kTopLevel[] = {"inspect", "run", "tokenize", "eval", "convert", "diff", "generate",
                                          "-h", "--help", "--version", "--list-passes"};
  if (args.size() < 2) return args;
  for (const char* word : kTopLevel)
    if (args[1] == word) return args;
  for (size_t i = 1; i < args.size(); ++i)
    if (args[i].ends_with(".onnx")) {
      args.insert(args.begin() + 1, "convert");
      break;
    }
  return args;
}

// The command line as typed (quoted where needed), for the report.
std::string JoinCommandLine(int argc, char** argv) {
  std::string line;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (i == 0) a = "qconvert";
    const bool quote = a.empty() || a.find_first_of(" \t\"'\\$") != std::string::npos;
    line += (i ? " " : "") + (quote ? "'" + a + "'" : a);
  }
  return line;
}

}  // namespace

int main(int argc, char** argv) {
  qc::InstallInterruptCleanup();
  // A file-size limit (ulimit -f) then fails the write with EFBIG, reported and cleaned up like a
  // full disk, instead of killing the process with a partial file left behind.
  ::signal(SIGXFSZ, SIG_IGN);
  // Buffers of 4 MB and more get their own mapping, returned to the system when freed. glibc's
  // default raises this threshold to 32 MB after the first large free, and freed weight-sized
  // buffers below it then stay in a fragmented heap: generating or converting a 1B model grew
  // by ~45 MB per layer that way (docs/MEMORY.md). Activations below 4 MB still reuse the heap.
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  // Fixing the mmap threshold also fixes the trim threshold at 128 KB: every freed activation at
  // the top of the heap went back to the OS and faulted in again on the next window (eval of
  // docs-llama-12m: 340k page faults and 20% slower). Up to 64 MB of free heap stays mapped.
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  CLI::App app{"qconvert: offline LLM quantization for ONNX models\n"
               "  qconvert MODEL.onnx --pass PASS[,PASS...] [options]   (= qconvert convert ...)"};
  app.require_subcommand(0, 1);
  app.set_version_flag("--version", std::string("qconvert ") + QC_VERSION);
  bool list_passes = false;
  app.add_flag("--list-passes", list_passes, "Print the registered passes, one per line");

  qc::InspectOptions inspect;
  auto* inspect_cmd = app.add_subcommand("inspect", "Print opset, inputs/outputs, op histogram, parameters and linear layers");
  inspect_cmd->add_option("model", inspect.model, "ONNX model")->required();

  qc::RunOptions run;
  auto* run_cmd = app.add_subcommand("run", "Run a model on token ids and write its logits as .npy");
  run_cmd->add_option("model", run.model, "ONNX model")->required();
  run_cmd->add_option("--input-ids", run.input_ids, ".npy of int32/int64 ids [batch, seq]")->required();
  run_cmd->add_option("--input", run.inputs, "Override a model input: NAME=FILE.npy (repeatable)");
  run_cmd->add_option("-o,--output", run.output, "Output .npy for the logits (float32)")->required();
  run_cmd->add_flag("--reference", run.reference, "Use the scalar reference kernels (slow; the numeric spec)");
  run_cmd->add_option("--device", run.device, "Run on the CPU or a CUDA GPU")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  run_cmd->add_option("--dtype", run.dtype, "Compute in this float type (float16/bfloat16 need --device cuda; default: the model's own)")
      ->check(CLI::IsMember({"float32", "float16", "bfloat16"}));
  run_cmd->add_flag("--check-finite", run.check_finite,
                    "Check every node's output for NaN/Inf, in execution order (slow: every value is copied to the host; "
                    "with --device cuda every device block starts as NaN, so reads of unwritten memory show too); "
                    "an error names the first node that produced one, and no logits are written");

  qc::TokenizeOptions tok;
  auto* tok_cmd = app.add_subcommand("tokenize", "Encode a text file with a Hugging Face tokenizer.json");
  tok_cmd->add_option("--tokenizer", tok.tokenizer, "tokenizer.json")->required();
  tok_cmd->add_option("--text", tok.text, "Text file (encoded whole, no special tokens)")->required();
  tok_cmd->add_option("-o,--output", tok.output, "Output .npy of int32 ids")->required();

  qc::EvalOptions eval;
  auto* eval_cmd = app.add_subcommand("eval", "Perplexity over non-overlapping windows");
  eval_cmd->add_option("model", eval.model, "ONNX model")->required();
  eval_cmd->add_option("--data", eval.data, "Text file (with --tokenizer) or .npy ids")->required();
  eval_cmd->add_option("--tokenizer", eval.tokenizer, "tokenizer.json for text data");
  eval_cmd->add_option("--seqlen", eval.seqlen, "Window length in tokens")->capture_default_str()->check(CLI::Range(2, 1 << 20));
  eval_cmd->add_option("--max-windows", eval.max_windows, "Evaluate at most N windows")->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  eval_cmd->add_flag("--json", eval.json, "Print one JSON object on stdout");
  eval_cmd->add_flag("!--no-progress", eval.progress, "Hide the progress bar");
  eval_cmd->add_flag("--profile", eval.profile, "Print the time spent per op type to stderr");
  eval_cmd->add_flag("!--no-cuda-graphs", eval.cuda_graphs,
                     "With --device cuda, run every window step by step instead of replaying the second as a CUDA graph");
  eval_cmd->add_option("--device", eval.device, "Run on the CPU or a CUDA GPU (ops without a CUDA kernel run on the CPU; a summary goes to stderr)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  eval_cmd->add_option("--dtype", eval.dtype,
                       "Compute in this float type: weights and activations in float16/bfloat16 on the GPU, float32 accumulation, "
                       "logits back in the model's output type (needs --device cuda; default: the model's own)")
      ->check(CLI::IsMember({"float32", "float16", "bfloat16"}));

  qc::ConvertOptions conv;
  conv.tool_version = QC_VERSION;
  conv.command_line = JoinCommandLine(argc, argv);
  auto* conv_cmd = app.add_subcommand("convert", "Quantize a model (the default: qconvert MODEL.onnx --pass ...)");
  conv_cmd->add_option("model", conv.model, "ONNX model (read only; never modified)")->required();
  conv_cmd->add_option("--pass", conv.passes, "Passes to run in order, comma-separated (see --list-passes)")->required();
  conv_cmd->add_option("-o,--output", conv.output, "Output model (default: NAME.PASS-wBITS.onnx beside the input)");
  conv_cmd->add_option("--report", conv.report, "Write the JSON report here (schema: docs/REPORT.md)");
  conv_cmd->add_option("--bits", conv.quant.bits, "Weight bits, 2..8")->capture_default_str();
  conv_cmd->add_option("--group-size", conv.quant.group_size, "Input rows per quantization group: a power of two >= 16, or -1 per output channel")->capture_default_str();
  conv_cmd->add_flag("--sym", conv.sym_flag, "Symmetric quantization (no zero points; the default except for gptq)");
  conv_cmd->add_flag("--asym", conv.asym_flag, "Asymmetric quantization (scale + zero point; the default for gptq)");
  // On by default: at 4 bits it recovers most of round-to-nearest's loss for ~1 s per 10M weights.
  conv.quant.scale_search = true;
  conv_cmd->add_flag("--scale-search,!--no-scale-search", conv.quant.scale_search,
                     "Search each group's scale for the least squared error (default on; --no-scale-search gives plain "
                     "round-to-nearest, ONNX Runtime's exact codes)");
  conv_cmd->add_option("--calib", conv.calib, "Calibration data: text (with --tokenizer) or .npy token ids");
  conv_cmd->add_option("--tokenizer", conv.tokenizer, "tokenizer.json for text --calib / --eval data");
  conv_cmd->add_option("--nsamples", conv.nsamples, "Calibration windows")->capture_default_str();
  conv_cmd->add_option("--seqlen", conv.seqlen, "Tokens per calibration and evaluation window")->capture_default_str();
  conv_cmd->add_option("--seed", conv.quant.seed, "Seed of the calibration window sampling")->capture_default_str();
  conv_cmd->add_flag("--act-order", conv.quant.act_order, "GPTQ: quantize columns in decreasing Hessian-diagonal order");
  conv_cmd->add_flag("--static-groups,!--g-idx", conv.quant.static_groups,
                     "GPTQ act-order: keep the groups in input order (default; no g_idx in the artifact); --g-idx "
                     "forms groups in act-order and writes g_idx (4-bit storage)");
  conv_cmd->add_option("--damp", conv.quant.damp, "GPTQ: dampening, a fraction of the mean Hessian diagonal")->capture_default_str();
  conv_cmd->add_option("--block-size", conv.quant.block_size, "GPTQ: lazy-batch block size (columns updated together)")
      ->capture_default_str();
  conv_cmd->add_option("--alpha", conv.quant.alpha, "SmoothQuant / AWQ migration strength")->capture_default_str();
  conv_cmd->add_option("--threshold", conv.quant.threshold, "outlier-split: activation magnitude threshold")->capture_default_str();
  conv_cmd->add_option("--exclude", conv.quant.exclude_regex, "Leave layers whose node or weight name matches this regex in float");
  conv.quant.head_bits = qc::kCliHeadBits;
  conv_cmd
      ->add_option_function<std::string>(
          "--head-bits",
          [&conv](const std::string& v) {
            if (v == "float") {
              conv.quant.head_bits = qc::kHeadFloat;
              return;
            }
            if (v.size() == 1 && v[0] >= '2' && v[0] <= '8') {
              conv.quant.head_bits = v[0] - '0';
              return;
            }
            throw CLI::ValidationError("--head-bits", "expected 2..8 or 'float', got '" + v + "'");
          },
          "Bits of the output head (the layer computing the logits), 2..8, or 'float'")
      ->default_str("8");
  conv_cmd->add_option("--device", conv.device,
                       "Where calibration and evaluation run: cpu, or cuda (forward passes and activation statistics on the GPU, and GPTQ's solver; the other passes' searches and rounding stay on the CPU)")
      ->capture_default_str();
  conv_cmd->add_option("--calib-device-memory", conv.calib_device_mib,
                       "With --device cuda: MiB of calibration activations kept on the GPU between layer groups "
                       "(the rest wait in host memory; results do not depend on it)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
  conv_cmd->add_option("--eval", conv.eval, "Measure perplexity before and after on this text (with --tokenizer) or .npy ids");
  conv_cmd->add_option("--eval-windows", conv.eval_windows, "Evaluate the first N windows of --eval (-1: all)")->capture_default_str();
  conv_cmd->add_flag("--external-data", conv.external_data, "Store the weights in OUT.onnx.data beside the model");
  conv_cmd->add_flag("!--no-progress", conv.progress, "Hide the stage messages on stderr");

  qc::DiffOptions diff;
  auto* diff_cmd = app.add_subcommand("diff", "Compare two reports per layer; exit 3 when a threshold is exceeded");
  diff_cmd->add_option("base", diff.base, "Baseline report (JSON)")->required();
  diff_cmd->add_option("new", diff.next, "New report (JSON)")->required();
  diff_cmd->add_option("--max-ppl-increase", diff.max_ppl_increase, "Fail (exit 3) when perplexity grows by more than PCT percent");
  diff_cmd->add_option("--max-layer-error-increase", diff.max_layer_error_increase,
                       "Fail (exit 3) when a layer's weight or output error grows by more than PCT percent");

  qc::GenerateOptions gen;
  auto* gen_cmd = app.add_subcommand("generate", "Write a seeded random-weight decoder in an architecture's export pattern");
  gen_cmd->add_option("--arch", gen.arch, "llama, mistral, qwen2, gemma, phi, gpt2, gpt_neo, gpt_neox, opt")->capture_default_str();
  gen_cmd->add_option("--style", gen.style, "Exporter pattern: dynamo, torchscript, ort_fused")->capture_default_str();
  gen_cmd->add_option("--vocab", gen.vocab)->capture_default_str()->check(CLI::Range(int64_t{2}, int64_t{1} << 22));
  gen_cmd->add_option("--hidden", gen.hidden)->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
  gen_cmd->add_option("--layers", gen.layers)->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{1024}));
  gen_cmd->add_option("--heads", gen.heads)->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{1024}));
  gen_cmd->add_option("--kv-heads", gen.kv_heads, "0: same as --heads")->check(CLI::Range(int64_t{0}, int64_t{1024}));
  gen_cmd->add_option("--intermediate", gen.intermediate, "0: the architecture's default")->check(CLI::Range(int64_t{0}, int64_t{1} << 18));
  gen_cmd->add_option("--max-positions", gen.max_positions)->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  gen_cmd->add_option("--seed", gen.seed)->capture_default_str();
  gen_cmd->add_flag("--mask-and-positions", gen.mask_and_positions, "Also take attention_mask and position_ids inputs");
  gen_cmd->add_flag("--external-data", gen.external_data, "Store weights in MODEL.onnx.data");
  gen_cmd->add_option("--tokenizer-out", gen.tokenizer_output, "Also write a byte-level tokenizer.json (ids 0..255)");
  gen_cmd->add_option("-o,--output", gen.output, "Output .onnx")->required();

  std::vector<std::string> routed = RouteToConvert(argc, argv);
  std::vector<char*> routed_argv;
  for (std::string& a : routed) routed_argv.push_back(a.data());
  try {
    app.parse(static_cast<int>(routed_argv.size()), routed_argv.data());
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 1;
  }

  if (list_passes) {
    qc::PrintPasses();
    return 0;
  }
  if (app.get_subcommands().empty()) {
    std::fprintf(stderr, "qconvert: error: give a subcommand or MODEL.onnx --pass PASS (see --help)\n");
    return 1;
  }

  try {
    qc::Status status;
    if (*diff_cmd) {
      qc::StatusOr<bool> exceeded = qc::RunDiff(diff);
      if (!exceeded.ok()) return ExitCodeFor(exceeded.status());
      return *exceeded ? 3 : 0;
    }
    if (*conv_cmd) status = qc::RunConvert(conv);
    else if (*inspect_cmd) status = qc::RunInspect(inspect);
    else if (*gen_cmd) status = qc::RunGenerate(gen);
    else if (*run_cmd) status = qc::RunRun(run);
    else if (*tok_cmd) status = qc::RunTokenize(tok);
    else if (*eval_cmd) status = qc::RunEval(eval);
    return ExitCodeFor(status);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "qconvert: error: out of memory\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qconvert: internal error: %s\n", e.what());
    return 2;
  }
}
