#include "server/generation_sink.h"

#include <algorithm>
#include <span>
#include <utility>

#include "absl/time/time.h"
#include "server/scheduled_generation.h"

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
      key_name_(options.key_name),
      worker_(options.worker),
      on_stop_(options.on_stop),
      listener_(listener) {
  const int32_t n = std::max(options.n, 1);
  stopped_ = std::make_unique<std::atomic<bool>[]>(n);
  for (int32_t i = 0; i < n; ++i) stopped_[i].store(false);
  // One copy of the stop strings for the whole request, however many
  // choices it has.
  const StopStringMatcher::StopStrings stop_strings =
      StopStringMatcher::Share(options.stop_strings);
  choices_.reserve(n);
  for (int32_t i = 0; i < n; ++i) {
    choices_.emplace_back(*options.tokenizer, stop_strings);
  }
}

std::string GenerationSink::TokenText(TokenId id) const {
  return tokenizer_.Decode(std::span<const TokenId>(&id, 1),
                           /*skip_special_tokens=*/false);
}

bool GenerationSink::OnToken(const TokenEvent& event) {
  if (event.index < 0 || event.index >= static_cast<int32_t>(choices_.size())) {
    return false;  // not a choice of this request: a scheduler bug
  }
  if (worker_ == nullptr) return HandleToken(event);
  if (stopped_[event.index].load(std::memory_order_acquire)) {
    ++num_dropped_;  // the scheduler counted it; the client never sees it
    return false;
  }
  // The engine loop wakes the worker beside the next step (StepDelivery).
  worker_->PostDeferred(
      [self = shared_from_this(), event] { self->HandleToken(event); });
  return true;
}

void GenerationSink::OnSequenceFinish(int32_t index, FinishReason reason) {
  if (worker_ == nullptr) return HandleSequenceFinish(index, reason);
  worker_->Post([self = shared_from_this(), index, reason] {
    self->HandleSequenceFinish(index, reason);
  });
}

void GenerationSink::OnFinish(const FinishInfo& info) {
  if (worker_ == nullptr) return HandleFinish(info);
  worker_->Post(
      [self = shared_from_this(), info] { self->HandleFinish(info); });
}

bool GenerationSink::HandleToken(const TokenEvent& event) {
  Choice& choice = choices_[event.index];
  if (choice.stopped || choice.finished) {
    // Only with a worker: the engine ran the choice on before the stop
    // reached the scheduler. The client never sees the token.
    ++num_dropped_;
    return false;
  }
  const SampledToken& sampled = event.sampled;
  total_loops_ += event.loops;
  ++num_tokens_;
  if (metrics_ != nullptr) metrics_->RecordTokenLoops(event.loops);
  v1::CompletionChunk chunk;
  chunk.set_index(static_cast<uint32_t>(event.index));
  chunk.add_token_ids(sampled.token);
  if (logprobs_) {
    v1::TokenLogprob* logprob = chunk.add_logprobs();
    logprob->set_token_id(sampled.token);
    logprob->set_logprob(sampled.logprob);
    logprob->set_loops(static_cast<uint32_t>(event.loops));
    for (const auto& [id, value] : sampled.top_logprobs) {
      v1::TopLogprob* top = logprob->add_top();
      top->set_token_id(id);
      top->set_logprob(value);
      top->set_text(TokenText(id));
    }
  }
  if (event.is_stop_token) {
    // Counted and returned as an id, never shown as text.
    choice.stopped = true;
    choice.stop_reason = TokenText(sampled.token);
  } else {
    StopStringMatcher::Result result =
        choice.stop_matcher.Add(choice.detokenizer.Add(sampled.token));
    chunk.set_text(std::move(result.text));
    if (result.stopped) {
      choice.stopped = true;
      choice.stop_reason = std::move(result.matched);
    }
  }
  if (event.ends_sequence) {
    choice.held_token = std::move(chunk);
  } else {
    Deliver(std::move(chunk));
  }
  if (choice.stopped) {
    stopped_[event.index].store(true, std::memory_order_release);
    // A stop token ends the sequence in the scheduler by itself; a stop
    // string found off the engine thread needs telling.
    if (worker_ != nullptr && !event.is_stop_token && on_stop_) {
      on_stop_(event.index);
    }
  }
  return !choice.stopped;
}

void GenerationSink::FinishChoice(int32_t index, FinishReason reason) {
  Choice& choice = choices_[index];
  // A stop string matched off the engine thread may reach the scheduler
  // after the choice ran into its length limit: the stop string wins, as it
  // would have on the engine thread.
  if (choice.stopped && reason == FinishReason::kLength) {
    reason = FinishReason::kStop;
  }
  choice.finished = true;
  ++num_finished_;
  v1::CompletionChunk last;
  last.set_index(static_cast<uint32_t>(index));
  if (!choice.stopped) {
    // Bytes of an incomplete character become U+FFFD; text held back as a
    // possible stop-string start is released unless the tail completes one.
    StopStringMatcher::Result tail =
        choice.stop_matcher.Add(choice.detokenizer.Flush());
    std::string text = std::move(tail.text);
    if (tail.stopped) {
      choice.stop_reason = std::move(tail.matched);
    } else {
      text += choice.stop_matcher.Flush();
    }
    last.set_text(std::move(text));
  }
  last.set_stop_reason(choice.stop_reason);
  last.set_finish_reason(ToProto(reason));
  if (num_finished_ == static_cast<int32_t>(choices_.size())) {
    held_last_ = std::move(last);
  } else {
    Deliver(WithHeldToken(index, std::move(last)));
  }
}

v1::CompletionChunk GenerationSink::WithHeldToken(int32_t index,
                                                  v1::CompletionChunk last) {
  std::optional<v1::CompletionChunk>& held = choices_[index].held_token;
  if (!held.has_value()) return last;
  v1::CompletionChunk chunk = *std::move(held);
  held.reset();
  AppendChunk(std::move(last), chunk);
  return chunk;
}

void GenerationSink::HandleSequenceFinish(int32_t index, FinishReason reason) {
  if (index < 0 || index >= static_cast<int32_t>(choices_.size()) ||
      choices_[index].finished) {
    return;
  }
  FinishChoice(index, reason);
}

void GenerationSink::HandleFinish(const FinishInfo& info) {
  if (metrics_ != nullptr) metrics_->RecordFinish(info, key_name_);
  v1::CompletionChunk last;
  absl::Status status = info.status;
  if (info.reason == FinishReason::kLength ||
      info.reason == FinishReason::kStop) {
    status = absl::OkStatus();
    // Choices the scheduler did not report one by one end with the
    // request's reason.
    for (size_t i = 0; i < choices_.size(); ++i) {
      if (!choices_[i].finished) {
        FinishChoice(static_cast<int32_t>(i), info.reason);
      }
    }
    if (held_last_.has_value()) {
      const auto index = static_cast<int32_t>(held_last_->index());
      last = WithHeldToken(index, *std::move(held_last_));
    }
  } else {
    // A token the scheduler generated is sent even when the request ends
    // badly right after it.
    for (size_t i = 0; i < choices_.size(); ++i) {
      std::optional<v1::CompletionChunk>& held = choices_[i].held_token;
      if (held.has_value()) Deliver(*std::exchange(held, std::nullopt));
    }
    if (status.ok()) {
      // A cancelled or failed request always carries why.
      status = info.reason == FinishReason::kCancelled
                   ? absl::CancelledError("request cancelled")
                   : absl::InternalError("request failed");
    }
    last.set_finish_reason(ToProto(info.reason));
  }
  FillUsage(info.stats, *last.mutable_usage());
  last.mutable_usage()->set_completion_tokens(static_cast<uint32_t>(
      info.stats.completion_tokens - num_dropped_.load()));
  if (num_tokens_ > 0) {
    last.mutable_usage()->set_mean_loops(static_cast<double>(total_loops_) /
                                         static_cast<double>(num_tokens_));
  }

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
