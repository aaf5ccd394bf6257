// The qconvert subcommands; each returns a Status that main() maps to an exit code.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/status.h"
#include "passes/quant_options.h"
#include "runtime/executor.h"

namespace qc {

struct InspectOptions {
  std::string model;
};

struct RunOptions {
  std::string model;
  std::string input_ids;            // .npy of int32/int64 [batch, seq]
  std::vector<std::string> inputs;  // NAME=FILE.npy overrides
  std::string output;               // logits .npy
  bool reference = false;           // run the reference kernels
  std::string device = "cpu";       // cpu | cuda
  std::string dtype;                // float32 | float16 | bfloat16; empty: the model's own
  bool check_finite = false;        // name the first node with a NaN/Inf output (slow)
};

struct TokenizeOptions {
  std::string tokenizer;
  std::string text;
  std::string output;
};

struct EvalOptions {
  std::string model;
  std::string data;       // text file (needs tokenizer) or .npy ids
  std::string tokenizer;
  int64_t seqlen = 512;
  int64_t max_windows = -1;
  bool json = false;
  bool progress = true;
  bool profile = false;  // print time per op type to stderr
  bool cuda_graphs = true;  // SessionOptions::cuda_graphs with --device cuda
  std::string device = "cpu";  // cpu | cuda
  std::string dtype;           // float32 | float16 | bfloat16; empty: the model's own
};

/// `qconvert MODEL.onnx --pass ...` (also `qconvert convert ...`): see converter/pipeline.h.
struct ConvertOptions {
  std::string model;
  std::string passes;     // "absmax" or "awq,gptq": run in order on one graph
  std::string output;     // default: NAME.PASS-wBITS.onnx beside the input (DefaultOutputPath)
  std::string report;     // JSON report path, "" for none
  std::string calib;      // calibration text (with tokenizer) or .npy ids
  std::string tokenizer;  // tokenizer.json for text calibration / eval data
  std::string eval;       // text or .npy ids: perplexity before and after
  int64_t eval_windows = 48;  // first N windows of the eval data; -1 for all
  int64_t nsamples = 128;
  int64_t seqlen = 512;
  QuantOptions quant;
  bool sym_flag = false;   // --sym given
  bool asym_flag = false;  // --asym given
  std::string device = "cpu";  // cpu | cuda (passes that support it: kDevicePasses in pipeline.cpp)
  int64_t calib_device_mib = 1024;  // --device cuda: calibration activations kept on the GPU
  bool external_data = false;
  bool progress = true;      // stage messages on stderr
  std::string command_line;  // recorded in the report
  std::string tool_version;  // recorded in the report ("0.1.0")
};

/// `qconvert diff BASE.json NEW.json`: thresholds are percentages; negative means unchecked.
struct DiffOptions {
  std::string base;
  std::string next;
  double max_ppl_increase = -1;
  double max_layer_error_increase = -1;
};

struct GenerateOptions {
  std::string arch = "llama";  // HF model_type: llama, gpt2, mistral, ...
  std::string style = "dynamo";
  int64_t vocab = 4096;
  int64_t hidden = 256;
  int64_t layers = 4;
  int64_t heads = 8;
  int64_t kv_heads = 0;
  int64_t intermediate = 0;
  int64_t max_positions = 1024;
  uint32_t seed = 0;
  bool mask_and_positions = false;
  bool external_data = false;
  std::string output;
  std::string tokenizer_output;  // optional byte-level tokenizer.json for the model
};

Status RunInspect(const InspectOptions& options);
Status RunGenerate(const GenerateOptions& options);
Status RunRun(const RunOptions& options);
Status RunTokenize(const TokenizeOptions& options);
Status RunEval(const EvalOptions& options);
Status RunConvert(const ConvertOptions& options);
/// Prints the per-layer comparison; true when a threshold was exceeded (exit code 3).
StatusOr<bool> RunDiff(const DiffOptions& options);
/// `qconvert --list-passes`: one line per registered pass.
void PrintPasses();

/// SessionOptions for --device (cpu | cuda) and --dtype (float32 | float16 | bfloat16, or empty
/// for the model's own precision); InvalidArgument for a 16-bit dtype on the CPU.
StatusOr<SessionOptions> DeviceSessionOptions(const std::string& device, const std::string& dtype);

/// Loads token ids from a .npy file or tokenizes a text file; shared by eval and calibration.
StatusOr<std::vector<int32_t>> LoadIds(const std::string& data, const std::string& tokenizer);

}  // namespace qc
