#include "server/scheduled_generation.h"

#include <atomic>
#include <string>
#include <utility>

namespace strata {

absl::Status ScheduledGeneration::Submit(PreparedRequest prepared,
                                         const ApiKey& key,
                                         const Tokenizer& tokenizer,
                                         GenerationListener* listener,
                                         absl::Time deadline) {
  // The sink outlives this object (the scheduler and the worker hold it):
  // its stop callback shares the id, set once Submit returns. A stop
  // string found before then ends the choice at its next token instead.
  auto id_for_stop = std::make_shared<std::atomic<RequestId>>(0);
  Scheduler* scheduler = &scheduler_;
  sink_ = std::make_shared<GenerationSink>(
      GenerationSink::Options{
          .tokenizer = &tokenizer,
          .stop_strings = std::move(prepared.stop_strings),
          .logprobs = prepared.logprobs,
          .metrics = metrics_,
          .n = prepared.n,
          .worker = worker_,
          .on_stop =
              [scheduler, id_for_stop](int32_t index) {
                if (const RequestId id = id_for_stop->load(); id != 0) {
                  scheduler->StopSequence(id, index);
                }
              },
          .key_name = key.name},
      listener);
  RequestSpec spec;
  spec.prompt = std::move(prepared.prompt);
  spec.sampling = prepared.sampling;
  spec.n = prepared.n;
  spec.exit = prepared.exit;
  spec.max_tokens = prepared.max_tokens;
  spec.stop_token_ids = std::move(prepared.stop_token_ids);
  spec.priority = prepared.priority;
  spec.tenant = key.name;
  spec.admin = key.admin;
  spec.max_concurrency = key.max_concurrency;
  spec.max_queued_tokens = key.max_queued_tokens;
  spec.deadline = deadline;
  spec.sink = sink_;
  absl::StatusOr<RequestId> id = scheduler_.Submit(std::move(spec));
  if (!id.ok()) {
    sink_->Detach();
    const absl::StatusCode code = id.status().code();
    if (metrics_ != nullptr && (code == absl::StatusCode::kResourceExhausted ||
                                code == absl::StatusCode::kUnavailable)) {
      metrics_->RecordRejected(key.name);  // admission control said no
    }
    return id.status();
  }
  id_ = *id;
  id_for_stop->store(*id);
  return absl::OkStatus();
}

void ScheduledGeneration::Cancel(absl::Status status) {
  if (id_.has_value()) scheduler_.Cancel(*id_, std::move(status));
}

void ScheduledGeneration::Detach() {
  if (sink_ != nullptr) sink_->Detach();
}

// Appends a chunk to the output gathered so far; the finish fields of the
// last chunk overwrite. Both chunks are of the same choice.
void AppendChunk(v1::CompletionChunk chunk, v1::CompletionChunk& into) {
  std::string text = std::move(*into.mutable_text());
  text += chunk.text();
  into.MergeFrom(chunk);  // repeated fields append, set scalars overwrite
  into.set_text(std::move(text));
}

// Streams: a chunk joins the last one waiting to be written when it is of the
// same choice and that choice has not ended there (a slow reader gets fewer,
// larger chunks); otherwise it queues behind it. For n = 1 everything merges
// into one waiting chunk.
void QueueChunk(v1::CompletionChunk chunk,
                std::deque<v1::CompletionChunk>& pending) {
  if (!pending.empty() && pending.back().index() == chunk.index() &&
      pending.back().finish_reason() == v1::FINISH_REASON_UNSPECIFIED &&
      !pending.back().has_usage()) {
    AppendChunk(std::move(chunk), pending.back());
    return;
  }
  pending.push_back(std::move(chunk));
}

// Unary: gathers a chunk into its choice of the response.
void AppendChunk(v1::CompletionChunk chunk, v1::CompletionResponse& into) {
  const uint32_t index = chunk.index();
  while (static_cast<uint32_t>(into.choices_size()) <= index) {
    into.add_choices()->set_index(static_cast<uint32_t>(into.choices_size()) -
                                  1);
  }
  v1::Choice& choice = *into.mutable_choices(static_cast<int>(index));
  choice.mutable_text()->append(chunk.text());
  choice.mutable_token_ids()->MergeFrom(chunk.token_ids());
  choice.mutable_logprobs()->MergeFrom(chunk.logprobs());
  if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
    choice.set_finish_reason(chunk.finish_reason());
  }
  if (!chunk.stop_reason().empty()) {
    choice.set_stop_reason(chunk.stop_reason());
  }
  if (chunk.has_usage()) *into.mutable_usage() = chunk.usage();
}

// The response's top-level fields mirror choice 0 (the only one for n = 1,
// as before choices existed).
void MirrorFirstChoice(v1::CompletionResponse& response) {
  if (response.choices_size() == 0) response.add_choices();
  const v1::Choice& first = response.choices(0);
  response.set_text(first.text());
  *response.mutable_token_ids() = first.token_ids();
  *response.mutable_logprobs() = first.logprobs();
  response.set_finish_reason(first.finish_reason());
  response.set_stop_reason(first.stop_reason());
}

}  // namespace strata
