// The pass table, built from passes.def (no static-initialisation registration).
#include "passes/registry.h"

#include <sstream>

namespace qc {

#define QC_PASS(name, cls, description) std::unique_ptr<Pass> Create##cls();
#include "passes/passes.def"
#undef QC_PASS

const std::vector<PassInfo>& AllPasses() {
  static const std::vector<PassInfo> table = {
#define QC_PASS(name, cls, description) {name, description, &Create##cls},
#include "passes/passes.def"
#undef QC_PASS
  };
  return table;
}

StatusOr<std::vector<std::unique_ptr<Pass>>> CreatePipeline(const std::string& comma_separated) {
  std::vector<std::unique_ptr<Pass>> pipeline;
  std::stringstream ss(comma_separated);
  std::string name;
  while (std::getline(ss, name, ',')) {
    const PassInfo* found = nullptr;
    for (const PassInfo& p : AllPasses())
      if (name == p.name) found = &p;
    if (!found) {
      std::string known;
      for (const PassInfo& p : AllPasses()) known += (known.empty() ? "" : ", ") + std::string(p.name);
      return InvalidArgument("unknown pass '" + name + "' (known: " + known + ")");
    }
    pipeline.push_back(found->create());
  }
  if (pipeline.empty()) return InvalidArgument("--pass needs at least one pass name");
  return pipeline;
}

}  // namespace qc
