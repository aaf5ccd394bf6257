// Tensor: a shaped, typed view of a reference-counted byte buffer (owned, or mapped from a file).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "formats/status.h"

namespace qc {

using Shape = std::vector<int64_t>;

/// Number of elements of a shape (1 for a scalar).
int64_t NumElements(const Shape& shape);
/// "[2, 128, 384]".
std::string ShapeToString(const Shape& shape);

/// Dense row-major tensor. Copies share the buffer; the IR treats tensors as immutable once
/// produced, so aliasing (Reshape, Identity) is free and safe. Call Clone() before mutating a
/// tensor someone else may hold.
///
/// A tensor is either owned (heap memory) or mapped: a read-only view of a file mapping (external
/// data, inline weights of a mapped .onnx, spilled tensors). A mapped tensor's pages belong to the
/// page cache; they count as this process's resident memory only while read, until
/// ReleasePages() or until the last tensor sharing the view is gone (docs/MEMORY.md).
class Tensor {
 public:
  Tensor() = default;
  /// Allocates zero-initialised storage.
  Tensor(DType dtype, Shape shape);
  /// Wraps existing storage; `storage` keeps it alive.
  Tensor(DType dtype, Shape shape, std::shared_ptr<const void> storage, const void* data);
  /// A mapped tensor: the bytes at `data` inside the read-only file mapping that `mapping` keeps
  /// alive. When the last tensor sharing this view is gone its pages are dropped from this
  /// process (other views of the same mapping are unaffected). `data` must be aligned for the
  /// dtype (kernels may assume natural alignment); see IsAlignedFor.
  static Tensor Mapped(DType dtype, Shape shape, std::shared_ptr<const void> mapping, const void* data);
  /// Whether `data` is naturally aligned for `dtype`'s elements (mapped views must be).
  static bool IsAlignedFor(DType dtype, const void* data);

  /// Allocates without zero-filling, for kernels that write every element (saves a memset and
  /// page faults per large activation).
  static Tensor Uninitialized(DType dtype, Shape shape);

  /// A tensor in accelerator memory (runtime/cuda): `storage` keeps the device block alive and
  /// `data` is a device pointer. Only shape operations (Reshaped, copies of the handle) are valid
  /// on the host; everything that reads the bytes CHECKs that the tensor is on the host.
  static Tensor OnDevice(DType dtype, Shape shape, std::shared_ptr<const void> storage, const void* data);

  /// A scalar or 1-D tensor from values.
  template <typename T>
  static Tensor FromVector(const std::vector<T>& values, Shape shape);
  template <typename T>
  static Tensor Scalar(T value) { return FromVector<T>({value}, {}); }
  /// A tensor owning `values`' buffer, without copying it (a layer-sized result handed on).
  template <typename T>
  static Tensor Adopt(std::vector<T> values, Shape shape);

  bool defined() const { return dtype_ != DType::kUndefined; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_[i < 0 ? i + rank() : i]; }
  int64_t numel() const { return NumElements(shape_); }
  int64_t nbytes() const { return DTypeStorageBytes(dtype_, numel()); }
  /// True for a view of a file mapping (see Mapped).
  bool mapped() const { return mapped_; }
  /// True for a tensor in accelerator memory (see OnDevice).
  bool on_device() const { return on_device_; }
  /// A hint that the caller is done reading for now: drops this process's resident copies of a
  /// mapped tensor's pages (madvise MADV_DONTNEED; the next read faults them back in from the page
  /// cache or the file). No-op for owned tensors. The values never change.
  void ReleasePages() const;
  /// The same for the bytes [offset, offset + size) of the tensor only.
  void ReleasePages(int64_t offset, int64_t size) const;

  const void* raw() const { return data_; }
  /// Mutable access; only valid on a tensor this code allocated and has not shared yet.
  void* mutable_raw() { return const_cast<void*>(data_); }
  template <typename T>
  const T* data() const {
    QC_CHECK(DTypeOf<T>::value == dtype_ && !on_device_);
    return static_cast<const T*>(data_);
  }
  template <typename T>
  T* mutable_data() {
    QC_CHECK(DTypeOf<T>::value == dtype_ && !on_device_);
    return static_cast<T*>(const_cast<void*>(data_));
  }

  /// Typed device pointers of a tensor in accelerator memory (see OnDevice).
  template <typename T>
  const T* device_data() const {
    QC_CHECK(DTypeOf<T>::value == dtype_ && on_device_);
    return static_cast<const T*>(data_);
  }
  template <typename T>
  T* mutable_device_data() {
    QC_CHECK(DTypeOf<T>::value == dtype_ && on_device_);
    return static_cast<T*>(const_cast<void*>(data_));
  }

  /// Same buffer, new shape (element count must match).
  Tensor Reshaped(Shape shape) const;
  /// Deep copy into fresh owned storage.
  Tensor Clone() const;
  /// Values converted to float32 (any numeric dtype); int64 for integer reading via ToInt64s.
  std::vector<float> ToFloats() const;
  std::vector<int64_t> ToInt64s() const;
  /// True if dtype, shape and bytes are identical.
  bool BitEqual(const Tensor& other) const;

 private:
  DType dtype_ = DType::kUndefined;
  Shape shape_;
  std::shared_ptr<const void> storage_;
  const void* data_ = nullptr;
  bool mapped_ = false;
  bool on_device_ = false;
};

template <typename T>
Tensor Tensor::FromVector(const std::vector<T>& values, Shape shape) {
  Tensor t(DTypeOf<T>::value, std::move(shape));
  QC_CHECK(static_cast<int64_t>(values.size()) == t.numel());
  T* out = t.mutable_data<T>();
  for (size_t i = 0; i < values.size(); ++i) out[i] = values[i];
  return t;
}

template <typename T>
Tensor Tensor::Adopt(std::vector<T> values, Shape shape) {
  QC_CHECK(static_cast<int64_t>(values.size()) == NumElements(shape));
  auto holder = std::make_shared<const std::vector<T>>(std::move(values));
  const void* data = holder->data();
  return Tensor(DTypeOf<T>::value, std::move(shape), std::shared_ptr<const void>(holder, data), data);
}

}  // namespace qc
