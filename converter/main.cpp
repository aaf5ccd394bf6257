// qconvert command line: parses arguments (CLI11) and maps errors to exit codes
// 0 success, 1 bad input, 2 internal error. The only place exceptions are caught.
#include <cstdio>
#include <exception>
#include <new>

#include <CLI/CLI.hpp>

#include "converter/commands.h"

namespace {

int ExitCodeFor(const qc::Status& s) {
  if (s.ok()) return 0;
  std::fprintf(stderr, "qconvert: error: %s\n", s.message().c_str());
  return s.IsInputError() ? 1 : 2;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"qconvert: offline LLM quantization for ONNX models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("qconvert ") + QC_VERSION);

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

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 1;
  }

  try {
    qc::Status status;
    if (*inspect_cmd) status = qc::RunInspect(inspect);
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
