// The "model" part of a byte-level BPE tokenizer.json: vocabulary and ranked
// merges, turning one pre-tokenized word into token ids.
//
// Design: a word starts as one symbol per character (each character of the
// byte-level alphabet is in the vocabulary); then the adjacent pair with the
// lowest merge rank (leftmost on ties) is merged until no pair has a rule.
// Long words keep candidate pairs in a min-heap keyed by (rank, position),
// push the new pairs around each merge and skip stale entries when popped:
// O(n log n) per word of n characters, the procedure of Hugging Face
// tokenizers' BPE::merge_word. Short words (almost all of them) use a plain
// scan over a stack array instead, which gives the same result without
// allocating.
#ifndef STRATA_TEXT_BPE_MODEL_H_
#define STRATA_TEXT_BPE_MODEL_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/token_id.h"
#include "nlohmann/json.hpp"

namespace strata {

// Ids at or above this are refused at load (they would size tables).
inline constexpr TokenId kMaxTokenId = (1 << 24) - 1;

class BpeModel {
 public:
  // Parses the tokenizer.json "model" object (type "BPE": vocab, merges as
  // "a b" strings or ["a", "b"] pairs, unk_token, byte_fallback, fuse_unk,
  // ignore_merges). Errors name the JSON path, not the file.
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(
      const nlohmann::json& model);

  // Appends the ids of `word` (byte-level text, well-formed UTF-8).
  // Characters missing from the vocabulary become unk_token, or "<0xXX>"
  // byte tokens with byte_fallback, or are dropped when neither exists (as
  // Hugging Face does). Thread-safe.
  void Tokenize(std::string_view word, std::vector<TokenId>* ids) const;

  // Vocabulary strings (byte-level text) to ids.
  const absl::flat_hash_map<std::string, TokenId>& vocab() const {
    return vocab_;
  }

 private:
  struct MergeResult {
    int32_t rank;    // position in the merges list; lower merges first
    TokenId merged;  // id of the concatenated token
  };
  static uint64_t PairKey(TokenId left, TokenId right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  // Words of up to this many initial symbols take the allocation-free path.
  static constexpr size_t kMaxShortWord = 64;

  BpeModel() = default;
  void MergeShortWord(std::span<const TokenId> initial,
                      std::vector<TokenId>* ids) const;
  void MergeLongWord(std::span<const TokenId> initial,
                     std::vector<TokenId>* ids) const;
  // Appends the initial symbols for one character of a word.
  void AppendCharacterSymbols(std::string_view character,
                              std::vector<TokenId>* symbols) const;

  absl::flat_hash_map<std::string, TokenId> vocab_;
  absl::flat_hash_map<uint64_t, MergeResult> merges_;  // by PairKey
  // Id of the single-character token for each byte's byte-level character,
  // -1 if the vocabulary lacks it.
  std::array<TokenId, 256> byte_ids_;
  std::optional<TokenId> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  // When set, a word found whole in the vocabulary is one token without
  // running merges (Llama 3's tokenizer.json sets this).
  bool ignore_merges_ = false;
};

}  // namespace strata

#endif  // STRATA_TEXT_BPE_MODEL_H_
