#include "bench/sweep.h"

#include <sys/stat.h>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace strata::bench {
namespace {

TEST(SweepValuesTest, Parses) {
  auto values = ParseSweepValues("1, 2,4 ,8.5,inf");
  ASSERT_TRUE(values.ok()) << values.status();
  ASSERT_EQ(values->size(), 5u);
  EXPECT_EQ((*values)[0], 1);
  EXPECT_EQ((*values)[3], 8.5);
  EXPECT_TRUE(std::isinf((*values)[4]));
  EXPECT_FALSE(ParseSweepValues("").ok());
  EXPECT_FALSE(ParseSweepValues(",").ok());
  EXPECT_FALSE(ParseSweepValues("1,x").ok());
  EXPECT_FALSE(ParseSweepValues("1,0").ok());
  EXPECT_FALSE(ParseSweepValues("-2").ok());
  EXPECT_FALSE(ParseSweepValues("nan").ok());
}

std::vector<SweepPoint> TwoPoints() {
  SweepPoint a;
  a.mode = LoadMode::kOpenLoop;
  a.request_rate = 2;
  a.metrics.completed = 10;
  a.metrics.output_throughput = 100;
  a.metrics.ttft_ms.median = 5;
  a.metrics.ttft_ms.p99 = 9;
  a.metrics.tpot_ms.median = 1;
  a.metrics.tpot_ms.p99 = 2;
  a.metrics.e2el_ms.median = 50;
  a.metrics.e2el_ms.p99 = 90;
  SweepPoint b = a;
  b.request_rate = INFINITY;
  b.metrics.output_throughput = 180;
  b.metrics.e2el_ms.median = 80;
  b.metrics.e2el_ms.p99 = 200;
  b.metrics.errors_by_code = {{"RESOURCE_EXHAUSTED", 3}, {"UNAVAILABLE", 1}};
  return {a, b};
}

TEST(SweepCsvTest, HeaderAndRows) {
  const std::string csv = SweepCsv(TwoPoints());
  const std::vector<std::string> lines =
      absl::StrSplit(csv, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  const std::vector<std::string> header = absl::StrSplit(lines[0], ',');
  EXPECT_EQ(header[0], "mode");
  EXPECT_EQ(header[2], "request_rate");
  EXPECT_EQ(header.size(), 3 + MetricNames().size() + 1);
  const std::vector<std::string> row = absl::StrSplit(lines[2], ',');
  ASSERT_EQ(row.size(), header.size());
  EXPECT_EQ(row[0], "open");
  EXPECT_EQ(row[2], "inf");
  for (size_t i = 0; i < header.size(); ++i) {
    if (header[i] == "output_throughput") {
      EXPECT_EQ(row[i], "180");
    }
    if (header[i] == "p99_e2el_ms") {
      EXPECT_EQ(row[i], "200");
    }
    if (header[i] == "completed") {
      EXPECT_EQ(row[i], "10");
    }
  }
  EXPECT_EQ(row.back(), "RESOURCE_EXHAUSTED:3;UNAVAILABLE:1");
}

TEST(PlotTest, MissingGnuplotIsAClearSkip) {
  const std::string dir = ::testing::TempDir();
  const absl::Status s =
      PlotSweep("strata-no-such-gnuplot", dir + "/x.csv", dir + "/x.png");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("gnuplot-nox"), std::string::npos) << s;
  EXPECT_EQ(FindExecutable("strata-no-such-gnuplot"), "");
  EXPECT_NE(FindExecutable("sh"), "");
}

TEST(PlotTest, DrawsAPngWhenGnuplotIsInstalled) {
  if (FindExecutable("gnuplot").empty()) {
    GTEST_SKIP() << "gnuplot not installed";
  }
  const std::string dir = ::testing::TempDir();
  const std::string csv = dir + "/strata_sweep_test.csv";
  const std::string png = dir + "/strata_sweep_test.png";
  std::remove(png.c_str());
  {
    std::ofstream out(csv);
    out << SweepCsv(TwoPoints());
  }
  const absl::Status s = PlotSweep("gnuplot", csv, png);
  ASSERT_TRUE(s.ok()) << s;
  std::ifstream in(png, std::ios::binary);
  char magic[4] = {};
  in.read(magic, 4);
  EXPECT_EQ(std::string(magic + 1, 3), "PNG");
  struct stat st;
  ASSERT_EQ(::stat(png.c_str(), &st), 0);
  EXPECT_GT(st.st_size, 1000);
}

}  // namespace
}  // namespace strata::bench
