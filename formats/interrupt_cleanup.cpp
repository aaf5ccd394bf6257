// Signal-time removal of incomplete files (see interrupt_cleanup.h).
#include "formats/interrupt_cleanup.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

namespace qc {
namespace {

// Fixed storage: the handler must not allocate or lock. 16 slots cover a model, its external
// data and their temp files, and a report, with room to spare.
constexpr int kSlots = 16;
constexpr size_t kMaxPath = 4096;
char g_paths[kSlots][kMaxPath];
std::atomic<bool> g_active[kSlots];
std::atomic<bool> g_installed{false};

void OnSignal(int) {
  for (int i = 0; i < kSlots; ++i)
    if (g_active[i].load()) ::unlink(g_paths[i]);
  static const char kMessage[] = "qconvert: interrupted; incomplete output files removed\n";
  [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
  ::_exit(1);
}

}  // namespace

void InstallInterruptCleanup() {
  if (g_installed.exchange(true)) return;
  struct sigaction action;
  std::memset(&action, 0, sizeof(action));
  action.sa_handler = OnSignal;
  sigfillset(&action.sa_mask);  // a second signal must not cut the cleanup short
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &action, nullptr);
}

ScopedInterruptCleanup::ScopedInterruptCleanup(const std::string& path) {
  if (path.size() >= kMaxPath) return;
  for (int i = 0; i < kSlots; ++i) {
    if (g_active[i].load()) continue;
    std::memcpy(g_paths[i], path.c_str(), path.size() + 1);
    g_active[i].store(true);  // published after the path is complete
    slot_ = i;
    return;
  }
}

void ScopedInterruptCleanup::Release() {
  if (slot_ >= 0) g_active[slot_].store(false);
  slot_ = -1;
}

}  // namespace qc
