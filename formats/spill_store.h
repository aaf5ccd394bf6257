// SpillStore: scratch file storage for the large tensors a conversion creates (quantized weights,
// generated weights), so they do not accumulate in resident memory while the model is processed.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "formats/status.h"
#include "formats/tensor.h"

namespace qc {

/// An unnamed temporary file that tensors are moved into and mapped back from, read-only. A
/// spilled tensor is a Tensor::Mapped view: its bytes live in the page cache (written back to
/// disk under memory pressure) and are resident in this process only while being read. When the
/// last tensor sharing a spilled view is gone its mapping is removed and its file range freed.
/// The file has no name (O_TMPFILE, else unlinked at once), so it disappears with the process
/// however that ends, and never shows up as partial output. Thread-safe.
class SpillStore {
 public:
  /// Tensors smaller than this stay in memory: page-aligned slots would waste more than they
  /// save, and one mapping per tiny tensor costs more than the tensor (256 KiB = 64 pages).
  static constexpr int64_t kDefaultMinBytes = int64_t{256} << 10;

  /// A store backed by a new unnamed file in `dir` (the output's directory, so the scratch space
  /// comes from the disk the artifact will be written to). Errors name the directory.
  static StatusOr<std::shared_ptr<SpillStore>> Create(const std::string& dir, int64_t min_bytes = kDefaultMinBytes);
  ~SpillStore();
  SpillStore(const SpillStore&) = delete;
  SpillStore& operator=(const SpillStore&) = delete;

  /// `t` written to the file and mapped back; `t` itself when it is smaller than min_bytes or
  /// already mapped. Fails with DataLoss when the disk is full.
  StatusOr<Tensor> Spill(const Tensor& t);
  /// Like Spill, but on failure keeps `t` in memory and records the first error in status(), for
  /// callers that cannot return a Status (Graph::SetInitializer).
  Tensor SpillOrKeep(const Tensor& t);
  /// The first error SpillOrKeep swallowed, or OK.
  Status status() const;

  int64_t min_bytes() const { return min_bytes_; }
  /// Bytes written to the file so far (including page padding).
  int64_t bytes_written() const;

 private:
  struct File;
  SpillStore(std::shared_ptr<File> file, std::string dir, int64_t min_bytes)
      : file_(std::move(file)), dir_(std::move(dir)), min_bytes_(min_bytes) {}

  std::shared_ptr<File> file_;  // shared with every spilled view, which frees its range on drop
  std::string dir_;
  int64_t min_bytes_;
  mutable std::mutex mu_;
  int64_t end_ = 0;  // next free (page-aligned) offset
  Status first_error_;
};

}  // namespace qc
