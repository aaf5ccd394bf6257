// Hugging Face tokenizer.json (BPE) tokenizer whose ids match the `tokenizers` library exactly.
//
// Supported: model BPE (merges as "a b" strings or ["a", "b"] pairs, unk_token, fuse_unk,
// byte_fallback, ignore_merges, continuing_subword_prefix, end_of_word_suffix); normalizers
// Sequence, Prepend, Replace, Strip; pre-tokenizers ByteLevel (GPT-2 regex), Metaspace, Split and
// Sequence; added tokens with their special/normalized/lstrip/rstrip/single_word flags. Anything
// else is refused at load time with a Status naming it. Truncation, padding and the post-processor
// do not apply: Encode is `Tokenizer.encode(text, add_special_tokens=False).ids`.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "formats/status.h"

namespace qc {

namespace tokenizer_internal {
struct TokenizerImpl;
}  // namespace tokenizer_internal

/// A loaded tokenizer.json. Immutable: Encode and Decode may run on several threads at once, and
/// copies share the loaded tables.
class Tokenizer {
 public:
  /// Loads a tokenizer.json file. Errors: unreadable file (kNotFound), bad JSON or bad contents
  /// (kInvalidArgument), unsupported model/normalizer/pre-tokenizer (kUnimplemented).
  static StatusOr<Tokenizer> FromFile(const std::string& path);
  /// Same as FromFile, from the text of a tokenizer.json.
  static StatusOr<Tokenizer> FromJson(std::string_view json_text);

  /// The ids `tokenizers` gives for `Tokenizer.encode(text, add_special_tokens=False).ids`.
  /// Fails only for input that is not valid UTF-8 (or an unk_token missing from the vocab).
  StatusOr<std::vector<int32_t>> Encode(std::string_view text) const;
  /// Best-effort text of `ids` (special tokens skipped, byte-level and "▁"/<0xXX> undone); for
  /// debugging and logs, not guaranteed to round-trip.
  std::string Decode(const std::vector<int32_t>& ids) const;

  /// Id of a vocabulary entry or added token, or -1.
  int32_t TokenToId(std::string_view token) const;
  /// Largest id in use (vocabulary or added tokens) plus one.
  int64_t vocab_size() const;

 private:
  explicit Tokenizer(std::shared_ptr<const tokenizer_internal::TokenizerImpl> impl) : impl_(std::move(impl)) {}

  std::shared_ptr<const tokenizer_internal::TokenizerImpl> impl_;
};

}  // namespace qc
