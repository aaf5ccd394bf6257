// Internals of the tokenizer.json tokenizer (formats/tokenizer.h): UTF-8 and regex helpers, the BPE
// model and the normalize/pre-tokenize steps. Each mirrors one piece of the Hugging Face `tokenizers`
// crate; the comments name the Rust item whose behaviour (quirks included) is reproduced.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "formats/status.h"

namespace qc::tokenizer_internal {

// ---------------------------------------------------------------------------------------------
// UTF-8
// ---------------------------------------------------------------------------------------------

/// True when `text` is well-formed UTF-8 (what a Rust `&str` / Python `str` can hold).
bool IsValidUtf8(std::string_view text);
/// Byte length of the UTF-8 sequence that starts with `lead` (1 for stray continuation bytes).
inline size_t Utf8SeqLen(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;
}
/// Decodes the code point at `pos` of valid UTF-8 `text`; sets `*len` to its byte length.
char32_t DecodeUtf8At(std::string_view text, size_t pos, size_t* len);
/// Appends the UTF-8 encoding of `cp`.
void AppendUtf8(char32_t cp, std::string* out);
/// Unicode White_Space: Rust's `char::is_whitespace`, the `\s` of the regex engines `tokenizers` uses.
bool IsUnicodeWhitespace(char32_t cp);

// ---------------------------------------------------------------------------------------------
// Regex (PCRE2, UTF mode), with the match iteration of the `onig` crate's `find_iter`.
// ---------------------------------------------------------------------------------------------

/// One piece of a split: bytes [start, end) and whether a pattern matched it.
struct Span {
  size_t start = 0;
  size_t end = 0;
  bool is_match = false;
};

class Regex {
 public:
  /// Compiles `pattern` (PCRE2 syntax, UTF + UCP, JIT when available).
  static StatusOr<Regex> Compile(const std::string& pattern);
  /// Calls `on_match(start, end)` for every non-overlapping match of valid UTF-8 `text`, in order;
  /// like the `onig` crate's find_iter, an empty match right where the previous match ended is
  /// skipped.
  Status ForEachMatch(std::string_view text, const std::function<void(size_t, size_t)>& on_match) const;
  /// True when the pattern matches at byte 0 of `text` (anchored).
  bool MatchesAtStart(std::string_view text) const;

 private:
  struct Code;
  std::shared_ptr<const Code> code_;
};

/// `Pattern::find_matches` of `tokenizers`: the whole of `text` covered by alternating
/// matched/unmatched spans (a single unmatched (0,0) span for empty text).
Status RegexSpans(const Regex& regex, std::string_view text, std::vector<Span>* spans);
/// Same for a literal string pattern (non-overlapping, leftmost first).
void LiteralSpans(std::string_view literal, std::string_view text, std::vector<Span>* spans);

/// `SplitDelimiterBehavior` of `tokenizers`.
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
/// `NormalizedString::split`: turns matched/unmatched spans into the [start, end) pieces to keep
/// (empty pieces included; the caller drops them as `PreTokenizedString::split` does).
std::vector<std::pair<size_t, size_t>> ApplySplitBehavior(const std::vector<Span>& spans, SplitBehavior behavior);

// ---------------------------------------------------------------------------------------------
// Byte-level alphabet (GPT-2's bytes_to_unicode)
// ---------------------------------------------------------------------------------------------

/// UTF-8 of the printable code point GPT-2 assigns to each byte.
const std::vector<std::string>& ByteLevelAlphabet();
/// Appends the byte-level form of `text` (each byte replaced by its alphabet character).
void AppendByteLevel(std::string_view text, std::string* out);
/// The GPT-2 pre-tokenization regex of `pre_tokenizers::byte_level::RE`.
const Regex& Gpt2Regex();

// ---------------------------------------------------------------------------------------------
// BPE model (`models::bpe::BPE`)
// ---------------------------------------------------------------------------------------------

struct BpeSymbol;

/// Heterogeneous-lookup hash so maps keyed by std::string accept std::string_view.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using Vocab = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

struct BpeOptions {
  std::optional<std::string> unk_token;
  std::optional<std::string> continuing_subword_prefix;
  std::optional<std::string> end_of_word_suffix;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
};

class BpeModel {
 public:
  /// Builds the merge table; a merge whose parts or result are not in `vocab` is an error, as in
  /// `BpeBuilder::build`.
  static StatusOr<BpeModel> Create(Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges,
                                   BpeOptions options);

  /// Appends the ids of one pre-tokenized word (`BPE::tokenize`).
  Status Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  /// Id of a vocabulary entry, or -1.
  int32_t TokenToId(std::string_view token) const;
  /// Vocabulary entry of `id`, or nullptr.
  const std::string* IdToToken(int32_t id) const;
  /// Number of vocabulary entries (`get_vocab_size`).
  size_t size() const { return vocab_.size(); }
  /// Largest id in the vocabulary, -1 when empty.
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }
  const BpeOptions& options() const { return options_; }

 private:
  static constexpr uint32_t kNoMerge = UINT32_MAX;
  /// Rank of the merge of the pair (a, b), or kNoMerge.
  uint32_t FindMergeRank(int32_t a, int32_t b) const;
  /// `Word::merge_all` over `symbols`, with the priority queue type `Queue`.
  template <typename Queue>
  void MergeAll(std::vector<BpeSymbol>* symbols, Queue* queue) const;

  Vocab vocab_;
  std::vector<std::string> id_to_token_;  // "" for ids no entry uses
  std::vector<bool> id_used_;
  // Merge table: open addressing over keys (a << 32 | b); ids are non-negative, so the all-ones key
  // never occurs and marks an empty slot. A node-based map is several times slower here.
  std::vector<uint64_t> merge_keys_;
  std::vector<uint32_t> merge_ranks_;
  uint64_t merge_mask_ = 0;
  std::vector<int32_t> rank_new_id_;  // id a merge makes, by rank (-1: rank overridden by a repeat)
  BpeOptions options_;
  int32_t ascii_ids_[128];  // ids of the one-byte tokens, -1 when absent
  int32_t byte_ids_[256];   // <0xXX> ids for byte fallback, -1 when absent
};

// ---------------------------------------------------------------------------------------------
// Normalizers and pre-tokenizers
// ---------------------------------------------------------------------------------------------

/// A text pattern of a Replace normalizer or Split pre-tokenizer: {"String": s} or {"Regex": r}.
struct TextPattern {
  bool is_regex = false;
  std::string literal;
  std::optional<Regex> regex;
  /// Matched/unmatched spans covering `text`.
  Status Spans(std::string_view text, std::vector<Span>* spans) const;
};

/// One normalizer of a (flattened) `normalizers::Sequence`.
struct NormalizerStep {
  enum class Kind { kPrepend, kReplace, kStrip };
  Kind kind = Kind::kPrepend;
  std::string text;  // Prepend: what to prepend; Replace: the replacement
  TextPattern pattern;
  bool strip_left = false;
  bool strip_right = false;
};

/// Normalizers and pre-tokenizers may grow a text to at most kMaxTextGrowth times its size plus
/// kTextGrowthSlack bytes; more is an error (a hostile file could otherwise double it per step).
constexpr size_t kMaxTextGrowth = 16;
constexpr size_t kTextGrowthSlack = size_t{64} << 10;

/// Applies the steps in order to `text`.
Status Normalize(const std::vector<NormalizerStep>& steps, std::string* text);

/// One pre-tokenizer of a (flattened) `pre_tokenizers::Sequence`.
struct PreTokenizerStep {
  enum class Kind { kByteLevel, kMetaspace, kSplit };
  enum class PrependScheme { kFirst, kAlways, kNever };
  Kind kind = Kind::kByteLevel;
  // ByteLevel
  bool add_prefix_space = false;
  bool use_regex = true;
  // Metaspace
  std::string replacement;
  PrependScheme prepend_scheme = PrependScheme::kAlways;
  bool split = true;
  // Split
  TextPattern pattern;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
};

/// A piece of the input on its way through the pipeline (`tokenizer::pre_tokenizer::Split`).
struct Piece {
  std::string text;
  /// Whether the piece starts at byte 0 of the original input (`offsets_original().0 == 0`), which
  /// Metaspace's prepend_scheme "first" looks at.
  bool at_origin = false;
  /// Id of the added token this piece is, or -1 for text still to be tokenized.
  int32_t token_id = -1;
};

/// Runs one pre-tokenizer step over `pieces` (pieces that are added tokens pass through).
Status PreTokenize(const PreTokenizerStep& step, std::vector<Piece>* pieces);

}  // namespace qc::tokenizer_internal
