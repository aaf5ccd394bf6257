// libFuzzer target: .npy bytes -> ParseNpy, then the values read as a consumer (eval, run) reads them.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "formats/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  qc::StatusOr<qc::Tensor> t = qc::ParseNpy(bytes);
  if (!t.ok()) {
    if (t.status().code() == qc::StatusCode::kInternal) {
      std::fprintf(stderr, "npy_fuzzer: internal error on bad input: %s\n", t.status().message().c_str());
      std::abort();
    }
    return 0;
  }
  // The data section is at most `size` bytes, so reading every value is cheap. Float arrays are
  // read as floats, integer ones (token ids) as int64, as eval and run read them.
  if (qc::IsFloatingPoint(t->dtype())) (void)t->ToFloats();
  else (void)t->ToInt64s();
  return 0;
}
