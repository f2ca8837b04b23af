#include "server/generation_sink.h"

#include <span>
#include <utility>

#include "absl/time/time.h"

namespace strata {
namespace {

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
    case FinishReason::kError:
      return v1::FINISH_REASON_ERROR;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void FillUsage(const RequestStats& stats, v1::Usage& usage) {
  usage.set_prompt_tokens(stats.prompt_tokens);
  usage.set_completion_tokens(stats.completion_tokens);
  usage.set_cached_prompt_tokens(stats.cached_prompt_tokens);
  usage.set_queue_time_seconds(absl::ToDoubleSeconds(stats.queue_time));
  usage.set_time_to_first_token_seconds(
      absl::ToDoubleSeconds(stats.time_to_first_token));
}

}  // namespace

GenerationSink::GenerationSink(const Options& options,
                               GenerationListener* listener)
    : tokenizer_(*options.tokenizer),
      logprobs_(options.logprobs),
      metrics_(options.metrics),
      detokenizer_(*options.tokenizer, /*skip_special_tokens=*/true),
      stop_matcher_(options.stop_strings),
      listener_(listener) {}

std::string GenerationSink::TokenText(TokenId id) const {
  return tokenizer_.Decode(std::span<const TokenId>(&id, 1),
                           /*skip_special_tokens=*/false);
}

bool GenerationSink::OnToken(const TokenEvent& event) {
  if (stopped_) return false;  // the scheduler should not call again
  const SampledToken& sampled = event.sampled;
  v1::CompletionChunk chunk;
  chunk.add_token_ids(sampled.token);
  if (logprobs_) {
    v1::TokenLogprob* logprob = chunk.add_logprobs();
    logprob->set_token_id(sampled.token);
    logprob->set_logprob(sampled.logprob);
    for (const auto& [id, value] : sampled.top_logprobs) {
      v1::TopLogprob* top = logprob->add_top();
      top->set_token_id(id);
      top->set_logprob(value);
      top->set_text(TokenText(id));
    }
  }
  if (event.is_stop_token) {
    // Counted and returned as an id, never shown as text.
    stopped_ = true;
    stop_reason_ = TokenText(sampled.token);
  } else {
    StopStringMatcher::Result result =
        stop_matcher_.Add(detokenizer_.Add(sampled.token));
    chunk.set_text(std::move(result.text));
    if (result.stopped) {
      stopped_ = true;
      stop_reason_ = std::move(result.matched);
    }
  }
  Deliver(std::move(chunk));
  return !stopped_;
}

void GenerationSink::OnFinish(const FinishInfo& info) {
  if (metrics_ != nullptr) metrics_->RecordFinish(info);
  v1::CompletionChunk last;
  absl::Status status = info.status;
  if (info.reason == FinishReason::kLength ||
      info.reason == FinishReason::kStop) {
    status = absl::OkStatus();
    if (!stopped_) {
      // Bytes of an incomplete character become U+FFFD; text held back as a
      // possible stop-string start is released unless the tail completes one.
      StopStringMatcher::Result tail = stop_matcher_.Add(detokenizer_.Flush());
      std::string text = std::move(tail.text);
      if (tail.stopped) {
        stop_reason_ = std::move(tail.matched);
      } else {
        text += stop_matcher_.Flush();
      }
      last.set_text(std::move(text));
    }
    last.set_stop_reason(stop_reason_);
  } else if (status.ok()) {
    // A cancelled or failed request always carries why.
    status = info.reason == FinishReason::kCancelled
                 ? absl::CancelledError("request cancelled")
                 : absl::InternalError("request failed");
  }
  last.set_finish_reason(ToProto(info.reason));
  FillUsage(info.stats, *last.mutable_usage());

  absl::MutexLock lock(&mu_);
  if (listener_ != nullptr) {
    listener_->OnComplete(std::move(last), std::move(status));
    listener_ = nullptr;
  }
}

void GenerationSink::Deliver(v1::CompletionChunk chunk) {
  absl::MutexLock lock(&mu_);
  if (listener_ != nullptr) listener_->OnChunk(std::move(chunk));
}

void GenerationSink::Detach() {
  absl::MutexLock lock(&mu_);
  listener_ = nullptr;
}

}  // namespace strata
