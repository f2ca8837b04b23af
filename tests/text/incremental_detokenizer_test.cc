// IncrementalDetokenizer tests: streamed deltas must concatenate to the full
// Decode and each must be well-formed UTF-8, including characters split over
// several byte-level tokens.
#include "text/incremental_detokenizer.h"

#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "text/byte_level.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

namespace strata {
namespace {

using Json = nlohmann::json;

const std::string kDataDir = std::string(STRATA_SOURCE_DIR) + "/tests/data";
constexpr char kReplacement[] = "\xEF\xBF\xBD";

class IncrementalDetokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
        Tokenizer::FromDirectory(kDataDir + "/tiny-llama");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = tokenizer->release();
    std::ifstream in(kDataDir + "/tokenizer/multilingual.ids.json");
    std::ostringstream contents;
    contents << in.rdbuf();
    reference_ = new Json(Json::parse(contents.str()));
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete reference_;
  }
  static const Tokenizer& tokenizer() { return *tokenizer_; }
  static const Json& reference() { return *reference_; }

  // Streams `ids`, checking every delta is well-formed UTF-8; returns the
  // deltas (the Flush() result last).
  static std::vector<std::string> Stream(const std::vector<TokenId>& ids,
                                         bool skip_special_tokens) {
    IncrementalDetokenizer detokenizer(tokenizer(), skip_special_tokens);
    std::vector<std::string> deltas;
    for (TokenId id : ids) {
      deltas.push_back(detokenizer.Add(id));
      EXPECT_TRUE(IsValidUtf8(deltas.back())) << "after id " << id;
      EXPECT_LE(detokenizer.num_pending_bytes(), 3u);
    }
    deltas.push_back(detokenizer.Flush());
    EXPECT_TRUE(IsValidUtf8(deltas.back()));
    EXPECT_EQ(detokenizer.num_pending_bytes(), 0u);
    return deltas;
  }

  static std::string Concat(const std::vector<std::string>& deltas) {
    std::string text;
    for (const std::string& delta : deltas) text += delta;
    return text;
  }

  TokenId ByteToken(uint8_t b) const {
    return *tokenizer().TokenToId(
        ByteLevelEncode(std::string(1, static_cast<char>(b))));
  }

 private:
  static Tokenizer* tokenizer_;
  static Json* reference_;
};
Tokenizer* IncrementalDetokenizerTest::tokenizer_ = nullptr;
Json* IncrementalDetokenizerTest::reference_ = nullptr;

TEST_F(IncrementalDetokenizerTest, MultilingualStreamEqualsFullDecode) {
  const std::vector<TokenId> ids =
      reference()["whole_file"]["ids"].get<std::vector<TokenId>>();
  for (bool skip : {false, true}) {
    EXPECT_EQ(Concat(Stream(ids, skip)), tokenizer().Decode(ids, skip));
  }
  for (const Json& line : reference()["lines"]) {
    const std::vector<TokenId> line_ids =
        line["ids"].get<std::vector<TokenId>>();
    EXPECT_EQ(Concat(Stream(line_ids, false)), line["text"].get<std::string>());
    EXPECT_EQ(Concat(Stream(line_ids, true)),
              tokenizer().Decode(line_ids, true));
  }
}

TEST_F(IncrementalDetokenizerTest, EmojiSplitOverTokensIsHeldBack) {
  // Find the emoji line and check some of its tokens are partial characters,
  // so the streaming really had to hold bytes back.
  bool found_line = false;
  for (const Json& line : reference()["lines"]) {
    const std::string text = line["text"].get<std::string>();
    if (text.rfind("Emoji:", 0) != 0) continue;
    found_line = true;
    const std::vector<TokenId> ids = line["ids"].get<std::vector<TokenId>>();
    int partial_tokens = 0;
    for (TokenId id : ids)
      partial_tokens += IsValidUtf8(tokenizer().TokenBytes(id)) ? 0 : 1;
    EXPECT_GT(partial_tokens, 2);
    const std::vector<std::string> deltas = Stream(ids, true);
    EXPECT_EQ(Concat(deltas), text);
    int empty_deltas = 0;
    for (const std::string& delta : deltas)
      empty_deltas += delta.empty() ? 1 : 0;
    EXPECT_GT(empty_deltas, 0);
  }
  EXPECT_TRUE(found_line);

  // U+1F600 (F0 9F 98 80) fed one byte token at a time.
  IncrementalDetokenizer detokenizer(tokenizer());
  EXPECT_EQ(detokenizer.Add(ByteToken(0xF0)), "");
  EXPECT_EQ(detokenizer.Add(ByteToken(0x9F)), "");
  EXPECT_EQ(detokenizer.Add(ByteToken(0x98)), "");
  EXPECT_EQ(detokenizer.num_pending_bytes(), 3u);
  EXPECT_EQ(detokenizer.Add(ByteToken(0x80)), "\xF0\x9F\x98\x80");
  EXPECT_EQ(detokenizer.Flush(), "");
}

TEST_F(IncrementalDetokenizerTest, InvalidBytesBecomeReplacementCharacters) {
  IncrementalDetokenizer detokenizer(tokenizer());
  // F0 then 'A': the cut-off sequence is replaced as soon as 'A' arrives.
  EXPECT_EQ(detokenizer.Add(ByteToken(0xF0)), "");
  EXPECT_EQ(detokenizer.Add(*tokenizer().TokenToId("A")),
            std::string(kReplacement) + "A");
  // A lone continuation byte can never become valid: replaced at once.
  EXPECT_EQ(detokenizer.Add(ByteToken(0x80)), kReplacement);
  // An unfinished sequence at the end is flushed as one U+FFFD.
  EXPECT_EQ(detokenizer.Add(ByteToken(0xE4)), "");
  EXPECT_EQ(detokenizer.Add(ByteToken(0xB8)), "");
  EXPECT_EQ(detokenizer.Flush(), kReplacement);
  EXPECT_EQ(detokenizer.Flush(), "");
}

TEST_F(IncrementalDetokenizerTest, SpecialTokensSkippedOrKept) {
  const TokenId eot = *tokenizer().TokenToId("<|eot_id|>");
  const TokenId a = *tokenizer().TokenToId("a");
  IncrementalDetokenizer skipping(tokenizer(), /*skip_special_tokens=*/true);
  EXPECT_EQ(skipping.Add(a), "a");
  EXPECT_EQ(skipping.Add(eot), "");
  IncrementalDetokenizer keeping(tokenizer(), /*skip_special_tokens=*/false);
  EXPECT_EQ(keeping.Add(eot), "<|eot_id|>");
  // Out-of-range ids add nothing.
  EXPECT_EQ(keeping.Add(-1), "");
  EXPECT_EQ(keeping.Add(tokenizer().vocab_size()), "");
}

TEST_F(IncrementalDetokenizerTest, RandomIdsMatchFullDecode) {
  // Random streams over the whole vocabulary, with a bias towards single
  // high bytes so that partial and ill-formed sequences are frequent.
  std::mt19937 rng(1234);
  std::uniform_int_distribution<TokenId> any_id(0,
                                                tokenizer().vocab_size() - 1);
  std::uniform_int_distribution<int> high_byte(0x80, 0xFF);
  std::uniform_int_distribution<int> coin(0, 2);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<TokenId> ids;
    for (int i = 0; i < 30; ++i) {
      ids.push_back(coin(rng) == 0
                        ? any_id(rng)
                        : ByteToken(static_cast<uint8_t>(high_byte(rng))));
    }
    for (bool skip : {false, true}) {
      ASSERT_EQ(Concat(Stream(ids, skip)), tokenizer().Decode(ids, skip))
          << "trial " << trial;
    }
  }
}

}  // namespace
}  // namespace strata
