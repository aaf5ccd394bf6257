// Pass lookup by name, driven by the passes.def table.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "formats/status.h"
#include "passes/pass.h"

namespace qc {

struct PassInfo {
  const char* name;
  const char* description;
  std::unique_ptr<Pass> (*create)();
};

/// Every registered pass, in table order.
const std::vector<PassInfo>& AllPasses();
/// Parses "smoothquant,gptq" into pass instances; unknown names are an error listing the known ones.
StatusOr<std::vector<std::unique_ptr<Pass>>> CreatePipeline(const std::string& comma_separated);

}  // namespace qc
