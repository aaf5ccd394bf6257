// libFuzzer target: tokenizer.json text -> Tokenizer::FromJson; a tokenizer that loads then encodes
// and decodes a few fixed texts (the pipeline a fuzzed normalizer/pre-tokenizer/vocab drives).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "formats/tokenizer.h"

namespace {

// Texts that touch every stage: ASCII words and digits, runs of spaces and newlines, multi-byte
// UTF-8 (2, 3 and 4 bytes), the Metaspace character, and the usual special-token spellings.
constexpr std::string_view kTexts[] = {
    "Hello world! It's 2024: 12345 tokens.\n\n  two  spaces\tand a tab ",
    "caf\xC3\xA9 na\xC3\xAFve \xE2\x96\x81x \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x98\x80!",
    "<s>hi</s><unk><|endoftext|> <pad>[CLS]x",
    " ",
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  qc::StatusOr<qc::Tokenizer> tokenizer = qc::Tokenizer::FromJson(json);
  if (!tokenizer.ok()) {
    if (tokenizer.status().code() == qc::StatusCode::kInternal) {
      std::fprintf(stderr, "tokenizer_fuzzer: internal error on bad input: %s\n", tokenizer.status().message().c_str());
      std::abort();
    }
    return 0;
  }
  for (std::string_view text : kTexts) {
    qc::StatusOr<std::vector<int32_t>> ids = tokenizer->Encode(text);
    if (!ids.ok()) continue;  // e.g. an unk_token missing from the vocab
    (void)tokenizer->Decode(*ids);
  }
  // Decode every id a small vocabulary can name, and a few that no vocabulary has.
  std::vector<int32_t> ids = {-1, INT32_MAX};
  for (int64_t id = 0; id < tokenizer->vocab_size() && id < 4096; ++id) ids.push_back(static_cast<int32_t>(id));
  (void)tokenizer->Decode(ids);
  (void)tokenizer->TokenToId("<unk>");
  return 0;
}
