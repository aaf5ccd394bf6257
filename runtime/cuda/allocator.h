// A caching device-memory allocator: cudaMalloc once, then reuse freed blocks of a fitting size.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "formats/status.h"

namespace qc::cuda {

class CachingAllocator;

/// One block of device memory, returned to its allocator's cache when destroyed. Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept { *this = std::move(other); }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { Reset(); }

  void* data() const { return ptr_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  /// The size asked for (the block may be larger).
  size_t size() const { return size_; }
  bool empty() const { return ptr_ == nullptr; }
  /// Gives the block back to the cache now.
  void Reset();

 private:
  friend class CachingAllocator;
  DeviceBuffer(CachingAllocator* owner, void* ptr, size_t size, size_t block) :
      owner_(owner), ptr_(ptr), size_(size), block_(block) {}
  CachingAllocator* owner_ = nullptr;
  void* ptr_ = nullptr;
  size_t size_ = 0;
  size_t block_ = 0;  // the rounded size the block was allocated with
};

/// Caches freed device blocks by rounded size (512 B steps below 1 MiB, 1 MiB steps above) and
/// hands them out again, so steady-state inference does no cudaMalloc/cudaFree (each one
/// synchronises the device). Plain cudaMalloc only: no managed memory.
///
/// Reuse is stream-ordered for one stream: a block freed while queued work still reads it may be
/// handed to later work on the same stream, which runs after. Callers that use several streams
/// synchronise before freeing (or keep one allocator per stream). Thread-safe.
/// Must not outlive the CUDA context (use Default() for a process-wide one).
class CachingAllocator {
 public:
  /// Allocates on `device` (-1: the device current at each call; one allocator per device when a
  /// process uses several, since cached blocks do not record theirs).
  explicit CachingAllocator(int device = -1) : device_(device) {}
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  /// A block of at least `bytes` (256-byte aligned, uninitialised). Frees the cache and retries
  /// once when the device is out of memory.
  StatusOr<DeviceBuffer> Allocate(size_t bytes);
  /// cudaFree of every cached (not in use) block.
  Status EmptyCache();
  /// Diagnostics: from now on every block handed out, new or reused, is first filled with 0xFF
  /// bytes (NaN in float16, float32 and float64), after the device has finished all queued work,
  /// so a kernel that reads memory nothing wrote yields NaN instead of whatever the block held.
  /// Synchronises the device on every allocation: for `run --check-finite`, not for speed.
  void set_poison(bool on) { poison_ = on; }

  struct Stats {
    size_t bytes_in_use = 0;       // rounded sizes of live DeviceBuffers
    size_t peak_bytes_in_use = 0;
    size_t bytes_cached = 0;       // free blocks kept for reuse
    int64_t device_allocations = 0;  // cudaMalloc calls that succeeded
    int64_t cache_hits = 0;
  };
  Stats stats() const;

  /// A process-wide allocator for the current device, created on first use and never destroyed
  /// (so no cudaFree runs after the runtime has shut down at exit).
  static CachingAllocator& Default();

  /// The rounded size a request of `bytes` occupies.
  static size_t RoundSize(size_t bytes);

  /// Blocks set aside for a captured CUDA graph, which replays into exactly the blocks its capture
  /// was given. While a reservation records (BeginReserving until EndReserving), every block handed
  /// out is recorded in it; a recorded block returns to it when freed, now or later, and is handed
  /// out again only while it records. Destroying the reservation gives its free blocks back to the
  /// cache and its claim on the others up (they go to the cache when freed).
  class Reservation {
   public:
    ~Reservation();
    Reservation(const Reservation&) = delete;
    Reservation& operator=(const Reservation&) = delete;
    size_t bytes() const;  // the rounded sizes of its blocks, free or in use

   private:
    friend class CachingAllocator;
    explicit Reservation(CachingAllocator* owner) : owner_(owner) {}
    CachingAllocator* owner_;
    std::multimap<size_t, void*> free_;
    std::map<void*, size_t> blocks_;  // every recorded block and its rounded size
  };
  /// Starts recording into a new reservation (one records at a time: FailedPrecondition otherwise).
  StatusOr<std::shared_ptr<Reservation>> BeginReserving();
  /// Stops recording; the reservation keeps its blocks.
  void EndReserving();

 private:
  friend class DeviceBuffer;
  void Release(void* ptr, size_t block);
  void Dissolve(Reservation* reservation);
  // Fills `buffer`'s block with 0xFF when set_poison is on (see there).
  Status Poison(const DeviceBuffer& buffer);

  const int device_;
  mutable std::mutex mu_;
  std::multimap<size_t, void*> free_;  // rounded size -> cached block
  std::vector<Reservation*> reservations_;  // alive ones (each removes itself)
  Reservation* recording_ = nullptr;
  Stats stats_;
  std::atomic<bool> poison_{false};
};

}  // namespace qc::cuda
