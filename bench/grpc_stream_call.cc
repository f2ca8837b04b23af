#include "bench/grpc_stream_call.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"

namespace strata::bench {
namespace {

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

}  // namespace

GrpcStreamCall::GrpcStreamCall(std::shared_ptr<RunState> state, int64_t index,
                               const BenchRequest& request,
                               const LoadRunner::Options& options,
                               v1::Generation::Stub* stub)
    : BenchCall(std::move(state)),
      stub_(stub),
      prompt_len_(request.prompt_len),
      request_timeout_(options.request_timeout) {
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
}

void GrpcStreamCall::Start() {
  start_ = BenchClock::now();
  record_.start_s = SecondsBetween(state_->start, start_);
  // The deadline counts from sending, not from when the request was built
  // (the dispatcher may have waited for an arrival time or a free slot).
  context_.set_deadline(std::chrono::system_clock::now() +
                        absl::ToChronoNanoseconds(request_timeout_));
  if (chat_) {
    stub_->async()->ChatStream(&context_, &chat_request_, this);
  } else {
    stub_->async()->CompleteStream(&context_, &completion_request_, this);
  }
  StartRead(&chunk_);
  StartCall();
}

void GrpcStreamCall::TryCancel() {
  cancelled_by_bench_.store(true);
  context_.TryCancel();
}

void GrpcStreamCall::OnReadDone(bool ok) {
  if (!ok) return;  // the stream ended; OnDone follows
  const BenchClock::time_point now = BenchClock::now();
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

void GrpcStreamCall::OnDone(const grpc::Status& status) {
  const BenchClock::time_point now = BenchClock::now();
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
  End(std::move(record_), now);
}

}  // namespace strata::bench
