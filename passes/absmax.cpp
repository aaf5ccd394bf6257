// `absmax`: symmetric round-to-nearest over every linear layer (see absmax.h).
#include "passes/absmax.h"

#include "passes/weight_quant.h"

namespace qc {

Status AbsmaxPass::Run(Model& model, PassContext& context) {
  QC_CHECK(context.layers != nullptr);
  return RunRoundToNearest(model, Name(), SpecFromOptions(context.options, /*sym=*/true), context.options.exclude_regex,
                           context.layers, context.calibrator, context.options.head_bits);
}

std::unique_ptr<Pass> CreateAbsmaxPass() { return std::make_unique<AbsmaxPass>(); }

}  // namespace qc
