#include "server/metrics.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"
#include "tests/testing/net_util.h"

namespace strata {
namespace {

using ::strata::testing::FreePort;
using ::strata::testing::HttpGet;

Metrics::Options TestOptions() {
  Metrics::Options options;
  options.model_name = "strata-tiny";
  options.architecture = "LlamaForCausalLM";
  options.dtype = "f32";
  options.backend = "cpu";
  options.version = "0.1.0-test";
  return options;
}

std::string Scrape(Metrics& metrics) {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, metrics.registry()->Collect());
  return out.str();
}

// The value of the sample whose name and labels are exactly `series`
// (e.g. `strata_requests_total{outcome="ok"}`), or nullopt if absent.
std::optional<double> Sample(const std::string& text,
                             const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line.front() == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == absl::string_view::npos) continue;
    if (line.substr(0, space) != series) continue;
    double value = 0;
    if (!absl::SimpleAtod(line.substr(space + 1), &value)) return std::nullopt;
    return value;
  }
  return std::nullopt;
}

// The cumulative count of histogram `name`'s bucket with upper bound `le`
// (compared as numbers: prometheus-cpp prints bounds at full precision).
std::optional<double> Bucket(const std::string& text, const std::string& name,
                             double le) {
  const std::string prefix = absl::StrCat(name, "_bucket{le=\"");
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, prefix)) continue;
    absl::string_view rest = line.substr(prefix.size());
    const absl::string_view bound = rest.substr(0, rest.find('"'));
    double bound_value = 0;
    if (bound == "+Inf") {
      bound_value = std::numeric_limits<double>::infinity();
    } else if (!absl::SimpleAtod(bound, &bound_value)) {
      return std::nullopt;
    }
    if (bound_value != le) continue;
    double value = 0;
    if (!absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &value)) {
      return std::nullopt;
    }
    return value;
  }
  return std::nullopt;
}

constexpr double kInf = std::numeric_limits<double>::infinity();

double Value(const std::string& text, const std::string& series) {
  std::optional<double> v = Sample(text, series);
  EXPECT_TRUE(v.has_value()) << series << " missing from:\n" << text;
  return v.value_or(-1);
}

TEST(MetricsTest, RegistersEveryMetricWithInfoLabels) {
  Metrics metrics(TestOptions());
  const std::string text = Scrape(metrics);
  for (const char* name : {"strata_requests_total",
                           "strata_requests_running",
                           "strata_requests_waiting",
                           "strata_kv_cache_used_blocks",
                           "strata_kv_cache_capacity_blocks",
                           "strata_prefix_cache_queried_tokens_total",
                           "strata_prefix_cache_hit_tokens_total",
                           "strata_preemptions_total",
                           "strata_prompt_tokens_total",
                           "strata_generation_tokens_total",
                           "strata_time_to_first_token_seconds",
                           "strata_time_per_output_token_seconds",
                           "strata_e2e_request_latency_seconds",
                           "strata_request_queue_time_seconds",
                           "strata_engine_step_duration_seconds",
                           "strata_step_batch_size_requests",
                           "strata_step_tokens",
                           "strata_engine_steps_total",
                           "strata_engine_step_failures_total",
                           "strata_engine_stalled",
                           "strata_model_info",
                           "strata_build_info"}) {
    EXPECT_NE(text.find(absl::StrCat("# TYPE ", name, " ")), std::string::npos)
        << name;
    EXPECT_NE(text.find(absl::StrCat("# HELP ", name, " ")), std::string::npos)
        << name;
  }
  for (const char* outcome :
       {"ok", "cancelled", "deadline", "rejected", "error"}) {
    EXPECT_EQ(Value(text, absl::StrCat("strata_requests_total{outcome=\"",
                                       outcome, "\"}")),
              0)
        << outcome;
  }
  EXPECT_EQ(Value(text,
                  "strata_model_info{architecture=\"LlamaForCausalLM\","
                  "backend=\"cpu\",dtype=\"f32\",model=\"strata-tiny\"}"),
            1);
  EXPECT_EQ(Value(text, "strata_build_info{version=\"0.1.0-test\"}"), 1);
  EXPECT_EQ(Value(text, "strata_engine_stalled"), 0);
}

TEST(MetricsTest, OnStepSetsGaugesAndTurnsTotalsIntoIncrements) {
  Metrics metrics(TestOptions());
  StepStats s;
  s.num_items = 3;
  s.num_tokens = 100;
  s.duration = absl::Milliseconds(20);
  s.num_running = 3;
  s.num_waiting = 7;
  s.num_blocks_used = 40;
  s.num_blocks_total = 64;
  s.num_preemptions = 2;
  s.prefix_queried_tokens = 96;
  s.prefix_hit_tokens = 32;
  metrics.OnStep(s);

  s.num_items = 1;
  s.num_tokens = 1;
  s.duration = absl::Milliseconds(3);
  s.failed = true;
  s.num_running = 1;
  s.num_waiting = 0;
  s.num_blocks_used = 5;
  s.num_preemptions = 5;  // running totals: +3, +4, +0
  s.prefix_queried_tokens = 100;
  s.prefix_hit_tokens = 32;
  metrics.OnStep(s);

  std::string text = Scrape(metrics);
  EXPECT_EQ(Value(text, "strata_engine_steps_total"), 2);
  EXPECT_EQ(Value(text, "strata_engine_step_failures_total"), 1);
  EXPECT_EQ(Value(text, "strata_requests_running"), 1);
  EXPECT_EQ(Value(text, "strata_requests_waiting"), 0);
  EXPECT_EQ(Value(text, "strata_kv_cache_used_blocks"), 5);
  EXPECT_EQ(Value(text, "strata_kv_cache_capacity_blocks"), 64);
  EXPECT_EQ(Value(text, "strata_preemptions_total"), 5);
  EXPECT_EQ(Value(text, "strata_prefix_cache_queried_tokens_total"), 100);
  EXPECT_EQ(Value(text, "strata_prefix_cache_hit_tokens_total"), 32);

  // Batch sizes 3 and 1; tokens 100 and 1; durations 20 ms and 3 ms.
  EXPECT_EQ(Value(text, "strata_step_batch_size_requests_count"), 2);
  EXPECT_EQ(Value(text, "strata_step_batch_size_requests_sum"), 4);
  EXPECT_EQ(Bucket(text, "strata_step_batch_size_requests", 1), 1);
  EXPECT_EQ(Bucket(text, "strata_step_batch_size_requests", 2), 1);
  EXPECT_EQ(Bucket(text, "strata_step_batch_size_requests", 4), 2);
  EXPECT_EQ(Bucket(text, "strata_step_tokens", 64), 1);
  EXPECT_EQ(Bucket(text, "strata_step_tokens", 128), 2);
  EXPECT_EQ(Bucket(text, "strata_step_tokens", 8192), 2);
  EXPECT_EQ(Bucket(text, "strata_step_tokens", kInf), 2);
  EXPECT_EQ(Value(text, "strata_engine_step_duration_seconds_count"), 2);
  EXPECT_EQ(Bucket(text, "strata_engine_step_duration_seconds", 0.0025), 0);
  EXPECT_EQ(Bucket(text, "strata_engine_step_duration_seconds", 0.005), 1);
  EXPECT_EQ(Bucket(text, "strata_engine_step_duration_seconds", 0.025), 2);
  EXPECT_NEAR(Value(text, "strata_engine_step_duration_seconds_sum"), 0.023,
              1e-9);

  // A new scheduler starts its totals at zero again: count from there.
  s.num_preemptions = 1;
  s.prefix_queried_tokens = 10;
  s.prefix_hit_tokens = 4;
  metrics.OnStep(s);
  text = Scrape(metrics);
  EXPECT_EQ(Value(text, "strata_preemptions_total"), 6);
  EXPECT_EQ(Value(text, "strata_prefix_cache_queried_tokens_total"), 110);
  EXPECT_EQ(Value(text, "strata_prefix_cache_hit_tokens_total"), 36);
}

FinishInfo Finished(FinishReason reason, absl::Status status,
                    int32_t prompt_tokens, int32_t completion_tokens,
                    absl::Duration queue, absl::Duration ttft,
                    absl::Duration latency) {
  FinishInfo info;
  info.reason = reason;
  info.status = std::move(status);
  info.stats.prompt_tokens = prompt_tokens;
  info.stats.completion_tokens = completion_tokens;
  info.stats.longest_choice_tokens = completion_tokens;  // one choice
  info.stats.queue_time = queue;
  info.stats.time_to_first_token = ttft;
  info.stats.latency = latency;
  return info;
}

TEST(MetricsTest, RecordFinishCountsOutcomesTokensAndLatencies) {
  Metrics metrics(TestOptions());
  // ok: 11 tokens, first at 100 ms, last at 1.1 s -> 100 ms per output token.
  metrics.RecordFinish(Finished(FinishReason::kLength, absl::OkStatus(), 20, 11,
                                absl::Milliseconds(40), absl::Milliseconds(100),
                                absl::Seconds(1.1)));
  // ok (stop): a single token, so no time per output token.
  metrics.RecordFinish(Finished(FinishReason::kStop, absl::OkStatus(), 5, 1,
                                absl::Milliseconds(2), absl::Milliseconds(30),
                                absl::Milliseconds(30)));
  // cancelled by the client after 3 tokens.
  metrics.RecordFinish(Finished(
      FinishReason::kCancelled, absl::CancelledError("client went away"), 8, 3,
      absl::Milliseconds(1), absl::Seconds(2), absl::Seconds(4)));
  // deadline passed while queued: no token, never scheduled.
  metrics.RecordFinish(Finished(
      FinishReason::kCancelled, absl::DeadlineExceededError("deadline"), 7, 0,
      absl::ZeroDuration(), absl::ZeroDuration(), absl::Seconds(30)));
  // engine error during prefill.
  metrics.RecordFinish(Finished(
      FinishReason::kError, absl::InternalError("step failed"), 9, 0,
      absl::Milliseconds(500), absl::ZeroDuration(), absl::Milliseconds(700)));
  metrics.RecordRejected();
  metrics.RecordRejected();

  const std::string text = Scrape(metrics);
  EXPECT_EQ(Value(text, "strata_requests_total{outcome=\"ok\"}"), 2);
  EXPECT_EQ(Value(text, "strata_requests_total{outcome=\"cancelled\"}"), 1);
  EXPECT_EQ(Value(text, "strata_requests_total{outcome=\"deadline\"}"), 1);
  EXPECT_EQ(Value(text, "strata_requests_total{outcome=\"error\"}"), 1);
  EXPECT_EQ(Value(text, "strata_requests_total{outcome=\"rejected\"}"), 2);
  EXPECT_EQ(Value(text, "strata_prompt_tokens_total"), 20 + 5 + 8 + 7 + 9);
  EXPECT_EQ(Value(text, "strata_generation_tokens_total"), 11 + 1 + 3);

  // Every finish has an end-to-end latency.
  EXPECT_EQ(Value(text, "strata_e2e_request_latency_seconds_count"), 5);
  EXPECT_NEAR(Value(text, "strata_e2e_request_latency_seconds_sum"),
              1.1 + 0.03 + 4 + 30 + 0.7, 1e-9);
  EXPECT_EQ(Bucket(text, "strata_e2e_request_latency_seconds", 0.025), 0);
  EXPECT_EQ(Bucket(text, "strata_e2e_request_latency_seconds", 0.05), 1);
  EXPECT_EQ(Bucket(text, "strata_e2e_request_latency_seconds", 1), 2);
  EXPECT_EQ(Bucket(text, "strata_e2e_request_latency_seconds", 2.5), 3);
  EXPECT_EQ(Bucket(text, "strata_e2e_request_latency_seconds", 5), 4);
  EXPECT_EQ(Bucket(text, "strata_e2e_request_latency_seconds", 30), 5);

  // Time to first token only where a token came.
  EXPECT_EQ(Value(text, "strata_time_to_first_token_seconds_count"), 3);
  EXPECT_NEAR(Value(text, "strata_time_to_first_token_seconds_sum"),
              0.1 + 0.03 + 2, 1e-9);
  // Queue time where the request was scheduled (the deadline one never was).
  EXPECT_EQ(Value(text, "strata_request_queue_time_seconds_count"), 4);
  // Time per output token: (1.1 - 0.1) / 10 and (4 - 2) / 2.
  EXPECT_EQ(Value(text, "strata_time_per_output_token_seconds_count"), 2);
  EXPECT_NEAR(Value(text, "strata_time_per_output_token_seconds_sum"),
              0.1 + 1.0, 1e-9);
  EXPECT_EQ(Bucket(text, "strata_time_per_output_token_seconds", 0.1), 1);
  EXPECT_EQ(Bucket(text, "strata_time_per_output_token_seconds", 1), 2);
}

TEST(MetricsTest, EngineStalledGauge) {
  Metrics metrics(TestOptions());
  metrics.SetEngineStalled(true);
  EXPECT_EQ(Value(Scrape(metrics), "strata_engine_stalled"), 1);
  metrics.SetEngineStalled(false);
  EXPECT_EQ(Value(Scrape(metrics), "strata_engine_stalled"), 0);
}

TEST(MetricsTest, ConcurrentRecordersLoseNothing) {
  Metrics metrics(TestOptions());
  constexpr int kThreads = 4;
  constexpr int kPerThread = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&metrics] {
      for (int i = 0; i < kPerThread; ++i) {
        metrics.RecordFinish(Finished(
            FinishReason::kStop, absl::OkStatus(), 3, 2, absl::Milliseconds(1),
            absl::Milliseconds(2), absl::Milliseconds(3)));
        metrics.RecordRejected();
      }
    });
  }
  // The engine thread's observer runs at the same time.
  StepStats s;
  s.num_items = 1;
  s.num_tokens = 1;
  for (int i = 1; i <= kPerThread; ++i) {
    s.num_preemptions = i;
    metrics.OnStep(s);
  }
  for (std::thread& t : threads) t.join();
  const std::string text = Scrape(metrics);
  EXPECT_EQ(Value(text, "strata_requests_total{outcome=\"ok\"}"),
            kThreads * kPerThread);
  EXPECT_EQ(Value(text, "strata_requests_total{outcome=\"rejected\"}"),
            kThreads * kPerThread);
  EXPECT_EQ(Value(text, "strata_generation_tokens_total"),
            2 * kThreads * kPerThread);
  EXPECT_EQ(Value(text, "strata_time_per_output_token_seconds_count"),
            kThreads * kPerThread);
  EXPECT_EQ(Value(text, "strata_preemptions_total"), kPerThread);
  EXPECT_EQ(Value(text, "strata_engine_steps_total"), kPerThread);
}

// With n > 1 choices streamed side by side, time per output token is per
// stream: the time after the first token over the longest choice's tokens,
// not over the tokens of all choices together.
TEST(MetricsTest, TimePerOutputTokenOfSeveralChoicesIsPerStream) {
  Metrics metrics(TestOptions());
  FinishInfo info =
      Finished(FinishReason::kLength, absl::OkStatus(), 5, 30,
               absl::Milliseconds(1), absl::Seconds(1), absl::Seconds(10));
  info.stats.longest_choice_tokens = 10;  // 3 choices of 10 tokens
  metrics.RecordFinish(info);
  const std::string text = Scrape(metrics);
  EXPECT_EQ(Value(text, "strata_generation_tokens_total"), 30);
  EXPECT_EQ(Value(text, "strata_time_per_output_token_seconds_count"), 1);
  EXPECT_NEAR(Value(text, "strata_time_per_output_token_seconds_sum"), 9.0 / 9,
              1e-9);
}

// Starts the exposer on a free loopback port, retrying if another process
// took the port between FreePort() and the bind.
absl::Status StartOnFreePort(Metrics& metrics) {
  absl::Status status = absl::UnavailableError("no attempt");
  for (int attempt = 0; attempt < 5 && absl::IsUnavailable(status); ++attempt) {
    status = metrics.StartExposer("127.0.0.1", FreePort());
  }
  return status;
}

TEST(MetricsTest, ExposerServesTheRegistryOverHttp) {
  Metrics metrics(TestOptions());
  EXPECT_EQ(metrics.exposer_port(), 0);
  ASSERT_TRUE(StartOnFreePort(metrics).ok());
  const int port = metrics.exposer_port();
  ASSERT_GT(port, 0);

  metrics.RecordFinish(Finished(FinishReason::kLength, absl::OkStatus(), 4, 2,
                                absl::Milliseconds(1), absl::Milliseconds(5),
                                absl::Milliseconds(9)));
  StepStats s;
  s.num_items = 2;
  s.num_tokens = 9;
  s.num_waiting = 3;
  metrics.OnStep(s);

  const std::string response = HttpGet(port, "/metrics");
  ASSERT_TRUE(absl::StartsWith(response, "HTTP/1.")) << response;
  EXPECT_NE(response.find(" 200 "), std::string::npos) << response;
  const size_t body_start = response.find("\r\n\r\n");
  ASSERT_NE(body_start, std::string::npos);
  const std::string body = response.substr(body_start + 4);
  EXPECT_EQ(Value(body, "strata_requests_total{outcome=\"ok\"}"), 1);
  EXPECT_EQ(Value(body, "strata_requests_waiting"), 3);
  EXPECT_EQ(Value(body, "strata_generation_tokens_total"), 2);
  EXPECT_EQ(Value(body, "strata_build_info{version=\"0.1.0-test\"}"), 1);

  // Lint the scrape with Prometheus' own checker when it is installed
  // (Debian's `prometheus` package; scripts/install-deps.sh installs it).
  if (std::system("command -v promtool >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "promtool not installed; scrape lint skipped";
  }
  const std::string path =
      absl::StrCat(::testing::TempDir(), "strata_metrics_scrape.txt");
  {
    std::ofstream out(path);
    out << body;
  }
  const std::string command =
      absl::StrCat("promtool check metrics < '", path, "' 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string lint;
  char buf[512];
  while (fgets(buf, sizeof(buf), pipe) != nullptr) lint += buf;
  pclose(pipe);
  // Any finding is a failure.
  for (absl::string_view finding : absl::StrSplit(lint, '\n')) {
    if (finding.empty()) continue;
    ADD_FAILURE() << "promtool check metrics: " << finding;
  }
  std::remove(path.c_str());
}

TEST(MetricsTest, ExposerArgumentsAndBindErrors) {
  Metrics metrics(TestOptions());
  EXPECT_TRUE(metrics.StartExposer("127.0.0.1", 0).ok());  // disabled
  EXPECT_EQ(metrics.exposer_port(), 0);
  EXPECT_EQ(metrics.StartExposer("127.0.0.1", -1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(metrics.StartExposer("127.0.0.1", 70000).code(),
            absl::StatusCode::kInvalidArgument);

  ASSERT_TRUE(StartOnFreePort(metrics).ok());
  const int port = metrics.exposer_port();
  EXPECT_EQ(metrics.StartExposer("127.0.0.1", port).code(),
            absl::StatusCode::kFailedPrecondition);

  // A second process-wide exposer on the same port cannot bind.
  Metrics other(TestOptions());
  const absl::Status status = other.StartExposer("127.0.0.1", port);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_EQ(other.exposer_port(), 0);
}

}  // namespace
}  // namespace strata
