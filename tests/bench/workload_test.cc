#include "bench/workload.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace strata::bench {
namespace {

Workload::Options RandomOptions() {
  Workload::Options o;
  o.kind = WorkloadKind::kRandom;
  o.input_len = 32;
  o.output_len = 8;
  o.min_token_id = 0;
  o.max_token_id = 50;
  o.excluded_token_ids = {1, 2};
  o.seed = 3;
  return o;
}

TEST(WorkloadTest, FixedLengthsAreExact) {
  auto workload = Workload::Create(RandomOptions());
  ASSERT_TRUE(workload.ok()) << workload.status();
  for (int64_t i = 0; i < 20; ++i) {
    const BenchRequest r = (*workload)->Make(i);
    EXPECT_EQ(r.kind, BenchRequest::Kind::kTokenIds);
    EXPECT_EQ(r.token_ids.size(), 32u);
    EXPECT_EQ(r.prompt_len, 32);
    EXPECT_EQ(r.output_len, 8);
  }
}

TEST(WorkloadTest, TokenIdsStayInRangeAndSkipExcluded) {
  auto workload = Workload::Create(RandomOptions());
  ASSERT_TRUE(workload.ok());
  std::set<int32_t> seen;
  for (int64_t i = 0; i < 50; ++i) {
    for (int32_t id : (*workload)->Make(i).token_ids) seen.insert(id);
  }
  EXPECT_GE(*seen.begin(), 0);
  EXPECT_LT(*seen.rbegin(), 50);
  EXPECT_EQ(seen.count(1), 0u);
  EXPECT_EQ(seen.count(2), 0u);
  EXPECT_GT(seen.size(), 40u);  // 1600 draws cover nearly all 48 ids
}

TEST(WorkloadTest, RangeRatioBoundsLengths) {
  Workload::Options o = RandomOptions();
  o.input_len = 100;
  o.output_len = 10;
  o.range_ratio = 0.5;
  auto workload = Workload::Create(o);
  ASSERT_TRUE(workload.ok());
  std::set<int32_t> input_lens;
  for (int64_t i = 0; i < 200; ++i) {
    const BenchRequest r = (*workload)->Make(i);
    EXPECT_GE(r.prompt_len, 50);
    EXPECT_LE(r.prompt_len, 150);
    EXPECT_GE(r.output_len, 5);
    EXPECT_LE(r.output_len, 15);
    input_lens.insert(r.prompt_len);
  }
  EXPECT_GT(input_lens.size(), 20u);  // lengths really vary
}

TEST(WorkloadTest, RequestsDependOnlyOnSeedAndIndex) {
  auto a = Workload::Create(RandomOptions());
  auto b = Workload::Create(RandomOptions());
  ASSERT_TRUE(a.ok() && b.ok());
  // Order of calls does not matter: index 5 is the same either way.
  const BenchRequest a5 = (*a)->Make(5);
  (*b)->Make(9);
  EXPECT_EQ((*b)->Make(5).token_ids, a5.token_ids);
  EXPECT_NE((*a)->Make(6).token_ids, a5.token_ids);
  Workload::Options other = RandomOptions();
  other.seed = 4;
  auto c = Workload::Create(other);
  ASSERT_TRUE(c.ok());
  EXPECT_NE((*c)->Make(5).token_ids, a5.token_ids);
}

TEST(WorkloadTest, SharedPrefixPromptsStartWithOneOfThePrefixes) {
  Workload::Options o = RandomOptions();
  o.kind = WorkloadKind::kSharedPrefix;
  o.num_prefixes = 3;
  o.prefix_len = 16;
  o.input_len = 4;
  o.max_token_id = 1000;
  auto workload = Workload::Create(o);
  ASSERT_TRUE(workload.ok()) << workload.status();
  std::set<std::vector<int32_t>> prefixes, suffixes;
  for (int64_t i = 0; i < 60; ++i) {
    const BenchRequest r = (*workload)->Make(i);
    ASSERT_EQ(r.token_ids.size(), 20u);
    EXPECT_EQ(r.prompt_len, 20);
    prefixes.emplace(r.token_ids.begin(), r.token_ids.begin() + 16);
    suffixes.emplace(r.token_ids.begin() + 16, r.token_ids.end());
  }
  EXPECT_EQ(prefixes.size(), 3u);  // every system prompt used, no others
  EXPECT_GT(suffixes.size(), 50u);
}

TEST(WorkloadTest, CheckFitsAgainstContext) {
  Workload::Options o = RandomOptions();  // 32 + 8
  auto workload = Workload::Create(o);
  ASSERT_TRUE(workload.ok());
  EXPECT_TRUE((*workload)->CheckFits(40).ok());
  EXPECT_FALSE((*workload)->CheckFits(39).ok());
  o.kind = WorkloadKind::kSharedPrefix;
  o.prefix_len = 10;
  o.num_prefixes = 1;
  auto shared = Workload::Create(o);
  ASSERT_TRUE(shared.ok());
  EXPECT_TRUE((*shared)->CheckFits(50).ok());
  EXPECT_FALSE((*shared)->CheckFits(49).ok());
}

TEST(WorkloadTest, RejectsBadOptions) {
  Workload::Options o = RandomOptions();
  o.input_len = 0;
  EXPECT_FALSE(Workload::Create(o).ok());
  o = RandomOptions();
  o.range_ratio = 1.0;
  EXPECT_FALSE(Workload::Create(o).ok());
  o = RandomOptions();
  o.max_token_id = 0;
  EXPECT_FALSE(Workload::Create(o).ok());
  o = RandomOptions();
  o.min_token_id = 1;
  o.max_token_id = 3;  // only 1 and 2, both excluded
  EXPECT_FALSE(Workload::Create(o).ok());
  o = RandomOptions();
  o.kind = WorkloadKind::kDataset;  // no path
  EXPECT_FALSE(Workload::Create(o).ok());
}

TEST(WorkloadKindTest, Names) {
  EXPECT_EQ(*ParseWorkloadKind("random"), WorkloadKind::kRandom);
  EXPECT_EQ(*ParseWorkloadKind("fixed"), WorkloadKind::kRandom);
  EXPECT_EQ(*ParseWorkloadKind("shared_prefix"), WorkloadKind::kSharedPrefix);
  EXPECT_EQ(*ParseWorkloadKind("dataset"), WorkloadKind::kDataset);
  EXPECT_FALSE(ParseWorkloadKind("sharegpt").ok());
  EXPECT_STREQ(WorkloadKindName(WorkloadKind::kSharedPrefix), "shared_prefix");
}

TEST(DatasetTest, ParsesPromptAndChatLines) {
  auto prompt = ParseDatasetLine(R"({"prompt": "Hello", "output_len": 7})", 1);
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  EXPECT_EQ(prompt->prompt, "Hello");
  EXPECT_TRUE(prompt->messages.empty());
  EXPECT_EQ(prompt->output_len, 7);

  auto chat = ParseDatasetLine(
      R"({"messages": [{"role": "system", "content": "Be brief."},
                       {"role": "user", "content": "Hi"}],
          "output_len": 12, "extra": true})",
      2);
  ASSERT_TRUE(chat.ok()) << chat.status();
  ASSERT_EQ(chat->messages.size(), 2u);
  EXPECT_EQ(chat->messages[0].role, "system");
  EXPECT_EQ(chat->messages[1].content, "Hi");
  EXPECT_EQ(chat->output_len, 12);
}

TEST(DatasetTest, RejectsBadLinesNamingTheLine) {
  const char* bad[] = {
      "not json",
      "[1, 2]",
      R"({"output_len": 3})",
      R"({"prompt": "a", "messages": [], "output_len": 3})",
      R"({"prompt": "", "output_len": 3})",
      R"({"prompt": 5, "output_len": 3})",
      R"({"prompt": "a"})",
      R"({"prompt": "a", "output_len": 0})",
      R"({"prompt": "a", "output_len": 2.5})",
      R"({"messages": [], "output_len": 3})",
      R"({"messages": [{"role": "user"}], "output_len": 3})",
      R"({"messages": [{"role": "robot", "content": "x"}], "output_len": 3})",
  };
  for (const char* line : bad) {
    auto entry = ParseDatasetLine(line, 17);
    ASSERT_FALSE(entry.ok()) << line;
    EXPECT_NE(entry.status().message().find("line 17"), std::string::npos)
        << entry.status();
  }
}

TEST(DatasetTest, WorkloadCyclesThroughShuffledEntries) {
  std::vector<DatasetEntry> entries;
  for (int i = 0; i < 5; ++i) {
    DatasetEntry e;
    e.prompt = absl::StrCat("p", i);
    e.output_len = 10 + i;
    entries.push_back(e);
  }
  DatasetEntry chat;
  chat.messages = {{"user", "hello"}};
  chat.output_len = 3;
  entries.push_back(chat);
  Workload::Options o;
  o.kind = WorkloadKind::kDataset;
  auto workload = Workload::CreateFromEntries(o, entries);
  ASSERT_TRUE(workload.ok()) << workload.status();
  std::multiset<std::string> texts;
  int chats = 0;
  for (int64_t i = 0; i < 12; ++i) {  // two passes over six entries
    const BenchRequest r = (*workload)->Make(i);
    EXPECT_EQ(r.prompt_len, -1);  // unknown until the server tokenizes
    if (r.kind == BenchRequest::Kind::kChat) {
      ++chats;
      EXPECT_EQ(r.output_len, 3);
      ASSERT_EQ(r.messages.size(), 1u);
    } else {
      ASSERT_EQ(r.kind, BenchRequest::Kind::kText);
      texts.insert(r.text);
      EXPECT_EQ(r.output_len, 10 + (r.text[1] - '0'));
    }
    EXPECT_EQ((*workload)->Make(i + 6).output_len, r.output_len);
  }
  EXPECT_EQ(chats, 2);
  EXPECT_EQ(texts.size(), 10u);
  EXPECT_EQ(texts.count("p3"), 2u);

  o.dataset_output_len = 99;  // the override wins
  auto fixed = Workload::CreateFromEntries(o, entries);
  ASSERT_TRUE(fixed.ok());
  EXPECT_EQ((*fixed)->Make(0).output_len, 99);
  EXPECT_TRUE((*fixed)->CheckFits(99).ok());
  EXPECT_FALSE((*fixed)->CheckFits(98).ok());
}

TEST(DatasetTest, LoadReportsFileAndLine) {
  const std::string path =
      ::testing::TempDir() + "/strata_bench_workload_test.jsonl";
  {
    std::ofstream out(path);
    out << R"({"prompt": "a", "output_len": 1})"
        << "\n\n"
        << R"({"prompt": "b"})"
        << "\n";
  }
  auto loaded = LoadDataset(path);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find(path + ": line 3"),
            std::string::npos)
      << loaded.status();
  EXPECT_FALSE(LoadDataset(path + ".missing").ok());
}

TEST(DatasetTest, TheBundledDatasetLoads) {
  auto entries = LoadDataset(std::string(STRATA_SOURCE_DIR) +
                             "/bench/data/synthetic_chat.jsonl");
  ASSERT_TRUE(entries.ok()) << entries.status();
  EXPECT_GE(entries->size(), 100u);
  int chats = 0;
  for (const DatasetEntry& e : *entries) {
    if (!e.messages.empty()) ++chats;
    EXPECT_GT(e.output_len, 0);
  }
  EXPECT_GT(chats, 0);
  EXPECT_LT(chats, static_cast<int>(entries->size()));  // both kinds present
}

}  // namespace
}  // namespace strata::bench
