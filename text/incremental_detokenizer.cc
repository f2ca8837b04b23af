#include "text/incremental_detokenizer.h"

#include <string>

#include "text/utf8.h"

namespace strata {

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer,
                                               bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

std::string IncrementalDetokenizer::Add(TokenId id) {
  if (skip_special_tokens_ && tokenizer_.IsSpecial(id)) return "";
  pending_.append(tokenizer_.TokenBytes(id));
  std::string text;
  const size_t consumed = AppendUtf8Lossy(pending_, /*final=*/false, &text);
  pending_.erase(0, consumed);
  return text;
}

std::string IncrementalDetokenizer::Flush() {
  std::string text;
  AppendUtf8Lossy(pending_, /*final=*/true, &text);
  pending_.clear();
  return text;
}

}  // namespace strata
