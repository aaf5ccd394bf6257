// libFuzzer target: report JSON -> ReportFromJson (what `qconvert diff` reads), then the round
// trip: a report that parses serialises, parses again, and the second serialisation is stable.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "formats/report.h"

namespace {
void Fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "report_fuzzer: %s: %s\n", what, detail.c_str());
  std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string json(reinterpret_cast<const char*>(data), size);
  qc::StatusOr<qc::QuantReport> report = qc::ReportFromJson(json);
  if (!report.ok()) {
    if (report.status().code() == qc::StatusCode::kInternal) Fail("internal error on bad input", report.status().message());
    return 0;
  }
  const std::string written = qc::ReportToJson(*report);
  qc::StatusOr<qc::QuantReport> reread = qc::ReportFromJson(written);
  if (!reread.ok()) Fail("a report we wrote does not parse", reread.status().message());
  const std::string rewritten = qc::ReportToJson(*reread);
  qc::StatusOr<qc::QuantReport> third = qc::ReportFromJson(rewritten);
  if (!third.ok()) Fail("a re-written report does not parse", third.status().message());
  if (qc::ReportToJson(*third) != rewritten) Fail("round trip is not stable", rewritten);
  return 0;
}
