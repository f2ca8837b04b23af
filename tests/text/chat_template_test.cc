// ChatTemplate tests: exact renderings of each built-in format (compared
// with what the families' official Jinja templates produce), role errors and
// format detection from the fixture tokenizer_config.json files.
#include "text/chat_template.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "text/tokenizer.h"

namespace strata {
namespace {

using Json = nlohmann::json;
using ::testing::HasSubstr;

const std::string kDataDir = std::string(STRATA_SOURCE_DIR) + "/tests/data";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

std::unique_ptr<Tokenizer> LoadOrDie(const std::string& dir) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::FromDirectory(dir);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

// A copy of a fixture tokenizer with tokenizer_config.json edited by `edit`.
std::unique_ptr<Tokenizer> LoadVariant(const std::string& name,
                                       const std::string& fixture,
                                       void (*edit)(Json* tokenizer_json,
                                                    Json* tokenizer_config)) {
  // One folder per process: ctest runs the tests of a suite in parallel
  // processes, and a shared folder would be removed under another's feet.
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) /
      ("strata_chat_" + name + "_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  Json tokenizer_json =
      Json::parse(ReadFile(kDataDir + "/" + fixture + "/tokenizer.json"));
  Json tokenizer_config = Json::parse(
      ReadFile(kDataDir + "/" + fixture + "/tokenizer_config.json"));
  edit(&tokenizer_json, &tokenizer_config);
  std::ofstream(dir / "tokenizer.json") << tokenizer_json.dump();
  std::ofstream(dir / "tokenizer_config.json") << tokenizer_config.dump();
  return LoadOrDie(dir.string());
}

std::string RenderOrDie(const ChatTemplate& chat,
                        const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt = true) {
  absl::StatusOr<std::string> text =
      chat.Render(messages, add_generation_prompt);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : "";
}

TEST(ChatFormatTest, NamesRoundTrip) {
  for (ChatFormat format :
       {ChatFormat::kLlama3, ChatFormat::kChatML, ChatFormat::kMistral}) {
    absl::StatusOr<ChatFormat> parsed = ParseChatFormat(ChatFormatName(format));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, format);
  }
  absl::StatusOr<ChatFormat> bad = ParseChatFormat("jinja");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("jinja"));
}

TEST(ChatFormatTest, DetectsFormatFromFixtureConfigs) {
  std::unique_ptr<Tokenizer> llama = LoadOrDie(kDataDir + "/tiny-llama");
  std::unique_ptr<Tokenizer> qwen = LoadOrDie(kDataDir + "/tiny-qwen2");
  ASSERT_NE(llama, nullptr);
  ASSERT_NE(qwen, nullptr);
  EXPECT_EQ(DetectChatFormat(llama->chat_template_source()).value(),
            ChatFormat::kLlama3);
  EXPECT_EQ(DetectChatFormat(qwen->chat_template_source()).value(),
            ChatFormat::kChatML);
  EXPECT_EQ(DetectChatFormat("{{ bos_token }}{% for m in messages %}[INST] "
                             "{{ m['content'] }} [/INST]{% endfor %}")
                .value(),
            ChatFormat::kMistral);
  EXPECT_EQ(DetectChatFormat("").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(
      DetectChatFormat("{% for m in messages %}{{ m.content }}{% endfor %}")
          .status()
          .code(),
      absl::StatusCode::kNotFound);
}

class Llama3ChatTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tokenizer_ = LoadOrDie(kDataDir + "/tiny-llama");
    ASSERT_NE(tokenizer_, nullptr);
    absl::StatusOr<ChatTemplate> chat =
        ChatTemplate::Create(ChatFormat::kLlama3, *tokenizer_);
    ASSERT_TRUE(chat.ok()) << chat.status();
    chat_ = std::make_unique<ChatTemplate>(*std::move(chat));
  }
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ChatTemplate> chat_;
};

TEST_F(Llama3ChatTest, RendersExactly) {
  EXPECT_EQ(chat_->format(), ChatFormat::kLlama3);
  const std::vector<ChatMessage> messages = {
      {"system", "You are terse."},
      {"user", "  Hi!\n"},  // Llama 3's template trims content
      {"assistant", "Hello."},
      {"user", "Bye"}};
  EXPECT_EQ(
      RenderOrDie(*chat_, messages),
      "<|begin_of_text|>"
      "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(
      RenderOrDie(*chat_, {{"user", "Hi"}}, /*add_generation_prompt=*/false),
      "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
      "Hi<|eot_id|>");
}

TEST_F(Llama3ChatTest, TrimIsPythonStrip) {
  // Unicode spaces (U+3000, U+00A0) and \x1c are stripped like str.strip().
  EXPECT_EQ(
      RenderOrDie(*chat_, {{"user", "\xE3\x80\x80\xC2\xA0\x1c x y \t"}}, false),
      "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
      "x y<|eot_id|>");
  EXPECT_EQ(RenderOrDie(*chat_, {{"user", " \n "}}, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
            "<|eot_id|>");
}

TEST_F(Llama3ChatTest, RenderedPromptEncodesWithSpecialTokens) {
  const std::string prompt = RenderOrDie(*chat_, {{"user", "Hi"}});
  absl::StatusOr<std::vector<TokenId>> ids = tokenizer_->Encode(prompt, false);
  ASSERT_TRUE(ids.ok());
  ASSERT_GE(ids->size(), 6u);
  EXPECT_EQ(ids->front(), tokenizer_->bos_token_id());
  EXPECT_EQ((*ids)[1], tokenizer_->TokenToId("<|start_header_id|>"));
  EXPECT_EQ(ids->back(), tokenizer_->TokenToId("\xC4\x8A\xC4\x8A"))  // "ĊĊ"
      << "the prompt ends with the two newlines after the assistant header";
  EXPECT_EQ(tokenizer_->Decode(*ids, false), prompt);
}

TEST_F(Llama3ChatTest, RoleErrors) {
  absl::StatusOr<std::string> text =
      chat_->Render(std::vector<ChatMessage>{{"user", "a"}, {"tool", "b"}});
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(text.status().message(), "messages[1].role: unknown role \"tool\"");

  text = chat_->Render(std::vector<ChatMessage>{});
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(text.status().message(), "messages: empty");

  text = chat_->Render(std::vector<ChatMessage>{{"User", "a"}});
  EXPECT_EQ(text.status().message(), "messages[0].role: unknown role \"User\"");

  text = chat_->Render(
      std::vector<ChatMessage>{{"user", "ok"}, {"user", "\xF0\x9F"}});
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(text.status().message(), "messages[1].content: not valid UTF-8");
}

TEST(ChatMLChatTest, QwenTemplateAddsItsDefaultSystemMessage) {
  std::unique_ptr<Tokenizer> tokenizer = LoadOrDie(kDataDir + "/tiny-qwen2");
  ASSERT_NE(tokenizer, nullptr);
  absl::StatusOr<ChatTemplate> chat =
      ChatTemplate::Create(ChatFormat::kChatML, *tokenizer);
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ(chat->default_system_prompt(), "You are a helpful assistant.");
  EXPECT_EQ(RenderOrDie(*chat, {{"user", " Hi "}}),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\n Hi <|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(RenderOrDie(*chat,
                        {{"system", "Be brief."},
                         {"user", "Hi"},
                         {"assistant", "Hello"},
                         {"user", "Bye"}},
                        /*add_generation_prompt=*/false),
            "<|im_start|>system\nBe brief.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello<|im_end|>\n"
            "<|im_start|>user\nBye<|im_end|>\n");
}

TEST(ChatMLChatTest, PlainChatMLHasNoDefaultSystemMessage) {
  std::unique_ptr<Tokenizer> tokenizer =
      LoadVariant("plain_chatml", "tiny-qwen2", [](Json*, Json* config) {
        (*config)["chat_template"] =
            "{% for message in messages %}{{'<|im_start|>' + message['role'] + "
            "'\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% "
            "if "
            "add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif "
            "%}";
      });
  ASSERT_NE(tokenizer, nullptr);
  absl::StatusOr<ChatTemplate> chat =
      ChatTemplate::Create(ChatFormat::kChatML, *tokenizer);
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ(chat->default_system_prompt(), "");
  EXPECT_EQ(RenderOrDie(*chat, {{"user", "Hi"}}),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatMLChatTest, FormatNeedsItsSpecialTokens) {
  std::unique_ptr<Tokenizer> llama = LoadOrDie(kDataDir + "/tiny-llama");
  std::unique_ptr<Tokenizer> qwen = LoadOrDie(kDataDir + "/tiny-qwen2");
  ASSERT_NE(llama, nullptr);
  ASSERT_NE(qwen, nullptr);
  absl::StatusOr<ChatTemplate> chat =
      ChatTemplate::Create(ChatFormat::kChatML, *llama);
  ASSERT_FALSE(chat.ok());
  EXPECT_EQ(chat.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(chat.status().message(), HasSubstr("<|im_start|>"));
  chat = ChatTemplate::Create(ChatFormat::kLlama3, *qwen);
  ASSERT_FALSE(chat.ok());
  EXPECT_THAT(chat.status().message(), HasSubstr("<|start_header_id|>"));
}

class MistralChatTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // tiny-llama's vocabulary plus Mistral's <s> and </s>.
    tokenizer_ = LoadVariant(
        "mistral", "tiny-llama", [](Json* tokenizer_json, Json* config) {
          (*tokenizer_json)["added_tokens"].push_back(
              {{"id", 1808}, {"content", "<s>"}, {"special", true}});
          (*tokenizer_json)["added_tokens"].push_back(
              {{"id", 1809}, {"content", "</s>"}, {"special", true}});
          (*config)["bos_token"] = "<s>";
          (*config)["eos_token"] = "</s>";
          (*config)["chat_template"] =
              "{{ bos_token }}{% for message in messages %}{{ '[INST] ' + "
              "message['content'] + ' [/INST]' }}{% endfor %}";
        });
    ASSERT_NE(tokenizer_, nullptr);
    ASSERT_EQ(DetectChatFormat(tokenizer_->chat_template_source()).value(),
              ChatFormat::kMistral);
    absl::StatusOr<ChatTemplate> chat =
        ChatTemplate::Create(ChatFormat::kMistral, *tokenizer_);
    ASSERT_TRUE(chat.ok()) << chat.status();
    chat_ = std::make_unique<ChatTemplate>(*std::move(chat));
  }
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ChatTemplate> chat_;
};

TEST_F(MistralChatTest, RendersExactly) {
  EXPECT_EQ(RenderOrDie(*chat_, {{"system", "Be brief."},
                                 {"user", "Hi"},
                                 {"assistant", "Hello"},
                                 {"user", "Bye"}}),
            "<s>[INST] Be brief.\n\nHi [/INST] Hello</s>[INST] Bye [/INST]");
  EXPECT_EQ(RenderOrDie(*chat_, {{"user", "Hi"}}), "<s>[INST] Hi [/INST]");
  // Mistral has no generation prompt: the flag changes nothing.
  EXPECT_EQ(RenderOrDie(*chat_, {{"user", "Hi"}}, false),
            "<s>[INST] Hi [/INST]");
  EXPECT_EQ(RenderOrDie(*chat_, {{"user", "Hi"}, {"assistant", "Yo"}}),
            "<s>[INST] Hi [/INST] Yo</s>");
}

TEST_F(MistralChatTest, RolesMustAlternate) {
  absl::StatusOr<std::string> text =
      chat_->Render(std::vector<ChatMessage>{{"user", "a"}, {"user", "b"}});
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(text.status().message(), HasSubstr("messages[1].role"));

  text = chat_->Render(
      std::vector<ChatMessage>{{"system", "s"}, {"assistant", "a"}});
  ASSERT_FALSE(text.ok());
  EXPECT_THAT(text.status().message(), HasSubstr("messages[1].role"));

  text = chat_->Render(std::vector<ChatMessage>{
      {"user", "a"}, {"assistant", "b"}, {"system", "c"}});
  ASSERT_FALSE(text.ok());
  EXPECT_THAT(text.status().message(), HasSubstr("messages[2].role"));

  text = chat_->Render(std::vector<ChatMessage>{{"system", "only"}});
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);

  text = chat_->Render(std::vector<ChatMessage>{{"user", "a"}, {"bot", "b"}});
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().message(), "messages[1].role: unknown role \"bot\"");
}

}  // namespace
}  // namespace strata
