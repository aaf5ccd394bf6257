// The page-locked host block pool (pinned_pool.h).
#include "runtime/cuda/pinned_pool.h"

#include <cuda_runtime_api.h>

#include <map>
#include <memory>
#include <mutex>

#include "runtime/cuda/cuda_check.h"

namespace qc::cuda {
namespace {

class PinnedPool {
 public:
  StatusOr<std::shared_ptr<void>> Allocate(size_t bytes) {
    // 1 MiB steps: activations come in a few sizes, so blocks are reused exactly.
    const size_t block = ((bytes + (size_t{1} << 20) - 1) >> 20 << 20) + (bytes == 0 ? size_t{1} << 20 : 0);
    void* ptr = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(block);
      if (it != free_.end()) {
        ptr = it->second;
        free_.erase(it);
      }
    }
    if (!ptr) {
      QC_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&ptr, block, cudaHostAllocDefault));
      std::lock_guard<std::mutex> lock(mu_);
      total_ += static_cast<int64_t>(block);
    }
    return std::shared_ptr<void>(ptr, [this, block](void* p) {
      std::lock_guard<std::mutex> lock(mu_);
      free_.emplace(block, p);
    });
  }
  int64_t total() {
    std::lock_guard<std::mutex> lock(mu_);
    return total_;
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  int64_t total_ = 0;
};

// Never destroyed: blocks may be returned by tensors that outlive static destruction.
PinnedPool& Pool() {
  static PinnedPool* pool = new PinnedPool();
  return *pool;
}

}  // namespace

StatusOr<Tensor> DownloadToPinnedAsync(Context& ctx, const Tensor& device) {
  QC_CHECK(device.on_device());
  const size_t bytes = static_cast<size_t>(device.nbytes());
  QC_ASSIGN_OR_RETURN(std::shared_ptr<void> block, Pool().Allocate(bytes));
  void* data = block.get();
  if (bytes > 0)
    QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(data, device.raw(), bytes, cudaMemcpyDeviceToHost, ctx.stream()));
  return Tensor(device.dtype(), device.shape(), std::shared_ptr<const void>(std::move(block)), data);
}

StatusOr<std::shared_ptr<void>> AllocatePinned(size_t bytes) { return Pool().Allocate(bytes); }

int64_t PinnedPoolBytes() { return Pool().total(); }

}  // namespace qc::cuda
