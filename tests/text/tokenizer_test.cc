// Tokenizer tests: the tiny-llama fixture against reference ids from the
// independent Python encoder (tools/), plus small tokenizer.json files built
// here to pin down BPE merge order, pre-tokenizer behaviours, added-token
// options and load errors.
#include "text/tokenizer.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "text/bpe_pre_tokenizer.h"
#include "text/byte_level.h"
#include "text/utf8.h"

namespace strata {
namespace {

using Json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::string kDataDir = std::string(STRATA_SOURCE_DIR) + "/tests/data";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary);
  out << contents;
  ASSERT_TRUE(out) << path;
}

// A fresh directory for one test's files.
std::string MakeTempDir(const std::string& name) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) /
      ("strata_tokenizer_" + name + "_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

std::unique_ptr<Tokenizer> LoadOrDie(const std::string& dir) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::FromDirectory(dir);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

// The byte-level spelling of raw text, e.g. " a" -> "Ġa".
std::string BL(const std::string& bytes) { return ByteLevelEncode(bytes); }

// A minimal byte-level BPE tokenizer.json: ids 0..255 are the bytes (id =
// byte value), then one id per merge result in merge order.
Json SmallTokenizerJson(const std::vector<std::pair<std::string, std::string>>&
                            merges /* raw bytes, not byte-level text */,
                        Json pre_tokenizer) {
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b)
    vocab[BL(std::string(1, static_cast<char>(b)))] = b;
  Json merge_list = Json::array();
  int next_id = 256;
  for (const auto& [left, right] : merges) {
    const std::string merged = BL(left + right);
    if (!vocab.contains(merged)) vocab[merged] = next_id++;
    merge_list.push_back(Json::array({BL(left), BL(right)}));
  }
  return Json{{"version", "1.0"},
              {"added_tokens", Json::array()},
              {"normalizer", nullptr},
              {"pre_tokenizer", std::move(pre_tokenizer)},
              {"post_processor", nullptr},
              {"decoder", {{"type", "ByteLevel"}}},
              {"model",
               {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"vocab", vocab},
                {"merges", merge_list}}}};
}

Json ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex) {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", add_prefix_space},
          {"trim_offsets", true},
          {"use_regex", use_regex}};
}

std::unique_ptr<Tokenizer> LoadJson(const std::string& name, const Json& json) {
  const std::string dir = MakeTempDir(name);
  WriteFile(dir + "/tokenizer.json", json.dump());
  return LoadOrDie(dir);
}

std::vector<TokenId> EncodeOrDie(const Tokenizer& tokenizer,
                                 const std::string& text,
                                 bool add_special_tokens = false) {
  absl::StatusOr<std::vector<TokenId>> ids =
      tokenizer.Encode(text, add_special_tokens);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<TokenId>{};
}

// --- The tiny-llama fixture -----------------------------------------------

class TinyLlamaTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tokenizer_ = LoadOrDie(kDataDir + "/tiny-llama").release();
    reference_ = new Json(
        Json::parse(ReadFile(kDataDir + "/tokenizer/multilingual.ids.json")));
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete reference_;
  }
  static const Tokenizer& tokenizer() { return *tokenizer_; }
  static const Json& reference() { return *reference_; }

 private:
  static Tokenizer* tokenizer_;
  static Json* reference_;
};
Tokenizer* TinyLlamaTokenizerTest::tokenizer_ = nullptr;
Json* TinyLlamaTokenizerTest::reference_ = nullptr;

TEST_F(TinyLlamaTokenizerTest, ReferencePointsAtThisTokenizer) {
  EXPECT_EQ(reference()["tokenizer"], "../tiny-llama/tokenizer.json");
  EXPECT_EQ(reference()["whole_file"]["add_special_tokens"], false);
}

TEST_F(TinyLlamaTokenizerTest, WholeFileMatchesReferenceIdsAndRoundTrips) {
  const std::string text = ReadFile(kDataDir + "/tokenizer/multilingual.txt");
  const std::vector<TokenId> ids = EncodeOrDie(tokenizer(), text);
  EXPECT_EQ(ids, reference()["whole_file"]["ids"].get<std::vector<TokenId>>());
  EXPECT_EQ(tokenizer().Decode(ids, /*skip_special_tokens=*/false), text);
}

TEST_F(TinyLlamaTokenizerTest, EveryLineMatchesReferenceIdsAndRoundTrips) {
  ASSERT_GE(reference()["lines"].size(), 10u);
  for (const Json& line : reference()["lines"]) {
    const std::string text = line["text"].get<std::string>();
    const std::vector<TokenId> ids = EncodeOrDie(tokenizer(), text);
    EXPECT_EQ(ids, line["ids"].get<std::vector<TokenId>>()) << text;
    EXPECT_EQ(tokenizer().Decode(ids, /*skip_special_tokens=*/false), text);
  }
}

// A caller that refuses prompts over N tokens asks Encode to stop past N:
// it gets a prefix of the full encoding with more than N ids, not all of it.
TEST_F(TinyLlamaTokenizerTest, EncodeStopsOncePastMaxTokens) {
  std::string text;
  for (int i = 0; i < 2000; ++i) text += "In the beginning was the word. ";
  const auto full = tokenizer().Encode(text, /*add_special_tokens=*/true);
  ASSERT_TRUE(full.ok());
  const auto cut = tokenizer().Encode(text, /*add_special_tokens=*/true, 50);
  ASSERT_TRUE(cut.ok());
  EXPECT_GT(cut->size(), 50u);
  EXPECT_LT(cut->size(), full->size() / 10);
  EXPECT_TRUE(std::equal(cut->begin(), cut->end(), full->begin()));
  // Under the limit nothing changes.
  const auto small = tokenizer().Encode("In the beginning", true, 50);
  EXPECT_EQ(*small, *tokenizer().Encode("In the beginning", true));
}

// The limit also bounds the pre-tokenizer: a 1 MB prompt refused at 50
// tokens is split only as far as its first window, not whole.
TEST_F(TinyLlamaTokenizerTest, EncodeUnderALimitPreTokenizesOnlyAPrefix) {
  std::string text;
  while (text.size() < (1u << 20)) text += "In the beginning was the word. ";
  size_t split_bytes = 0;
  const auto cut =
      tokenizer().Encode(text, /*add_special_tokens=*/true, 50, &split_bytes);
  ASSERT_TRUE(cut.ok());
  EXPECT_GT(cut->size(), 50u);
  EXPECT_LE(split_bytes, Tokenizer::kFirstWindowBytes);
  const auto full = tokenizer().Encode(
      text, true, std::numeric_limits<size_t>::max(), &split_bytes);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(split_bytes, text.size());
  EXPECT_TRUE(std::equal(cut->begin(), cut->end(), full->begin()));
}

// Limits that need several growing windows, and limits that end right at
// the first window's cut (inside a word, a whitespace run or a multi-byte
// character: the text is shifted under the cut across one whole line), still
// give a prefix of the full encoding with more ids than the limit.
TEST_F(TinyLlamaTokenizerTest, WindowedEncodeIsAPrefixOfTheFullEncoding) {
  // The file spells added tokens; without them a copy of it is plain text,
  // so the stretch before the one added token below is longer than a window.
  const std::string line = absl::StrReplaceAll(
      ReadFile(kDataDir + "/tokenizer/multilingual.txt"), {{"<|", "< |"}});
  std::string body;
  for (int i = 0; body.size() < 3 * Tokenizer::kFirstWindowBytes; ++i) {
    body += line;
    body += std::string(i % 7, ' ');
    body += i == 30 ? "<|eot_id|>" : "\n\n";  // an added token past the window
  }
  for (size_t shift = 0; shift < line.size(); shift += 193) {
    const std::string text = std::string(shift, 'x') + " " + body;
    const auto full = tokenizer().Encode(text, /*add_special_tokens=*/true);
    ASSERT_TRUE(full.ok());
    // The ids of the first window alone: a limit just under them makes the
    // words at the cut count.
    size_t cut = Tokenizer::kFirstWindowBytes;
    while ((static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
    const auto first_window = tokenizer().Encode(text.substr(0, cut), true);
    ASSERT_TRUE(first_window.ok());
    std::vector<size_t> limits = {first_window->size() - 1,
                                  first_window->size() - 2,
                                  first_window->size() - 3};
    if (shift == 0) {
      limits.insert(limits.end(), {size_t{1}, size_t{1000}, full->size() / 2,
                                   full->size() - 2});
    }
    for (size_t limit : limits) {
      size_t split_bytes = 0;
      const auto ids = tokenizer().Encode(text, true, limit, &split_bytes);
      ASSERT_TRUE(ids.ok());
      EXPECT_GT(ids->size(), limit) << shift << " " << limit;
      ASSERT_LE(ids->size(), full->size()) << limit;
      EXPECT_TRUE(std::equal(ids->begin(), ids->end(), full->begin()))
          << "shift " << shift << ", limit " << limit;
      if (limit <= 1000) {
        EXPECT_LE(split_bytes, Tokenizer::kFirstWindowBytes);
      } else {
        EXPECT_LT(split_bytes, 2 * text.size());
      }
    }
  }
}

TEST_F(TinyLlamaTokenizerTest, Metadata) {
  EXPECT_EQ(tokenizer().vocab_size(), 1808);
  EXPECT_EQ(tokenizer().bos_token_id(), 1792);
  // tokenizer_config.json's eos_token first, then config.json's list.
  EXPECT_THAT(tokenizer().eos_token_ids(), ElementsAre(1801, 1793));
  EXPECT_TRUE(tokenizer().add_bos_token());
  EXPECT_THAT(tokenizer().chat_template_source(),
              HasSubstr("<|start_header_id|>"));
  EXPECT_EQ(tokenizer().TokenToId("<|eot_id|>"), 1801);
  EXPECT_EQ(tokenizer().TokenToId(BL(" ")), tokenizer().TokenToId("Ġ"));
  EXPECT_EQ(tokenizer().TokenToId("no such token"), std::nullopt);
  EXPECT_TRUE(tokenizer().IsSpecial(1801));
  EXPECT_FALSE(tokenizer().IsSpecial(*tokenizer().TokenToId("a")));
  EXPECT_FALSE(tokenizer().IsSpecial(-1));
  EXPECT_FALSE(tokenizer().IsSpecial(1 << 20));
  EXPECT_EQ(tokenizer().TokenBytes(1801), "<|eot_id|>");
  EXPECT_EQ(tokenizer().TokenBytes(*tokenizer().TokenToId("Ġ")), " ");
  EXPECT_EQ(tokenizer().TokenBytes(*tokenizer().TokenToId("Ċ")), "\n");
  EXPECT_EQ(tokenizer().TokenBytes(-5), "");
  EXPECT_EQ(tokenizer().TokenBytes(tokenizer().vocab_size()), "");
}

TEST_F(TinyLlamaTokenizerTest, SpecialTokensInTextAreRecognised) {
  const std::vector<TokenId> ids =
      EncodeOrDie(tokenizer(), "<|begin_of_text|>Hi<|eot_id|><|eot_id|>");
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids.front(), 1792);
  EXPECT_EQ(ids[ids.size() - 2], 1801);
  EXPECT_EQ(ids.back(), 1801);
  EXPECT_EQ(tokenizer().Decode(ids, /*skip_special_tokens=*/true), "Hi");
  EXPECT_EQ(tokenizer().Decode(ids, /*skip_special_tokens=*/false),
            "<|begin_of_text|>Hi<|eot_id|><|eot_id|>");
  // Near misses are plain text.
  for (const char* text : {"<|eot_id|", "<|EOT_ID|>", "<|eot_id |>"}) {
    for (TokenId id : EncodeOrDie(tokenizer(), text)) {
      EXPECT_FALSE(tokenizer().IsSpecial(id)) << text;
    }
  }
}

TEST_F(TinyLlamaTokenizerTest, AddSpecialTokensPrependsBos) {
  const std::vector<TokenId> plain = EncodeOrDie(tokenizer(), "Hello");
  std::vector<TokenId> with_bos = EncodeOrDie(tokenizer(), "Hello", true);
  ASSERT_FALSE(with_bos.empty());
  EXPECT_EQ(with_bos.front(), 1792);
  with_bos.erase(with_bos.begin());
  EXPECT_EQ(with_bos, plain);
  EXPECT_THAT(EncodeOrDie(tokenizer(), "", true), ElementsAre(1792));
  EXPECT_TRUE(EncodeOrDie(tokenizer(), "", false).empty());
}

TEST_F(TinyLlamaTokenizerTest, InvalidUtf8IsRejected) {
  for (const std::string& bad :
       {std::string("\xff"), std::string("abc\xc3"), std::string("\xc0\xaf"),
        std::string("\xed\xa0\x80"), std::string("\xf4\x90\x80\x80"),
        std::string("ok \x80 no")}) {
    absl::StatusOr<std::vector<TokenId>> ids = tokenizer().Encode(bad, false);
    ASSERT_FALSE(ids.ok());
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(ids.status().message(), HasSubstr("UTF-8"));
  }
  // NUL bytes are valid UTF-8.
  const std::string with_nul("a\0b", 3);
  EXPECT_EQ(tokenizer().Decode(EncodeOrDie(tokenizer(), with_nul), false),
            with_nul);
}

TEST_F(TinyLlamaTokenizerTest, DecodeRepairsInvalidUtf8AndSkipsBadIds) {
  const TokenId f0 = *tokenizer().TokenToId(BL("\xF0"));
  const TokenId x9f = *tokenizer().TokenToId(BL("\x9F"));
  const TokenId a = *tokenizer().TokenToId("A");
  // A cut-off 4-byte sequence is one U+FFFD; a stray continuation is another.
  EXPECT_EQ(tokenizer().Decode(std::vector<TokenId>{f0, x9f, a}, false),
            "\xEF\xBF\xBD"
            "A");
  EXPECT_EQ(tokenizer().Decode(std::vector<TokenId>{x9f, x9f}, false),
            "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(tokenizer().Decode(std::vector<TokenId>{-1, a, 1 << 30, a}, false),
            "AA");
}

TEST_F(TinyLlamaTokenizerTest, EncodeIsThreadSafe) {
  const std::string text = ReadFile(kDataDir + "/tokenizer/multilingual.txt");
  const std::vector<TokenId> expected = EncodeOrDie(tokenizer(), text);
  std::vector<std::vector<TokenId>> results(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) {
        absl::StatusOr<std::vector<TokenId>> ids =
            tokenizer().Encode(text, false);
        if (ids.ok()) results[t] = *ids;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const std::vector<TokenId>& result : results)
    EXPECT_EQ(result, expected);
}

TEST(TinyQwen2TokenizerTest, NoBosAndChatMLSpecials) {
  std::unique_ptr<Tokenizer> tokenizer = LoadOrDie(kDataDir + "/tiny-qwen2");
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_FALSE(tokenizer->add_bos_token());
  EXPECT_EQ(EncodeOrDie(*tokenizer, "Hi", true), EncodeOrDie(*tokenizer, "Hi"));
  EXPECT_EQ(tokenizer->eos_token_ids().front(),
            tokenizer->TokenToId("<|im_end|>"));
  const std::vector<TokenId> ids =
      EncodeOrDie(*tokenizer, "<|im_start|>user\nHi<|im_end|>\n");
  EXPECT_EQ(ids.front(), tokenizer->TokenToId("<|im_start|>"));
  EXPECT_EQ(tokenizer->Decode(ids, true), "user\nHi\n");
}

// --- BPE merge order, on a small tokenizer ---------------------------------

TEST(BpeMergeTest, LowestRankFirstThenLeftmost) {
  // GPT-2 style: ByteLevel with its own regex and a prefix space.
  std::unique_ptr<Tokenizer> tokenizer = LoadJson(
      "merge_order",
      SmallTokenizerJson({{"h", "e"},    // 256 "he"
                          {"l", "l"},    // 257 "ll"
                          {"he", "ll"},  // 258 "hell"
                          {" ", "w"},    // 259 " w"
                          {"o", "r"},    // 260 "or"
                          {"b", "c"},    // 261 "bc"
                          {"a", "b"},    // 262 "ab"
                          {"a", "a"}},   // 263 "aa"
                         ByteLevelPreTokenizer(/*add_prefix_space=*/true,
                                               /*use_regex=*/true)));
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(EncodeOrDie(*tokenizer, "hello world"),
              ElementsAre(' ', 258, 'o', 259, 260, 'l', 'd'));
  EXPECT_EQ(tokenizer->Decode(EncodeOrDie(*tokenizer, "hello world"), false),
            " hello world");
  // "b c" outranks "a b".
  EXPECT_THAT(EncodeOrDie(*tokenizer, "abc"), ElementsAre(' ', 'a', 261));
  // Equal pairs merge left to right.
  EXPECT_THAT(EncodeOrDie(*tokenizer, "aaa"), ElementsAre(' ', 263, 'a'));
  EXPECT_THAT(EncodeOrDie(*tokenizer, "aaaa"), ElementsAre(' ', 263, 263));
  // Words longer than the short-word path (64 symbols) merge the same way.
  std::string long_word;
  std::vector<TokenId> long_expected = {' '};
  for (int i = 0; i < 40; ++i) {
    long_word += "hello";
    long_expected.insert(long_expected.end(), {258, 'o'});
  }
  EXPECT_EQ(EncodeOrDie(*tokenizer, long_word), long_expected);
  std::vector<TokenId> many_a(100, 263);
  many_a.insert(many_a.begin(), ' ');
  many_a.push_back('a');
  EXPECT_EQ(EncodeOrDie(*tokenizer, std::string(201, 'a')), many_a);
  // The GPT-2 pattern keeps contractions and digits apart.
  EXPECT_THAT(EncodeOrDie(*tokenizer, "he's 42"),
              ElementsAre(' ', 256, '\'', 's', ' ', '4', '2'));
}

TEST(BpeMergeTest, MergesAsStringsAndIgnoreMerges) {
  Json json =
      SmallTokenizerJson({{"b", "c"}}, ByteLevelPreTokenizer(false, true));
  json["model"]["merges"] = Json::array({"b c"});
  json["model"]["vocab"]["abc"] = 300;  // reachable only as a whole word
  std::unique_ptr<Tokenizer> merging = LoadJson("merges_strings", json);
  ASSERT_NE(merging, nullptr);
  EXPECT_THAT(EncodeOrDie(*merging, "abc"), ElementsAre('a', 256));
  json["model"]["ignore_merges"] = true;
  std::unique_ptr<Tokenizer> whole = LoadJson("ignore_merges", json);
  ASSERT_NE(whole, nullptr);
  EXPECT_THAT(EncodeOrDie(*whole, "abc"), ElementsAre(300));
  EXPECT_THAT(EncodeOrDie(*whole, "abcd"), ElementsAre('a', 256, 'd'));
  EXPECT_EQ(whole->vocab_size(), 301);
}

TEST(BpeMergeTest, AddedTokenOptions) {
  Json json = SmallTokenizerJson({}, ByteLevelPreTokenizer(false, true));
  json["added_tokens"] =
      Json::array({{{"id", 300},
                    {"content", "<mask>"},
                    {"special", true},
                    {"lstrip", true},
                    {"rstrip", true}},
                   {{"id", 301},
                    {"content", "cat"},
                    {"special", false},
                    {"single_word", true}},
                   {{"id", 302}, {"content", "<m"}, {"special", false}}});
  std::unique_ptr<Tokenizer> tokenizer = LoadJson("added_options", json);
  ASSERT_NE(tokenizer, nullptr);
  // lstrip/rstrip swallow the surrounding whitespace.
  EXPECT_THAT(EncodeOrDie(*tokenizer, "a  <mask>\n b"),
              ElementsAre('a', 300, 'b'));
  // Longest match wins over the shorter "<m".
  EXPECT_THAT(EncodeOrDie(*tokenizer, "<mask><m"), ElementsAre(300, 302));
  // single_word: only outside words.
  EXPECT_THAT(EncodeOrDie(*tokenizer, "cat"), ElementsAre(301));
  EXPECT_THAT(EncodeOrDie(*tokenizer, "a cat."),
              ElementsAre('a', ' ', 301, '.'));
  EXPECT_THAT(EncodeOrDie(*tokenizer, "concat"),
              ElementsAre('c', 'o', 'n', 'c', 'a', 't'));
  EXPECT_TRUE(tokenizer->IsSpecial(300));
  EXPECT_FALSE(tokenizer->IsSpecial(301));
  EXPECT_EQ(tokenizer->Decode(std::vector<TokenId>{'a', 300, 301}, true),
            "acat");
}

// --- The pre-tokenizer on its own ------------------------------------------

std::vector<std::string> PreTokenize(const Json& config,
                                     const std::string& text) {
  absl::StatusOr<std::unique_ptr<BpePreTokenizer>> pre_tokenizer =
      BpePreTokenizer::FromJson(config);
  EXPECT_TRUE(pre_tokenizer.ok()) << pre_tokenizer.status();
  std::vector<std::string> words;
  if (pre_tokenizer.ok()) {
    EXPECT_TRUE((*pre_tokenizer)->Split(text, &words).ok());
  }
  return words;
}

Json SplitThenByteLevel(const std::string& behavior, bool invert,
                        Json pattern = {{"String", "-"}}) {
  return {
      {"type", "Sequence"},
      {"pretokenizers", Json::array({{{"type", "Split"},
                                      {"pattern", pattern},
                                      {"behavior", behavior},
                                      {"invert", invert}},
                                     ByteLevelPreTokenizer(false, false)})}};
}

TEST(BpePreTokenizerTest, SplitBehaviors) {
  EXPECT_THAT(PreTokenize(SplitThenByteLevel("Isolated", false), "a-b--c"),
              ElementsAre("a", "-", "b", "-", "-", "c"));
  EXPECT_THAT(PreTokenize(SplitThenByteLevel("Removed", false), "a-b--c"),
              ElementsAre("a", "b", "c"));
  EXPECT_THAT(
      PreTokenize(SplitThenByteLevel("MergedWithPrevious", false), "a-b--c"),
      ElementsAre("a-", "b-", "-", "c"));
  EXPECT_THAT(
      PreTokenize(SplitThenByteLevel("MergedWithNext", false), "a-b--c"),
      ElementsAre("a", "-b", "-", "-c"));
  EXPECT_THAT(PreTokenize(SplitThenByteLevel("Contiguous", false), "a-b--c"),
              ElementsAre("a", "-", "b", "--", "c"));
  EXPECT_THAT(PreTokenize(SplitThenByteLevel("Removed", true), "a-b--c"),
              ElementsAre("-", "-", "-"));
  EXPECT_THAT(
      PreTokenize(SplitThenByteLevel("Isolated", false, {{"Regex", "\\s+"}}),
                  "a b\n c"),
      ElementsAre("a", "Ġ", "b", "ĊĠ", "c"));
}

TEST(BpePreTokenizerTest, ByteLevelOptions) {
  EXPECT_THAT(PreTokenize(ByteLevelPreTokenizer(true, true), "Hi  there!"),
              ElementsAre("ĠHi", "Ġ", "Ġthere", "!"));
  EXPECT_THAT(PreTokenize(ByteLevelPreTokenizer(false, true), "Hi  there!"),
              ElementsAre("Hi", "Ġ", "Ġthere", "!"));
  EXPECT_THAT(PreTokenize(ByteLevelPreTokenizer(false, false), "Hi  there!"),
              ElementsAre("HiĠĠthere!"));
  EXPECT_TRUE(PreTokenize(ByteLevelPreTokenizer(true, true), "").empty());
}

TEST(BpePreTokenizerTest, RefusesNonByteLevel) {
  for (const Json& config : {Json{{"type", "Metaspace"}, {"replacement", "▁"}},
                             Json{{"type", "Split"},
                                  {"pattern", {{"String", " "}}},
                                  {"behavior", "Isolated"}},
                             Json(nullptr)}) {
    absl::StatusOr<std::unique_ptr<BpePreTokenizer>> pre_tokenizer =
        BpePreTokenizer::FromJson(config);
    ASSERT_FALSE(pre_tokenizer.ok()) << config.dump();
    EXPECT_EQ(pre_tokenizer.status().code(), absl::StatusCode::kUnimplemented);
  }
}

// --- Load errors ------------------------------------------------------------

absl::Status LoadError(const std::string& name,
                       const std::string& tokenizer_json,
                       const std::string& tokenizer_config = "",
                       const std::string& config = "") {
  const std::string dir = MakeTempDir(name);
  WriteFile(dir + "/tokenizer.json", tokenizer_json);
  if (!tokenizer_config.empty()) {
    WriteFile(dir + "/tokenizer_config.json", tokenizer_config);
  }
  if (!config.empty()) WriteFile(dir + "/config.json", config);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::FromDirectory(dir);
  EXPECT_FALSE(tokenizer.ok()) << name;
  return tokenizer.status();
}

TEST(TokenizerLoadTest, MissingDirectoryIsNotFound) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::FromDirectory("/nonexistent/strata/model");
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(tokenizer.status().message(),
              HasSubstr("/nonexistent/strata/model/tokenizer.json"));
}

TEST(TokenizerLoadTest, CorruptTokenizerJson) {
  const Json good =
      SmallTokenizerJson({{"a", "b"}}, ByteLevelPreTokenizer(false, true));
  std::string truncated = good.dump();
  truncated.resize(truncated.size() / 2);

  absl::Status status = LoadError("truncated", truncated);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr("tokenizer.json: malformed JSON at byte"));

  status = LoadError("not_object", "[1, 2, 3]");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("tokenizer.json"));

  Json no_model = good;
  no_model.erase("model");
  status = LoadError("no_model", no_model.dump());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("tokenizer.json: model"));

  Json bad_vocab = good;
  bad_vocab["model"]["vocab"]["x"] = "seven";
  status = LoadError("bad_vocab", bad_vocab.dump());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("model.vocab[\"x\"]"));

  Json huge_id = good;
  huge_id["model"]["vocab"]["x"] = 2147483647;
  status = LoadError("huge_id", huge_id.dump());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);

  Json bad_merge = good;
  bad_merge["model"]["merges"] = Json::array({"a zz"});
  status = LoadError("bad_merge", bad_merge.dump());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("model.merges[0]"));

  Json bad_regex = good;
  bad_regex["pre_tokenizer"] =
      SplitThenByteLevel("Isolated", false, {{"Regex", "(a"}});
  status = LoadError("bad_regex", bad_regex.dump());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("pattern.Regex"));

  Json bad_added = good;
  bad_added["added_tokens"] = Json::array({{{"id", "x"}, {"content", "<x>"}}});
  status = LoadError("bad_added", bad_added.dump());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("added_tokens[0].id"));

  Json wrong_type = good;
  wrong_type["normalizer"] = 5;
  status = LoadError("wrong_type", wrong_type.dump());
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("tokenizer.json"));
}

TEST(TokenizerLoadTest, UnsupportedTokenizerTypes) {
  const Json good = SmallTokenizerJson({}, ByteLevelPreTokenizer(false, true));
  Json sentencepiece = good;
  sentencepiece["pre_tokenizer"] = {{"type", "Metaspace"},
                                    {"replacement", "▁"}};
  absl::Status status = LoadError("metaspace", sentencepiece.dump());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(status.message(), HasSubstr("tokenizer.json"));
  EXPECT_THAT(status.message(), HasSubstr("\"Metaspace\""));

  Json unigram = good;
  unigram["model"]["type"] = "Unigram";
  status = LoadError("unigram", unigram.dump());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(status.message(), HasSubstr("Unigram"));

  Json nfc = good;
  nfc["normalizer"] = {{"type", "NFC"}};
  status = LoadError("nfc", nfc.dump());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(status.message(), HasSubstr("normalizer type \"NFC\""));

  Json decoder = good;
  decoder["decoder"] = {{"type", "Metaspace"}};
  status = LoadError("decoder", decoder.dump());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(status.message(), HasSubstr("decoder type \"Metaspace\""));
}

TEST(TokenizerLoadTest, BadConfigFilesNameTheFile) {
  const std::string good =
      SmallTokenizerJson({}, ByteLevelPreTokenizer(false, true)).dump();
  absl::Status status = LoadError("bad_bos", good, R"({"bos_token": "<s>"})");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("tokenizer_config.json: bos_token"));

  status = LoadError("bad_add_bos", good, R"({"add_bos_token": "yes"})");
  EXPECT_THAT(status.message(),
              HasSubstr("tokenizer_config.json: add_bos_token"));

  status = LoadError("bad_config_json", good, "", "{");
  EXPECT_THAT(status.message(), HasSubstr("config.json: malformed JSON"));

  status = LoadError("bad_eos", good, "", R"({"eos_token_id": [1, "2"]})");
  EXPECT_THAT(status.message(), HasSubstr("config.json: eos_token_id"));

  status = LoadError("eos_range", good, "", R"({"eos_token_id": 99999})");
  EXPECT_THAT(status.message(), HasSubstr("config.json: eos_token_id"));
}

TEST(TokenizerLoadTest, BosAndEosFromConfigs) {
  Json json = SmallTokenizerJson({}, ByteLevelPreTokenizer(false, true));
  json["added_tokens"] =
      Json::array({{{"id", 256}, {"content", "<s>"}, {"special", true}},
                   {{"id", 257}, {"content", "</s>"}, {"special", true}}});
  const std::string dir = MakeTempDir("bos_eos");
  WriteFile(dir + "/tokenizer.json", json.dump());

  // Only config.json: its bos is used and prepended.
  WriteFile(dir + "/config.json",
            R"({"bos_token_id": 256, "eos_token_id": 257})");
  std::unique_ptr<Tokenizer> tokenizer = LoadOrDie(dir);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->bos_token_id(), 256);
  EXPECT_THAT(tokenizer->eos_token_ids(), ElementsAre(257));
  EXPECT_TRUE(tokenizer->add_bos_token());
  EXPECT_THAT(EncodeOrDie(*tokenizer, "a", true), ElementsAre(256, 'a'));

  // tokenizer_config.json with bos null: config.json's id is reported but
  // not prepended (Qwen2).
  WriteFile(dir + "/tokenizer_config.json",
            R"({"bos_token": null, "eos_token": {"content": "<s>"}})");
  tokenizer = LoadOrDie(dir);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->bos_token_id(), 256);
  EXPECT_FALSE(tokenizer->add_bos_token());
  EXPECT_THAT(tokenizer->eos_token_ids(), ElementsAre(256, 257));

  // add_bos_token=false wins over a declared bos.
  WriteFile(dir + "/tokenizer_config.json",
            R"({"bos_token": "<s>", "add_bos_token": false,
                "chat_template": [{"name": "tool_use", "template": "T"},
                                  {"name": "default", "template": "D"}]})");
  tokenizer = LoadOrDie(dir);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_FALSE(tokenizer->add_bos_token());
  EXPECT_EQ(tokenizer->chat_template_source(), "D");
}

}  // namespace
}  // namespace strata
