// The qconvert subcommands; each returns a Status that main() maps to an exit code.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/status.h"

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
};

Status RunInspect(const InspectOptions& options);
Status RunRun(const RunOptions& options);
Status RunTokenize(const TokenizeOptions& options);
Status RunEval(const EvalOptions& options);

/// Loads token ids from a .npy file or tokenizes a text file; shared by eval and calibration.
StatusOr<std::vector<int32_t>> LoadIds(const std::string& data, const std::string& tokenizer);

}  // namespace qc
