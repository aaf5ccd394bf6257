// Tokenizer: reads a tokenizer.json and runs the `tokenizers` encode pipeline (added tokens,
// normalizer, pre-tokenizer, BPE) on the result.
#include "formats/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "formats/tokenizer_internal.h"

namespace qc {
namespace tokenizer_internal {

using Json = nlohmann::json;

/// `tokenizer::added_vocabulary::AddedToken`.
struct AddedToken {
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
  bool operator==(const AddedToken&) const = default;
};

/// Byte trie answering leftmost-longest, non-overlapping searches, like the aho-corasick automaton
/// (MatchKind::LeftmostLongest) `tokenizers` builds over the added tokens.
class TokenTrie {
 public:
  /// Adds `pattern` as number `index`; for a repeated pattern the first index is kept.
  void Add(std::string_view pattern, int32_t index) {
    if (pattern.empty()) return;  // an empty pattern would match everywhere; no token is empty
    int32_t node = 0;
    for (unsigned char c : pattern) {
      int32_t child = -1;
      for (const auto& [byte, next] : nodes_[node].children) {
        if (byte == c) child = next;
      }
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[node].children.emplace_back(c, child);
        nodes_.emplace_back();
      }
      node = child;
    }
    if (nodes_[node].pattern < 0) nodes_[node].pattern = index;
    first_byte_[static_cast<unsigned char>(pattern[0])] = true;
    empty_ = false;
  }
  bool empty() const { return empty_; }

  /// Finds the leftmost match starting at or after `from`, the longest one at that position.
  bool Find(std::string_view text, size_t from, size_t* start, size_t* end, int32_t* index) const {
    if (empty_) return false;
    for (size_t pos = from; pos < text.size(); ++pos) {
      if (!first_byte_[static_cast<unsigned char>(text[pos])]) continue;
      int32_t node = 0;
      int32_t best = -1;
      size_t best_end = 0;
      for (size_t i = pos; i < text.size(); ++i) {
        const unsigned char c = static_cast<unsigned char>(text[i]);
        int32_t child = -1;
        for (const auto& [byte, next] : nodes_[node].children) {
          if (byte == c) child = next;
        }
        if (child < 0) break;
        node = child;
        if (nodes_[node].pattern >= 0) {
          best = nodes_[node].pattern;
          best_end = i + 1;
        }
      }
      if (best >= 0) {
        *start = pos;
        *end = best_end;
        *index = best;
        return true;
      }
    }
    return false;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    int32_t pattern = -1;
  };
  std::vector<Node> nodes_ = std::vector<Node>(1);
  bool first_byte_[256] = {};
  bool empty_ = true;
};

/// Added tokens matched on one form of the text (raw or normalized) and the id of each pattern.
struct TokenMatcher {
  TokenTrie trie;
  std::vector<int32_t> ids;
};

struct TokenizerImpl {
  BpeModel model;
  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;

  // `AddedVocabulary`.
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> added_ids;
  std::unordered_map<int32_t, AddedToken> added_tokens_by_id;
  std::unordered_set<std::string> special_contents;
  TokenMatcher raw_matcher;         // tokens with normalized=false, matched before normalizing
  TokenMatcher normalized_matcher;  // tokens with normalized=true, matched on normalized text
  std::optional<Regex> word_char;   // Rust regex's Unicode \w, for single_word

  int64_t vocab_size = 0;  // largest id in use + 1

  // Decode heuristics.
  bool byte_level_decode = false;
  bool strip_leading_space = false;

  int32_t AddedOrModelId(std::string_view content) const {
    const auto it = added_ids.find(content);
    return it != added_ids.end() ? it->second : model.TokenToId(content);
  }
  bool IsWordChar(std::string_view text, size_t pos) const {
    size_t len;
    DecodeUtf8At(text, pos, &len);
    return word_char->MatchesAtStart(text.substr(pos, len));
  }
  void FindAddedTokens(std::string_view sentence, const TokenMatcher& matcher,
                       std::vector<std::tuple<int32_t, size_t, size_t>>* splits) const;
  void SplitOnAddedTokens(Piece piece, const TokenMatcher& matcher, std::vector<Piece>* out) const;
};

// `AddedVocabulary::find_matches`.
void TokenizerImpl::FindAddedTokens(std::string_view sentence, const TokenMatcher& matcher,
                                    std::vector<std::tuple<int32_t, size_t, size_t>>* splits) const {
  splits->clear();
  size_t start_offset = 0;
  size_t search_from = 0;
  size_t match_start;
  size_t match_end;
  int32_t pattern;
  while (matcher.trie.Find(sentence, search_from, &match_start, &match_end, &pattern)) {
    search_from = match_end;
    size_t start = match_start;
    size_t stop = match_end;
    const int32_t id = matcher.ids[pattern];
    const auto found = added_tokens_by_id.find(id);
    if (found == added_tokens_by_id.end()) continue;  // cannot happen: every pattern is registered
    const AddedToken& token = found->second;
    if (token.single_word) {
      // Rust regexes `\w$` on the text before and `^\w` on the text after.
      bool ends_with_word = false;
      if (start > 0) {
        size_t prev = start - 1;
        while (prev > 0 && (static_cast<unsigned char>(sentence[prev]) & 0xC0) == 0x80) --prev;
        ends_with_word = IsWordChar(sentence, prev);
      }
      const bool starts_with_word = stop < sentence.size() && IsWordChar(sentence, stop);
      if (ends_with_word || starts_with_word) continue;
    }
    if (token.lstrip) {
      // Start of the whitespace run that ends at `start`, but never inside the previous split.
      size_t new_start = start;
      while (new_start > 0) {
        size_t prev = new_start - 1;
        while (prev > 0 && (static_cast<unsigned char>(sentence[prev]) & 0xC0) == 0x80) --prev;
        size_t len;
        if (!IsUnicodeWhitespace(DecodeUtf8At(sentence, prev, &len))) break;
        new_start = prev;
      }
      start = std::max(new_start, start_offset);
    }
    if (token.rstrip) {
      while (stop < sentence.size()) {
        size_t len;
        if (!IsUnicodeWhitespace(DecodeUtf8At(sentence, stop, &len))) break;
        stop += len;
      }
    }
    if (start_offset < start) splits->emplace_back(-1, start_offset, start);
    splits->emplace_back(id, start, stop);
    start_offset = stop;
  }
  if (start_offset != sentence.size()) splits->emplace_back(-1, start_offset, sentence.size());
}

// `AddedVocabulary::split_with_indices` inside `PreTokenizedString::split` (empty pieces dropped).
void TokenizerImpl::SplitOnAddedTokens(Piece piece, const TokenMatcher& matcher, std::vector<Piece>* out) const {
  if (piece.text.empty()) return;
  if (matcher.trie.empty()) {
    out->push_back(std::move(piece));
    return;
  }
  std::vector<std::tuple<int32_t, size_t, size_t>> splits;
  FindAddedTokens(piece.text, matcher, &splits);
  for (const auto& [id, start, end] : splits) {
    // An rstrip token may have swallowed the start of the next match; `tokenizers` slices the
    // overlap again, and so does this.
    if (start >= end || end > piece.text.size()) continue;
    Piece sub;
    sub.text = piece.text.substr(start, end - start);
    sub.at_origin = piece.at_origin && start == 0;
    sub.token_id = id;
    out->push_back(std::move(sub));
  }
}

namespace {

// ---------------------------------------------------------------------------------------------
// JSON reading
// ---------------------------------------------------------------------------------------------

std::string TypeOf(const Json& j) {
  if (!j.is_object()) return "";
  const auto it = j.find("type");
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

/// Reads optional boolean `key`; missing or null gives `fallback`.
StatusOr<bool> GetBool(const Json& obj, const char* key, bool fallback, const std::string& where) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) return InvalidArgument(where + "." + key + " must be a boolean");
  return it->get<bool>();
}

/// Reads optional string `key`; missing or null gives nullopt.
StatusOr<std::optional<std::string>> GetOptString(const Json& obj, const char* key, const std::string& where) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<std::string>();
  if (!it->is_string()) return InvalidArgument(where + "." + key + " must be a string");
  return std::optional<std::string>(it->get<std::string>());
}

StatusOr<std::string> GetString(const Json& obj, const char* key, const std::string& where) {
  QC_ASSIGN_OR_RETURN(std::optional<std::string> value, GetOptString(obj, key, where));
  if (!value) return InvalidArgument(where + "." + key + " is missing");
  return *value;
}

StatusOr<TextPattern> ParsePattern(const Json& obj, const std::string& where) {
  const auto it = obj.find("pattern");
  if (it == obj.end() || !it->is_object() || it->size() != 1) {
    return InvalidArgument(where + ".pattern must be {\"String\": ...} or {\"Regex\": ...}");
  }
  TextPattern pattern;
  if (it->contains("String") && (*it)["String"].is_string()) {
    pattern.literal = (*it)["String"].get<std::string>();
  } else if (it->contains("Regex") && (*it)["Regex"].is_string()) {
    pattern.is_regex = true;
    StatusOr<Regex> regex = Regex::Compile((*it)["Regex"].get<std::string>());
    if (!regex.ok()) return regex.status().WithContext(where + ".pattern");
    pattern.regex = std::move(regex).value();
  } else {
    return InvalidArgument(where + ".pattern must be {\"String\": ...} or {\"Regex\": ...}");
  }
  return pattern;
}

Status ParseNormalizer(const Json& j, const std::string& where, std::vector<NormalizerStep>* steps) {
  if (j.is_null()) return Status::Ok();
  if (!j.is_object()) return InvalidArgument(where + " must be an object or null");
  const std::string type = TypeOf(j);
  if (type == "Sequence") {
    const auto it = j.find("normalizers");
    if (it == j.end() || !it->is_array()) return InvalidArgument(where + ".normalizers must be an array");
    for (size_t i = 0; i < it->size(); ++i) {
      QC_RETURN_IF_ERROR(ParseNormalizer((*it)[i], where + ".normalizers[" + std::to_string(i) + "]", steps));
    }
    return Status::Ok();
  }
  NormalizerStep step;
  if (type == "Prepend") {
    step.kind = NormalizerStep::Kind::kPrepend;
    QC_ASSIGN_OR_RETURN(step.text, GetString(j, "prepend", where));
  } else if (type == "Replace") {
    step.kind = NormalizerStep::Kind::kReplace;
    QC_ASSIGN_OR_RETURN(step.pattern, ParsePattern(j, where));
    QC_ASSIGN_OR_RETURN(step.text, GetString(j, "content", where));
  } else if (type == "Strip") {
    step.kind = NormalizerStep::Kind::kStrip;
    QC_ASSIGN_OR_RETURN(step.strip_left, GetBool(j, "strip_left", true, where));
    QC_ASSIGN_OR_RETURN(step.strip_right, GetBool(j, "strip_right", true, where));
  } else {
    return Unimplemented("tokenizer.json: normalizer '" + (type.empty() ? std::string("<no type>") : type) +
                         "' is not supported (supported: Sequence, Prepend, Replace, Strip)");
  }
  steps->push_back(std::move(step));
  return Status::Ok();
}

Status ParsePreTokenizer(const Json& j, const std::string& where, std::vector<PreTokenizerStep>* steps) {
  if (j.is_null()) return Status::Ok();
  if (!j.is_object()) return InvalidArgument(where + " must be an object or null");
  const std::string type = TypeOf(j);
  if (type == "Sequence") {
    const auto it = j.find("pretokenizers");
    if (it == j.end() || !it->is_array()) return InvalidArgument(where + ".pretokenizers must be an array");
    for (size_t i = 0; i < it->size(); ++i) {
      QC_RETURN_IF_ERROR(ParsePreTokenizer((*it)[i], where + ".pretokenizers[" + std::to_string(i) + "]", steps));
    }
    return Status::Ok();
  }
  PreTokenizerStep step;
  if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    QC_ASSIGN_OR_RETURN(step.add_prefix_space, GetBool(j, "add_prefix_space", true, where));
    QC_ASSIGN_OR_RETURN(step.use_regex, GetBool(j, "use_regex", true, where));
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::Kind::kMetaspace;
    QC_ASSIGN_OR_RETURN(std::optional<std::string> replacement, GetOptString(j, "replacement", where));
    step.replacement = replacement.value_or("\xE2\x96\x81");  // U+2581 "▁"
    size_t len = 0;
    if (step.replacement.empty() || !IsValidUtf8(step.replacement) ||
        (DecodeUtf8At(step.replacement, 0, &len), len != step.replacement.size())) {
      return InvalidArgument(where + ".replacement must be a single character");
    }
    QC_ASSIGN_OR_RETURN(std::optional<std::string> scheme, GetOptString(j, "prepend_scheme", where));
    if (scheme) {
      if (*scheme == "first") {
        step.prepend_scheme = PreTokenizerStep::PrependScheme::kFirst;
      } else if (*scheme == "always") {
        step.prepend_scheme = PreTokenizerStep::PrependScheme::kAlways;
      } else if (*scheme == "never") {
        step.prepend_scheme = PreTokenizerStep::PrependScheme::kNever;
      } else {
        return InvalidArgument(where + ".prepend_scheme '" + *scheme + "' is not first/always/never");
      }
    } else {
      // Files older than prepend_scheme spell it add_prefix_space.
      QC_ASSIGN_OR_RETURN(bool add_prefix_space, GetBool(j, "add_prefix_space", true, where));
      step.prepend_scheme =
          add_prefix_space ? PreTokenizerStep::PrependScheme::kAlways : PreTokenizerStep::PrependScheme::kNever;
    }
    QC_ASSIGN_OR_RETURN(step.split, GetBool(j, "split", true, where));
  } else if (type == "Split") {
    step.kind = PreTokenizerStep::Kind::kSplit;
    QC_ASSIGN_OR_RETURN(step.pattern, ParsePattern(j, where));
    QC_ASSIGN_OR_RETURN(std::string behavior, GetString(j, "behavior", where));
    static const std::pair<const char*, SplitBehavior> kBehaviors[] = {
        {"Removed", SplitBehavior::kRemoved},
        {"Isolated", SplitBehavior::kIsolated},
        {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
        {"MergedWithNext", SplitBehavior::kMergedWithNext},
        {"Contiguous", SplitBehavior::kContiguous},
    };
    bool known = false;
    for (const auto& [name, value] : kBehaviors) {
      if (behavior == name) {
        step.behavior = value;
        known = true;
      }
    }
    if (!known) return InvalidArgument(where + ".behavior '" + behavior + "' is not a SplitDelimiterBehavior");
    QC_ASSIGN_OR_RETURN(step.invert, GetBool(j, "invert", false, where));
  } else {
    return Unimplemented("tokenizer.json: pre_tokenizer '" + (type.empty() ? std::string("<no type>") : type) +
                         "' is not supported (supported: ByteLevel, Metaspace, Split, Sequence)");
  }
  steps->push_back(std::move(step));
  return Status::Ok();
}

StatusOr<BpeModel> ParseModel(const Json& j) {
  if (!j.is_object()) return InvalidArgument("tokenizer.json: 'model' is missing or not an object");
  std::string type = TypeOf(j);
  if (type.empty() && j.contains("merges")) type = "BPE";  // old files carry no type
  if (type != "BPE") {
    return Unimplemented("tokenizer.json: model type '" + (type.empty() ? std::string("<no type>") : type) +
                         "' is not supported (supported: BPE)");
  }
  const std::string where = "tokenizer.json: model";
  const auto dropout = j.find("dropout");
  if (dropout != j.end() && !dropout->is_null()) {
    if (!dropout->is_number()) return InvalidArgument(where + ".dropout must be a number or null");
    if (dropout->get<double>() != 0.0) {
      return Unimplemented(where + ".dropout is " + dropout->dump() +
                           ": BPE dropout is random and not supported (only null or 0)");
    }
  }

  const auto vocab_it = j.find("vocab");
  if (vocab_it == j.end() || !vocab_it->is_object()) return InvalidArgument(where + ".vocab must be an object");
  Vocab vocab;
  vocab.reserve(vocab_it->size());
  for (const auto& [token, id] : vocab_it->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
      return InvalidArgument(where + ".vocab['" + token + "'] is not an id in [0, 2^31)");
    }
    vocab.emplace(token, static_cast<int32_t>(id.get<int64_t>()));
  }

  const auto merges_it = j.find("merges");
  if (merges_it == j.end() || !merges_it->is_array()) return InvalidArgument(where + ".merges must be an array");
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(merges_it->size());
  for (size_t i = 0; i < merges_it->size(); ++i) {
    const Json& m = (*merges_it)[i];
    if (m.is_string()) {
      // Legacy "a b": exactly one space, as `convert_merges_to_hashmap` requires.
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return InvalidArgument(where + ".merges[" + std::to_string(i) + "] '" + s + "' is not \"a b\"");
      }
      merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return InvalidArgument(where + ".merges[" + std::to_string(i) + "] is neither \"a b\" nor [\"a\", \"b\"]");
    }
  }

  BpeOptions options;
  QC_ASSIGN_OR_RETURN(options.unk_token, GetOptString(j, "unk_token", where));
  QC_ASSIGN_OR_RETURN(options.continuing_subword_prefix, GetOptString(j, "continuing_subword_prefix", where));
  QC_ASSIGN_OR_RETURN(options.end_of_word_suffix, GetOptString(j, "end_of_word_suffix", where));
  QC_ASSIGN_OR_RETURN(options.fuse_unk, GetBool(j, "fuse_unk", false, where));
  QC_ASSIGN_OR_RETURN(options.byte_fallback, GetBool(j, "byte_fallback", false, where));
  QC_ASSIGN_OR_RETURN(options.ignore_merges, GetBool(j, "ignore_merges", false, where));
  StatusOr<BpeModel> model = BpeModel::Create(std::move(vocab), merges, std::move(options));
  if (!model.ok()) return model.status().WithContext(where);
  return model;
}

/// Registers the added tokens as `TokenizerImpl`'s deserializer does: one `add_tokens` call per
/// entry, in file order, so ids are those `tokenizers` assigns (normally the ones in the file).
Status ParseAddedTokens(const Json& j, TokenizerImpl* impl) {
  if (!j.is_null() && !j.is_array()) return InvalidArgument("tokenizer.json: added_tokens must be an array");
  std::vector<AddedToken> special_tokens;  // `special_tokens`, in order
  std::vector<AddedToken> classic_tokens;  // `added_tokens`, in order
  const int64_t model_size = static_cast<int64_t>(impl->model.size());
  int64_t max_added = -1;  // largest id in `added_tokens_map`
  for (size_t i = 0; !j.is_null() && i < j.size(); ++i) {
    const Json& entry = j[i];
    const std::string where = "tokenizer.json: added_tokens[" + std::to_string(i) + "]";
    if (!entry.is_object()) return InvalidArgument(where + " must be an object");
    AddedToken token;
    QC_ASSIGN_OR_RETURN(token.content, GetString(entry, "content", where));
    QC_ASSIGN_OR_RETURN(token.special, GetBool(entry, "special", false, where));
    QC_ASSIGN_OR_RETURN(token.single_word, GetBool(entry, "single_word", false, where));
    QC_ASSIGN_OR_RETURN(token.lstrip, GetBool(entry, "lstrip", false, where));
    QC_ASSIGN_OR_RETURN(token.rstrip, GetBool(entry, "rstrip", false, where));
    QC_ASSIGN_OR_RETURN(token.normalized, GetBool(entry, "normalized", !token.special, where));

    if (token.special && !token.content.empty() && !impl->special_contents.count(token.content)) {
      special_tokens.push_back(token);
      impl->special_contents.insert(token.content);
    }
    if (token.content.empty()) continue;
    // An entry identical to one already registered is ignored.
    const auto same = impl->added_ids.find(token.content);
    if (same != impl->added_ids.end()) {
      const auto existing = impl->added_tokens_by_id.find(same->second);
      if (existing != impl->added_tokens_by_id.end() && existing->second == token) continue;
    }
    int32_t id = impl->AddedOrModelId(token.content);
    if (id < 0) {
      // A token outside the vocab gets the next free id after the model's.
      const int64_t next = (max_added < 0)                                ? model_size
                           : (max_added >= model_size || model_size == 0) ? max_added + 1
                                                                          : model_size;
      if (next > INT32_MAX) return InvalidArgument(where + ": too many added tokens");
      id = static_cast<int32_t>(next);
    }
    impl->added_ids[token.content] = id;
    max_added = std::max<int64_t>(max_added, id);
    impl->added_tokens_by_id[id] = token;
    if (!impl->special_contents.count(token.content)) classic_tokens.push_back(token);
  }

  // `refresh_added_tokens`: special tokens first, then the others, split on `normalized`.
  std::vector<const AddedToken*> all;
  for (const AddedToken& t : special_tokens) all.push_back(&t);
  for (const AddedToken& t : classic_tokens) all.push_back(&t);
  for (const AddedToken* t : all) {
    const int32_t id = impl->AddedOrModelId(t->content);
    if (id < 0) return Internal("added token '" + t->content + "' lost its id");
    if (!t->normalized) {
      impl->raw_matcher.trie.Add(t->content, static_cast<int32_t>(impl->raw_matcher.ids.size()));
      impl->raw_matcher.ids.push_back(id);
    } else {
      std::string pattern = t->content;
      QC_RETURN_IF_ERROR(Normalize(impl->normalizer, &pattern));
      impl->normalized_matcher.trie.Add(pattern, static_cast<int32_t>(impl->normalized_matcher.ids.size()));
      impl->normalized_matcher.ids.push_back(id);
    }
  }
  return Status::Ok();
}

bool ContainsType(const Json& j, const std::string& type) {
  if (j.is_object()) {
    if (TypeOf(j) == type) return true;
    for (const auto& [key, value] : j.items()) {
      if (ContainsType(value, type)) return true;
    }
  } else if (j.is_array()) {
    for (const Json& value : j) {
      if (ContainsType(value, type)) return true;
    }
  }
  return false;
}

StatusOr<std::shared_ptr<TokenizerImpl>> ParseTokenizer(std::string_view json_text) {
  // Real files nest about 6 deep; the readers below recurse, so deep nesting is refused while
  // parsing (the parser itself is iterative) rather than overflowing the stack later.
  constexpr int kMaxDepth = 64;
  bool too_deep = false;
  const Json::parser_callback_t limit_depth = [&](int depth, Json::parse_event_t, Json&) {
    if (depth > kMaxDepth) too_deep = true;
    return !too_deep;  // discarded values are not built
  };
  Json root = Json::parse(json_text.begin(), json_text.end(), limit_depth, /*allow_exceptions=*/false);
  if (too_deep) return InvalidArgument("tokenizer.json: nested more than " + std::to_string(kMaxDepth) + " levels deep");
  if (root.is_discarded()) return InvalidArgument("tokenizer.json: not valid JSON");
  if (!root.is_object()) return InvalidArgument("tokenizer.json: top level is not an object");
  if (root.contains("version") && root["version"] != "1.0") {
    return InvalidArgument("tokenizer.json: unknown version " + root["version"].dump() + " (expected \"1.0\")");
  }
  const Json null_json;
  auto field = [&](const char* key) -> const Json& {
    const auto it = root.find(key);
    return it == root.end() ? null_json : *it;
  };

  auto impl = std::make_shared<TokenizerImpl>();
  QC_ASSIGN_OR_RETURN(impl->model, ParseModel(field("model")));
  QC_RETURN_IF_ERROR(ParseNormalizer(field("normalizer"), "tokenizer.json: normalizer", &impl->normalizer));
  QC_RETURN_IF_ERROR(ParsePreTokenizer(field("pre_tokenizer"), "tokenizer.json: pre_tokenizer", &impl->pre_tokenizer));

  // Rust's Unicode \w: Alphabetic, marks, decimal digits, connector punctuation, joiners.
  StatusOr<Regex> word_char = Regex::Compile("[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]");
  if (!word_char.ok()) word_char = Regex::Compile("[\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]");
  if (!word_char.ok()) return word_char.status().WithContext("tokenizer: word-character class");
  impl->word_char = std::move(word_char).value();
  QC_RETURN_IF_ERROR(ParseAddedTokens(field("added_tokens"), impl.get()));

  bool metaspace_prepends = false;
  for (const PreTokenizerStep& step : impl->pre_tokenizer) {
    if (step.kind == PreTokenizerStep::Kind::kByteLevel) impl->byte_level_decode = true;
    if (step.kind == PreTokenizerStep::Kind::kMetaspace &&
        step.prepend_scheme != PreTokenizerStep::PrependScheme::kNever) {
      metaspace_prepends = true;
    }
  }
  bool normalizer_prepends = false;
  for (const NormalizerStep& step : impl->normalizer) {
    if (step.kind == NormalizerStep::Kind::kPrepend) normalizer_prepends = true;
  }
  impl->byte_level_decode = impl->byte_level_decode || ContainsType(field("decoder"), "ByteLevel");
  impl->strip_leading_space = !impl->byte_level_decode && (metaspace_prepends || normalizer_prepends);

  int64_t max_id = impl->model.max_id();
  for (const auto& [id, token] : impl->added_tokens_by_id) max_id = std::max<int64_t>(max_id, id);
  impl->vocab_size = max_id + 1;
  return impl;
}

}  // namespace
}  // namespace tokenizer_internal

using tokenizer_internal::Piece;
using tokenizer_internal::TokenizerImpl;

StatusOr<Tokenizer> Tokenizer::FromFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return NotFound("tokenizer: cannot open '" + path + "'");
  std::ostringstream buffer;
  buffer << file.rdbuf();
  if (file.bad()) return DataLoss("tokenizer: error reading '" + path + "'");
  StatusOr<Tokenizer> tokenizer = FromJson(buffer.str());
  if (!tokenizer.ok()) return tokenizer.status().WithContext(path);
  return tokenizer;
}

StatusOr<Tokenizer> Tokenizer::FromJson(std::string_view json_text) {
  try {
    QC_ASSIGN_OR_RETURN(std::shared_ptr<TokenizerImpl> impl, tokenizer_internal::ParseTokenizer(json_text));
    return Tokenizer(std::move(impl));
  } catch (const nlohmann::json::exception& e) {
    // The readers check types first; this is the net for anything they missed.
    return InvalidArgument(std::string("tokenizer.json: ") + e.what());
  }
}

StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text) const {
  using tokenizer_internal::IsValidUtf8;
  if (!IsValidUtf8(text)) return InvalidArgument("tokenizer: input text is not valid UTF-8");
  std::vector<int32_t> ids;
  if (text.empty()) return ids;
  const TokenizerImpl& impl = *impl_;

  // `AddedVocabulary::extract_and_normalize`: raw-form added tokens, then normalize the rest and
  // look for normalized-form added tokens in it.
  std::vector<Piece> raw_pieces;
  Piece whole;
  whole.text = std::string(text);
  whole.at_origin = true;
  impl.SplitOnAddedTokens(std::move(whole), impl.raw_matcher, &raw_pieces);
  std::vector<Piece> pieces;
  pieces.reserve(raw_pieces.size());
  for (Piece& piece : raw_pieces) {
    if (piece.token_id >= 0) {
      pieces.push_back(std::move(piece));
      continue;
    }
    QC_RETURN_IF_ERROR(tokenizer_internal::Normalize(impl.normalizer, &piece.text));
    impl.SplitOnAddedTokens(std::move(piece), impl.normalized_matcher, &pieces);
  }
  raw_pieces.clear();

  for (const auto& step : impl.pre_tokenizer) {
    QC_RETURN_IF_ERROR(tokenizer_internal::PreTokenize(step, &pieces));
    // ByteLevel doubles multi-byte text; a chain of them must not double it without bound.
    size_t total = 0;
    for (const Piece& piece : pieces) total += piece.text.size();
    if (total > text.size() * tokenizer_internal::kMaxTextGrowth + tokenizer_internal::kTextGrowthSlack)
      return InvalidArgument("tokenizer: the pre-tokenizer grows the text more than " +
                             std::to_string(tokenizer_internal::kMaxTextGrowth) + "-fold");
  }

  // `BPE::tokenize_with_cache`; the cache lives for one call so Encode stays lock-free.
  constexpr size_t kMaxCachedWordBytes = 256;  // `models::bpe::MAX_LENGTH`
  std::unordered_map<std::string, std::vector<int32_t>, tokenizer_internal::StringHash, std::equal_to<>> cache;
  std::vector<int32_t> word_ids;
  ids.reserve(text.size() / 3);
  for (const Piece& piece : pieces) {
    if (piece.token_id >= 0) {
      ids.push_back(piece.token_id);
      continue;
    }
    if (piece.text.size() < kMaxCachedWordBytes) {
      const auto it = cache.find(piece.text);
      if (it != cache.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        continue;
      }
    }
    word_ids.clear();
    QC_RETURN_IF_ERROR(impl.model.Tokenize(piece.text, &word_ids));
    ids.insert(ids.end(), word_ids.begin(), word_ids.end());
    if (piece.text.size() < kMaxCachedWordBytes) cache.emplace(piece.text, word_ids);
  }
  return ids;
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  const TokenizerImpl& impl = *impl_;
  // Inverse of the byte-level alphabet, keyed by the character's UTF-8.
  static const std::unordered_map<std::string, char> kByteOf = [] {
    std::unordered_map<std::string, char> map;
    const auto& alphabet = tokenizer_internal::ByteLevelAlphabet();
    for (int b = 0; b < 256; ++b) map.emplace(alphabet[b], static_cast<char>(b));
    return map;
  }();
  static const std::string kMetaspace = "\xE2\x96\x81";

  std::string out;
  for (int32_t id : ids) {
    const std::string* token = nullptr;
    const auto added = impl.added_tokens_by_id.find(id);
    if (added != impl.added_tokens_by_id.end()) {
      if (added->second.special) continue;  // `skip_special_tokens=True`, the `decode` default
      token = &added->second.content;
    } else {
      token = impl.model.IdToToken(id);
    }
    if (token == nullptr) continue;
    if (impl.byte_level_decode) {
      for (size_t i = 0; i < token->size();) {
        const size_t len =
            std::min(tokenizer_internal::Utf8SeqLen(static_cast<unsigned char>((*token)[i])), token->size() - i);
        const std::string ch = token->substr(i, len);
        const auto it = kByteOf.find(ch);
        if (it != kByteOf.end()) {
          out.push_back(it->second);
        } else {
          out.append(ch);
        }
        i += len;
      }
      continue;
    }
    if (impl.model.options().byte_fallback && token->size() == 6 && token->compare(0, 3, "<0x") == 0 &&
        (*token)[5] == '>' && std::isxdigit(static_cast<unsigned char>((*token)[3])) &&
        std::isxdigit(static_cast<unsigned char>((*token)[4]))) {
      out.push_back(static_cast<char>(std::strtol(token->substr(3, 2).c_str(), nullptr, 16)));
      continue;
    }
    for (size_t i = 0; i < token->size();) {
      if (token->compare(i, kMetaspace.size(), kMetaspace) == 0) {
        out.push_back(' ');
        i += kMetaspace.size();
      } else {
        out.push_back((*token)[i++]);
      }
    }
  }
  if (impl.strip_leading_space && !out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

int32_t Tokenizer::TokenToId(std::string_view token) const { return impl_->AddedOrModelId(token); }

int64_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

}  // namespace qc
