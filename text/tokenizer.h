// Byte-level BPE tokenizer loaded from a Hugging Face model directory
// (tokenizer.json, tokenizer_config.json, config.json), as used by GPT-2,
// Llama 3 and Qwen2.
//
// Encode: the text is first cut at every added token written in it (matched
// literally, leftmost then longest, honouring lstrip / rstrip / single_word),
// then each remaining stretch is pre-tokenized (bpe_pre_tokenizer.h) and each
// word is BPE-merged (bpe_model.h). Decode concatenates the bytes the tokens
// stand for and repairs invalid UTF-8 with U+FFFD.
//
// Supported: model.type "BPE"; normalizer null; pre_tokenizer Split /
// ByteLevel / Sequence containing one ByteLevel; decoder ByteLevel. Anything
// else is refused at load with a status naming the file and the unsupported
// type, so a model is never served with a silently wrong tokenizer.
//
// Threading: immutable after FromDirectory; every method is const and safe to
// call from many threads at once.
#ifndef STRATA_TEXT_TOKENIZER_H_
#define STRATA_TEXT_TOKENIZER_H_

#include <array>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/token_id.h"

namespace strata {

class BpeModel;
class BpePreTokenizer;

class Tokenizer {
 public:
  // Loads <model_dir>/tokenizer.json and, if present,
  // <model_dir>/tokenizer_config.json (bos_token, eos_token, add_bos_token,
  // chat_template; bos/eos tokens may be a string or an {"content": ...}
  // object) and <model_dir>/config.json's bos_token_id/eos_token_id (int or
  // list). eos ids = tokenizer_config's eos_token first, then config.json's
  // eos_token_id(s), without repeats. bos id = tokenizer_config's bos_token,
  // else config.json's bos_token_id.
  // Errors: NOT_FOUND when tokenizer.json is missing; INVALID_ARGUMENT for
  // malformed JSON (with the byte offset) or missing / ill-typed fields;
  // UNIMPLEMENTED for tokenizer types other than byte-level BPE. Every message
  // names the file.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromDirectory(
      const std::string& model_dir);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Encodes text. add_special_tokens: prepend BOS when add_bos_token() is
  // true. Added/special tokens written in the text are always recognised
  // (Hugging Face's default). INVALID_ARGUMENT on invalid UTF-8.
  // max_tokens: stop once more than this many ids are made (the result then
  // holds more than max_tokens ids, and is a prefix of the full encoding),
  // so a caller that refuses long prompts does not pay for encoding them:
  // a long stretch of plain text is pre-tokenized in growing prefixes
  // (kFirstWindowBytes, then doubling) and only as far as the limit needs.
  // bytes_pre_tokenized (optional): set to the bytes handed to the
  // pre-tokenizer, for tests of that bound.
  absl::StatusOr<std::vector<TokenId>> Encode(
      std::string_view text, bool add_special_tokens,
      size_t max_tokens = std::numeric_limits<size_t>::max(),
      size_t* bytes_pre_tokenized = nullptr) const;

  // The first prefix of a plain stretch pre-tokenized under a max_tokens
  // limit; shorter stretches are split whole.
  static constexpr size_t kFirstWindowBytes = 64 << 10;

  // Concatenated token bytes; invalid UTF-8 sequences replaced by U+FFFD
  // (one per maximal ill-formed subpart). Ids out of range are skipped
  // (callers validate ids first). skip_special_tokens drops tokens for which
  // IsSpecial() is true.
  std::string Decode(std::span<const TokenId> ids,
                     bool skip_special_tokens) const;

  // The raw bytes a token stands for (byte-level decoded; an added token's
  // content as written), "" if out of range. May be part of a UTF-8
  // character.
  std::string_view TokenBytes(TokenId id) const;

  // An added token marked "special" (e.g. <|eot_id|>).
  bool IsSpecial(TokenId id) const;

  // Id of a vocabulary entry (in its byte-level spelling, e.g. "Ġthe") or of
  // an added token (by its content).
  std::optional<TokenId> TokenToId(std::string_view token_text) const;

  // Max id + 1 over vocab and added tokens (ids in between may be unused).
  int32_t vocab_size() const {
    return static_cast<int32_t>(token_bytes_.size());
  }
  std::optional<TokenId> bos_token_id() const { return bos_token_id_; }
  const std::vector<TokenId>& eos_token_ids() const { return eos_token_ids_; }
  // Whether Encode(.., add_special_tokens=true) prepends BOS: the model has a
  // BOS and tokenizer_config.json's add_bos_token is true, or absent while
  // tokenizer_config.json names a bos_token (or, with no
  // tokenizer_config.json, config.json has a bos_token_id). config.json's
  // bos_token_id alone does not count when tokenizer_config.json exists:
  // Qwen2 lists one there yet never prepends it.
  bool add_bos_token() const { return add_bos_token_; }
  // tokenizer_config.json's chat_template (the "default" one when it is a
  // list of named templates); "" if none.
  const std::string& chat_template_source() const {
    return chat_template_source_;
  }

 private:
  struct AddedToken {
    TokenId id;
    std::string content;
    bool special;
    bool lstrip;       // also swallows the whitespace before it
    bool rstrip;       // also swallows the whitespace after it
    bool single_word;  // only matches when not inside a word
  };
  // A stretch of the input: plain text, or one added token.
  struct Segment {
    size_t begin;
    size_t end;
    std::optional<TokenId> added;
  };

  Tokenizer();
  // FromDirectory without the exception backstop.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(
      const std::string& model_dir);
  absl::Status LoadTokenizerJson(const std::string& path);
  absl::Status LoadTokenizerConfig(const std::string& path);
  absl::Status LoadModelConfig(const std::string& path);
  // Cuts `text` at the added tokens written in it.
  std::vector<Segment> SplitOnAddedTokens(std::string_view text) const;
  // Appends the ids of one stretch of plain text to `ids`, stopping once
  // `ids` holds more than max_tokens; adds the bytes pre-tokenized to
  // `*bytes_pre_tokenized`.
  absl::Status EncodePlain(std::string_view plain, size_t max_tokens,
                           std::vector<TokenId>* ids,
                           size_t* bytes_pre_tokenized) const;
  bool InRange(TokenId id) const { return id >= 0 && id < vocab_size(); }

  std::unique_ptr<BpePreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::vector<AddedToken> added_tokens_;
  absl::flat_hash_map<std::string, TokenId> added_token_ids_;  // by content
  // Indices into added_tokens_ by the first byte of the content, longest
  // content first, for leftmost-longest matching.
  std::array<std::vector<int>, 256> added_by_first_byte_;
  std::vector<std::string> token_bytes_;  // [vocab_size]
  std::vector<bool> is_special_;          // [vocab_size]

  std::optional<TokenId> bos_token_id_;
  std::vector<TokenId> eos_token_ids_;
  bool add_bos_token_ = false;
  std::string chat_template_source_;
  // tokenizer_config.json's add_bos_token, if it has one.
  std::optional<bool> declared_add_bos_token_;
};

}  // namespace strata

#endif  // STRATA_TEXT_TOKENIZER_H_
