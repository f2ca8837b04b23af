// RunBenchmark end to end against the in-process fake daemon: warm-up,
// single runs and sweeps, and the files they write.
#include "bench/benchmark.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>

#include "bench/compare.h"
#include "bench/sweep.h"
#include "gtest/gtest.h"
#include "tests/bench/fake_generation_service.h"

namespace strata::bench {
namespace {

BenchmarkOptions SmallRun(const std::string& target) {
  BenchmarkOptions o;
  o.runner.target = target;
  o.workload.input_len = 8;
  o.workload.output_len = 4;
  o.run.mode = LoadMode::kClosedLoop;
  o.run.concurrency = 2;
  o.run.num_requests = 6;
  o.num_warmup = 2;
  return o;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(BenchmarkTest, SingleRunWritesTableAndJson) {
  FakeServer server;
  ASSERT_TRUE(server.ok());
  BenchmarkOptions o = SmallRun(server.target());
  o.result_json = ::testing::TempDir() + "/strata_benchmark_test.json";
  o.slo.ttft_ms = 10000;
  o.save_detailed = true;
  o.label = "unit";
  std::ostringstream out;
  auto outcome = RunBenchmark(o, out);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_FALSE(outcome->aborted);
  ASSERT_EQ(outcome->metrics.size(), 1u);
  EXPECT_EQ(outcome->metrics[0].completed, 6);
  EXPECT_EQ(outcome->metrics[0].total_output_tokens, 24);
  EXPECT_EQ(outcome->metrics[0].total_input_tokens, 48);
  EXPECT_EQ(outcome->metrics[0].good_requests, 6);
  // 2 warm-up + 6 measured requests reached the server; warm-up prompts
  // differ from the measured ones.
  EXPECT_EQ(server.service().num_started(), 8);
  const auto seen = server.service().requests();
  EXPECT_NE(seen[0].token_ids().SerializeAsString(),
            seen[2].token_ids().SerializeAsString());
  // EOS (2) and BOS (1) never appear in random prompts.
  for (const auto& request : seen) {
    for (int32_t id : request.token_ids().ids()) {
      EXPECT_NE(id, 1);
      EXPECT_NE(id, 2);
      EXPECT_LT(id, 1000);
    }
  }
  EXPECT_NE(out.str().find("Warm-up: 2 requests, 0 failed"), std::string::npos)
      << out.str();
  EXPECT_NE(out.str().find("Closed loop, 2 clients"), std::string::npos);

  auto json = LoadResultJson(o.result_json);
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_EQ((*json)["completed"], 6);
  EXPECT_EQ((*json)["model_id"], "fake");
  EXPECT_EQ((*json)["label"], "unit");
  EXPECT_EQ((*json)["mode"], "closed");
  EXPECT_EQ((*json)["max_concurrency"], 2);
  EXPECT_EQ((*json)["goodput_slo_ms"]["ttft"], 10000);
  EXPECT_EQ((*json)["output_lens"].size(), 6u);
  EXPECT_GT((*json)["output_throughput"].get<double>(), 0);
  EXPECT_GT((*json)["p99_itl_ms"].get<double>(), 0);
}

TEST(BenchmarkTest, SweepWritesCsvAndPlot) {
  FakeServer server;
  ASSERT_TRUE(server.ok());
  BenchmarkOptions o = SmallRun(server.target());
  o.run.mode = LoadMode::kOpenLoop;
  o.run.concurrency = 0;
  o.sweep_values = {200, 1000};
  o.num_warmup = 0;
  const std::string dir = ::testing::TempDir();
  o.result_json = dir + "/strata_sweep.json";
  o.sweep_csv = dir + "/strata_sweep.csv";
  o.sweep_png = dir + "/strata_sweep.png";
  o.gnuplot = "strata-no-such-gnuplot";  // the skip path, deterministically
  std::ostringstream out;
  auto outcome = RunBenchmark(o, out);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  ASSERT_EQ(outcome->metrics.size(), 2u);
  EXPECT_NE(out.str().find("Open loop, 200 req/s"), std::string::npos)
      << out.str();
  EXPECT_NE(out.str().find("Plot skipped: gnuplot"), std::string::npos)
      << out.str();
  const std::string csv = ReadFile(o.sweep_csv);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 3);
  EXPECT_NE(csv.find("\nopen,0,1000,"), std::string::npos) << csv;
  auto json = LoadResultJson(o.result_json);
  ASSERT_TRUE(json.ok());
  ASSERT_EQ((*json)["sweep"].size(), 2u);
  EXPECT_EQ((*json)["sweep"][1]["request_rate"], 1000);
}

TEST(BenchmarkTest, SetupErrors) {
  std::ostringstream out;
  // Nothing listens on port 1.
  BenchmarkOptions o = SmallRun("127.0.0.1:1");
  o.runner.connect_timeout = absl::Milliseconds(100);
  EXPECT_FALSE(RunBenchmark(o, out).ok());
  o = SmallRun("192.0.2.1:50051");
  EXPECT_EQ(RunBenchmark(o, out).status().code(),
            absl::StatusCode::kPermissionDenied);

  FakeGenerationService::Behavior behavior;
  behavior.context_length = 10;  // 8 + 4 tokens do not fit
  FakeServer small(behavior);
  ASSERT_TRUE(small.ok());
  o = SmallRun(small.target());
  auto outcome = RunBenchmark(o, out);
  EXPECT_EQ(outcome.status().code(), absl::StatusCode::kInvalidArgument);

  behavior = {};
  behavior.fail_every = 1;  // every request fails
  FakeServer failing(behavior);
  ASSERT_TRUE(failing.ok());
  o = SmallRun(failing.target());
  outcome = RunBenchmark(o, out);
  EXPECT_EQ(outcome.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(outcome.status().message().find("RESOURCE_EXHAUSTED"),
            std::string::npos)
      << outcome.status();

  o.sweep_values = {1.5};  // closed-loop sweeps count clients
  EXPECT_FALSE(RunBenchmark(o, out).ok());
}

}  // namespace
}  // namespace strata::bench
