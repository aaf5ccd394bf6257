// Files to delete when the process is interrupted (SIGINT, SIGTERM, SIGHUP) before they are
// complete: temp files being written and outputs not yet validated. The handler only unlinks
// and exits, both async-signal-safe, so an interrupted run leaves no partial file behind.
#pragma once

#include <string>

namespace qc {

/// Installs the signal handlers (once; later calls do nothing). On a signal the handler removes
/// every registered path, prints one line to stderr and exits with code 1.
void InstallInterruptCleanup();

/// Registers `path` for removal on interrupt for the lifetime of this object (or until Release).
/// Registration is a no-op when all slots are taken (the normal error paths still clean up).
class ScopedInterruptCleanup {
 public:
  explicit ScopedInterruptCleanup(const std::string& path);
  ~ScopedInterruptCleanup() { Release(); }
  ScopedInterruptCleanup(const ScopedInterruptCleanup&) = delete;
  ScopedInterruptCleanup& operator=(const ScopedInterruptCleanup&) = delete;
  /// The file is complete (or already removed): stop tracking it.
  void Release();

 private:
  int slot_ = -1;
};

}  // namespace qc
