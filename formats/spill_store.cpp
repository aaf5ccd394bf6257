// Scratch-file storage for large tensors (see spill_store.h).
#include "formats/spill_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace qc {

/// The open scratch file; closed when the store and every spilled view are gone.
struct SpillStore::File {
  int fd = -1;
  ~File() {
    if (fd >= 0) ::close(fd);
  }
};

namespace {

int64_t PageSize() {
  static const int64_t page = ::sysconf(_SC_PAGESIZE);
  return page;
}

// An unnamed file in `dir`: O_TMPFILE where the filesystem supports it, else a mkstemp file
// unlinked at once. Either way nothing is left behind, even after SIGKILL.
StatusOr<int> OpenUnnamed(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0) return fd;
  std::string templ = (std::filesystem::path(dir) / ".qconvert-spill-XXXXXX").string();
  fd = ::mkostemp(templ.data(), O_CLOEXEC);
  if (fd < 0)
    return NotFound("cannot create a scratch file in '" + dir + "' for large tensors: " + std::strerror(errno));
  ::unlink(templ.c_str());
  return fd;
}

Status WriteAll(int fd, const char* data, int64_t size, int64_t offset, const std::string& dir) {
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, data, static_cast<size_t>(std::min<int64_t>(size, int64_t{1} << 30)), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      return DataLoss("writing scratch data in '" + dir + "' failed: " + std::string(n < 0 ? std::strerror(errno) : "no progress") +
                      " (disk full?)");
    data += n;
    size -= n;
    offset += n;
  }
  return Status::Ok();
}

}  // namespace

StatusOr<std::shared_ptr<SpillStore>> SpillStore::Create(const std::string& dir, int64_t min_bytes) {
  const std::string where = dir.empty() ? "." : dir;
  QC_ASSIGN_OR_RETURN(int fd, OpenUnnamed(where));
  auto file = std::make_shared<File>();
  file->fd = fd;
  return std::shared_ptr<SpillStore>(new SpillStore(std::move(file), where, std::max<int64_t>(min_bytes, 1)));
}

SpillStore::~SpillStore() = default;

StatusOr<Tensor> SpillStore::Spill(const Tensor& t) {
  if (!t.defined() || t.mapped() || t.nbytes() < min_bytes_) return t;
  const int64_t bytes = t.nbytes();
  const int64_t slot = (bytes + PageSize() - 1) / PageSize() * PageSize();
  int64_t offset;
  {
    std::lock_guard<std::mutex> lock(mu_);
    offset = end_;
    end_ += slot;
  }
  Status written = WriteAll(file_->fd, static_cast<const char*>(t.raw()), bytes, offset, dir_);
  if (!written.ok()) {
    ::fallocate(file_->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, slot);
    return written;
  }
  // MAP_SHARED reads the page-cache pages pwrite just filled; nothing is copied.
  void* p = ::mmap(nullptr, static_cast<size_t>(bytes), PROT_READ, MAP_SHARED, file_->fd, offset);
  if (p == MAP_FAILED) {
    ::fallocate(file_->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, slot);
    return Internal("cannot map scratch data in '" + dir_ + "': " + std::strerror(errno));
  }
  // Dropping the last view unmaps it and gives its blocks back to the filesystem.
  std::shared_ptr<const void> mapping(p, [file = file_, bytes, offset, slot](const void* q) {
    ::munmap(const_cast<void*>(q), static_cast<size_t>(bytes));
    ::fallocate(file->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, slot);  // best effort
  });
  return Tensor::Mapped(t.dtype(), t.shape(), std::move(mapping), p);
}

Tensor SpillStore::SpillOrKeep(const Tensor& t) {
  StatusOr<Tensor> spilled = Spill(t);
  if (spilled.ok()) return *std::move(spilled);
  std::lock_guard<std::mutex> lock(mu_);
  if (first_error_.ok()) first_error_ = spilled.status();
  return t;
}

Status SpillStore::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return first_error_;
}

int64_t SpillStore::bytes_written() const {
  std::lock_guard<std::mutex> lock(mu_);
  return end_;
}

}  // namespace qc
