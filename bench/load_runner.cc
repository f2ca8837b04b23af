#include "bench/load_runner.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <unordered_map>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bench/arrival_process.h"
#include "bench/grpc_stream_call.h"
#include "bench/http_stream_call.h"
#include "bench/target.h"
#include "common/logging.h"

namespace strata::bench {
namespace {

using Clock = BenchClock;

absl::Status ValidateRun(const LoadRunner::RunOptions& run) {
  if (run.num_requests < 1) {
    return absl::InvalidArgumentError("num_requests must be >= 1");
  }
  if (run.mode == LoadMode::kClosedLoop && run.concurrency < 1) {
    return absl::InvalidArgumentError("closed loop needs concurrency >= 1");
  }
  if (run.concurrency < 0) {
    return absl::InvalidArgumentError("concurrency must be >= 0");
  }
  if (run.duration < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("duration must be >= 0");
  }
  if (run.max_run_time <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("max_run_time must be > 0");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LoadMode> ParseLoadMode(const std::string& name) {
  if (name == "closed") return LoadMode::kClosedLoop;
  if (name == "open") return LoadMode::kOpenLoop;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown mode '", name, "' (expected closed or open)"));
}

const char* LoadModeName(LoadMode mode) {
  return mode == LoadMode::kClosedLoop ? "closed" : "open";
}

absl::StatusOr<Protocol> ParseProtocol(const std::string& name) {
  if (name == "grpc") return Protocol::kGrpc;
  if (name == "http") return Protocol::kHttp;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown protocol '", name, "' (expected grpc or http)"));
}

const char* ProtocolName(Protocol protocol) {
  return protocol == Protocol::kGrpc ? "grpc" : "http";
}

absl::StatusOr<std::unique_ptr<LoadRunner>> LoadRunner::Create(
    const Options& options) {
  if (absl::Status s = CheckTarget(options.target, options.allow_remote_target);
      !s.ok()) {
    return s;
  }
  if (options.num_channels < 1 || options.num_channels > 64) {
    return absl::InvalidArgumentError("num_channels must be in [1, 64]");
  }
  if (options.request_timeout <= absl::ZeroDuration() ||
      options.connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("timeouts must be > 0");
  }
  if (options.abort_after_consecutive_errors < 0) {
    return absl::InvalidArgumentError(
        "abort_after_consecutive_errors must be >= 0");
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      MakeChannelCredentials(options.tls);
  if (!credentials.ok()) return credentials.status();
  std::unique_ptr<HttpTransport> http;
  if (options.protocol == Protocol::kHttp) {
    if (options.http_target.empty()) {
      return absl::InvalidArgumentError(
          "protocol http needs http_target (stratad's --http_port)");
    }
    if (options.http_threads < 1 || options.http_threads > 64) {
      return absl::InvalidArgumentError("http_threads must be in [1, 64]");
    }
    if (absl::Status s =
            CheckTarget(options.http_target, options.allow_remote_target);
        !s.ok()) {
      return s;
    }
    // The same TLS options as the gRPC channel: stratad serves both ports
    // with one certificate and client CA.
    absl::StatusOr<std::unique_ptr<HttpTransport>> transport =
        HttpTransport::Create({.target = options.http_target,
                               .threads = options.http_threads,
                               .tls = options.tls});
    if (!transport.ok()) return transport.status();
    http = *std::move(transport);
  }
  return std::unique_ptr<LoadRunner>(
      new LoadRunner(options, *std::move(credentials), std::move(http)));
}

LoadRunner::LoadRunner(const Options& options,
                       std::shared_ptr<grpc::ChannelCredentials> credentials,
                       std::unique_ptr<HttpTransport> http)
    : options_(options), http_(std::move(http)) {
  for (int32_t i = 0; i < options_.num_channels; ++i) {
    grpc::ChannelArguments args;
    // Without a local pool every channel to one target shares one
    // connection; separate channels should mean separate connections.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt("strata.bench.channel", i);
    AddTlsChannelArguments(options_.tls, args);
    channels_.push_back(
        grpc::CreateCustomChannel(options_.target, credentials, args));
    stubs_.push_back(v1::Generation::NewStub(channels_.back()));
  }
}

LoadRunner::~LoadRunner() = default;

absl::StatusOr<v1::ModelInfo> LoadRunner::GetModelInfo() {
  grpc::ClientContext context;
  context.set_wait_for_ready(true);
  if (!options_.api_key.empty()) {
    context.AddMetadata("authorization", "Bearer " + options_.api_key);
  }
  context.set_deadline(std::chrono::system_clock::now() +
                       absl::ToChronoNanoseconds(options_.connect_timeout));
  v1::ModelInfo info;
  const grpc::Status status =
      stubs_[0]->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        absl::StrCat("GetModelInfo on ", options_.target,
                                     " failed: ", status.error_message()));
  }
  return info;
}

absl::StatusOr<LoadRunner::RunResult> LoadRunner::Run(const Workload& workload,
                                                      const RunOptions& run) {
  if (absl::Status s = ValidateRun(run); !s.ok()) return s;
  std::unique_ptr<ArrivalProcess> arrivals;
  if (run.mode == LoadMode::kOpenLoop) {
    absl::StatusOr<std::unique_ptr<ArrivalProcess>> created =
        ArrivalProcess::Create({.request_rate = run.request_rate,
                                .burstiness = run.burstiness,
                                .seed = run.seed});
    if (!created.ok()) return created.status();
    arrivals = *std::move(created);
  }
  const int64_t cap = run.mode == LoadMode::kClosedLoop ? run.concurrency
                      : run.concurrency > 0             ? run.concurrency
                                                        : run.num_requests;

  auto shared_state = std::make_shared<RunState>();
  RunState& state = *shared_state;
  state.abort_after_consecutive_errors =
      options_.abort_after_consecutive_errors;
  state.start = Clock::now();
  const Clock::time_point hard_deadline =
      state.start + absl::ToChronoNanoseconds(run.max_run_time);
  const Clock::time_point send_deadline =
      run.duration > absl::ZeroDuration()
          ? std::min(hard_deadline,
                     state.start + absl::ToChronoNanoseconds(run.duration))
          : hard_deadline;
  Clock::time_point next_progress =
      state.start + absl::ToChronoNanoseconds(options_.progress_interval);
  // Both lambdas run with state.mu held.
  auto maybe_progress = [&](Clock::time_point now, int64_t sent) {
    if (options_.progress_interval <= absl::ZeroDuration() ||
        now < next_progress) {
      return;
    }
    next_progress = now + absl::ToChronoNanoseconds(options_.progress_interval);
    STRATA_LOG(INFO) << run.label << ": " << SecondsBetween(state.start, now)
                     << " s, sent " << sent << "/" << run.num_requests
                     << ", ended " << state.records.size() << " ("
                     << state.num_failed << " failed), in flight "
                     << state.in_flight;
  };
  // Waits on state.changed until `ready` or `until`, waking at least once a
  // second to log progress. Returns ready().
  auto wait_until = [&](auto ready, Clock::time_point until, int64_t sent) {
    while (!ready()) {
      const Clock::time_point now = Clock::now();
      maybe_progress(now, sent);
      if (now >= until) return false;
      const auto step =
          std::min<Clock::duration>(until - now, std::chrono::seconds(1));
      state.changed.WaitWithTimeout(&state.mu, absl::FromChrono(step));
    }
    return true;
  };

  // True when `at` is the end of the run's send window (--duration_s).
  const auto duration_ended = [&](Clock::time_point at) {
    return run.duration > absl::ZeroDuration() &&
           state.start + absl::ToChronoNanoseconds(run.duration) <= at;
  };

  RunResult result;
  std::string stop_reason;
  int64_t sent = 0;
  for (; sent < run.num_requests; ++sent) {
    Clock::time_point send_at = state.start;
    if (arrivals != nullptr) {
      send_at += std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(arrivals->Next()));
    }
    // The request is built before taking the lock (it may be large).
    const int64_t index = run.first_index + sent;
    std::unique_ptr<BenchCall> call;
    if (options_.protocol == Protocol::kHttp) {
      call = std::make_unique<HttpStreamCall>(
          shared_state, index, workload.Make(index), options_, http_.get());
    } else {
      call = std::make_unique<GrpcStreamCall>(
          shared_state, index, workload.Make(index), options_,
          stubs_[sent % stubs_.size()].get());
    }
    BenchCall* raw = call.get();
    std::vector<std::unique_ptr<BenchCall>> reap;
    {
      absl::MutexLock lock(&state.mu);
      // Wait for the arrival time (open loop), then for a free slot.
      const Clock::time_point wake = std::min(send_at, send_deadline);
      wait_until([&] { return !state.stop_reason.empty(); }, wake, sent);
      wait_until(
          [&] { return !state.stop_reason.empty() || state.in_flight < cap; },
          send_deadline, sent);
      if (!state.stop_reason.empty()) {
        stop_reason = state.stop_reason;
        break;
      }
      if (Clock::now() >= send_deadline) {
        // A send window that ends with the max run time (--duration_s ==
        // --max_run_s) ends normally: only a max run time reached before
        // the window's end is an abort.
        if (!duration_ended(send_deadline)) {
          stop_reason =
              absl::StrCat("max run time (",
                           absl::FormatDuration(run.max_run_time), ") reached");
        }
        break;  // the duration ended: a normal stop
      }
      ++state.in_flight;
      state.max_in_flight = std::max(state.max_in_flight, state.in_flight);
      state.live.emplace(raw, std::move(call));
      reap.swap(state.finished);
    }
    raw->Start();
    reap.clear();  // destroys finished calls outside the lock
  }

  // Drain: wait for every request in flight, up to the hard deadline, then
  // cancel what is left and wait (briefly) for gRPC to confirm.
  std::vector<std::unique_ptr<BenchCall>> reap;
  {
    absl::MutexLock lock(&state.mu);
    if (!wait_until([&] { return state.in_flight == 0; }, hard_deadline,
                    sent)) {
      std::vector<BenchCall*> to_cancel;
      for (const auto& [raw, owned] : state.live) to_cancel.push_back(raw);
      result.num_cancelled_by_bench = static_cast<int64_t>(to_cancel.size());
      if (!stop_reason.empty() || !duration_ended(hard_deadline)) {
        if (stop_reason.empty()) {
          stop_reason =
              absl::StrCat("max run time (",
                           absl::FormatDuration(run.max_run_time), ") reached");
        }
        absl::StrAppend(&stop_reason, "; cancelled ", to_cancel.size(),
                        " requests in flight");
      }
      // TryCancel may run callbacks inline; call it without the lock. The
      // calls stay alive: only this thread destroys them.
      state.mu.Unlock();
      for (BenchCall* call : to_cancel) call->TryCancel();
      state.mu.Lock();
      if (!wait_until([&] { return state.in_flight == 0; },
                      Clock::now() + std::chrono::seconds(30), sent)) {
        // gRPC promises OnDone after a cancel; if it has not come, leaking
        // the calls (and the state they point to) is safer than freeing
        // what gRPC may still use.
        STRATA_LOG(ERROR) << state.in_flight
                          << " cancelled requests never ended; leaking them";
        for (auto& [raw, owned] : state.live) owned.release();
        return absl::InternalError(
            "requests did not end 30 s after cancellation");
      }
    }
    result.records = std::move(state.records);
    result.duration_s = SecondsBetween(
        state.start, result.records.empty() ? Clock::now() : state.last_end);
    result.num_sent = sent;
    result.max_concurrent_requests = state.max_in_flight;
    reap.swap(state.finished);
  }
  reap.clear();  // drops the reactors' references to the state
  result.aborted = !stop_reason.empty();
  result.abort_reason = stop_reason;
  return result;
}

}  // namespace strata::bench
