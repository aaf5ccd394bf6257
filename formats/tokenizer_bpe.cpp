// The BPE model of a tokenizer.json: `models::bpe::BPE` of Hugging Face `tokenizers`. Merges are
// applied in the order of `Word::merge_all`: lowest rank first, leftmost on ties, with its check
// for queue entries that went stale.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <queue>

#include "formats/tokenizer_internal.h"

namespace qc::tokenizer_internal {

/// One symbol of a word being merged (`models::bpe::word::Symbol`); 12 bytes, because for a
/// text-long word the merge loop is bound by cache misses on this array.
struct BpeSymbol {
  int32_t id;    // -1 once merged into its left neighbour
  int32_t prev;  // index of the previous live symbol, -1 for none
  int32_t next;  // index of the next live symbol, -1 for none
};

namespace {

constexpr uint64_t kEmptyKey = ~uint64_t{0};

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// Fibonacci hashing: spreads the (a, b) keys, which differ mostly in low bits, over the table.
size_t HashKey(uint64_t key) { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 17); }

/// Merge queue for short words: a plain vector scanned for the minimum, which beats a heap for the
/// handful of entries a word has. Pops by (rank, position), like `impl Ord for Merge`.
class SmallMergeQueue {
 public:
  void Push(uint32_t rank, uint32_t pos) { entries_.push_back((static_cast<uint64_t>(rank) << 32) | pos); }
  bool Pop(uint32_t* rank, uint32_t* pos) {
    if (entries_.empty()) return false;
    auto best = std::min_element(entries_.begin(), entries_.end());
    *rank = static_cast<uint32_t>(*best >> 32);
    *pos = static_cast<uint32_t>(*best);
    *best = entries_.back();
    entries_.pop_back();
    return true;
  }

 private:
  std::vector<uint64_t> entries_;
};

/// Merge queue for long words (the Llama normalizer makes the whole text one word): a min-heap of
/// positions per rank plus a min-heap of the ranks that have entries. Same pop order as one heap
/// of (rank, position), but small heaps of 4-byte entries stay in cache where one 1M-entry heap
/// does not.
class BucketMergeQueue {
 public:
  explicit BucketMergeQueue(size_t num_ranks) : buckets_(num_ranks) {}
  void Push(uint32_t rank, uint32_t pos) {
    std::vector<uint32_t>& bucket = buckets_[rank];
    if (bucket.empty()) ranks_.push(rank);  // a rank may be listed twice; Pop skips empty ones
    bucket.push_back(pos);
    std::push_heap(bucket.begin(), bucket.end(), std::greater<>());
  }
  bool Pop(uint32_t* rank, uint32_t* pos) {
    while (!ranks_.empty()) {
      const uint32_t r = ranks_.top();
      std::vector<uint32_t>& bucket = buckets_[r];
      if (bucket.empty()) {
        ranks_.pop();
        continue;
      }
      std::pop_heap(bucket.begin(), bucket.end(), std::greater<>());
      *pos = bucket.back();
      bucket.pop_back();
      *rank = r;
      if (bucket.empty()) ranks_.pop();
      return true;
    }
    return false;
  }

 private:
  std::vector<std::vector<uint32_t>> buckets_;
  std::priority_queue<uint32_t, std::vector<uint32_t>, std::greater<>> ranks_;
};

// Vocabulary ids may leave at most this many ids unused (2^20 empty strings: 32 MB).
constexpr int64_t kMaxUnusedIds = int64_t{1} << 20;

// Words with more symbols than this use BucketMergeQueue.
constexpr size_t kSmallWordSymbols = 64;

}  // namespace

StatusOr<BpeModel> BpeModel::Create(Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges,
                                    BpeOptions options) {
  BpeModel model;
  int32_t max_id = -1;
  for (const auto& [token, id] : vocab) {
    if (id < 0) return InvalidArgument("vocab entry '" + token + "' has negative id " + std::to_string(id));
    max_id = std::max(max_id, id);
  }
  // Ids index dense tables. A few unused ids are normal (reserved for added tokens); ids far past
  // the vocabulary size are not, and would make the tables huge (2^31 strings for one entry).
  if (max_id >= static_cast<int64_t>(vocab.size()) + kMaxUnusedIds)
    return InvalidArgument("vocab id " + std::to_string(max_id) + " is far beyond the vocabulary's " +
                           std::to_string(vocab.size()) + " entries (ids must be nearly contiguous)");
  model.id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  model.id_used_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : vocab) {
    model.id_to_token_[id] = token;
    model.id_used_[id] = true;
  }
  if (merges.size() >= kNoMerge) return InvalidArgument("too many merges");

  size_t capacity = 16;
  while (capacity < merges.size() * 2) capacity *= 2;
  model.merge_keys_.assign(capacity, kEmptyKey);
  model.merge_ranks_.assign(capacity, kNoMerge);
  model.merge_mask_ = capacity - 1;
  model.rank_new_id_.assign(merges.size(), -1);
  const size_t prefix_len = options.continuing_subword_prefix ? options.continuing_subword_prefix->size() : 0;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    const auto a_it = vocab.find(a);
    const auto b_it = vocab.find(b);
    if (a_it == vocab.end() || b_it == vocab.end()) {
      return InvalidArgument("merge #" + std::to_string(rank) + " ('" + a + "' '" + b + "') uses token '" +
                             (a_it == vocab.end() ? a : b) + "' that is not in the vocab");
    }
    if (b.size() < prefix_len) {
      return InvalidArgument("merge #" + std::to_string(rank) + ": '" + b +
                             "' is shorter than the continuing_subword_prefix");
    }
    const std::string merged = a + b.substr(prefix_len);
    const auto m_it = vocab.find(merged);
    if (m_it == vocab.end()) {
      return InvalidArgument("merge #" + std::to_string(rank) + " ('" + a + "' '" + b + "') makes '" + merged +
                             "', which is not in the vocab");
    }
    const uint64_t key = PairKey(a_it->second, b_it->second);
    size_t slot = HashKey(key) & model.merge_mask_;
    while (model.merge_keys_[slot] != kEmptyKey && model.merge_keys_[slot] != key) {
      slot = (slot + 1) & model.merge_mask_;
    }
    // Like collecting into a HashMap: a repeated pair keeps its last rank.
    if (model.merge_keys_[slot] == key) model.rank_new_id_[model.merge_ranks_[slot]] = -1;
    model.merge_keys_[slot] = key;
    model.merge_ranks_[slot] = static_cast<uint32_t>(rank);
    model.rank_new_id_[rank] = m_it->second;
  }

  for (int c = 0; c < 128; ++c) {
    const char ch = static_cast<char>(c);
    const auto it = vocab.find(std::string_view(&ch, 1));
    model.ascii_ids_[c] = it == vocab.end() ? -1 : it->second;
  }
  for (int b = 0; b < 256; ++b) {
    char code[8];
    std::snprintf(code, sizeof(code), "<0x%02X>", b);
    const auto it = vocab.find(std::string_view(code));
    model.byte_ids_[b] = it == vocab.end() ? -1 : it->second;
  }
  // An unk_token missing from the vocab is reported by Tokenize when an unknown character needs it,
  // as `tokenizers` does: failing here would reject files that it loads.
  model.vocab_ = std::move(vocab);
  model.options_ = std::move(options);
  return model;
}

int32_t BpeModel::TokenToId(std::string_view token) const {
  const auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !id_used_[id]) return nullptr;
  return &id_to_token_[id];
}

uint32_t BpeModel::FindMergeRank(int32_t a, int32_t b) const {
  const uint64_t key = PairKey(a, b);
  size_t slot = HashKey(key) & merge_mask_;
  while (true) {
    const uint64_t k = merge_keys_[slot];
    if (k == key) return merge_ranks_[slot];
    if (k == kEmptyKey) return kNoMerge;
    slot = (slot + 1) & merge_mask_;
  }
}

template <typename Queue>
void BpeModel::MergeAll(std::vector<BpeSymbol>* symbols_ptr, Queue* queue) const {
  std::vector<BpeSymbol>& symbols = *symbols_ptr;
  for (size_t pos = 0; pos + 1 < symbols.size(); ++pos) {
    const uint32_t rank = FindMergeRank(symbols[pos].id, symbols[pos + 1].id);
    if (rank != kNoMerge) queue->Push(rank, static_cast<uint32_t>(pos));
  }
  uint32_t top_rank;
  uint32_t top_pos;
  while (queue->Pop(&top_rank, &top_pos)) {
    BpeSymbol& current = symbols[top_pos];
    if (current.id < 0 || current.next < 0) continue;
    const size_t next_pos = static_cast<size_t>(current.next);
    const BpeSymbol right = symbols[next_pos];
    // A stale entry: the pair here changed since it was queued. Like `tokenizers`, compare the ids
    // the merges make, not the ranks (two pairs can make the same token).
    const int32_t new_id = rank_new_id_[top_rank];
    const uint32_t rank_now = FindMergeRank(current.id, right.id);
    if (rank_now == kNoMerge || rank_new_id_[rank_now] != new_id) continue;

    current.id = new_id;
    current.next = right.next;
    symbols[next_pos].id = -1;
    if (right.next >= 0) symbols[static_cast<size_t>(right.next)].prev = static_cast<int32_t>(top_pos);

    if (current.prev >= 0) {
      const uint32_t rank = FindMergeRank(symbols[static_cast<size_t>(current.prev)].id, current.id);
      if (rank != kNoMerge) queue->Push(rank, static_cast<uint32_t>(current.prev));
    }
    if (current.next >= 0) {
      const uint32_t rank = FindMergeRank(current.id, symbols[static_cast<size_t>(current.next)].id);
      if (rank != kNoMerge) queue->Push(rank, top_pos);
    }
  }
}

Status BpeModel::Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return Status::Ok();
  if (word.size() >= INT32_MAX) return InvalidArgument("a single word of 2 GiB or more");
  if (options_.ignore_merges) {
    const auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      return Status::Ok();
    }
  }

  // `BPE::merge_word`: one symbol per character, unknown characters to byte tokens or unk.
  std::vector<BpeSymbol> symbols;
  symbols.reserve(word.size());
  auto add = [&symbols](int32_t id) {
    const auto index = static_cast<int32_t>(symbols.size());
    if (!symbols.empty()) symbols.back().next = index;
    symbols.push_back(BpeSymbol{id, index - 1, -1});
  };
  const bool affixes = options_.continuing_subword_prefix || options_.end_of_word_suffix;
  bool has_unk = false;
  int32_t unk_id = -1;
  std::string scratch;
  for (size_t i = 0; i < word.size();) {
    const auto lead = static_cast<unsigned char>(word[i]);
    if (lead < 0x80 && !affixes && ascii_ids_[lead] >= 0) {
      // Fast path for a known one-byte character, the common case.
      if (has_unk) {
        add(unk_id);
        has_unk = false;
      }
      add(ascii_ids_[lead]);
      ++i;
      continue;
    }
    const size_t len = std::min(Utf8SeqLen(lead), word.size() - i);
    const bool is_first = i == 0;
    const bool is_last = i + len == word.size();
    std::string_view s = word.substr(i, len);
    i += len;
    if ((!is_first && options_.continuing_subword_prefix) || (is_last && options_.end_of_word_suffix)) {
      scratch.clear();
      if (!is_first && options_.continuing_subword_prefix) scratch.append(*options_.continuing_subword_prefix);
      scratch.append(s);
      if (is_last && options_.end_of_word_suffix) scratch.append(*options_.end_of_word_suffix);
      s = scratch;
    }

    const auto it = vocab_.find(s);
    if (it != vocab_.end()) {
      if (has_unk) {
        add(unk_id);
        has_unk = false;
      }
      add(it->second);
      continue;
    }
    if (options_.byte_fallback) {
      bool all_bytes = true;
      for (unsigned char c : s) all_bytes = all_bytes && byte_ids_[c] >= 0;
      if (all_bytes) {
        // As in `tokenizers`, a pending unk is not flushed before the byte tokens.
        for (unsigned char c : s) add(byte_ids_[c]);
        continue;
      }
    }
    if (options_.unk_token) {
      const auto unk_it = vocab_.find(*options_.unk_token);
      if (unk_it == vocab_.end()) {
        return InvalidArgument("unk_token '" + *options_.unk_token + "' is not in the vocab");
      }
      if (has_unk && !options_.fuse_unk) add(unk_id);
      unk_id = unk_it->second;
      has_unk = true;  // with fuse_unk, a run of unknown characters stays one pending unk
    }
    // Without an unk token an unknown character is dropped, as in `tokenizers`.
  }
  if (has_unk) add(unk_id);

  if (symbols.size() <= kSmallWordSymbols) {
    SmallMergeQueue queue;
    MergeAll(&symbols, &queue);
  } else {
    BucketMergeQueue queue(rank_new_id_.size());
    MergeAll(&symbols, &queue);
  }
  for (const BpeSymbol& symbol : symbols) {
    if (symbol.id >= 0) ids->push_back(symbol.id);
  }
  return Status::Ok();
}

}  // namespace qc::tokenizer_internal
