#include "runtime/cuda/kernel_attributes.h"

#include <map>
#include <mutex>
#include <tuple>
#include <utility>

namespace qc::cuda {

cudaError_t AllowLargeSharedMemory(const void* kernel, const DeviceInfo& info, bool prefer_shared) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, cudaError_t> done;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(kernel, info.device);
  if (auto it = done.find(key); it != done.end()) return it->second;
  cudaFuncAttributes fa{};
  cudaError_t e = cudaFuncGetAttributes(&fa, kernel);  // static shared memory counts against the limit
  const int64_t dynamic_limit = info.max_shared_per_block_optin - static_cast<int64_t>(fa.sharedSizeBytes);
  if (e == cudaSuccess)
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dynamic_limit));
  if (e == cudaSuccess && prefer_shared)
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
  if (e != cudaSuccess) (void)cudaGetLastError();
  done.emplace(key, e);
  return e;
}

int BlocksPerSm(const void* kernel, int threads, size_t dynamic_smem, const DeviceInfo& info) {
  static std::mutex mu;
  static std::map<std::tuple<const void*, int, int, size_t>, int> cache;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(kernel, info.device, threads, dynamic_smem);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, dynamic_smem) != cudaSuccess) {
    (void)cudaGetLastError();
    blocks = 0;
  }
  cache.emplace(key, blocks);
  return blocks;
}

}  // namespace qc::cuda
