// Test helper: a fresh directory under the system temp dir, removed with its contents when the
// TempDir goes out of scope (a failed ASSERT included).
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>

#include "formats/status.h"

namespace qc {

class TempDir {
 public:
  /// The directory is named qc_PREFIX_XXXXXX, so one left behind by a killed test says whose it is.
  explicit TempDir(const std::string& prefix) {
    std::string pattern = (std::filesystem::temp_directory_path() / ("qc_" + prefix + "_XXXXXX")).string();
    QC_CHECK(::mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  /// The path of `name` inside the directory.
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }
  std::string string() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace qc
