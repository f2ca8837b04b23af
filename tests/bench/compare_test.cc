#include "bench/compare.h"

#include <cmath>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace strata::bench {
namespace {

nlohmann::json Result(double throughput, double ttft) {
  nlohmann::json j;
  j["label"] = "x";
  j["output_throughput"] = throughput;
  j["mean_ttft_ms"] = ttft;
  j["failed"] = 0;
  return j;
}

const ComparisonRow* Find(const std::vector<ComparisonRow>& rows,
                          const std::string& name) {
  for (const ComparisonRow& row : rows) {
    if (row.name == name) return &row;
  }
  return nullptr;
}

TEST(CompareTest, MeansSpreadsAndRatios) {
  auto rows = CompareResults({Result(100, 10), Result(120, 14)},
                             {Result(165, 6), Result(165, 6)});
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 3u);  // only figures present on both sides
  const ComparisonRow* tput = Find(*rows, "output_throughput");
  ASSERT_NE(tput, nullptr);
  EXPECT_DOUBLE_EQ(tput->a_mean, 110);
  EXPECT_DOUBLE_EQ(tput->a_min, 100);
  EXPECT_DOUBLE_EQ(tput->a_max, 120);
  EXPECT_DOUBLE_EQ(tput->b_mean, 165);
  EXPECT_DOUBLE_EQ(tput->ratio, 1.5);
  EXPECT_TRUE(tput->higher_is_better);
  const ComparisonRow* ttft = Find(*rows, "mean_ttft_ms");
  ASSERT_NE(ttft, nullptr);
  EXPECT_DOUBLE_EQ(ttft->ratio, 0.5);
  EXPECT_FALSE(ttft->higher_is_better);
  const ComparisonRow* failed = Find(*rows, "failed");
  ASSERT_NE(failed, nullptr);
  EXPECT_TRUE(std::isnan(failed->ratio));  // 0 / 0

  const std::string table = FormatComparison(*rows, "main", "patched", 2, 2);
  EXPECT_NE(table.find("A = main (2 rounds)"), std::string::npos) << table;
  EXPECT_NE(table.find("1.500"), std::string::npos) << table;
  EXPECT_NE(table.find("[100..120]"), std::string::npos) << table;
  EXPECT_NE(table.find("better"), std::string::npos) << table;

  const nlohmann::ordered_json json = ComparisonToJson(*rows);
  EXPECT_DOUBLE_EQ(json["output_throughput"]["ratio"].get<double>(), 1.5);
  EXPECT_TRUE(json["failed"]["ratio"].is_null());
}

TEST(CompareTest, SaysWhichSideTheMeanFavours) {
  nlohmann::json a = Result(100, 10), b = Result(100.5, 20);
  b["failed"] = 2;  // A had none: no ratio, but B is worse
  auto rows = CompareResults({a}, {b});
  ASSERT_TRUE(rows.ok());
  const std::string table = FormatComparison(*rows, "a", "b", 1, 1);
  auto verdict = [&](const std::string& name) {
    const size_t line = table.find("\n" + name + " ");
    EXPECT_NE(line, std::string::npos) << name << "\n" << table;
    const size_t end = table.find('\n', line + 1);
    return table.substr(end - 1, 1);
  };
  EXPECT_EQ(verdict("output_throughput"), "=");  // within 1%
  EXPECT_EQ(verdict("mean_ttft_ms"), "A");       // B's latency doubled
  EXPECT_EQ(verdict("failed"), "A");
}

TEST(CompareTest, NeedsBothSides) {
  EXPECT_FALSE(CompareResults({}, {Result(1, 1)}).ok());
  EXPECT_FALSE(CompareResults({Result(1, 1)}, {}).ok());
}

TEST(CompareTest, LoadsResultFiles) {
  const std::string path = ::testing::TempDir() + "/strata_compare_test.json";
  {
    std::ofstream out(path);
    out << Result(5, 6).dump();
  }
  auto loaded = LoadResultJson(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)["output_throughput"], 5);
  {
    std::ofstream out(path);
    out << "[1, 2";
  }
  EXPECT_FALSE(LoadResultJson(path).ok());
  EXPECT_FALSE(LoadResultJson(path + ".missing").ok());
}

}  // namespace
}  // namespace strata::bench
