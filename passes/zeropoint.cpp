// `zeropoint`: asymmetric round-to-nearest over every linear layer (see zeropoint.h).
#include "passes/zeropoint.h"

#include "passes/weight_quant.h"

namespace qc {

Status ZeroPointPass::Run(Model& model, PassContext& context) {
  QC_CHECK(context.layers != nullptr);
  return RunRoundToNearest(model, Name(), SpecFromOptions(context.options, /*sym=*/false), context.options.exclude_regex,
                           context.layers, context.calibrator, context.options.head_bits);
}

std::unique_ptr<Pass> CreateZeroPointPass() { return std::make_unique<ZeroPointPass>(); }

}  // namespace qc
