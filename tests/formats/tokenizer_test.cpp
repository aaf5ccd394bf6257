// Tests of formats/tokenizer: hand-built tokenizer.json files with known ids, and the shared models'
// tokenizers against ids produced by Hugging Face `tokenizers`.
#include "formats/tokenizer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace qc {
namespace {

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

std::string JsonQuote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out.push_back(c);
    }
  }
  return out + "\"";
}

std::string Utf8(char32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return out;
}

/// GPT-2's bytes_to_unicode, written independently of the library's copy.
std::vector<std::string> ByteAlphabet() {
  std::vector<std::string> table(256);
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    table[b] = Utf8(keep ? b : 256 + n++);
  }
  return table;
}

struct TokenSpec {
  std::string content;
  int id;
  bool special = true;
  bool normalized = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
};

std::string AddedTokensJson(const std::vector<TokenSpec>& tokens) {
  std::string out = "[";
  for (size_t i = 0; i < tokens.size(); ++i) {
    const TokenSpec& t = tokens[i];
    auto b = [](bool v) { return v ? "true" : "false"; };
    out += std::string(i ? "," : "") + "{\"id\":" + std::to_string(t.id) + ",\"content\":" + JsonQuote(t.content) +
           ",\"single_word\":" + b(t.single_word) + ",\"lstrip\":" + b(t.lstrip) + ",\"rstrip\":" + b(t.rstrip) +
           ",\"normalized\":" + b(t.normalized) + ",\"special\":" + b(t.special) + "}";
  }
  return out + "]";
}

/// A byte-level (GPT-2 style) tokenizer: the 256 alphabet characters are ids 0..255, then
/// `extra` tokens from 256 on; merges in "a b" form (or pair form when `pair_merges`).
std::string ByteLevelJson(const std::vector<std::string>& extra,
                          const std::vector<std::pair<std::string, std::string>>& merges, bool pair_merges,
                          bool add_prefix_space = false, const std::vector<TokenSpec>& added = {}) {
  const auto alphabet = ByteAlphabet();
  std::string vocab = "{";
  int id = 0;
  for (const std::string& ch : alphabet) {
    vocab += (id ? "," : "") + JsonQuote(ch) + ":" + std::to_string(id);
    ++id;
  }
  for (const std::string& tok : extra) {
    vocab += "," + JsonQuote(tok) + ":" + std::to_string(id);
    ++id;
  }
  vocab += "}";
  std::string merges_json = "[";
  for (size_t i = 0; i < merges.size(); ++i) {
    merges_json += i ? "," : "";
    if (pair_merges) {
      merges_json += "[" + JsonQuote(merges[i].first) + "," + JsonQuote(merges[i].second) + "]";
    } else {
      merges_json += JsonQuote(merges[i].first + " " + merges[i].second);
    }
  }
  merges_json += "]";
  return std::string("{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":") +
         AddedTokensJson(added) +
         ",\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":" +
         (add_prefix_space ? "true" : "false") +
         ",\"trim_offsets\":true,\"use_regex\":true},\"post_processor\":null,"
         "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,"
         "\"continuing_subword_prefix\":null,\"end_of_word_suffix\":null,\"fuse_unk\":false,"
         "\"byte_fallback\":false,\"vocab\":" +
         vocab + ",\"merges\":" + merges_json + "}}";
}

const char kMeta[] = "\xE2\x96\x81";  // U+2581, SentencePiece's word boundary

/// A SentencePiece-style tokenizer: <unk> <s> </s>, <0x00>..<0xFF> (ids 3..258), then `extra`.
/// `pipeline` is the "normalizer" and "pre_tokenizer" members.
std::string SentencePieceJson(const std::vector<std::string>& extra,
                              const std::vector<std::pair<std::string, std::string>>& merges,
                              const std::string& pipeline, bool byte_fallback = true, bool fuse_unk = false,
                              const std::vector<TokenSpec>& more_added = {}) {
  std::vector<TokenSpec> added = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  added.insert(added.end(), more_added.begin(), more_added.end());
  std::string vocab = "{\"<unk>\":0,\"<s>\":1,\"</s>\":2";
  for (int b = 0; b < 256; ++b) {
    char code[16];
    std::snprintf(code, sizeof(code), "<0x%02X>", b);
    vocab += ",\"" + std::string(code) + "\":" + std::to_string(3 + b);
  }
  int id = 259;
  for (const std::string& tok : extra) {
    vocab += "," + JsonQuote(tok) + ":" + std::to_string(id);
    ++id;
  }
  vocab += "}";
  std::string merges_json = "[";
  for (size_t i = 0; i < merges.size(); ++i) {
    merges_json +=
        (i ? "," : "") + std::string("[") + JsonQuote(merges[i].first) + "," + JsonQuote(merges[i].second) + "]";
  }
  merges_json += "]";
  return "{\"version\":\"1.0\",\"added_tokens\":" + AddedTokensJson(added) + "," + pipeline +
         ",\"post_processor\":null,\"decoder\":null,\"model\":{\"type\":\"BPE\",\"dropout\":null,"
         "\"unk_token\":\"<unk>\",\"fuse_unk\":" +
         (fuse_unk ? "true" : "false") + ",\"byte_fallback\":" + (byte_fallback ? "true" : "false") +
         ",\"ignore_merges\":false,\"vocab\":" + vocab + ",\"merges\":" + merges_json + "}}";
}

std::string MetaspacePipeline(const std::string& scheme) {
  return "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"" + std::string(kMeta) +
         "\",\"prepend_scheme\":\"" + scheme + "\",\"split\":true}";
}

/// The normalizer of older Llama tokenizer.json files: Sequence[Prepend("▁"), Replace(" ", "▁")].
std::string LlamaNormalizer() {
  return "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"" + std::string(kMeta) +
         "\"},{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"" + std::string(kMeta) + "\"}]}";
}

std::string LlamaNormalizerPipeline() { return "\"normalizer\":" + LlamaNormalizer() + ",\"pre_tokenizer\":null"; }

// Vocabulary shared by the SentencePiece-style tests; ids from 259.
const std::vector<std::string> kSpExtra = {
    kMeta,  // 259
    "h",
    "i",
    "t",
    "e",
    "r",                         // 260..264
    std::string(kMeta) + "h",    // 265
    std::string(kMeta) + "hi",   // 266
    std::string(kMeta) + "t",    // 267
    "he",                        // 268
    std::string(kMeta) + "the",  // 269
    "re",                        // 270
};
const std::vector<std::pair<std::string, std::string>> kSpMerges = {
    {kMeta, "h"}, {std::string(kMeta) + "h", "i"},  {kMeta, "t"},
    {"h", "e"},   {std::string(kMeta) + "t", "he"}, {"r", "e"}};

Tokenizer MustLoad(const std::string& json) {
  StatusOr<Tokenizer> tokenizer = Tokenizer::FromJson(json);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status().ToString();
  QC_CHECK(tokenizer.ok());
  return std::move(tokenizer).value();
}

std::vector<int32_t> MustEncode(const Tokenizer& tokenizer, const std::string& text) {
  StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(text);
  EXPECT_TRUE(ids.ok()) << ids.status().ToString();
  return ids.ok() ? ids.value() : std::vector<int32_t>();
}

using Ids = std::vector<int32_t>;

// ---------------------------------------------------------------------------------------------
// Byte-level BPE
// ---------------------------------------------------------------------------------------------

// Ids 256.. of the byte-level test vocabulary.
const std::vector<std::string> kBlExtra = {"he", "ll", "hell", "hello", "or", "\xC4\xA0w", "\xC4\xA0wor", "aa"};
const std::vector<std::pair<std::string, std::string>> kBlMerges = {{"h", "e"},          {"l", "l"}, {"he", "ll"},
                                                                    {"hell", "o"},       {"o", "r"}, {"\xC4\xA0", "w"},
                                                                    {"\xC4\xA0w", "or"}, {"a", "a"}};

TEST(TokenizerTest, ByteLevelMergesByRank) {
  for (bool pair_merges : {false, true}) {
    const Tokenizer tok = MustLoad(ByteLevelJson(kBlExtra, kBlMerges, pair_merges));
    // "hello" -> he l l o -> he ll o -> hell o -> hello; "Ġworld": "o r" (rank 4) before "Ġ w"
    // (rank 5), then "Ġw or" -> Ġwor l d.
    EXPECT_EQ(MustEncode(tok, "hello world"), (Ids{259, 262, 'l', 'd'})) << "pair_merges=" << pair_merges;
    // Equal ranks merge leftmost first.
    EXPECT_EQ(MustEncode(tok, "aaa"), (Ids{263, 'a'}));
    EXPECT_EQ(tok.vocab_size(), 256 + static_cast<int64_t>(kBlExtra.size()));
    EXPECT_EQ(tok.Decode(MustEncode(tok, "hello world")), "hello world");
  }
}

TEST(TokenizerTest, ByteLevelRegexSplits) {
  const Tokenizer tok = MustLoad(ByteLevelJson(kBlExtra, kBlMerges, false));
  const auto alphabet = ByteAlphabet();
  // ' ' is the 33rd byte outside the printable set, so it is written U+0120 "Ġ"; the test vocab
  // gives every byte's character the byte's value as id.
  const int32_t g = tok.TokenToId("\xC4\xA0");
  ASSERT_EQ(g, ' ');
  // "\s+(?!\S)": of two spaces before a word, the first stands alone, the second joins the word.
  EXPECT_EQ(MustEncode(tok, "a  b"), (Ids{'a', g, g, 'b'}));
  // Contractions are their own pieces; "'t" has no merge so it stays two tokens.
  EXPECT_EQ(MustEncode(tok, "don't"), (Ids{'d', 'o', 'n', '\'', 't'}));
  // Non-ASCII goes through its UTF-8 bytes: "é" = C3 A9.
  EXPECT_EQ(MustEncode(tok, "\xC3\xA9"), (Ids{tok.TokenToId(alphabet[0xC3]), tok.TokenToId(alphabet[0xA9])}));
  EXPECT_EQ(tok.Decode(MustEncode(tok, "caf\xC3\xA9 \xF0\x9F\x98\x80!\n")), "caf\xC3\xA9 \xF0\x9F\x98\x80!\n");
}

TEST(TokenizerTest, ByteLevelAddPrefixSpace) {
  const Tokenizer tok = MustLoad(ByteLevelJson(kBlExtra, kBlMerges, false, /*add_prefix_space=*/true));
  // " world" after the prefix space: Ġwor l d.
  EXPECT_EQ(MustEncode(tok, "world"), (Ids{262, 'l', 'd'}));
  EXPECT_EQ(MustEncode(tok, " world"), (Ids{262, 'l', 'd'}));
}

TEST(TokenizerTest, AddedTokensSplitFirst) {
  std::vector<TokenSpec> added = {{"<|endoftext|>", 264}};
  const Tokenizer tok = MustLoad(ByteLevelJson(kBlExtra, kBlMerges, false, false, added));
  const int32_t space = ' ';  // "Ġ"
  EXPECT_EQ(MustEncode(tok, "hello<|endoftext|>hello"), (Ids{259, 264, 259}));
  // The space before the token is its own piece; the one after joins the next word.
  EXPECT_EQ(MustEncode(tok, "hello <|endoftext|> world"), (Ids{259, space, 264, 262, 'l', 'd'}));
  EXPECT_EQ(tok.vocab_size(), 265);
  EXPECT_EQ(tok.Decode(MustEncode(tok, "hello<|endoftext|>")), "hello");  // special tokens skipped
}

TEST(TokenizerTest, AddedTokenStripAndSingleWordFlags) {
  const int32_t space = ' ';  // "Ġ"
  TokenSpec lstrip{"<m>", 264, false, false, /*lstrip=*/true};
  TokenSpec rstrip{"<r>", 265, false, false, false, /*rstrip=*/true};
  TokenSpec single{"<w>", 266, false, false, false, false, /*single_word=*/true};
  const Tokenizer tok = MustLoad(ByteLevelJson(kBlExtra, kBlMerges, false, false, {lstrip, rstrip, single}));
  EXPECT_EQ(MustEncode(tok, "a <m> b"), (Ids{'a', 264, space, 'b'}));
  EXPECT_EQ(MustEncode(tok, "a <r> b"), (Ids{'a', space, 265, 'b'}));
  EXPECT_EQ(MustEncode(tok, "a <w> b"), (Ids{'a', space, 266, space, 'b'}));
  // Inside a word a single_word token is plain text: "<w>" is then regex-split with its neighbours.
  EXPECT_EQ(MustEncode(tok, "a<w>b"), (Ids{'a', '<', 'w', '>', 'b'}));
}

TEST(TokenizerTest, LongestAddedTokenWins) {
  const Tokenizer tok = MustLoad(ByteLevelJson(kBlExtra, kBlMerges, false, false, {{"<a>", 264}, {"<a><b>", 265}}));
  EXPECT_EQ(MustEncode(tok, "x<a><b>y<a>"), (Ids{'x', 265, 'y', 264}));
}

// ---------------------------------------------------------------------------------------------
// SentencePiece-style BPE
// ---------------------------------------------------------------------------------------------

TEST(TokenizerTest, MetaspaceMerges) {
  const Tokenizer tok = MustLoad(SentencePieceJson(kSpExtra, kSpMerges, MetaspacePipeline("first")));
  // "▁hi", "▁there" -> ▁hi | ▁t h e r e -> ▁t he r e -> ▁the r e -> ▁the re.
  EXPECT_EQ(MustEncode(tok, "hi there"), (Ids{266, 269, 270}));
  EXPECT_EQ(tok.Decode(MustEncode(tok, "hi there")), "hi there");
  // Consecutive spaces: each extra "▁" is a piece of its own.
  EXPECT_EQ(MustEncode(tok, "hi  there"), (Ids{266, 259, 269, 270}));
}

TEST(TokenizerTest, MetaspacePrependSchemes) {
  const Tokenizer first = MustLoad(SentencePieceJson(kSpExtra, kSpMerges, MetaspacePipeline("first")));
  const Tokenizer always = MustLoad(SentencePieceJson(kSpExtra, kSpMerges, MetaspacePipeline("always")));
  const Tokenizer never = MustLoad(SentencePieceJson(kSpExtra, kSpMerges, MetaspacePipeline("never")));
  // "first" prepends only to the piece at the very start of the input, not after an added token.
  EXPECT_EQ(MustEncode(first, "<s>hi"), (Ids{1, 260, 261}));
  EXPECT_EQ(MustEncode(always, "<s>hi"), (Ids{1, 266}));
  EXPECT_EQ(MustEncode(first, "hi<s>hi"), (Ids{266, 1, 260, 261}));
  EXPECT_EQ(MustEncode(never, "hi"), (Ids{260, 261}));
  EXPECT_EQ(MustEncode(first, "<s> hi"), (Ids{1, 266}));
}

TEST(TokenizerTest, LlamaNormalizerWithoutPreTokenizer) {
  const Tokenizer tok = MustLoad(SentencePieceJson(kSpExtra, kSpMerges, LlamaNormalizerPipeline()));
  // The whole normalized text "▁hi▁there" is one BPE word.
  EXPECT_EQ(MustEncode(tok, "hi there"), (Ids{266, 269, 270}));
  // Prepend applies to every piece between added tokens.
  EXPECT_EQ(MustEncode(tok, "hi<s>there"), (Ids{266, 1, 269, 270}));
}

TEST(TokenizerTest, ByteFallbackForUnknownCharacter) {
  const Tokenizer tok = MustLoad(SentencePieceJson(kSpExtra, kSpMerges, MetaspacePipeline("first")));
  // U+1F600 is not in the vocab: its UTF-8 bytes F0 9F 98 80 become <0xF0><0x9F><0x98><0x80>.
  EXPECT_EQ(MustEncode(tok, "hi \xF0\x9F\x98\x80"), (Ids{266, 259, 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80}));
  EXPECT_EQ(tok.TokenToId("<0xF0>"), 3 + 0xF0);
  EXPECT_EQ(tok.Decode(MustEncode(tok, "hi \xF0\x9F\x98\x80")), "hi \xF0\x9F\x98\x80");
}

TEST(TokenizerTest, UnknownCharacterWithoutByteFallback) {
  const Tokenizer plain =
      MustLoad(SentencePieceJson(kSpExtra, kSpMerges, MetaspacePipeline("never"), /*byte_fallback=*/false));
  EXPECT_EQ(MustEncode(plain, "hxxi"), (Ids{260, 0, 0, 261}));
  const Tokenizer fused = MustLoad(
      SentencePieceJson(kSpExtra, kSpMerges, MetaspacePipeline("never"), /*byte_fallback=*/false, /*fuse_unk=*/true));
  EXPECT_EQ(MustEncode(fused, "hxxi"), (Ids{260, 0, 261}));
}

TEST(TokenizerTest, NormalizedAddedTokenMatchesNormalizedText) {
  // A normalized token is looked for in the normalized text, in its normalized form ("▁hi").
  // The file says id 300, but like `tokenizers` (which only warns) a token outside the vocab gets
  // the next id after the model's: 259 + 12 = 271.
  TokenSpec hi{"hi", 300, false, /*normalized=*/true};
  const Tokenizer tok = MustLoad(SentencePieceJson(kSpExtra, kSpMerges, LlamaNormalizerPipeline(), true, false, {hi}));
  EXPECT_EQ(tok.TokenToId("hi"), 271);
  EXPECT_EQ(MustEncode(tok, "hi"), (Ids{271}));
  EXPECT_EQ(MustEncode(tok, "hi hi"), (Ids{271, 271}));
  EXPECT_EQ(MustEncode(tok, "there"), (Ids{269, 270}));
}

TEST(TokenizerTest, ContinuingSubwordPrefixAndSuffix) {
  const std::string json =
      "{\"added_tokens\":[],\"normalizer\":null,\"pre_tokenizer\":null,\"model\":{\"type\":\"BPE\","
      "\"continuing_subword_prefix\":\"##\",\"end_of_word_suffix\":\"</w>\",\"unk_token\":\"[UNK]\","
      "\"vocab\":{\"[UNK]\":0,\"a\":1,\"##b\":2,\"##c</w>\":3,\"ab\":4,\"abc</w>\":5,\"c</w>\":6},"
      "\"merges\":[\"a ##b\",\"ab ##c</w>\"]}}";
  const Tokenizer tok = MustLoad(json);
  EXPECT_EQ(MustEncode(tok, "abc"), (Ids{5}));
  EXPECT_EQ(MustEncode(tok, "ab"), (Ids{1, 0}));  // "##b</w>" is unknown
}

TEST(TokenizerTest, IgnoreMerges) {
  const std::string json =
      "{\"added_tokens\":[],\"normalizer\":null,\"pre_tokenizer\":null,\"model\":{\"type\":\"BPE\","
      "\"ignore_merges\":true,\"vocab\":{\"a\":0,\"b\":1,\"c\":2,\"bc\":3,\"abc\":4},\"merges\":[\"b c\"]}}";
  const Tokenizer tok = MustLoad(json);
  EXPECT_EQ(MustEncode(tok, "abc"), (Ids{4}));  // whole word in the vocab
  EXPECT_EQ(MustEncode(tok, "cbc"), (Ids{2, 3}));
}

TEST(TokenizerTest, SplitPreTokenizerBehaviors) {
  // With ignore_merges and every expected piece in the vocab, each piece becomes one id, so the ids
  // spell out the pieces. The cases are those of the `tokenizers` docs for "the-final--countdown".
  const std::string vocab =
      "{\"the\":0,\"final\":1,\"countdown\":2,\"-\":3,\"the-\":4,\"final-\":5,\"-final\":6,"
      "\"-countdown\":7,\"--\":8}";
  auto load = [&](const std::string& behavior, const std::string& pattern, bool invert) {
    return MustLoad(
        "{\"normalizer\":{\"type\":\"Strip\",\"strip_left\":true,\"strip_right\":true},"
        "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":" +
        pattern + ",\"behavior\":\"" + behavior + "\",\"invert\":" + (invert ? "true" : "false") +
        "}]},\"model\":{\"type\":\"BPE\",\"ignore_merges\":true,\"vocab\":" + vocab + ",\"merges\":[]}}");
  };
  const std::string text = " the-final--countdown\n";  // Strip removes the outer whitespace
  for (const std::string pattern : {"{\"String\":\"-\"}", "{\"Regex\":\"-\"}"}) {
    EXPECT_EQ(MustEncode(load("Removed", pattern, false), text), (Ids{0, 1, 2})) << pattern;
    EXPECT_EQ(MustEncode(load("Isolated", pattern, false), text), (Ids{0, 3, 1, 3, 3, 2}));
    EXPECT_EQ(MustEncode(load("MergedWithPrevious", pattern, false), text), (Ids{4, 5, 3, 2}));
    EXPECT_EQ(MustEncode(load("MergedWithNext", pattern, false), text), (Ids{0, 6, 3, 7}));
    EXPECT_EQ(MustEncode(load("Contiguous", pattern, false), text), (Ids{0, 3, 1, 8, 2}));
    EXPECT_EQ(MustEncode(load("Removed", pattern, true), text), (Ids{3, 3, 3}));
  }
}

// ---------------------------------------------------------------------------------------------
// Errors and edge cases
// ---------------------------------------------------------------------------------------------

TEST(TokenizerTest, EmptyTextGivesNoIds) {
  const Tokenizer tok = MustLoad(ByteLevelJson(kBlExtra, kBlMerges, false));
  EXPECT_TRUE(MustEncode(tok, "").empty());
  const Tokenizer sp = MustLoad(SentencePieceJson(kSpExtra, kSpMerges, LlamaNormalizerPipeline()));
  EXPECT_TRUE(MustEncode(sp, "").empty());
  EXPECT_EQ(tok.Decode({}), "");
}

TEST(TokenizerTest, Negative_UnsupportedModelType) {
  for (const char* type : {"Unigram", "WordPiece", "WordLevel"}) {
    const std::string json = std::string("{\"model\":{\"type\":\"") + type + "\",\"vocab\":{}}}";
    StatusOr<Tokenizer> tok = Tokenizer::FromJson(json);
    ASSERT_FALSE(tok.ok());
    EXPECT_EQ(tok.status().code(), StatusCode::kUnimplemented);
    EXPECT_NE(tok.status().message().find(std::string("'") + type + "'"), std::string::npos) << tok.status().message();
    EXPECT_NE(tok.status().message().find("BPE"), std::string::npos);
  }
}

TEST(TokenizerTest, Negative_UnsupportedNormalizerAndPreTokenizer) {
  std::string json =
      SentencePieceJson(kSpExtra, kSpMerges, "\"normalizer\":{\"type\":\"NFKC\"},\"pre_tokenizer\":null");
  StatusOr<Tokenizer> tok = Tokenizer::FromJson(json);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(tok.status().message().find("NFKC"), std::string::npos);

  json = SentencePieceJson(kSpExtra, kSpMerges, "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Whitespace\"}");
  tok = Tokenizer::FromJson(json);
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.status().message().find("Whitespace"), std::string::npos);
}

TEST(TokenizerTest, Negative_MalformedJson) {
  const std::string good = ByteLevelJson(kBlExtra, kBlMerges, false);
  for (const std::string& bad : {std::string("{"), std::string(""), std::string("[1,2]"), std::string("null"),
                                 good.substr(0, good.size() / 2), std::string("{\"model\":{\"type\":\"BPE\"}}"),
                                 std::string("{\"model\":{\"type\":\"BPE\",\"vocab\":[],\"merges\":[]}}"),
                                 std::string("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"x\"},\"merges\":[]}}"),
                                 std::string("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a b\"]}}"),
                                 std::string("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[7]}}"),
                                 std::string("{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[],"
                                             "\"unk_token\":5}}"),
                                 std::string("{\"added_tokens\":{},\"model\":{\"type\":\"BPE\",\"vocab\":{},"
                                             "\"merges\":[]}}")}) {
    StatusOr<Tokenizer> tok = Tokenizer::FromJson(bad);
    EXPECT_FALSE(tok.ok()) << bad.substr(0, 80);
    if (!tok.ok()) {
      EXPECT_EQ(tok.status().code(), StatusCode::kInvalidArgument) << tok.status().message();
    }
  }
}

TEST(TokenizerTest, Negative_MissingFile) {
  StatusOr<Tokenizer> tok = Tokenizer::FromFile("/nonexistent/tokenizer.json");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), StatusCode::kNotFound);
}

TEST(TokenizerTest, Negative_InvalidUtf8Input) {
  const Tokenizer tok = MustLoad(ByteLevelJson(kBlExtra, kBlMerges, false));
  StatusOr<std::vector<int32_t>> ids = tok.Encode(std::string("ab\xFF", 3));
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.status().code(), StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// The shared models: ids must equal those of Hugging Face `tokenizers` exactly
// ---------------------------------------------------------------------------------------------

/// Reads a 1-D little-endian int32/int64 NumPy .npy file (format versions 1-3).
bool ReadNpyIds(const std::string& path, std::vector<int64_t>* out, std::string* error) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    *error = "cannot open " + path;
    return false;
  }
  std::string data((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (data.size() < 10 || data.compare(0, 6, "\x93NUMPY") != 0) {
    *error = "not an .npy file";
    return false;
  }
  const int major = static_cast<unsigned char>(data[6]);
  size_t header_len;
  size_t header_start;
  if (major == 1) {
    header_len = static_cast<unsigned char>(data[8]) | (static_cast<unsigned char>(data[9]) << 8);
    header_start = 10;
  } else {
    if (data.size() < 12) return false;
    header_len = 0;
    for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<unsigned char>(data[8 + i])) << (8 * i);
    header_start = 12;
  }
  if (header_start + header_len > data.size()) {
    *error = "truncated header";
    return false;
  }
  const std::string header = data.substr(header_start, header_len);
  size_t width;
  if (header.find("'<i4'") != std::string::npos) {
    width = 4;
  } else if (header.find("'<i8'") != std::string::npos) {
    width = 8;
  } else {
    *error = "unsupported dtype in header: " + header;
    return false;
  }
  if (header.find("'fortran_order': False") == std::string::npos) {
    *error = "fortran order";
    return false;
  }
  const size_t shape_at = header.find("'shape': (");
  if (shape_at == std::string::npos) {
    *error = "no shape";
    return false;
  }
  const size_t count = std::stoull(header.substr(shape_at + 10));
  if (header.find(",)", shape_at) == std::string::npos ||
      header.find(')', shape_at) != header.find(",)", shape_at) + 1) {
    *error = "not 1-D: " + header;
    return false;
  }
  const size_t body = header_start + header_len;
  if (body + count * width != data.size()) {
    *error = "size mismatch";
    return false;
  }
  out->resize(count);
  for (size_t i = 0; i < count; ++i) {
    if (width == 4) {
      int32_t v;
      std::memcpy(&v, data.data() + body + i * 4, 4);
      (*out)[i] = v;
    } else {
      int64_t v;
      std::memcpy(&v, data.data() + body + i * 8, 8);
      (*out)[i] = v;
    }
  }
  return true;
}

std::string ReadFileBytes(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
}

const std::string kShared = QC_SHARED_DIR;

/// "\r\n" -> "\n": wikitext2-test.ids.npy was made from wiki.test.raw read with Python's universal
/// newlines (its 2,891 CRLF line ends as LF), while docs-val.ids.npy keeps docs-val.txt byte for
/// byte (it holds one literal "\r\n" inside a docstring).
std::string CrlfToLf(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n') continue;
    out.push_back(text[i]);
  }
  return out;
}

void ExpectReferenceIds(const std::string& model_dir, const std::string& text_path, const std::string& ids_path,
                        bool crlf_to_lf) {
  const std::string tokenizer_path = kShared + "/models/" + model_dir + "/tokenizer.json";
  if (!std::filesystem::exists(tokenizer_path) || !std::filesystem::exists(text_path) ||
      !std::filesystem::exists(ids_path)) {
    GTEST_SKIP() << "shared files absent: " << tokenizer_path;
  }
  StatusOr<Tokenizer> tok = Tokenizer::FromFile(tokenizer_path);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  std::vector<int64_t> expected;
  std::string error;
  ASSERT_TRUE(ReadNpyIds(ids_path, &expected, &error)) << error;
  std::string text = ReadFileBytes(text_path);
  if (crlf_to_lf) text = CrlfToLf(text);

  const auto t0 = std::chrono::steady_clock::now();
  const std::clock_t c0 = std::clock();
  StatusOr<std::vector<int32_t>> ids = tok->Encode(text);
  const double cpu_seconds = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  std::printf("[ encode   ] %s: %zu bytes -> %zu ids in %.3f s (cpu %.3f s)\n", text_path.c_str(), text.size(),
              ids->size(), seconds, cpu_seconds);
  EXPECT_LT(seconds, 5.0) << "encoding is too slow";

  ASSERT_EQ(ids->size(), expected.size());
  size_t first_diff = expected.size();
  for (size_t i = 0; i < expected.size(); ++i) {
    if ((*ids)[i] != expected[i]) {
      first_diff = i;
      break;
    }
  }
  EXPECT_EQ(first_diff, expected.size()) << "first mismatch at id index " << first_diff;
  for (int64_t id : expected) ASSERT_LT(id, tok->vocab_size());
}

TEST(TokenizerTest, Gpt2DocsValMatchesReference) {
  ExpectReferenceIds("docs-gpt2-10m", kShared + "/models/docs-gpt2-10m/docs-val.txt",
                     kShared + "/models/docs-gpt2-10m/docs-val.ids.npy", /*crlf_to_lf=*/false);
}

TEST(TokenizerTest, Gpt2WikitextMatchesReference) {
  ExpectReferenceIds("docs-gpt2-10m", kShared + "/data/wikitext2-raw/wiki.test.raw",
                     kShared + "/models/docs-gpt2-10m/wikitext2-test.ids.npy", /*crlf_to_lf=*/true);
}

TEST(TokenizerTest, LlamaDocsValMatchesReference) {
  ExpectReferenceIds("docs-llama-12m", kShared + "/models/docs-llama-12m/docs-val.txt",
                     kShared + "/models/docs-llama-12m/docs-val.ids.npy", /*crlf_to_lf=*/false);
}

TEST(TokenizerTest, LlamaWikitextMatchesReference) {
  ExpectReferenceIds("docs-llama-12m", kShared + "/data/wikitext2-raw/wiki.test.raw",
                     kShared + "/models/docs-llama-12m/wikitext2-test.ids.npy", /*crlf_to_lf=*/true);
}

TEST(TokenizerTest, LlamaLegacyNormalizerStyleGivesSameIds) {
  // The same vocabulary driven the older Llama way: normalizer Prepend("▁") + Replace(" ", "▁") and
  // no pre-tokenizer, so the whole text is a single BPE word. Merges never cross a "▁" in this
  // vocabulary and wiki.test.raw holds no added token, so the ids must be the reference ones; this
  // also shows a 1.3 MB word is encoded quickly.
  const std::string dir = kShared + "/models/docs-llama-12m/";
  const std::string wiki = kShared + "/data/wikitext2-raw/wiki.test.raw";
  if (!std::filesystem::exists(dir + "tokenizer.json") || !std::filesystem::exists(wiki)) {
    GTEST_SKIP() << "shared files absent";
  }
  std::string json = ReadFileBytes(dir + "tokenizer.json");
  const size_t norm = json.find("\"normalizer\": null");
  const size_t pre = json.find("\"pre_tokenizer\": {");
  ASSERT_NE(norm, std::string::npos);
  ASSERT_NE(pre, std::string::npos);
  const size_t pre_end = json.find('}', pre);
  json.replace(pre, pre_end + 1 - pre, "\"pre_tokenizer\": null");
  json.replace(norm, std::strlen("\"normalizer\": null"), "\"normalizer\": " + LlamaNormalizer());
  StatusOr<Tokenizer> tok = Tokenizer::FromJson(json);
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  std::vector<int64_t> expected;
  std::string error;
  ASSERT_TRUE(ReadNpyIds(dir + "wikitext2-test.ids.npy", &expected, &error)) << error;
  // Without its leading space: Metaspace replaces " " and then sees the "▁" it needs, while
  // Prepend would add a second one.
  const std::string text = CrlfToLf(ReadFileBytes(wiki)).substr(1);
  const auto t0 = std::chrono::steady_clock::now();
  const std::clock_t c0 = std::clock();
  StatusOr<std::vector<int32_t>> ids = tok->Encode(text);
  const double cpu_seconds = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  std::printf("[ encode   ] one %zu-byte word: %zu ids in %.3f s (cpu %.3f s)\n", text.size(), ids->size(), seconds,
              cpu_seconds);
  EXPECT_LT(seconds, 5.0);
  EXPECT_TRUE(std::equal(ids->begin(), ids->end(), expected.begin(), expected.end()));
}

TEST(TokenizerTest, Negative_TruncatedRealFileNeverCrashes) {
  const std::string path = kShared + "/models/docs-llama-12m/tokenizer.json";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "shared files absent";
  const std::string json = ReadFileBytes(path);
  for (size_t cut : {size_t{1}, size_t{100}, json.size() / 3, json.size() / 2, json.size() - 2}) {
    StatusOr<Tokenizer> tok = Tokenizer::FromJson(json.substr(0, cut));
    EXPECT_FALSE(tok.ok()) << "cut at " << cut;
  }
}

TEST(TokenizerTest, LongRunsOfOneCharacterClass) {
  const Tokenizer tok = MustLoad(ByteLevelJson(kBlExtra, kBlMerges, false));
  // 200k spaces then a word: "\s+(?!\S)" backtracks one character; 200k letters: one BPE word.
  const std::string spaces = std::string(200000, ' ') + "x";
  StatusOr<std::vector<int32_t>> ids = tok.Encode(spaces);
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  EXPECT_EQ(ids->size(), 200001u);
  ids = tok.Encode(std::string(200000, 'a'));
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  EXPECT_EQ(*ids, Ids(100000, 263));  // "a a" merges pairwise from the left
}

TEST(TokenizerTest, SharedTokenizersDecodeWhatTheyEncode) {
  const std::string sample = "Returns the number of items.\n\n    >>> f(x=3)  # caf\xC3\xA9 \xE2\x86\x92 <s> done";
  for (const char* model : {"docs-gpt2-10m", "docs-llama-12m"}) {
    const std::string path = kShared + "/models/" + model + "/tokenizer.json";
    if (!std::filesystem::exists(path)) GTEST_SKIP() << "shared files absent: " << path;
    StatusOr<Tokenizer> tok = Tokenizer::FromFile(path);
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    EXPECT_EQ(tok->vocab_size(), 8192);
    StatusOr<std::vector<int32_t>> ids = tok->Encode(sample);
    ASSERT_TRUE(ids.ok());
    std::string expected = sample;
    // "<s>" is a special token of the Llama tokenizer, which Decode skips; plain text for GPT-2.
    if (std::string(model) == "docs-llama-12m") expected.erase(expected.find("<s>"), 3);
    EXPECT_EQ(tok->Decode(*ids), expected) << model;
  }
}

}  // namespace
}  // namespace qc
