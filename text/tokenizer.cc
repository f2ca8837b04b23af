#include "text/tokenizer.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "text/bpe_model.h"
#include "text/bpe_pre_tokenizer.h"
#include "text/bpe_regex.h"
#include "text/byte_level.h"
#include "text/utf8.h"

namespace strata {
namespace {

using Json = nlohmann::json;

// absl::string_view is not std::string_view in this abseil build.
absl::string_view AsAbsl(std::string_view s) { return {s.data(), s.size()}; }

// Prefixes a status message with the file it is about, keeping the code.
absl::Status InFile(const std::string& path, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat(path, ": ", status.message()));
}

absl::Status FieldError(const std::string& path, std::string_view field,
                        std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": ", AsAbsl(field), ": ", AsAbsl(what)));
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) {
      return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    }
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open"));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return std::move(contents).str();
}

// Parses JSON without letting an exception escape; the error names the file
// and the byte offset.
absl::StatusOr<Json> ParseJsonFile(const std::string& path) {
  absl::StatusOr<std::string> contents = ReadFile(path);
  if (!contents.ok()) return contents.status();
  try {
    return Json::parse(*contents);
  } catch (const Json::parse_error& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": malformed JSON at byte ", e.byte, ": ", e.what()));
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": malformed JSON: ", e.what()));
  }
}

bool FileExists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_regular_file(path, ec);
}

absl::StatusOr<bool> OptionalBool(const Json& object, const char* key,
                                  bool default_value, const std::string& path,
                                  std::string_view field) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return default_value;
  if (!it->is_boolean()) {
    return FieldError(path, absl::StrCat(AsAbsl(field), ".", key),
                      "expected true or false");
  }
  return it->get<bool>();
}

// A tokenizer_config.json token field: "text", {"content": "text", ...} or
// null / absent.
absl::StatusOr<std::optional<std::string>> ConfigToken(
    const Json& config, const char* key, const std::string& path) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string()) {
      return content->get<std::string>();
    }
  }
  return FieldError(path, key,
                    "expected a string, {\"content\": string} or null");
}

// config.json's bos_token_id / eos_token_id: an id, a list of ids, or null.
absl::StatusOr<std::vector<TokenId>> ConfigIds(const Json& config,
                                               const char* key,
                                               const std::string& path,
                                               int32_t vocab_size) {
  std::vector<TokenId> ids;
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return ids;
  std::vector<Json> values;
  if (it->is_array()) {
    values.assign(it->begin(), it->end());
  } else {
    values.push_back(*it);
  }
  for (const Json& value : values) {
    if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
        value.get<int64_t>() >= vocab_size) {
      return FieldError(
          path, key,
          absl::StrCat("expected token ids in [0, ", vocab_size,
                       ") (an int or a list of ints), got ", value.dump()));
    }
    ids.push_back(static_cast<TokenId>(value.get<int64_t>()));
  }
  return ids;
}

// Word characters for added tokens with single_word (Unicode letters,
// numbers and '_', as PCRE2's \w under UCP).
bool IsWordCharacter(std::string_view character) {
  if (character.size() == 1) {
    const char c = character[0];
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_';
  }
  static const BpeRegex* const word = BpeRegex::Compile("\\w")->release();
  std::vector<BpeRegex::Match> matches;
  return word->FindAll(character, &matches).ok() && !matches.empty();
}

// The last / first character of well-formed UTF-8 text ("" when empty).
std::string_view LastCharacter(std::string_view text) {
  size_t begin = text.size();
  while (begin > 0) {
    --begin;
    if ((static_cast<uint8_t>(text[begin]) & 0xC0) != 0x80) break;
  }
  return text.substr(begin);
}
std::string_view FirstCharacter(std::string_view text) {
  if (text.empty()) return text;
  return text.substr(0, Utf8SequenceLength(static_cast<uint8_t>(text[0])));
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromDirectory(
    const std::string& model_dir) {
  // The loaders check every field they read; this is a backstop so that an
  // unforeseen JSON shape can never throw out of the API.
  try {
    return Load(model_dir);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        model_dir,
        ": unexpected JSON layout in the tokenizer files: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(
    const std::string& model_dir) {
  std::unique_ptr<Tokenizer> tokenizer(new Tokenizer());
  const std::filesystem::path dir(model_dir);
  absl::Status status =
      tokenizer->LoadTokenizerJson((dir / "tokenizer.json").string());
  if (!status.ok()) return status;

  const std::string tokenizer_config = (dir / "tokenizer_config.json").string();
  const bool have_tokenizer_config = FileExists(tokenizer_config);
  if (have_tokenizer_config) {
    status = tokenizer->LoadTokenizerConfig(tokenizer_config);
    if (!status.ok()) return status;
  }
  const bool bos_from_tokenizer_config = tokenizer->bos_token_id_.has_value();
  const std::string model_config = (dir / "config.json").string();
  if (FileExists(model_config)) {
    status = tokenizer->LoadModelConfig(model_config);
    if (!status.ok()) return status;
  }
  if (!tokenizer->bos_token_id_.has_value()) {
    tokenizer->add_bos_token_ = false;
  } else if (tokenizer->declared_add_bos_token_.has_value()) {
    tokenizer->add_bos_token_ = *tokenizer->declared_add_bos_token_;
  } else {
    tokenizer->add_bos_token_ =
        bos_from_tokenizer_config || !have_tokenizer_config;
  }
  return tokenizer;
}

absl::Status Tokenizer::LoadTokenizerJson(const std::string& path) {
  absl::StatusOr<Json> parsed = ParseJsonFile(path);
  if (!parsed.ok()) return parsed.status();
  const Json& root = *parsed;
  if (!root.is_object())
    return FieldError(path, "(root)", "expected an object");

  // Normalizers rewrite the text before splitting; none is implemented, so a
  // tokenizer that needs one is refused rather than encoded differently.
  if (auto normalizer = root.find("normalizer");
      normalizer != root.end() && !normalizer->is_null()) {
    const bool empty_sequence = normalizer->is_object() &&
                                normalizer->value("type", "") == "Sequence" &&
                                normalizer->contains("normalizers") &&
                                (*normalizer)["normalizers"].is_array() &&
                                (*normalizer)["normalizers"].empty();
    if (!empty_sequence) {
      const std::string type = normalizer->is_object() &&
                                       normalizer->contains("type") &&
                                       (*normalizer)["type"].is_string()
                                   ? (*normalizer)["type"].get<std::string>()
                                   : normalizer->dump();
      return absl::UnimplementedError(absl::StrCat(
          path, ": normalizer type \"", type,
          "\" is not supported (only byte-level BPE tokenizers without a "
          "normalizer)"));
    }
  }

  auto pre_tokenizer = root.find("pre_tokenizer");
  absl::StatusOr<std::unique_ptr<BpePreTokenizer>> parsed_pre_tokenizer =
      BpePreTokenizer::FromJson(pre_tokenizer == root.end() ? Json()
                                                            : *pre_tokenizer);
  if (!parsed_pre_tokenizer.ok()) {
    return InFile(path, parsed_pre_tokenizer.status());
  }
  pre_tokenizer_ = *std::move(parsed_pre_tokenizer);

  auto model = root.find("model");
  if (model == root.end()) return FieldError(path, "model", "missing");
  absl::StatusOr<std::unique_ptr<BpeModel>> parsed_model =
      BpeModel::FromJson(*model);
  if (!parsed_model.ok()) return InFile(path, parsed_model.status());
  model_ = *std::move(parsed_model);

  // The decoder must undo the byte-level mapping (what TokenBytes does).
  auto decoder = root.find("decoder");
  if (decoder == root.end() || !decoder->is_object()) {
    return absl::UnimplementedError(absl::StrCat(
        path, ": decoder: missing; only the ByteLevel decoder is supported"));
  }
  std::vector<Json> decoders = {*decoder};
  if (decoder->value("type", "") == "Sequence" &&
      decoder->contains("decoders") && (*decoder)["decoders"].is_array()) {
    decoders.assign((*decoder)["decoders"].begin(),
                    (*decoder)["decoders"].end());
  }
  for (const Json& d : decoders) {
    const std::string type =
        d.is_object() && d.contains("type") && d["type"].is_string()
            ? d["type"].get<std::string>()
            : d.dump();
    if (type != "ByteLevel") {
      return absl::UnimplementedError(
          absl::StrCat(path, ": decoder type \"", type,
                       "\" is not supported (only ByteLevel)"));
    }
  }

  // Added tokens.
  if (auto added = root.find("added_tokens");
      added != root.end() && !added->is_null()) {
    if (!added->is_array()) {
      return FieldError(path, "added_tokens", "expected an array");
    }
    for (size_t i = 0; i < added->size(); ++i) {
      const Json& entry = (*added)[i];
      const std::string field = absl::StrCat("added_tokens[", i, "]");
      if (!entry.is_object())
        return FieldError(path, field, "expected an object");
      auto id = entry.find("id");
      auto content = entry.find("content");
      if (id == entry.end() || !id->is_number_integer() ||
          id->get<int64_t>() < 0 || id->get<int64_t>() > kMaxTokenId) {
        return FieldError(
            path, field + ".id",
            absl::StrCat("expected an id in [0, ", kMaxTokenId, "]"));
      }
      if (content == entry.end() || !content->is_string() ||
          content->get_ref<const std::string&>().empty()) {
        return FieldError(path, field + ".content",
                          "expected a non-empty string");
      }
      if (!IsValidUtf8(content->get_ref<const std::string&>())) {
        return FieldError(path, field + ".content", "not valid UTF-8");
      }
      AddedToken token;
      token.id = static_cast<TokenId>(id->get<int64_t>());
      token.content = content->get<std::string>();
      for (auto [key, out] : {std::pair{"special", &token.special},
                              std::pair{"lstrip", &token.lstrip},
                              std::pair{"rstrip", &token.rstrip},
                              std::pair{"single_word", &token.single_word}}) {
        absl::StatusOr<bool> value =
            OptionalBool(entry, key, false, path, field);
        if (!value.ok()) return value.status();
        *out = *value;
      }
      added_token_ids_[token.content] = token.id;
      added_tokens_.push_back(std::move(token));
    }
  }
  for (size_t i = 0; i < added_tokens_.size(); ++i) {
    const uint8_t first = static_cast<uint8_t>(added_tokens_[i].content[0]);
    added_by_first_byte_[first].push_back(static_cast<int>(i));
  }
  for (std::vector<int>& bucket : added_by_first_byte_) {
    std::stable_sort(bucket.begin(), bucket.end(), [this](int a, int b) {
      return added_tokens_[a].content.size() > added_tokens_[b].content.size();
    });
  }

  // Per-id tables.
  TokenId max_id = -1;
  for (const auto& [text, id] : model_->vocab()) max_id = std::max(max_id, id);
  for (const AddedToken& token : added_tokens_) {
    max_id = std::max(max_id, token.id);
  }
  if (max_id < 0) return FieldError(path, "model.vocab", "empty");
  token_bytes_.assign(static_cast<size_t>(max_id) + 1, std::string());
  is_special_.assign(static_cast<size_t>(max_id) + 1, false);
  for (const auto& [text, id] : model_->vocab()) {
    if (!IsValidUtf8(text)) {
      return FieldError(path, "model.vocab", "a token is not valid UTF-8");
    }
    // Like the Hugging Face ByteLevel decoder: a token with a character
    // outside the byte-level alphabet stands for its own UTF-8 bytes.
    std::optional<std::string> bytes = ByteLevelDecode(text);
    token_bytes_[id] = bytes.has_value() ? *std::move(bytes) : text;
  }
  for (const AddedToken& token : added_tokens_) {
    token_bytes_[token.id] = token.content;
    is_special_[token.id] = token.special;
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::LoadTokenizerConfig(const std::string& path) {
  absl::StatusOr<Json> parsed = ParseJsonFile(path);
  if (!parsed.ok()) return parsed.status();
  const Json& config = *parsed;
  if (!config.is_object()) {
    return FieldError(path, "(root)", "expected an object");
  }
  auto resolve =
      [&](const char* key) -> absl::StatusOr<std::optional<TokenId>> {
    absl::StatusOr<std::optional<std::string>> text =
        ConfigToken(config, key, path);
    if (!text.ok()) return text.status();
    if (!text->has_value()) return std::nullopt;
    std::optional<TokenId> id = TokenToId(**text);
    if (!id.has_value()) {
      return FieldError(
          path, key,
          absl::StrCat("\"", **text, "\" is not a token of tokenizer.json"));
    }
    return id;
  };
  absl::StatusOr<std::optional<TokenId>> bos = resolve("bos_token");
  if (!bos.ok()) return bos.status();
  bos_token_id_ = *bos;
  absl::StatusOr<std::optional<TokenId>> eos = resolve("eos_token");
  if (!eos.ok()) return eos.status();
  if (eos->has_value()) eos_token_ids_.push_back(**eos);

  if (auto add_bos = config.find("add_bos_token");
      add_bos != config.end() && !add_bos->is_null()) {
    if (!add_bos->is_boolean()) {
      return FieldError(path, "add_bos_token", "expected true or false");
    }
    declared_add_bos_token_ = add_bos->get<bool>();
  }

  if (auto tmpl = config.find("chat_template");
      tmpl != config.end() && !tmpl->is_null()) {
    if (tmpl->is_string()) {
      chat_template_source_ = tmpl->get<std::string>();
    } else if (tmpl->is_array()) {
      // [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
      for (const Json& entry : *tmpl) {
        if (!entry.is_object() || !entry.contains("template") ||
            !entry["template"].is_string()) {
          return FieldError(path, "chat_template",
                            "expected a string or a list of {\"name\", "
                            "\"template\"} objects");
        }
        if (chat_template_source_.empty() ||
            entry.value("name", "") == "default") {
          chat_template_source_ = entry["template"].get<std::string>();
        }
      }
    } else {
      return FieldError(path, "chat_template",
                        "expected a string or a list of templates");
    }
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::LoadModelConfig(const std::string& path) {
  absl::StatusOr<Json> parsed = ParseJsonFile(path);
  if (!parsed.ok()) return parsed.status();
  const Json& config = *parsed;
  if (!config.is_object()) {
    return FieldError(path, "(root)", "expected an object");
  }
  absl::StatusOr<std::vector<TokenId>> bos =
      ConfigIds(config, "bos_token_id", path, vocab_size());
  if (!bos.ok()) return bos.status();
  if (bos->size() > 1) {
    return FieldError(path, "bos_token_id", "expected a single id");
  }
  if (!bos_token_id_.has_value() && !bos->empty()) bos_token_id_ = bos->front();
  absl::StatusOr<std::vector<TokenId>> eos =
      ConfigIds(config, "eos_token_id", path, vocab_size());
  if (!eos.ok()) return eos.status();
  for (TokenId id : *eos) {
    if (std::find(eos_token_ids_.begin(), eos_token_ids_.end(), id) ==
        eos_token_ids_.end()) {
      eos_token_ids_.push_back(id);
    }
  }
  return absl::OkStatus();
}

std::vector<Tokenizer::Segment> Tokenizer::SplitOnAddedTokens(
    std::string_view text) const {
  std::vector<Segment> segments;
  size_t plain_begin = 0;  // start of the text not yet assigned a segment
  size_t pos = 0;
  while (pos < text.size()) {
    const AddedToken* found = nullptr;
    for (int index : added_by_first_byte_[static_cast<uint8_t>(text[pos])]) {
      const AddedToken& candidate = added_tokens_[index];
      if (text.substr(pos).starts_with(candidate.content)) {
        found = &candidate;
        break;  // longest first
      }
    }
    if (found == nullptr) {
      ++pos;
      continue;
    }
    size_t begin = pos;
    size_t end = pos + found->content.size();
    if (found->single_word &&
        (IsWordCharacter(LastCharacter(text.substr(0, begin))) ||
         IsWordCharacter(FirstCharacter(text.substr(end))))) {
      pos = end;  // not a match; its text stays plain
      continue;
    }
    if (found->lstrip) {
      while (begin > plain_begin) {
        const std::string_view c =
            LastCharacter(text.substr(plain_begin, begin - plain_begin));
        size_t p = 0;
        if (!IsUnicodeWhiteSpace(DecodeUtf8At(c, &p))) break;
        begin -= c.size();
      }
    }
    if (found->rstrip) {
      while (end < text.size()) {
        size_t p = end;
        if (!IsUnicodeWhiteSpace(DecodeUtf8At(text, &p))) break;
        end = p;
      }
    }
    if (begin > plain_begin) segments.push_back({plain_begin, begin, {}});
    segments.push_back({begin, end, found->id});
    plain_begin = pos = end;
  }
  if (plain_begin < text.size()) {
    segments.push_back({plain_begin, text.size(), {}});
  }
  return segments;
}

absl::StatusOr<std::vector<TokenId>> Tokenizer::Encode(
    std::string_view text, bool add_special_tokens, size_t max_tokens,
    size_t* bytes_pre_tokenized) const {
  if (std::optional<size_t> bad = FindInvalidUtf8(text); bad.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("text is not valid UTF-8 (at byte ", *bad, ")"));
  }
  size_t split_bytes = 0;
  std::vector<TokenId> ids;
  ids.reserve(std::min(text.size() / 3 + 2, max_tokens + 1));
  if (add_special_tokens && add_bos_token_ && bos_token_id_.has_value()) {
    ids.push_back(*bos_token_id_);
  }
  for (const Segment& segment : SplitOnAddedTokens(text)) {
    if (ids.size() > max_tokens) break;
    if (segment.added.has_value()) {
      ids.push_back(*segment.added);
      continue;
    }
    absl::Status status =
        EncodePlain(text.substr(segment.begin, segment.end - segment.begin),
                    max_tokens, &ids, &split_bytes);
    if (!status.ok()) return status;
  }
  if (bytes_pre_tokenized != nullptr) *bytes_pre_tokenized = split_bytes;
  return ids;
}

absl::Status Tokenizer::EncodePlain(std::string_view plain, size_t max_tokens,
                                    std::vector<TokenId>* ids,
                                    size_t* bytes_pre_tokenized) const {
  // Words the last window's split may have cut differently from the whole
  // text's. The byte-level patterns (GPT-2, Llama 3, Qwen2) decide a word
  // from its own run of one character class plus one character of
  // lookahead, and the split behaviors merge only neighbours, so only the
  // words at the cut can differ; 8 is a wide margin.
  constexpr size_t kUnsureWords = 8;
  std::vector<std::string> words;
  const bool limited = max_tokens != std::numeric_limits<size_t>::max();
  for (size_t window = kFirstWindowBytes;; window *= 2) {
    const bool whole = !limited || window >= plain.size();
    std::string_view prefix = plain;
    if (!whole) {
      // Cut at a character boundary (the text is valid UTF-8).
      prefix = plain.substr(0, Utf8BoundaryAtOrBefore(plain, window));
    }
    words.clear();
    *bytes_pre_tokenized += prefix.size();
    absl::Status status = pre_tokenizer_->Split(prefix, &words);
    if (!status.ok()) return status;
    const size_t sure =
        whole ? words.size()
              : words.size() - std::min(words.size(), kUnsureWords);
    const size_t start = ids->size();
    for (size_t i = 0; i < sure && ids->size() <= max_tokens; ++i) {
      model_->Tokenize(words[i], ids);
    }
    if (whole || ids->size() > max_tokens) return absl::OkStatus();
    // Not enough yet: a longer prefix, from scratch (the sure words'
    // tokens are made again, so drop them).
    ids->resize(start);
  }
}

std::string Tokenizer::Decode(std::span<const TokenId> ids,
                              bool skip_special_tokens) const {
  std::string bytes;
  for (TokenId id : ids) {
    if (!InRange(id) || (skip_special_tokens && is_special_[id])) continue;
    bytes += token_bytes_[id];
  }
  return Utf8Lossy(bytes);
}

std::string_view Tokenizer::TokenBytes(TokenId id) const {
  if (!InRange(id)) return {};
  return token_bytes_[id];
}

bool Tokenizer::IsSpecial(TokenId id) const {
  return InRange(id) && is_special_[id];
}

std::optional<TokenId> Tokenizer::TokenToId(std::string_view token_text) const {
  if (auto it = added_token_ids_.find(AsAbsl(token_text));
      it != added_token_ids_.end()) {
    return it->second;
  }
  if (auto it = model_->vocab().find(AsAbsl(token_text));
      it != model_->vocab().end()) {
    return it->second;
  }
  return std::nullopt;
}

}  // namespace strata
