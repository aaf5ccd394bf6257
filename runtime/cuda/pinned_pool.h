// Page-locked host memory for values moved off the device (Execution::Park): copies to and from
// it run at full bus speed and asynchronously, where pageable memory goes through a staging copy
// and blocks the host. Blocks are cached by size and reused (pinning is slow: about a millisecond
// per few MB), never returned before the process ends.
#pragma once

#include <memory>

#include "formats/status.h"
#include "formats/tensor.h"
#include "runtime/cuda/context.h"

namespace qc::cuda {

/// Queues a copy of the device tensor `device` into a new host tensor in pooled page-locked
/// memory on `ctx`'s stream and returns that tensor at once: its bytes are valid after the next
/// ctx.Synchronize(). The block returns to the pool when the last tensor sharing it is gone; a
/// later copy into it is queued on the same stream, so it cannot overtake a pending upload from it.
StatusOr<Tensor> DownloadToPinnedAsync(Context& ctx, const Tensor& device);

/// A pooled page-locked block of at least `bytes`, back in the pool when the last copy of the
/// pointer is gone (staging for copies a captured CUDA graph replays).
StatusOr<std::shared_ptr<void>> AllocatePinned(size_t bytes);

/// Bytes of page-locked memory the pool holds (in use and cached).
int64_t PinnedPoolBytes();

}  // namespace qc::cuda
