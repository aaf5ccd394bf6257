// SHA-256 (FIPS 180-4) of byte strings and files, for the report's provenance fields.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "formats/status.h"

namespace qc {

/// Incremental SHA-256: Update() any number of times, then Finish() once.
class Sha256 {
 public:
  Sha256();
  void Update(const void* data, size_t size);
  void Update(std::string_view bytes) { Update(bytes.data(), bytes.size()); }
  /// The digest as 64 lowercase hex digits. The object must not be updated afterwards.
  std::string FinishHex();

 private:
  void Compress(const uint8_t* block);
  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

/// Hex digest of `bytes`.
std::string Sha256Hex(std::string_view bytes);
/// A file's digest (64 lowercase hex digits) and size in bytes.
struct FileDigest {
  std::string sha256;
  int64_t bytes = 0;
};
/// Digest and size of a file, read in chunks; errors name the file.
StatusOr<FileDigest> Sha256File(const std::string& path);

}  // namespace qc
