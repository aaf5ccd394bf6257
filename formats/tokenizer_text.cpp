// Text helpers of the tokenizer: UTF-8, PCRE2 regexes, split behaviours, the byte-level alphabet,
// and the normalizer and pre-tokenizer steps of a tokenizer.json.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cstring>

#include "formats/tokenizer_internal.h"

namespace qc::tokenizer_internal {

// ---------------------------------------------------------------------------------------------
// UTF-8
// ---------------------------------------------------------------------------------------------

bool IsValidUtf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    char32_t cp;
    if ((c >> 5) == 0x6) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c >> 4) == 0xE) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c >> 3) == 0x1E) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    // Overlong forms, UTF-16 surrogates and code points past U+10FFFF are not UTF-8.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return false;
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

char32_t DecodeUtf8At(std::string_view text, size_t pos, size_t* len) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data()) + pos;
  const size_t n = std::min(Utf8SeqLen(s[0]), text.size() - pos);
  *len = n;
  if (n == 1) return s[0];
  char32_t cp = s[0] & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (s[k] & 0x3F);
  return cp;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool IsUnicodeWhitespace(char32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// ---------------------------------------------------------------------------------------------
// Regex
// ---------------------------------------------------------------------------------------------

struct Regex::Code {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Code() { pcre2_code_free(code); }
};

namespace {

struct MatchDataDeleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};
using MatchData = std::unique_ptr<pcre2_match_data, MatchDataDeleter>;

}  // namespace

StatusOr<Regex> Regex::Compile(const std::string& pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                                   &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR buffer[256];
    pcre2_get_error_message(error_code, buffer, sizeof(buffer));
    return InvalidArgument("regex '" + pattern + "' does not compile at offset " + std::to_string(error_offset) + ": " +
                           reinterpret_cast<const char*>(buffer));
  }
  auto holder = std::make_shared<Code>();
  holder->code = code;
  holder->jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  Regex regex;
  regex.code_ = std::move(holder);
  return regex;
}

Status Regex::ForEachMatch(std::string_view text, const std::function<void(size_t, size_t)>& on_match) const {
  MatchData data(pcre2_match_data_create_from_pattern(code_->code, nullptr));
  if (!data) return Internal("regex: out of memory for match data");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  size_t search_from = 0;
  std::optional<size_t> last_match_end;
  while (search_from <= n) {
    // The caller validated the UTF-8 once for the whole input; no need to re-check per search.
    const int rc = code_->jit
                       ? pcre2_jit_match(code_->code, subject, n, search_from, PCRE2_NO_UTF_CHECK, data.get(), nullptr)
                       : pcre2_match(code_->code, subject, n, search_from, PCRE2_NO_UTF_CHECK, data.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR buffer[256];
      pcre2_get_error_message(rc, buffer, sizeof(buffer));
      return InvalidArgument(std::string("regex match failed: ") + reinterpret_cast<const char*>(buffer));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data.get());
    const size_t start = ovector[0];
    const size_t end = ovector[1];
    if (start == end && last_match_end && *last_match_end == end) {
      // onig's FindMatches: no empty match right after the previous match; step one character.
      search_from += search_from < n ? Utf8SeqLen(static_cast<unsigned char>(text[search_from])) : 1;
      continue;
    }
    on_match(start, end);
    last_match_end = end;
    // After an empty match the next search finds it again, and the rule above steps past it.
    search_from = end;
  }
  return Status::Ok();
}

bool Regex::MatchesAtStart(std::string_view text) const {
  MatchData data(pcre2_match_data_create_from_pattern(code_->code, nullptr));
  if (!data) return false;
  const int rc = pcre2_match(code_->code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0,
                             PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, data.get(), nullptr);
  return rc >= 0;
}

Status RegexSpans(const Regex& regex, std::string_view text, std::vector<Span>* spans) {
  spans->clear();
  if (text.empty()) {
    spans->push_back({0, 0, false});
    return Status::Ok();
  }
  size_t prev = 0;
  QC_RETURN_IF_ERROR(regex.ForEachMatch(text, [&](size_t start, size_t end) {
    if (prev != start) spans->push_back({prev, start, false});
    spans->push_back({start, end, true});
    prev = end;
  }));
  if (prev != text.size()) spans->push_back({prev, text.size(), false});
  return Status::Ok();
}

void LiteralSpans(std::string_view literal, std::string_view text, std::vector<Span>* spans) {
  spans->clear();
  if (literal.empty() || text.empty()) {
    // `impl Pattern for &str` treats an empty pattern as "no match anywhere".
    spans->push_back({0, text.size(), false});
    return;
  }
  size_t prev = 0;
  size_t pos = text.find(literal);
  while (pos != std::string_view::npos) {
    if (prev != pos) spans->push_back({prev, pos, false});
    spans->push_back({pos, pos + literal.size(), true});
    prev = pos + literal.size();
    pos = text.find(literal, prev);
  }
  if (prev != text.size()) spans->push_back({prev, text.size(), false});
}

std::vector<std::pair<size_t, size_t>> ApplySplitBehavior(const std::vector<Span>& spans, SplitBehavior behavior) {
  std::vector<std::pair<size_t, size_t>> out;
  out.reserve(spans.size());
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) out.emplace_back(s.start, s.end);
      break;
    case SplitBehavior::kRemoved:
      for (const Span& s : spans) {
        if (!s.is_match) out.emplace_back(s.start, s.end);
      }
      break;
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.emplace_back(s.start, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.emplace_back(s.start, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      // Walks backwards: a match glues onto the piece after it unless that piece is a match too.
      bool previous_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !out.empty()) {
          out.back().first = it->start;
        } else {
          out.emplace_back(it->start, it->end);
        }
        previous_match = it->is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Byte level
// ---------------------------------------------------------------------------------------------

const std::vector<std::string>& ByteLevelAlphabet() {
  static const std::vector<std::string> kAlphabet = [] {
    // GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes to
    // U+0100 onwards in byte order.
    std::vector<std::string> table(256);
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      AppendUtf8(printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + next++), &table[b]);
    }
    return table;
  }();
  return kAlphabet;
}

void AppendByteLevel(std::string_view text, std::string* out) {
  const auto& alphabet = ByteLevelAlphabet();
  for (unsigned char c : text) out->append(alphabet[c]);
}

const Regex& Gpt2Regex() {
  static const Regex kRegex = [] {
    // `\s` spelled out as Unicode White_Space (what Oniguruma's \s is): PCRE2's UCP \s would also
    // take U+180E, which is no longer a space since Unicode 6.3.
    const std::string ws =
        "\\x{09}-\\x{0D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
        "\\x{205F}\\x{3000}";
    const std::string pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" + ws + "\\p{L}\\p{N}]+|[" + ws +
                                "]+(?![^" + ws + "])|[" + ws + "]+";
    StatusOr<Regex> regex = Regex::Compile(pattern);
    QC_CHECK(regex.ok());
    return std::move(regex).value();
  }();
  return kRegex;
}

// ---------------------------------------------------------------------------------------------
// Normalizers
// ---------------------------------------------------------------------------------------------

Status TextPattern::Spans(std::string_view text, std::vector<Span>* spans) const {
  if (is_regex) return RegexSpans(*regex, text, spans);
  LiteralSpans(literal, text, spans);
  return Status::Ok();
}

Status Normalize(const std::vector<NormalizerStep>& steps, std::string* text) {
  // Real normalizers grow text by a small factor (Llama's " " -> "▁" triples a space), but a chain
  // of steps can grow it exponentially (Replace "a" -> "aa", repeated): refuse that before it
  // exhausts memory.
  const size_t limit = text->size() * kMaxTextGrowth + kTextGrowthSlack;
  const auto too_long = [&] {
    return InvalidArgument("tokenizer: the normalizer grows the text more than " + std::to_string(kMaxTextGrowth) + "-fold");
  };
  std::vector<Span> spans;
  for (const NormalizerStep& step : steps) {
    switch (step.kind) {
      case NormalizerStep::Kind::kPrepend:
        // `normalizers::Prepend` leaves an empty string empty.
        if (text->size() + step.text.size() > limit) return too_long();
        if (!text->empty()) text->insert(0, step.text);
        break;
      case NormalizerStep::Kind::kReplace: {
        QC_RETURN_IF_ERROR(step.pattern.Spans(*text, &spans));
        size_t out_size = 0;
        for (const Span& s : spans) out_size += s.is_match ? step.text.size() : s.end - s.start;
        if (out_size > limit) return too_long();
        std::string out;
        out.reserve(text->size());
        for (const Span& s : spans) {
          if (s.is_match) {
            out.append(step.text);
          } else {
            out.append(*text, s.start, s.end - s.start);
          }
        }
        *text = std::move(out);
        break;
      }
      case NormalizerStep::Kind::kStrip: {
        size_t begin = 0;
        size_t end = text->size();
        if (step.strip_left) {
          while (begin < end) {
            size_t len;
            if (!IsUnicodeWhitespace(DecodeUtf8At(*text, begin, &len))) break;
            begin += len;
          }
        }
        if (step.strip_right) {
          while (end > begin) {
            size_t start = end - 1;
            while (start > begin && (static_cast<unsigned char>((*text)[start]) & 0xC0) == 0x80) --start;
            size_t len;
            if (!IsUnicodeWhitespace(DecodeUtf8At(*text, start, &len))) break;
            end = start;
          }
        }
        *text = text->substr(begin, end - begin);
        break;
      }
    }
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers
// ---------------------------------------------------------------------------------------------

namespace {

/// Appends `text[start, end)` as a piece, in byte-level form when `byte_level`; empty pieces are
/// dropped, as `PreTokenizedString::split` does.
void EmitPiece(const Piece& piece, size_t start, size_t end, bool byte_level, std::vector<Piece>* out) {
  if (start >= end) return;
  Piece& sub = out->emplace_back();
  const std::string_view text = std::string_view(piece.text).substr(start, end - start);
  if (byte_level) {
    sub.text.reserve(text.size() * 2);
    AppendByteLevel(text, &sub.text);
  } else {
    sub.text.assign(text);
  }
  sub.at_origin = piece.at_origin && start == 0;
}

Status PreTokenizeByteLevel(const PreTokenizerStep& step, Piece piece, std::vector<Piece>* out) {
  if (step.add_prefix_space && (piece.text.empty() || piece.text[0] != ' ')) piece.text = " " + piece.text;
  if (!step.use_regex) {
    EmitPiece(piece, 0, piece.text.size(), /*byte_level=*/true, out);
    return Status::Ok();
  }
  // SplitDelimiterBehavior::Isolated keeps matches and the text between them alike.
  size_t prev = 0;
  QC_RETURN_IF_ERROR(Gpt2Regex().ForEachMatch(piece.text, [&](size_t start, size_t end) {
    EmitPiece(piece, prev, start, /*byte_level=*/true, out);
    EmitPiece(piece, start, end, /*byte_level=*/true, out);
    prev = end;
  }));
  EmitPiece(piece, prev, piece.text.size(), /*byte_level=*/true, out);
  return Status::Ok();
}

void PreTokenizeMetaspace(const PreTokenizerStep& step, Piece piece, std::vector<Piece>* out) {
  // Replace spaces first, then prepend (so a leading space yields a single replacement).
  if (piece.text.find(' ') != std::string::npos) {
    std::string replaced;
    replaced.reserve(piece.text.size() + piece.text.size() / 2);
    for (char c : piece.text) {
      if (c == ' ') {
        replaced.append(step.replacement);
      } else {
        replaced.push_back(c);
      }
    }
    piece.text = std::move(replaced);
  }
  const bool starts_with_replacement = piece.text.compare(0, step.replacement.size(), step.replacement) == 0;
  bool prepend = false;
  switch (step.prepend_scheme) {
    case PreTokenizerStep::PrependScheme::kAlways:
      prepend = !starts_with_replacement;
      break;
    case PreTokenizerStep::PrependScheme::kFirst:
      prepend = !starts_with_replacement && piece.at_origin;
      break;
    case PreTokenizerStep::PrependScheme::kNever:
      break;
  }
  if (prepend) piece.text.insert(0, step.replacement);
  if (!step.split) {
    EmitPiece(piece, 0, piece.text.size(), /*byte_level=*/false, out);
    return;
  }
  // MergedWithNext on a one-character delimiter that matches each occurrence on its own: every
  // piece but the first starts at a delimiter, i.e. the text is cut before each occurrence.
  size_t start = 0;
  size_t pos = piece.text.find(step.replacement, 1);
  while (pos != std::string::npos) {
    EmitPiece(piece, start, pos, /*byte_level=*/false, out);
    start = pos;
    pos = piece.text.find(step.replacement, pos + step.replacement.size());
  }
  EmitPiece(piece, start, piece.text.size(), /*byte_level=*/false, out);
}

}  // namespace

Status PreTokenize(const PreTokenizerStep& step, std::vector<Piece>* pieces) {
  size_t total_bytes = 0;
  for (const Piece& piece : *pieces) total_bytes += piece.text.size();
  std::vector<Piece> out;
  // Words average well over 3 bytes; reserving up front avoids re-faulting fresh pages on growth.
  out.reserve(pieces->size() + total_bytes / 3);
  std::vector<Span> spans;
  for (Piece& piece : *pieces) {
    if (piece.token_id >= 0) {
      out.push_back(std::move(piece));
      continue;
    }
    switch (step.kind) {
      case PreTokenizerStep::Kind::kByteLevel:
        QC_RETURN_IF_ERROR(PreTokenizeByteLevel(step, std::move(piece), &out));
        break;
      case PreTokenizerStep::Kind::kMetaspace:
        PreTokenizeMetaspace(step, std::move(piece), &out);
        break;
      case PreTokenizerStep::Kind::kSplit: {
        QC_RETURN_IF_ERROR(step.pattern.Spans(piece.text, &spans));
        if (step.invert) {
          for (Span& s : spans) s.is_match = !s.is_match;
        }
        for (const auto& [start, end] : ApplySplitBehavior(spans, step.behavior)) {
          EmitPiece(piece, start, end, /*byte_level=*/false, &out);
        }
        break;
      }
    }
  }
  *pieces = std::move(out);
  return Status::Ok();
}

}  // namespace qc::tokenizer_internal
