#include "bench/metrics.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace strata::bench {
namespace {

RequestRecord Ok(double ttft, std::vector<double> itls, int64_t prompt,
                 int64_t output) {
  RequestRecord r;
  r.success = true;
  r.ttft_s = ttft;
  double e2el = ttft;
  for (double itl : itls) e2el += itl;
  r.e2el_s = e2el;
  r.itl_s = std::move(itls);
  r.prompt_tokens = prompt;
  r.output_tokens = output;
  r.target_output_tokens = output;
  return r;
}

RequestRecord Failed(const std::string& code) {
  RequestRecord r;
  r.error_code = code;
  r.error_message = "boom";
  r.e2el_s = 0.5;
  return r;
}

TEST(MetricsTest, LatenciesThroughputsAndErrors) {
  // Request 1: TTFT 100 ms, 4 tokens 10 ms apart -> E2EL 130, TPOT 10.
  // Request 2: TTFT 300 ms, 3 tokens 20 ms apart -> E2EL 340, TPOT 20.
  std::vector<RequestRecord> records = {
      Ok(0.1, {0.01, 0.01, 0.01}, 10, 4),
      Ok(0.3, {0.02, 0.02}, 20, 3),
      Failed("UNAVAILABLE"),
      Failed("UNAVAILABLE"),
      Failed("DEADLINE_EXCEEDED"),
  };
  records[0].cached_prompt_tokens = 8;
  const BenchMetrics m = ComputeMetrics(records, 2.0, Slo());
  EXPECT_EQ(m.completed, 2);
  EXPECT_EQ(m.failed, 3);
  EXPECT_EQ(m.total_input_tokens, 30);
  EXPECT_EQ(m.total_output_tokens, 7);
  EXPECT_EQ(m.cached_input_tokens, 8);
  EXPECT_DOUBLE_EQ(m.request_throughput, 1.0);
  EXPECT_DOUBLE_EQ(m.output_throughput, 3.5);
  EXPECT_DOUBLE_EQ(m.total_token_throughput, 18.5);
  EXPECT_NEAR(m.ttft_ms.mean, 200, 1e-9);
  EXPECT_NEAR(m.ttft_ms.median, 200, 1e-9);
  EXPECT_NEAR(m.tpot_ms.mean, 15, 1e-9);
  EXPECT_NEAR(m.itl_ms.mean, (3 * 10 + 2 * 20) / 5.0, 1e-9);
  EXPECT_NEAR(m.itl_ms.median, 10, 1e-9);
  EXPECT_NEAR(m.e2el_ms.mean, 235, 1e-9);
  EXPECT_NEAR(m.e2el_ms.p99, 130 + 0.99 * 210, 1e-6);
  ASSERT_EQ(m.errors_by_code.size(), 2u);
  EXPECT_EQ(m.errors_by_code.at("UNAVAILABLE"), 2);
  EXPECT_EQ(m.errors_by_code.at("DEADLINE_EXCEEDED"), 1);
  // Without an SLO every completed request is good.
  EXPECT_EQ(m.good_requests, 2);
  EXPECT_DOUBLE_EQ(m.request_goodput, 1.0);
}

TEST(MetricsTest, GoodputCountsRequestsWithinEveryLimit) {
  const std::vector<RequestRecord> records = {
      Ok(0.1, {0.01, 0.01, 0.01}, 10, 4),  // TTFT 100, TPOT 10, E2EL 130
      Ok(0.3, {0.02, 0.02}, 20, 3),        // TTFT 300, TPOT 20, E2EL 340
      Ok(0.05, {}, 5, 1),                  // one token: TPOT counts as 0
  };
  Slo slo;
  slo.ttft_ms = 200;
  EXPECT_EQ(ComputeMetrics(records, 1, slo).good_requests, 2);
  slo.tpot_ms = 15;
  EXPECT_EQ(ComputeMetrics(records, 1, slo).good_requests, 2);
  slo.tpot_ms = 5;
  EXPECT_EQ(ComputeMetrics(records, 1, slo).good_requests, 1);
  slo = Slo();
  slo.e2el_ms = 200;
  const BenchMetrics m = ComputeMetrics(records, 4, slo);
  EXPECT_EQ(m.good_requests, 2);
  EXPECT_DOUBLE_EQ(m.request_goodput, 0.5);
  // TPOT statistics skip single-token requests (as vLLM's do).
  EXPECT_NEAR(m.tpot_ms.mean, 15, 1e-9);
}

TEST(MetricsTest, CountsOutputLengthMismatches) {
  std::vector<RequestRecord> records = {Ok(0.1, {0.01}, 4, 2),
                                        Ok(0.1, {0.01}, 4, 2)};
  records[1].target_output_tokens = 5;  // the server stopped early
  EXPECT_EQ(ComputeMetrics(records, 1, Slo()).output_len_mismatches, 1);
}

TEST(MetricsTest, NothingCompleted) {
  const BenchMetrics m = ComputeMetrics({Failed("UNAVAILABLE")}, 0.0, Slo());
  EXPECT_EQ(m.completed, 0);
  EXPECT_EQ(m.failed, 1);
  EXPECT_EQ(m.request_throughput, 0);
  EXPECT_EQ(m.ttft_ms.mean, 0);
}

TEST(MetricsTest, JsonUsesVllmFieldNames) {
  const BenchMetrics m =
      ComputeMetrics({Ok(0.1, {0.01}, 4, 2), Failed("INTERNAL")}, 1, Slo());
  const nlohmann::ordered_json j = MetricsToJson(m);
  for (const char* name : {"duration",           "completed",
                           "total_input_tokens", "total_output_tokens",
                           "request_throughput", "request_goodput",
                           "output_throughput",  "total_token_throughput",
                           "mean_ttft_ms",       "median_ttft_ms",
                           "std_ttft_ms",        "p99_ttft_ms",
                           "mean_tpot_ms",       "median_tpot_ms",
                           "p99_tpot_ms",        "mean_itl_ms",
                           "median_itl_ms",      "p99_itl_ms",
                           "mean_e2el_ms",       "median_e2el_ms",
                           "p99_e2el_ms",        "p90_e2el_ms",
                           "p50_itl_ms",         "failed",
                           "errors_by_code"}) {
    EXPECT_TRUE(j.contains(name)) << name;
  }
  EXPECT_EQ(j["completed"], 1);
  EXPECT_EQ(j["errors_by_code"]["INTERNAL"], 1);
  EXPECT_NEAR(j["mean_ttft_ms"].get<double>(), 100, 1e-9);
  // MetricNames lists exactly the numeric fields.
  for (const std::string& name : MetricNames()) {
    ASSERT_TRUE(j.contains(name)) << name;
    EXPECT_TRUE(j[name].is_number()) << name;
  }
  EXPECT_TRUE(HigherIsBetter("output_throughput"));
  EXPECT_TRUE(HigherIsBetter("request_goodput"));
  EXPECT_FALSE(HigherIsBetter("p99_ttft_ms"));
  EXPECT_FALSE(HigherIsBetter("failed"));
}

TEST(MetricsTest, DetailedRecords) {
  const nlohmann::ordered_json j =
      RecordsToJson({Ok(0.1, {0.01, 0.02}, 4, 3), Failed("UNAVAILABLE")});
  ASSERT_EQ(j["input_lens"].size(), 2u);
  EXPECT_EQ(j["output_lens"][0], 3);
  EXPECT_EQ(j["itls"][0].size(), 2u);
  EXPECT_EQ(j["errors"][0], "");
  EXPECT_EQ(j["errors"][1], "UNAVAILABLE: boom");
}

TEST(MetricsTest, TableShowsTheFigures) {
  Slo slo;
  slo.ttft_ms = 250;
  const BenchMetrics m = ComputeMetrics(
      {Ok(0.1, {0.01}, 4, 2), Failed("RESOURCE_EXHAUSTED")}, 1, slo);
  const std::string table = FormatMetricsTable(m, "Closed loop", slo);
  for (const char* text :
       {"Closed loop", "Successful requests:", "Request goodput (req/s):",
        "Mean TTFT (ms):", "P90 TPOT (ms):", "P99 ITL (ms):",
        "Median E2EL (ms):", "RESOURCE_EXHAUSTED:", "TTFT limit (ms):"}) {
    EXPECT_NE(table.find(text), std::string::npos) << text << "\n" << table;
  }
}

}  // namespace
}  // namespace strata::bench
