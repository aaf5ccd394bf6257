// Tensor storage and conversions.
#include "formats/tensor.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

namespace qc {

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeToString(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

namespace {
// 64-byte alignment suits AVX-512 loads and keeps Eigen maps aligned.
constexpr size_t kAlignment = 64;

// Freed buffers of 4 MB and more, kept for the next allocation of the same size. qconvert maps
// such buffers fresh from the OS (M_MMAP_THRESHOLD, converter/main.cpp, keeps the heap from
// fragmenting on large models), and a fresh mapping costs a page fault per 4 KB on first touch:
// evaluating docs-llama-12m, whose attention scores (6 MB) and logits (16 MB) recur every window,
// took 680k faults and ran 33% slower. At most 64 MB are kept; an exact size match is required.
class LargeBufferCache {
 public:
  static constexpr size_t kMinBytes = size_t{4} << 20;
  static constexpr size_t kMaxCachedBytes = size_t{64} << 20;

  void* Take(size_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = free_.size(); i-- > 0;) {
      if (free_[i].first != size) continue;
      void* p = free_[i].second;
      free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
      cached_ -= size;
      return p;
    }
    return nullptr;
  }
  void Give(void* p, size_t size) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (size > kMaxCachedBytes) {
        evicted.push_back(p);
      } else {
        while (cached_ + size > kMaxCachedBytes) {  // oldest first
          evicted.push_back(free_.front().second);
          cached_ -= free_.front().first;
          free_.erase(free_.begin());
        }
        free_.emplace_back(size, p);
        cached_ += size;
      }
    }
    for (void* q : evicted) std::free(q);
  }

 private:
  std::mutex mu_;
  std::vector<std::pair<size_t, void*>> free_;  // oldest first
  size_t cached_ = 0;
};

// Never destroyed: tensors may be released during static destruction.
LargeBufferCache& BufferCache() {
  static LargeBufferCache* cache = new LargeBufferCache();
  return *cache;
}

std::shared_ptr<const void> Allocate(int64_t bytes, bool zero) {
  size_t size = (static_cast<size_t>(bytes) + kAlignment - 1) / kAlignment * kAlignment;
  if (size == 0) size = kAlignment;
  const bool large = size >= LargeBufferCache::kMinBytes;
  void* p = large ? BufferCache().Take(size) : nullptr;
  if (!p) p = std::aligned_alloc(kAlignment, size);
  if (!p) throw std::bad_alloc();
  if (zero) std::memset(p, 0, size);
  if (large)
    return std::shared_ptr<const void>(p, [size](const void* q) { BufferCache().Give(const_cast<void*>(q), size); });
  return std::shared_ptr<const void>(p, [](const void* q) { std::free(const_cast<void*>(q)); });
}
}  // namespace

Tensor::Tensor(DType dtype, Shape shape) : dtype_(dtype), shape_(std::move(shape)) {
  storage_ = Allocate(nbytes(), /*zero=*/true);
  data_ = storage_.get();
}

Tensor Tensor::Uninitialized(DType dtype, Shape shape) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.storage_ = Allocate(t.nbytes(), /*zero=*/false);
  t.data_ = t.storage_.get();
  return t;
}

Tensor::Tensor(DType dtype, Shape shape, std::shared_ptr<const void> storage, const void* data)
    : dtype_(dtype), shape_(std::move(shape)), storage_(std::move(storage)), data_(data) {}

Tensor Tensor::OnDevice(DType dtype, Shape shape, std::shared_ptr<const void> storage, const void* data) {
  Tensor t(dtype, std::move(shape), std::move(storage), data);
  t.on_device_ = true;
  return t;
}

namespace {
// Drops the resident pages of [data, data + bytes) from this process. The range is widened to
// whole pages: a neighbour sharing a boundary page just faults it back in (the mapping is
// read-only, so no data is lost).
void DropPages(const void* data, int64_t bytes) {
  if (bytes <= 0) return;
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(bytes) + page - 1) / page * page;
  ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);  // a hint: failure changes nothing
}
}  // namespace

Tensor Tensor::Mapped(DType dtype, Shape shape, std::shared_ptr<const void> mapping, const void* data) {
  QC_CHECK(IsAlignedFor(dtype, data));
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  const int64_t bytes = t.nbytes();
  // The view's own handle: when the last tensor sharing it goes, its pages go too, while the
  // mapping lives on for the other views.
  t.storage_ = std::shared_ptr<const void>(data, [mapping = std::move(mapping), bytes](const void* p) mutable {
    DropPages(p, bytes);
    mapping.reset();
  });
  t.data_ = data;
  t.mapped_ = true;
  return t;
}

bool Tensor::IsAlignedFor(DType dtype, const void* data) {
  const int64_t element = DTypeStorageBytes(dtype, 1);
  const uintptr_t align = element >= 8 ? 8 : element >= 4 ? 4 : element >= 2 ? 2 : 1;
  return reinterpret_cast<uintptr_t>(data) % align == 0;
}

void Tensor::ReleasePages() const {
  if (mapped_) DropPages(data_, nbytes());
}

void Tensor::ReleasePages(int64_t offset, int64_t size) const {
  if (!mapped_ || offset < 0 || size <= 0 || offset >= nbytes()) return;
  DropPages(static_cast<const char*>(data_) + offset, std::min(size, nbytes() - offset));
}

Tensor Tensor::Reshaped(Shape shape) const {
  QC_CHECK(NumElements(shape) == numel());
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::Clone() const {
  QC_CHECK(!on_device_);
  Tensor t(dtype_, shape_);
  if (nbytes() > 0) std::memcpy(t.mutable_raw(), data_, nbytes());
  return t;
}

namespace {
template <typename Out>
std::vector<Out> Convert(const Tensor& t) {
  QC_CHECK(!t.on_device());
  int64_t n = t.numel();
  std::vector<Out> out(n);
  const void* p = t.raw();
  auto fill = [&](auto* typed) {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<Out>(typed[i]);
  };
  switch (t.dtype()) {
    case DType::kFloat32: fill(static_cast<const float*>(p)); break;
    case DType::kFloat64: fill(static_cast<const double*>(p)); break;
    case DType::kInt8: fill(static_cast<const int8_t*>(p)); break;
    case DType::kUInt8: fill(static_cast<const uint8_t*>(p)); break;
    case DType::kInt16: fill(static_cast<const int16_t*>(p)); break;
    case DType::kUInt16: fill(static_cast<const uint16_t*>(p)); break;
    case DType::kInt32: fill(static_cast<const int32_t*>(p)); break;
    case DType::kUInt32: fill(static_cast<const uint32_t*>(p)); break;
    case DType::kInt64: fill(static_cast<const int64_t*>(p)); break;
    case DType::kUInt64: fill(static_cast<const uint64_t*>(p)); break;
    case DType::kBool: fill(static_cast<const bool*>(p)); break;
    case DType::kFloat16:
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<Out>(HalfToFloat(static_cast<const uint16_t*>(p)[i]));
      break;
    case DType::kBFloat16:
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<Out>(BFloat16ToFloat(static_cast<const uint16_t*>(p)[i]));
      break;
    case DType::kInt4:
    case DType::kUInt4:
      for (int64_t i = 0; i < n; ++i) {
        uint8_t byte = static_cast<const uint8_t*>(p)[i / 2];
        int v = (i % 2 == 0) ? (byte & 0xf) : (byte >> 4);
        if (t.dtype() == DType::kInt4 && v >= 8) v -= 16;
        out[i] = static_cast<Out>(v);
      }
      break;
    default: QC_CHECK(false && "unsupported dtype in conversion");
  }
  return out;
}
}  // namespace

std::vector<float> Tensor::ToFloats() const { return Convert<float>(*this); }
std::vector<int64_t> Tensor::ToInt64s() const { return Convert<int64_t>(*this); }

bool Tensor::BitEqual(const Tensor& other) const {
  QC_CHECK(!on_device_ && !other.on_device_);
  return dtype_ == other.dtype_ && shape_ == other.shape_ &&
         (nbytes() == 0 || std::memcmp(data_, other.data_, nbytes()) == 0);
}

}  // namespace qc
