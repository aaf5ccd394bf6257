// Running a CPU kernel that has no float16/bfloat16 path on such inputs: widened to float32.
#pragma once

#include "runtime/cpu/kernel.h"

namespace qc {

/// Runs `fn` on `ctx`. When it fails and the node's floating-point inputs are all float16, or all
/// bfloat16, it runs again on those inputs widened to float32 (exact), and its float32 outputs are
/// rounded back to that type: the 16-bit floats compute in float32 and round once on store, as
/// the kernels that take them natively do. Cast and CastLike (whose output type is their
/// target's) are never widened; neither are mixes of float types (an invalid node fails as it did).
/// On the second failure the first error is returned.
Status RunKernelWidening(KernelFn fn, KernelContext& ctx);

}  // namespace qc
