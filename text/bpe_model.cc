#include "text/bpe_model.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "text/byte_level.h"
#include "text/utf8.h"

namespace strata {
namespace {

using Json = nlohmann::json;

// absl::string_view is not std::string_view in this abseil build.
absl::string_view AsAbsl(std::string_view s) { return {s.data(), s.size()}; }

absl::Status Invalid(std::string_view path, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(AsAbsl(path), ": ", AsAbsl(what)));
}

// A merge line is "left right" with exactly one space, or ["left", "right"].
absl::StatusOr<std::pair<std::string, std::string>> ParseMerge(
    const Json& entry, const std::string& path) {
  if (entry.is_string()) {
    const std::string& line = entry.get_ref<const std::string&>();
    const size_t space = line.find(' ');
    if (space == std::string::npos || line.find(' ', space + 1) != line.npos) {
      return Invalid(path, absl::StrCat("merge \"", line,
                                        "\" is not two tokens separated by "
                                        "one space"));
    }
    return std::make_pair(line.substr(0, space), line.substr(space + 1));
  }
  if (entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
      entry[1].is_string()) {
    return std::make_pair(entry[0].get<std::string>(),
                          entry[1].get<std::string>());
  }
  return Invalid(path, "expected \"a b\" or [\"a\", \"b\"]");
}

// A token string field that may be absent or null.
absl::StatusOr<std::optional<std::string>> OptionalString(const Json& object,
                                                          const char* key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) {
    return Invalid(absl::StrCat("model.", key), "expected a string or null");
  }
  return it->get<std::string>();
}

absl::StatusOr<bool> OptionalBool(const Json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return false;
  if (!it->is_boolean()) {
    return Invalid(absl::StrCat("model.", key), "expected true or false");
  }
  return it->get<bool>();
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(
    const Json& model) {
  if (!model.is_object()) return Invalid("model", "missing or not an object");
  auto type = model.find("type");
  if (type != model.end() && !(type->is_string() && *type == "BPE")) {
    return absl::UnimplementedError(
        absl::StrCat("model.type ", type->dump(),
                     " is not supported (only byte-level \"BPE\")"));
  }
  // Options that change how words are split into pieces: refuse rather than
  // silently tokenize differently from the model's training.
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    absl::StatusOr<std::optional<std::string>> value =
        OptionalString(model, key);
    if (!value.ok()) return value.status();
    if (value->has_value() && !(*value)->empty()) {
      return absl::UnimplementedError(
          absl::StrCat("model.", key, " is not supported"));
    }
  }
  if (auto dropout = model.find("dropout");
      dropout != model.end() && !dropout->is_null() &&
      !(dropout->is_number() && dropout->get<double>() == 0.0)) {
    return absl::UnimplementedError("model.dropout is not supported");
  }

  std::unique_ptr<BpeModel> bpe(new BpeModel());
  auto vocab = model.find("vocab");
  if (vocab == model.end() || !vocab->is_object()) {
    return Invalid("model.vocab", "missing or not an object");
  }
  bpe->vocab_.reserve(vocab->size());
  for (const auto& [token, id] : vocab->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
        id.get<int64_t>() > kMaxTokenId) {
      return Invalid(absl::StrCat("model.vocab[\"", token, "\"]"),
                     absl::StrCat("expected an id in [0, ", kMaxTokenId, "]"));
    }
    bpe->vocab_[token] = static_cast<TokenId>(id.get<int64_t>());
  }

  auto merges = model.find("merges");
  if (merges == model.end() || !merges->is_array()) {
    return Invalid("model.merges", "missing or not an array");
  }
  bpe->merges_.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const std::string path = absl::StrCat("model.merges[", i, "]");
    absl::StatusOr<std::pair<std::string, std::string>> merge =
        ParseMerge((*merges)[i], path);
    if (!merge.ok()) return merge.status();
    auto left = bpe->vocab_.find(merge->first);
    auto right = bpe->vocab_.find(merge->second);
    auto merged = bpe->vocab_.find(merge->first + merge->second);
    if (left == bpe->vocab_.end() || right == bpe->vocab_.end() ||
        merged == bpe->vocab_.end()) {
      return Invalid(path,
                     absl::StrCat("merge \"", merge->first, " ", merge->second,
                                  "\" uses a token not in the vocab"));
    }
    // A repeated pair keeps its last rank, as Hugging Face does.
    bpe->merges_[PairKey(left->second, right->second)] =
        MergeResult{static_cast<int32_t>(i), merged->second};
  }

  absl::StatusOr<std::optional<std::string>> unk =
      OptionalString(model, "unk_token");
  if (!unk.ok()) return unk.status();
  if (unk->has_value()) {
    auto it = bpe->vocab_.find(**unk);
    if (it == bpe->vocab_.end()) {
      return Invalid("model.unk_token",
                     absl::StrCat("\"", **unk, "\" is not in the vocab"));
    }
    bpe->unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    auto it =
        bpe->vocab_.find(ByteLevelEncode(std::string(1, static_cast<char>(b))));
    bpe->byte_ids_[b] = it == bpe->vocab_.end() ? -1 : it->second;
  }
  for (auto [key, field] : {std::pair{"fuse_unk", &bpe->fuse_unk_},
                            std::pair{"byte_fallback", &bpe->byte_fallback_},
                            std::pair{"ignore_merges", &bpe->ignore_merges_}}) {
    absl::StatusOr<bool> value = OptionalBool(model, key);
    if (!value.ok()) return value.status();
    *field = *value;
  }
  return bpe;
}

void BpeModel::AppendCharacterSymbols(std::string_view character,
                                      std::vector<TokenId>* symbols) const {
  if (auto it = vocab_.find(AsAbsl(character)); it != vocab_.end()) {
    symbols->push_back(it->second);
    return;
  }
  if (byte_fallback_) {
    std::vector<TokenId> bytes;
    for (char c : character) {
      auto it =
          vocab_.find(absl::StrFormat("<0x%02X>", static_cast<uint8_t>(c)));
      if (it == vocab_.end()) break;
      bytes.push_back(it->second);
    }
    if (bytes.size() == character.size()) {
      symbols->insert(symbols->end(), bytes.begin(), bytes.end());
      return;
    }
  }
  if (!unk_id_.has_value()) return;  // dropped, as Hugging Face does
  if (fuse_unk_ && !symbols->empty() && symbols->back() == *unk_id_) return;
  symbols->push_back(*unk_id_);
}

void BpeModel::Tokenize(std::string_view word,
                        std::vector<TokenId>* ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(AsAbsl(word)); it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  // Initial symbols, one per character (or per byte with byte_fallback). The
  // buffer is reused across calls on the same thread to avoid allocating per
  // word.
  thread_local std::vector<TokenId> symbol_ids;  // [num_symbols]
  symbol_ids.clear();
  size_t pos = 0;
  while (pos < word.size()) {
    const size_t begin = pos;
    const std::optional<uint8_t> byte =
        ByteLevelCharToByte(DecodeUtf8At(word, &pos));
    if (byte.has_value() && byte_ids_[*byte] >= 0) {
      symbol_ids.push_back(byte_ids_[*byte]);
    } else {
      AppendCharacterSymbols(word.substr(begin, pos - begin), &symbol_ids);
    }
  }
  if (symbol_ids.size() <= kMaxShortWord) {
    MergeShortWord(symbol_ids, ids);
  } else {
    MergeLongWord(symbol_ids, ids);
  }
  if (symbol_ids.capacity() > 4 * kMaxShortWord * 1024) {
    symbol_ids = std::vector<TokenId>();  // don't keep a huge buffer alive
  }
}

void BpeModel::MergeShortWord(std::span<const TokenId> initial,
                              std::vector<TokenId>* ids) const {
  constexpr int32_t kNoMerge = std::numeric_limits<int32_t>::max();
  int num_symbols = static_cast<int>(initial.size());
  std::array<TokenId, kMaxShortWord> symbols;  // [num_symbols]
  // Rank and result of merging symbols[i] with symbols[i + 1].
  std::array<int32_t, kMaxShortWord> ranks;   // [num_symbols - 1]
  std::array<TokenId, kMaxShortWord> merged;  // [num_symbols - 1]
  std::copy(initial.begin(), initial.end(), symbols.begin());
  auto look_up = [&](int i) {
    auto it = merges_.find(PairKey(symbols[i], symbols[i + 1]));
    ranks[i] = it == merges_.end() ? kNoMerge : it->second.rank;
    merged[i] = it == merges_.end() ? -1 : it->second.merged;
  };
  for (int i = 0; i + 1 < num_symbols; ++i) look_up(i);
  while (num_symbols > 1) {
    int best = 0;
    for (int i = 1; i + 1 < num_symbols; ++i) {
      if (ranks[i] < ranks[best]) best = i;  // ties: leftmost
    }
    if (ranks[best] == kNoMerge) break;
    symbols[best] = merged[best];
    // Remove symbol best + 1 and the pair it started.
    for (int i = best + 1; i + 1 < num_symbols; ++i) {
      symbols[i] = symbols[i + 1];
      ranks[i] = ranks[i + 1];
      merged[i] = merged[i + 1];
    }
    --num_symbols;
    if (best > 0) look_up(best - 1);
    if (best + 1 < num_symbols) look_up(best);
  }
  ids->insert(ids->end(), symbols.begin(), symbols.begin() + num_symbols);
}

void BpeModel::MergeLongWord(std::span<const TokenId> initial,
                             std::vector<TokenId>* ids) const {
  std::vector<TokenId> symbol_ids(initial.begin(), initial.end());
  const int num_symbols = static_cast<int>(symbol_ids.size());
  // Doubly linked list over symbol slots; a merged-away slot is dead.
  std::vector<int> prev(num_symbols);          // [num_symbols], -1 at the start
  std::vector<int> next(num_symbols);          // [num_symbols], -1 at the end
  std::vector<bool> alive(num_symbols, true);  // [num_symbols]
  for (int i = 0; i < num_symbols; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < num_symbols ? i + 1 : -1;
  }

  struct Candidate {
    int32_t rank;
    int left;  // slot of the left symbol
    TokenId left_id;
    TokenId right_id;
    TokenId merged;
    bool operator>(const Candidate& other) const {
      return rank != other.rank ? rank > other.rank : left > other.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto push_pair = [&](int left) {
    if (left < 0 || next[left] < 0) return;
    const TokenId a = symbol_ids[left];
    const TokenId b = symbol_ids[next[left]];
    auto it = merges_.find(PairKey(a, b));
    if (it != merges_.end()) {
      heap.push({it->second.rank, left, a, b, it->second.merged});
    }
  };
  for (int i = 0; i + 1 < num_symbols; ++i) push_pair(i);

  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    const int left = top.left;
    const int right = next[left];
    // Skip entries made stale by an earlier merge.
    if (!alive[left] || right < 0 || symbol_ids[left] != top.left_id ||
        symbol_ids[right] != top.right_id) {
      continue;
    }
    symbol_ids[left] = top.merged;
    alive[right] = false;
    next[left] = next[right];
    if (next[left] >= 0) prev[next[left]] = left;
    push_pair(prev[left]);
    push_pair(left);
  }
  for (int i = 0; i >= 0; i = next[i]) ids->push_back(symbol_ids[i]);
}

}  // namespace strata
