// Test helper: runs models in ONNX Runtime (onnxruntime-node) through one node process,
// tools/ort_run.js --batch, so tests can compare our executor and artifacts with it.
#pragma once

#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "formats/graph.h"
#include "formats/npy.h"
#include "formats/onnx_writer.h"
#include "formats/status.h"
#include "runtime/executor.h"

namespace qc {

struct OrtJob {
  std::string name;  // files DIR/NAME.onnx and DIR/NAME_INPUT.npy; results in OrtOutputDir(DIR, NAME)
  const Model* model = nullptr;
  NamedTensors feeds;
};

/// Where ort_run.js leaves a job's results: OUTPUT.npy per graph output, or error.txt with ONNX
/// Runtime's message when it rejected the model or failed to run it.
inline std::string OrtOutputDir(const std::string& dir, const std::string& name) { return dir + "/" + name + "_ort"; }

/// ONNX Runtime's message for a job it rejected or failed to run (its error.txt); empty when it ran.
inline std::string OrtJobError(const std::string& dir, const std::string& name) {
  std::stringstream text;
  text << std::ifstream(OrtOutputDir(dir, name) + "/error.txt").rdbuf();
  return text.str();
}

enum class OrtBatch { kRan, kUnavailable };

/// Writes every job's model and feeds under `dir` and runs them all in one node process.
/// kUnavailable when onnxruntime-node is not installed (ort_run.js exits 3: the caller skips);
/// an error, with ort_run.js's stderr, when the files cannot be written or node fails otherwise.
inline StatusOr<OrtBatch> RunOrtBatch(const std::string& dir, const std::vector<OrtJob>& jobs) {
  std::string list;
  for (const OrtJob& job : jobs) {
    const std::string model_path = dir + "/" + job.name + ".onnx";
    QC_RETURN_IF_ERROR(WriteOnnxModel(*job.model, model_path));
    list += model_path + "\t" + OrtOutputDir(dir, job.name);
    for (const auto& [input, tensor] : job.feeds) {
      const std::string npy = dir + "/" + job.name + "_" + input + ".npy";
      QC_RETURN_IF_ERROR(WriteNpy(tensor, npy));
      list += "\t" + input + "=" + npy;
    }
    list += "\n";
  }
  const std::string list_path = dir + "/jobs.txt", stderr_path = dir + "/ort_stderr.txt";
  if (!(std::ofstream(list_path) << list)) return Internal("cannot write " + list_path);
  const std::string command = "node '" + std::string(QC_SOURCE_DIR) + "/tools/ort_run.js' --batch '" + list_path +
                              "' 2> '" + stderr_path + "'";
  const int rc = std::system(command.c_str());
  const int code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  if (code == 3) return OrtBatch::kUnavailable;
  if (code != 0 && code != 1) {  // 1: some job failed, and its error.txt says why
    std::stringstream err;
    err << std::ifstream(stderr_path).rdbuf();
    return Internal("tools/ort_run.js exited with " + std::to_string(code) + ": " + err.str());
  }
  return OrtBatch::kRan;
}

}  // namespace qc
