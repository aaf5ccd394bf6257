// Test helper: the models and data of ../shared (absent on some machines: tests skip then).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "formats/graph.h"
#include "formats/npy.h"
#include "formats/onnx_reader.h"
#include "formats/status.h"

namespace qc {

/// ../shared: QC_SHARED_DIR in the environment (a device run of a copied binary), else the build's.
inline std::string SharedDir() {
  const char* env = std::getenv("QC_SHARED_DIR");
  return env ? env : QC_SHARED_DIR;
}

/// A shared model and its docs-val token ids (int32).
struct SharedModelAndIds {
  Model model;
  std::vector<int32_t> ids;
};

/// `name`'s model.onnx and docs-val.ids.npy; NotFound when ../shared does not have them.
inline StatusOr<SharedModelAndIds> LoadSharedModelAndIds(const std::string& name) {
  const std::string dir = SharedDir() + "/models/" + name;
  if (!std::filesystem::exists(dir + "/model.onnx") || !std::filesystem::exists(dir + "/docs-val.ids.npy"))
    return NotFound("../shared models not found (" + dir + ")");
  SharedModelAndIds out;
  QC_ASSIGN_OR_RETURN(out.model, ReadOnnxModel(dir + "/model.onnx"));
  QC_ASSIGN_OR_RETURN(Tensor ids, ReadNpy(dir + "/docs-val.ids.npy"));
  for (int64_t v : ids.ToInt64s()) out.ids.push_back(static_cast<int32_t>(v));
  return out;
}

}  // namespace qc
