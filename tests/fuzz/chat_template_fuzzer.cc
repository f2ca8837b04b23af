// Arbitrary conversations rendered by every chat format (llama3 with the
// tiny-llama tokenizer; chatml and mistral with tiny-qwen2's): Render must
// return a prompt or an INVALID_ARGUMENT naming the message, and an
// accepted prompt must tokenize.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/logging.h"
#include "tests/fuzz/fuzz_util.h"
#include "text/chat_template.h"

namespace {

struct Format {
  const strata::Tokenizer* tokenizer;
  std::optional<strata::ChatTemplate> chat_template;
};

std::vector<Format>& Formats() {
  static std::vector<Format>* formats = [] {
    auto* all = new std::vector<Format>;
    const strata::Tokenizer& llama = strata::fuzz::FixtureTokenizer("tiny-llama");
    const strata::Tokenizer& qwen = strata::fuzz::FixtureTokenizer("tiny-qwen2");
    for (auto [format, tokenizer] :
         {std::pair{strata::ChatFormat::kLlama3, &llama},
          std::pair{strata::ChatFormat::kChatML, &qwen},
          std::pair{strata::ChatFormat::kMistral, &qwen}}) {
      absl::StatusOr<strata::ChatTemplate> t =
          strata::ChatTemplate::Create(format, *tokenizer);
      if (t.ok()) all->push_back({tokenizer, *std::move(t)});
    }
    STRATA_CHECK(!all->empty());
    return all;
  }();
  return *formats;
}

}  // namespace

// The input is messages separated by a 0xff byte; each message's first
// byte picks its role (mod 5, an unknown or empty role included), the rest
// is its content, at most 32 messages.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const char* const kRoles[] = {"system", "user", "assistant", "tool",
                                       ""};
  std::vector<strata::ChatMessage> messages;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  size_t begin = 0;
  while (begin < input.size() && messages.size() < 32) {
    size_t end = input.find('\xff', begin);
    if (end == std::string_view::npos) end = input.size();
    const std::string_view part = input.substr(begin, end - begin);
    begin = end + 1;
    if (part.empty()) continue;
    strata::ChatMessage message;
    message.role = kRoles[static_cast<uint8_t>(part[0]) % 5];
    message.content = std::string(part.substr(1));
    messages.push_back(std::move(message));
  }
  for (Format& format : Formats()) {
    absl::StatusOr<std::string> prompt =
        format.chat_template->Render(messages, messages.size() % 2 == 1);
    if (!prompt.ok()) {
      STRATA_CHECK(prompt.status().code() ==
                   absl::StatusCode::kInvalidArgument)
          << prompt.status();
      continue;
    }
    (void)format.tokenizer->Encode(*prompt, false);
  }
  return 0;
}
