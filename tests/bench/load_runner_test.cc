// The load runner against a real gRPC server on loopback (an in-process fake
// of the Generation service): request shapes, timing records, error
// accounting, deadlines, and a server that dies mid-run.
#include "bench/load_runner.h"

#include <chrono>
#include <map>
#include <memory>
#include <thread>

#include "absl/time/time.h"
#include "bench/metrics.h"
#include "bench/workload.h"
#include "gtest/gtest.h"
#include "tests/bench/fake_generation_service.h"

namespace strata::bench {
namespace {

std::unique_ptr<Workload> TokenWorkload(int32_t input_len, int32_t output_len) {
  Workload::Options o;
  o.input_len = input_len;
  o.output_len = output_len;
  o.max_token_id = 1000;
  auto workload = Workload::Create(o);
  EXPECT_TRUE(workload.ok()) << workload.status();
  return *std::move(workload);
}

std::unique_ptr<LoadRunner> Runner(const std::string& target,
                                   LoadRunner::Options options = {}) {
  options.target = target;
  auto runner = LoadRunner::Create(options);
  EXPECT_TRUE(runner.ok()) << runner.status();
  return *std::move(runner);
}

std::map<std::string, int64_t> ErrorCounts(
    const LoadRunner::RunResult& result) {
  std::map<std::string, int64_t> counts;
  for (const RequestRecord& r : result.records) {
    if (!r.success) ++counts[r.error_code];
  }
  return counts;
}

TEST(LoadRunnerTest, ClosedLoopTimesEveryToken) {
  FakeServer server;
  ASSERT_TRUE(server.ok());
  auto runner = Runner(server.target());
  auto info = runner->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->vocab_size(), 1000u);

  auto workload = TokenWorkload(12, 5);
  LoadRunner::RunOptions run;
  run.mode = LoadMode::kClosedLoop;
  run.concurrency = 3;
  run.num_requests = 12;
  auto result = runner->Run(*workload, run);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FALSE(result->aborted) << result->abort_reason;
  EXPECT_EQ(result->num_sent, 12);
  ASSERT_EQ(result->records.size(), 12u);
  EXPECT_LE(result->max_concurrent_requests, 3);
  EXPECT_GE(result->max_concurrent_requests, 1);
  std::set<int64_t> indices;
  for (const RequestRecord& r : result->records) {
    EXPECT_TRUE(r.success) << r.error_code << ": " << r.error_message;
    indices.insert(r.index);
    EXPECT_EQ(r.prompt_tokens, 12);
    EXPECT_EQ(r.output_tokens, 5);
    EXPECT_EQ(r.target_output_tokens, 5);
    EXPECT_EQ(r.cached_prompt_tokens, 6);
    EXPECT_GT(r.ttft_s, 0);
    ASSERT_EQ(r.itl_s.size(), 4u);  // one chunk per token
    double sum = r.ttft_s;
    for (double itl : r.itl_s) {
      EXPECT_GT(itl, 0);
      sum += itl;
    }
    EXPECT_LE(sum, r.e2el_s + 1e-9);
    EXPECT_GE(r.start_s, 0);
    EXPECT_LE(r.start_s + r.e2el_s, result->duration_s + 1e-6);
  }
  EXPECT_EQ(indices.size(), 12u);
  EXPECT_EQ(*indices.begin(), 0);

  // The server saw exactly the workload's prompts, with exact-length
  // sampling settings.
  const std::vector<v1::CompletionRequest> seen = server.service().requests();
  ASSERT_EQ(seen.size(), 12u);
  for (const v1::CompletionRequest& request : seen) {
    EXPECT_EQ(request.token_ids().ids_size(), 12);
    EXPECT_EQ(request.sampling().max_tokens(), 5u);
    EXPECT_TRUE(request.sampling().ignore_eos());
    EXPECT_EQ(request.sampling().temperature(), 0.0f);
  }
}

TEST(LoadRunnerTest, OpenLoopWithRateAndCap) {
  FakeServer server;
  ASSERT_TRUE(server.ok());
  auto runner = Runner(server.target(), {.num_channels = 2});
  auto workload = TokenWorkload(4, 3);
  LoadRunner::RunOptions run;
  run.mode = LoadMode::kOpenLoop;
  run.request_rate = 400;  // ~25 ms for 10 requests
  run.concurrency = 0;
  run.num_requests = 10;
  run.seed = 5;
  auto result = runner->Run(*workload, run);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->records.size(), 10u);
  for (const RequestRecord& r : result->records) EXPECT_TRUE(r.success);

  run.request_rate = std::numeric_limits<double>::infinity();
  run.concurrency = 2;  // everything arrives at once; at most 2 in flight
  result = runner->Run(*workload, run);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->records.size(), 10u);
  EXPECT_EQ(result->max_concurrent_requests, 2);
}

TEST(LoadRunnerTest, ChatAndTextPromptsUseTheirRpcs) {
  FakeServer server;
  ASSERT_TRUE(server.ok());
  auto runner = Runner(server.target());
  DatasetEntry text;
  text.prompt = "hello there";
  text.output_len = 2;
  DatasetEntry chat;
  chat.messages = {{"system", "abc"}, {"user", "de"}};
  chat.output_len = 3;
  Workload::Options o;
  o.kind = WorkloadKind::kDataset;
  auto workload = Workload::CreateFromEntries(o, {text, chat});
  ASSERT_TRUE(workload.ok());
  LoadRunner::RunOptions run;
  run.concurrency = 2;
  run.num_requests = 4;
  auto result = runner->Run(**workload, run);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->records.size(), 4u);
  EXPECT_EQ(server.service().num_chat(), 2);
  for (const RequestRecord& r : result->records) {
    ASSERT_TRUE(r.success);
    // The fake reports prompt length in characters; the runner takes the
    // server's usage for prompts whose length it cannot know.
    if (r.output_tokens == 2) {
      EXPECT_EQ(r.prompt_tokens, 11);
    }
    if (r.output_tokens == 3) {
      EXPECT_EQ(r.prompt_tokens, 5);
    }
  }
}

TEST(LoadRunnerTest, CountsErrorsByCode) {
  FakeGenerationService::Behavior behavior;
  behavior.fail_every = 3;
  FakeServer server(behavior);
  ASSERT_TRUE(server.ok());
  auto runner = Runner(server.target());
  auto workload = TokenWorkload(4, 2);
  LoadRunner::RunOptions run;
  run.concurrency = 1;
  run.num_requests = 9;
  auto result = runner->Run(*workload, run);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FALSE(result->aborted);
  const auto errors = ErrorCounts(*result);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors.at("RESOURCE_EXHAUSTED"), 3);
  const BenchMetrics m = ComputeMetrics(result->records, 1, Slo());
  EXPECT_EQ(m.completed, 6);
  EXPECT_EQ(m.failed, 3);
}

TEST(LoadRunnerTest, FinishReasonErrorIsAFailure) {
  FakeGenerationService::Behavior behavior;
  behavior.finish_with_error = true;
  FakeServer server(behavior);
  ASSERT_TRUE(server.ok());
  auto runner = Runner(server.target());
  auto workload = TokenWorkload(4, 2);
  LoadRunner::RunOptions run;
  run.num_requests = 2;
  auto result = runner->Run(*workload, run);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(ErrorCounts(*result).at(kFinishReasonError), 2);
}

TEST(LoadRunnerTest, PerRequestDeadline) {
  FakeGenerationService::Behavior behavior;
  behavior.hang = true;
  FakeServer server(behavior);
  ASSERT_TRUE(server.ok());
  auto runner =
      Runner(server.target(), {.request_timeout = absl::Milliseconds(100),
                               .abort_after_consecutive_errors = 0});
  auto workload = TokenWorkload(4, 2);
  LoadRunner::RunOptions run;
  run.concurrency = 2;
  run.num_requests = 4;
  auto result = runner->Run(*workload, run);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(ErrorCounts(*result).at("DEADLINE_EXCEEDED"), 4);
  EXPECT_FALSE(result->aborted);
}

TEST(LoadRunnerTest, DeadlineCountsFromSendingNotFromWaiting) {
  FakeServer server;
  ASSERT_TRUE(server.ok());
  auto runner =
      Runner(server.target(), {.request_timeout = absl::Milliseconds(150)});
  auto workload = TokenWorkload(4, 2);
  LoadRunner::RunOptions run;
  run.mode = LoadMode::kOpenLoop;
  run.request_rate = 4;  // regular gaps of ~250 ms, longer than the deadline
  run.burstiness = 1000;
  run.num_requests = 3;
  auto result = runner->Run(*workload, run);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->records.size(), 3u);
  for (const RequestRecord& r : result->records) {
    EXPECT_TRUE(r.success) << r.error_code;
  }
  EXPECT_GT(result->duration_s, 0.4);
}

TEST(LoadRunnerTest, MaxRunTimeCancelsWhatIsInFlight) {
  FakeGenerationService::Behavior behavior;
  behavior.hang = true;
  FakeServer server(behavior);
  ASSERT_TRUE(server.ok());
  auto runner = Runner(server.target());  // 120 s request deadline
  auto workload = TokenWorkload(4, 2);
  LoadRunner::RunOptions run;
  run.concurrency = 3;
  run.num_requests = 100;
  run.max_run_time = absl::Milliseconds(300);
  const auto start = std::chrono::steady_clock::now();
  auto result = runner->Run(*workload, run);
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->aborted);
  EXPECT_NE(result->abort_reason.find("max run time"), std::string::npos)
      << result->abort_reason;
  EXPECT_EQ(result->num_sent, 3);
  EXPECT_EQ(ErrorCounts(*result).at("CANCELLED"), 3);
  EXPECT_EQ(result->num_cancelled_by_bench, 3);
  // The bench gave up on them: not failures of the daemon.
  const BenchMetrics metrics =
      ComputeMetrics(result->records, result->duration_s, Slo());
  EXPECT_EQ(metrics.cancelled_by_bench, 3);
  EXPECT_EQ(metrics.failed, 0);
  EXPECT_LT(elapsed, 60);  // bounded, not the 120 s request deadline
}

// --duration_s equal to --max_run_s (a soak's usual flags): the requests in
// flight when the window closes are cancelled by the bench, counted as such
// (not as failed), and the run is not an abort (exit 0, not 2).
TEST(LoadRunnerTest, DurationEndingAtMaxRunTimeIsNotAnAbort) {
  FakeGenerationService::Behavior behavior;
  behavior.hang = true;  // every request is still in flight at the end
  FakeServer server(behavior);
  ASSERT_TRUE(server.ok());
  auto runner = Runner(server.target());
  auto workload = TokenWorkload(4, 2);
  LoadRunner::RunOptions run;
  run.concurrency = 2;
  run.num_requests = 100;
  run.duration = absl::Milliseconds(300);
  run.max_run_time = absl::Milliseconds(300);
  auto result = runner->Run(*workload, run);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FALSE(result->aborted) << result->abort_reason;
  EXPECT_EQ(result->num_sent, 2);
  EXPECT_EQ(result->num_cancelled_by_bench, 2);
  ASSERT_EQ(result->records.size(), 2u);
  for (const RequestRecord& r : result->records) {
    EXPECT_TRUE(r.cancelled_by_bench);
  }
  const BenchMetrics metrics =
      ComputeMetrics(result->records, result->duration_s, Slo());
  EXPECT_EQ(metrics.failed, 0);
  EXPECT_EQ(metrics.cancelled_by_bench, 2);
  EXPECT_TRUE(metrics.errors_by_code.empty());
}

TEST(LoadRunnerTest, DurationStopsSending) {
  FakeServer server;
  ASSERT_TRUE(server.ok());
  auto runner = Runner(server.target());
  auto workload = TokenWorkload(4, 2);
  LoadRunner::RunOptions run;
  run.mode = LoadMode::kOpenLoop;
  run.request_rate = 20;  // one request per 50 ms on average
  run.num_requests = 100000;
  run.duration = absl::Milliseconds(300);
  auto result = runner->Run(*workload, run);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FALSE(result->aborted) << result->abort_reason;
  EXPECT_GE(result->num_sent, 1);
  EXPECT_LT(result->num_sent, 100);
  EXPECT_EQ(static_cast<int64_t>(result->records.size()), result->num_sent);
}

TEST(LoadRunnerTest, ServerDyingMidRunIsReportedNotHungOn) {
  FakeGenerationService::Behavior behavior;
  behavior.token_delay = std::chrono::milliseconds(2);
  auto server = std::make_unique<FakeServer>(behavior);
  ASSERT_TRUE(server->ok());
  auto runner = Runner(server->target(), {.request_timeout = absl::Seconds(20),
                                          .abort_after_consecutive_errors = 5});
  auto workload = TokenWorkload(4, 10);
  std::thread killer([&] {
    const auto give_up =
        std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (server->service().num_finished() < 10 &&
           std::chrono::steady_clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    server->Shutdown();  // cancels the calls in flight
  });
  LoadRunner::RunOptions run;
  run.concurrency = 4;
  run.num_requests = 100000;
  const auto start = std::chrono::steady_clock::now();
  auto result = runner->Run(*workload, run);
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  killer.join();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->aborted);
  EXPECT_NE(result->abort_reason.find("5 requests failed in a row"),
            std::string::npos)
      << result->abort_reason;
  EXPECT_LT(result->num_sent, 1000);
  const auto errors = ErrorCounts(*result);
  EXPECT_GE(errors.count("UNAVAILABLE") + errors.count("CANCELLED"), 1u);
  int64_t ok = 0;
  for (const RequestRecord& r : result->records) ok += r.success;
  EXPECT_GE(ok, 5);
  EXPECT_LT(elapsed, 15);
}

TEST(LoadRunnerTest, NoServer) {
  // Reserve a port, then free it, so nothing listens there.
  std::string target;
  {
    FakeServer server;
    ASSERT_TRUE(server.ok());
    target = server.target();
  }
  auto runner = Runner(target, {.connect_timeout = absl::Milliseconds(200),
                                .abort_after_consecutive_errors = 3});
  auto info = runner->GetModelInfo();
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.status().code(), absl::StatusCode::kDeadlineExceeded)
      << info.status();
  auto workload = TokenWorkload(4, 2);
  LoadRunner::RunOptions run;
  run.concurrency = 1;
  run.num_requests = 50;
  auto result = runner->Run(*workload, run);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->aborted);
  EXPECT_EQ(result->num_sent, 3);
  EXPECT_EQ(ErrorCounts(*result).at("UNAVAILABLE"), 3);
}

TEST(LoadRunnerTest, RefusesRemoteTargetsAndBadRuns) {
  auto remote = LoadRunner::Create({.target = "10.1.2.3:50051"});
  EXPECT_EQ(remote.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(LoadRunner::Create(
                  {.target = "10.1.2.3:50051", .allow_remote_target = true})
                  .ok());
  EXPECT_FALSE(LoadRunner::Create({.num_channels = 0}).ok());

  auto runner = Runner("127.0.0.1:1");
  auto workload = TokenWorkload(4, 2);
  LoadRunner::RunOptions run;
  run.num_requests = 0;
  EXPECT_FALSE(runner->Run(*workload, run).ok());
  run.num_requests = 1;
  run.concurrency = 0;  // closed loop needs clients
  EXPECT_FALSE(runner->Run(*workload, run).ok());
  run.mode = LoadMode::kOpenLoop;
  run.request_rate = 0;
  EXPECT_FALSE(runner->Run(*workload, run).ok());
}

TEST(LoadModeTest, Names) {
  EXPECT_EQ(*ParseLoadMode("closed"), LoadMode::kClosedLoop);
  EXPECT_EQ(*ParseLoadMode("open"), LoadMode::kOpenLoop);
  EXPECT_FALSE(ParseLoadMode("poisson").ok());
  EXPECT_STREQ(LoadModeName(LoadMode::kOpenLoop), "open");
}

}  // namespace
}  // namespace strata::bench
