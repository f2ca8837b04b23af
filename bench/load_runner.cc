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
#include "bench/target.h"
#include "common/logging.h"

namespace strata::bench {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

class StreamCall;

// What the dispatcher and the reactors share. Reactors are owned here (not
// self-deleting) so that the dispatcher can TryCancel any of them without
// racing their destruction; finished ones are reaped by the dispatcher.
// Each reactor also holds a reference to the state, so that the last OnDone
// can still unlock `mu` after the dispatcher has returned; the cycle is
// broken when the dispatcher destroys the reactors.
struct RunState {
  absl::Mutex mu;
  absl::CondVar changed;  // a request ended
  Clock::time_point start;
  std::unordered_map<StreamCall*, std::unique_ptr<StreamCall>> live
      ABSL_GUARDED_BY(mu);
  std::vector<std::unique_ptr<StreamCall>> finished ABSL_GUARDED_BY(mu);
  std::vector<RequestRecord> records ABSL_GUARDED_BY(mu);
  int64_t in_flight ABSL_GUARDED_BY(mu) = 0;
  int64_t max_in_flight ABSL_GUARDED_BY(mu) = 0;
  int64_t num_failed ABSL_GUARDED_BY(mu) = 0;
  int32_t consecutive_errors ABSL_GUARDED_BY(mu) = 0;
  int32_t abort_after_consecutive_errors = 0;
  std::string stop_reason ABSL_GUARDED_BY(mu);  // non-empty: stop sending
  Clock::time_point last_end ABSL_GUARDED_BY(mu);
};

// One streaming request. gRPC calls OnReadDone/OnDone on its callback
// threads, one at a time per call; OnDone is the last callback, after which
// only the dispatcher touches the object (to destroy it).
class StreamCall : public grpc::ClientReadReactor<v1::CompletionChunk> {
 public:
  StreamCall(std::shared_ptr<RunState> state, int64_t index,
             const BenchRequest& request, const LoadRunner::Options& options)
      : state_(std::move(state)), prompt_len_(request.prompt_len) {
    record_.index = index;
    record_.target_output_tokens = request.output_len;
    v1::SamplingParams* sampling = nullptr;
    if (request.kind == BenchRequest::Kind::kChat) {
      chat_ = true;
      for (const ChatTurn& turn : request.messages) {
        v1::ChatMessage* message = chat_request_.add_messages();
        message->set_role(turn.role);
        message->set_content(turn.content);
      }
      sampling = chat_request_.mutable_sampling();
    } else {
      if (request.kind == BenchRequest::Kind::kText) {
        completion_request_.set_text(request.text);
      } else {
        completion_request_.mutable_token_ids()->mutable_ids()->Add(
            request.token_ids.begin(), request.token_ids.end());
      }
      sampling = completion_request_.mutable_sampling();
    }
    sampling->set_max_tokens(static_cast<uint32_t>(request.output_len));
    sampling->set_temperature(options.temperature);
    sampling->set_ignore_eos(options.ignore_eos);
    if (options.exit_threshold.has_value()) {
      sampling->set_exit_threshold(*options.exit_threshold);
    }
    if (options.exit_confidence.has_value()) {
      sampling->set_exit_confidence(*options.exit_confidence);
    }
    if (options.n > 1) sampling->set_n(static_cast<uint32_t>(options.n));
    if (!options.api_key.empty()) {
      context_.AddMetadata("authorization", "Bearer " + options.api_key);
    }
    request_timeout_ = options.request_timeout;
  }

  // Sends the request. Call once, without holding state->mu.
  void Start(v1::Generation::Stub* stub) {
    start_ = Clock::now();
    record_.start_s = SecondsBetween(state_->start, start_);
    // The deadline counts from sending, not from when the request was built
    // (the dispatcher may have waited for an arrival time or a free slot).
    context_.set_deadline(std::chrono::system_clock::now() +
                          absl::ToChronoNanoseconds(request_timeout_));
    if (chat_) {
      stub->async()->ChatStream(&context_, &chat_request_, this);
    } else {
      stub->async()->CompleteStream(&context_, &completion_request_, this);
    }
    StartRead(&chunk_);
    StartCall();
  }

  // The bench gives up on the request (max run time): it ends as
  // cancelled_by_bench, not as a failure of the daemon.
  void TryCancel() {
    cancelled_by_bench_.store(true);
    context_.TryCancel();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream ended; OnDone follows
    const Clock::time_point now = Clock::now();
    if (chunk_.token_ids_size() > 0 || !chunk_.text().empty()) {
      if (record_.ttft_s < 0) {
        record_.ttft_s = SecondsBetween(start_, now);
      } else {
        record_.itl_s.push_back(SecondsBetween(last_token_, now));
      }
      last_token_ = now;
      ids_received_ += chunk_.token_ids_size();
    }
    if (chunk_.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      finish_reason_ = chunk_.finish_reason();
      has_usage_ = chunk_.has_usage();
      usage_ = chunk_.usage();
      finish_message_ = chunk_.stop_reason();
    }
    StartRead(&chunk_);
  }

  void OnDone(const grpc::Status& status) override {
    const Clock::time_point now = Clock::now();
    record_.e2el_s = SecondsBetween(start_, now);
    record_.prompt_tokens =
        has_usage_ ? usage_.prompt_tokens() : std::max<int64_t>(prompt_len_, 0);
    record_.output_tokens =
        has_usage_ ? usage_.completion_tokens() : ids_received_;
    record_.cached_prompt_tokens = usage_.cached_prompt_tokens();
    record_.loops_sum = usage_.mean_loops() * usage_.completion_tokens();
    if (cancelled_by_bench_.load() && !status.ok()) {
      record_.cancelled_by_bench = true;
      record_.error_code = CodeName(status.error_code());
      record_.error_message = "cancelled by the bench";
    } else if (!status.ok()) {
      record_.error_code = CodeName(status.error_code());
      record_.error_message = status.error_message();
    } else if (finish_reason_ == v1::FINISH_REASON_LENGTH ||
               finish_reason_ == v1::FINISH_REASON_STOP) {
      record_.success = true;
    } else if (finish_reason_ == v1::FINISH_REASON_ERROR) {
      record_.error_code = kFinishReasonError;
      record_.error_message = finish_message_;
    } else if (finish_reason_ == v1::FINISH_REASON_CANCELLED) {
      record_.error_code = kFinishReasonCancelled;
      record_.error_message = finish_message_;
    } else {
      record_.error_code = kIncompleteStream;
      record_.error_message = "stream ended OK without a final chunk";
    }
    // `keep` outlives this object: once `mu` is released below the
    // dispatcher may destroy this reactor (and drop every other reference).
    const std::shared_ptr<RunState> keep = state_;
    RunState* const state = keep.get();
    absl::MutexLock lock(&state->mu);
    if (record_.success) {
      state->consecutive_errors = 0;
    } else if (!record_.cancelled_by_bench) {
      ++state->num_failed;
      ++state->consecutive_errors;
      const int32_t limit = state->abort_after_consecutive_errors;
      if (limit > 0 && state->consecutive_errors >= limit &&
          state->stop_reason.empty()) {
        state->stop_reason = absl::StrCat(
            limit, " requests failed in a row (last: ", record_.error_code,
            ": ", record_.error_message, ")");
      }
    }
    state->records.push_back(std::move(record_));
    --state->in_flight;
    state->last_end = now;
    auto it = state->live.find(this);
    STRATA_CHECK(it != state->live.end());
    state->finished.push_back(std::move(it->second));
    state->live.erase(it);
    state->changed.SignalAll();
    // From here on the dispatcher may destroy this object.
  }

 private:
  const std::shared_ptr<RunState> state_;
  const int32_t prompt_len_;
  absl::Duration request_timeout_;
  bool chat_ = false;
  grpc::ClientContext context_;
  v1::CompletionRequest completion_request_;
  v1::ChatRequest chat_request_;
  v1::CompletionChunk chunk_;  // the read buffer
  Clock::time_point start_;
  Clock::time_point last_token_;
  int64_t ids_received_ = 0;
  v1::FinishReason finish_reason_ = v1::FINISH_REASON_UNSPECIFIED;
  std::string finish_message_;
  std::atomic<bool> cancelled_by_bench_{false};
  bool has_usage_ = false;
  v1::Usage usage_;
  RequestRecord record_;
};

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
  return std::unique_ptr<LoadRunner>(
      new LoadRunner(options, *std::move(credentials)));
}

LoadRunner::LoadRunner(const Options& options,
                       std::shared_ptr<grpc::ChannelCredentials> credentials)
    : options_(options) {
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
    auto call = std::make_unique<StreamCall>(shared_state, index,
                                             workload.Make(index), options_);
    StreamCall* raw = call.get();
    std::vector<std::unique_ptr<StreamCall>> reap;
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
    raw->Start(stubs_[sent % stubs_.size()].get());
    reap.clear();  // destroys finished calls outside the lock
  }

  // Drain: wait for every request in flight, up to the hard deadline, then
  // cancel what is left and wait (briefly) for gRPC to confirm.
  std::vector<std::unique_ptr<StreamCall>> reap;
  {
    absl::MutexLock lock(&state.mu);
    if (!wait_until([&] { return state.in_flight == 0; }, hard_deadline,
                    sent)) {
      std::vector<StreamCall*> to_cancel;
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
      for (StreamCall* call : to_cancel) call->TryCancel();
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
