// The caching device allocator (allocator.h).
#include "runtime/cuda/allocator.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "runtime/cuda/cuda_check.h"

namespace qc::cuda {
namespace {

constexpr size_t kSmallStep = 512;          // cudaMalloc's own alignment granularity is 256-512 B
constexpr size_t kLargeStep = size_t{1} << 20;  // above 1 MiB, MiB steps bound the waste at < 1 MiB
constexpr size_t kSmallLimit = size_t{1} << 20;

// A cached block larger than the request by more than this is left for a better fit (a 1 GiB
// block must not serve a 2 MiB request and pin the rest).
size_t MaxSlack(size_t rounded) { return rounded < kSmallLimit ? rounded : rounded / 8; }

// Switches to `device` for the duration of a scope (no-op for -1).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (device < 0) return;
    if (cudaGetDevice(&previous_) == cudaSuccess && previous_ != device) {
      if (cudaSetDevice(device) == cudaSuccess) switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_) (void)cudaSetDevice(previous_);
  }

 private:
  int previous_ = -1;
  bool switched_ = false;
};

}  // namespace

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    Reset();
    owner_ = std::exchange(other.owner_, nullptr);
    ptr_ = std::exchange(other.ptr_, nullptr);
    size_ = std::exchange(other.size_, 0);
    block_ = std::exchange(other.block_, 0);
  }
  return *this;
}

void DeviceBuffer::Reset() {
  if (ptr_ != nullptr && owner_ != nullptr) owner_->Release(ptr_, block_);
  owner_ = nullptr;
  ptr_ = nullptr;
  size_ = block_ = 0;
}

size_t CachingAllocator::RoundSize(size_t bytes) {
  if (bytes == 0) bytes = 1;
  const size_t step = bytes < kSmallLimit ? kSmallStep : kLargeStep;
  return (bytes + step - 1) / step * step;
}

CachingAllocator::~CachingAllocator() { (void)EmptyCache(); }

StatusOr<DeviceBuffer> CachingAllocator::Allocate(size_t bytes) {
  const size_t rounded = RoundSize(bytes);
  void* ptr = nullptr;
  size_t block = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // A recording reservation's own free blocks first, then the cache.
    std::multimap<size_t, void*>* sources[2] = {recording_ ? &recording_->free_ : nullptr, &free_};
    for (std::multimap<size_t, void*>* source : sources) {
      if (source == nullptr || ptr != nullptr) continue;
      auto it = source->lower_bound(rounded);
      if (it == source->end() || it->first - rounded > MaxSlack(rounded)) continue;
      block = it->first;
      ptr = it->second;
      source->erase(it);
      stats_.bytes_cached -= block;
      stats_.bytes_in_use += block;
      stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
      ++stats_.cache_hits;
    }
    if (ptr != nullptr && recording_ != nullptr) recording_->blocks_.emplace(ptr, block);
  }
  if (ptr == nullptr) {
    DeviceGuard guard(device_);
    cudaError_t err = cudaMalloc(&ptr, rounded);
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      QC_RETURN_IF_ERROR(EmptyCache());
      err = cudaMalloc(&ptr, rounded);
    }
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      return CudaError(err, ("cudaMalloc(" + std::to_string(rounded) + " bytes)").c_str(), __FILE__, __LINE__);
    }
    block = rounded;
    std::lock_guard<std::mutex> lock(mu_);
    if (recording_ != nullptr) recording_->blocks_.emplace(ptr, block);
    stats_.bytes_in_use += rounded;
    stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
    ++stats_.device_allocations;
  }
  DeviceBuffer buffer(this, ptr, bytes, block);
  QC_RETURN_IF_ERROR(Poison(buffer));  // after the lock: a failure gives the block back through Release
  return std::move(buffer);
}

Status CachingAllocator::Poison(const DeviceBuffer& buffer) {
  if (!poison_) return Status::Ok();
  DeviceGuard guard(device_);
  // Work queued on any stream may still use the block's previous contents (stream-ordered reuse).
  QC_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  QC_CUDA_RETURN_IF_ERROR(cudaMemset(buffer.data(), 0xff, buffer.block_));
  QC_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return Status::Ok();
}

void CachingAllocator::Release(void* ptr, size_t block) {
  std::lock_guard<std::mutex> lock(mu_);
  std::multimap<size_t, void*>* home = &free_;
  for (Reservation* r : reservations_)
    if (r->blocks_.count(ptr)) home = &r->free_;
  home->emplace(block, ptr);
  stats_.bytes_in_use -= block;
  stats_.bytes_cached += block;
}

StatusOr<std::shared_ptr<CachingAllocator::Reservation>> CachingAllocator::BeginReserving() {
  std::lock_guard<std::mutex> lock(mu_);
  if (recording_ != nullptr) return FailedPrecondition("CachingAllocator: a reservation is already recording");
  std::shared_ptr<Reservation> r(new Reservation(this));
  reservations_.push_back(r.get());
  recording_ = r.get();
  return r;
}

void CachingAllocator::EndReserving() {
  std::lock_guard<std::mutex> lock(mu_);
  recording_ = nullptr;
}

void CachingAllocator::Dissolve(Reservation* r) {
  std::lock_guard<std::mutex> lock(mu_);
  free_.insert(r->free_.begin(), r->free_.end());
  r->free_.clear();
  reservations_.erase(std::remove(reservations_.begin(), reservations_.end(), r), reservations_.end());
  if (recording_ == r) recording_ = nullptr;
}

CachingAllocator::Reservation::~Reservation() { owner_->Dissolve(this); }

size_t CachingAllocator::Reservation::bytes() const {
  std::lock_guard<std::mutex> lock(owner_->mu_);
  size_t total = 0;
  for (const auto& [ptr, block] : blocks_) total += block;
  return total;
}

Status CachingAllocator::EmptyCache() {
  std::vector<std::pair<size_t, void*>> blocks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    blocks.assign(free_.begin(), free_.end());
    free_.clear();
    stats_.bytes_cached = 0;
  }
  DeviceGuard guard(device_);
  Status first = Status::Ok();
  for (const auto& [size, ptr] : blocks) {
    const cudaError_t err = cudaFree(ptr);
    if (err != cudaSuccess && first.ok()) first = CudaError(err, "cudaFree", __FILE__, __LINE__);
  }
  return first;
}

CachingAllocator::Stats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

CachingAllocator& CachingAllocator::Default() {
  static CachingAllocator* allocator = new CachingAllocator(-1);  // leaked on purpose, see header
  return *allocator;
}

}  // namespace qc::cuda
