// Test helper: how much of a memory mapping is resident in this process (Linux /proc/self/smaps),
// so tests can check that mapped weights are released, structurally rather than by peak RSS.
#pragma once

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

namespace qc {

/// Resident bytes of the mapping (VMA) containing `address`, or -1 if no mapping contains it.
inline int64_t ResidentBytesOfMapping(const void* address) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(address);
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    uintptr_t begin = 0, end = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &begin, &end) == 2 && line.find(':') > line.find(' ')) {
      inside = a >= begin && a < end;
      continue;
    }
    if (inside && line.rfind("Rss:", 0) == 0) {
      std::istringstream in(line.substr(4));
      int64_t kb = 0;
      in >> kb;
      return kb * 1024;
    }
  }
  return -1;
}

/// Reads every byte of [data, data + size) so its pages become resident; returns a checksum.
inline uint64_t TouchBytes(const void* data, int64_t size) {
  const volatile unsigned char* p = static_cast<const volatile unsigned char*>(data);
  uint64_t sum = 0;
  for (int64_t i = 0; i < size; i += 512) sum += p[i];
  return sum;
}

}  // namespace qc
