#include "server/generation_service.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "server/generation_sink.h"
#include "server/message_codec.h"
#include "server/scheduled_generation.h"
#include "server/status_util.h"

namespace strata {
namespace {

absl::Time DeadlineOf(const grpc::CallbackServerContext& context) {
  const std::chrono::system_clock::time_point deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

// Why a call ended before its generation did: its deadline passed (or was
// about to: see kDeadlineTolerance), or the client (or the server's
// shutdown) cancelled it.
absl::Status CancellationStatus(const grpc::CallbackServerContext& context) {
  return strata::CancellationStatus(absl::Now(), DeadlineOf(context));
}

// A stream's write failed: the client stopped reading, or its deadline
// passed.
absl::Status WriteFailureStatus(const grpc::CallbackServerContext& context) {
  return StreamWriteFailureStatus(absl::Now(), DeadlineOf(context));
}

// INTERNAL means a bug (DESIGN.md): say so where an operator will look.
grpc::Status Reply(std::string_view method, const absl::Status& status) {
  if (status.code() == absl::StatusCode::kInternal ||
      status.code() == absl::StatusCode::kUnknown) {
    STRATA_LOG(ERROR) << method << " failed: " << status;
  }
  return ToGrpcStatus(status);
}

// Complete / Chat: gathers the whole generation, then answers once.
class UnaryGenerationReactor final : public grpc::ServerUnaryReactor,
                                     public GenerationListener {
 public:
  UnaryGenerationReactor(const char* method,
                         grpc::CallbackServerContext* context,
                         grpc::ByteBuffer* response, Scheduler& scheduler,
                         Metrics* metrics, OutputWorker* worker)
      : method_(method),
        context_(*context),
        response_(*response),
        generation_(scheduler, metrics, worker) {}

  // Method handler thread, before the reactor is handed to gRPC.
  void Start(CallRequest call, const Tokenizer& tokenizer) {
    absl::Status status = call.prepared.status();
    if (status.ok()) {
      status = generation_.Submit(*std::move(call.prepared), *call.key,
                                  tokenizer, this, call.deadline);
    }
    if (!status.ok()) FinishOnce(status);
  }

  // Engine thread.
  void OnChunk(v1::CompletionChunk chunk) override {
    absl::MutexLock lock(&mu_);
    AppendChunk(std::move(chunk), result_);
  }

  // Engine thread.
  void OnComplete(v1::CompletionChunk last, absl::Status status) override {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      AppendChunk(std::move(last), result_);
      if (status.ok()) {
        MirrorFirstChoice(result_);
        response_ = SerializeResponse(result_);
      }
    }
    FinishOnce(status);
  }

  // gRPC thread: client cancel, deadline or server shutdown. Answers at once
  // and lets the scheduler drop the request at its next step.
  void OnCancel() override {
    absl::Status status = CancellationStatus(context_);
    generation_.Cancel(status);
    FinishOnce(status);
  }

  // gRPC thread, after Finish; the last use of this object.
  void OnDone() override {
    generation_.Detach();
    delete this;
  }

 private:
  void FinishOnce(const absl::Status& status) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
    }
    Finish(Reply(method_, status));
  }

  const char* const method_;
  grpc::CallbackServerContext& context_;
  grpc::ByteBuffer& response_;
  ScheduledGeneration generation_;

  absl::Mutex mu_;
  v1::CompletionResponse result_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

// CompleteStream / ChatStream: writes one message at a time; chunks that
// arrive while a write is in flight are merged into the next message of
// their choice (QueueChunk), so a slow client gets fewer, larger chunks and
// never holds up the engine.
class StreamGenerationReactor final
    : public grpc::ServerWriteReactor<grpc::ByteBuffer>,
      public GenerationListener {
 public:
  StreamGenerationReactor(const char* method,
                          grpc::CallbackServerContext* context,
                          Scheduler& scheduler, Metrics* metrics,
                          OutputWorker* worker)
      : method_(method),
        context_(*context),
        generation_(scheduler, metrics, worker) {}

  // Method handler thread, before the reactor is handed to gRPC.
  void Start(CallRequest call, const Tokenizer& tokenizer) {
    absl::Status status = call.prepared.status();
    if (status.ok()) {
      status = generation_.Submit(*std::move(call.prepared), *call.key,
                                  tokenizer, this, call.deadline);
    }
    if (!status.ok()) {
      absl::MutexLock lock(&mu_);
      complete_ = true;
      final_status_ = status;
      ProgressLocked();
    }
  }

  // Engine thread.
  void OnChunk(v1::CompletionChunk chunk) override {
    absl::MutexLock lock(&mu_);
    if (finished_ || cancel_status_.has_value()) return;
    QueueChunk(std::move(chunk), pending_);
    ProgressLocked();
  }

  // Engine thread.
  void OnComplete(v1::CompletionChunk last, absl::Status status) override {
    absl::MutexLock lock(&mu_);
    if (finished_ || cancel_status_.has_value()) return;
    QueueChunk(std::move(last), pending_);
    complete_ = true;
    final_status_ = std::move(status);
    ProgressLocked();
  }

  // gRPC thread.
  void OnWriteDone(bool ok) override {
    std::optional<absl::Status> gone;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok && !finished_ && !cancel_status_.has_value()) {
        // A client whose deadline passes mid-stream makes the write in
        // flight fail before OnCancel runs: label it by the deadline too.
        cancel_status_ = WriteFailureStatus(context_);
        gone = cancel_status_;
      }
      ProgressLocked();
    }
    if (gone.has_value()) generation_.Cancel(*std::move(gone));
  }

  // gRPC thread: client cancel, deadline or server shutdown. Finishes as soon
  // as no write is in flight; the scheduler drops the request.
  void OnCancel() override {
    absl::Status status = CancellationStatus(context_);
    {
      absl::MutexLock lock(&mu_);
      if (finished_ || cancel_status_.has_value()) return;
      cancel_status_ = status;
      ProgressLocked();
    }
    generation_.Cancel(std::move(status));
  }

  // gRPC thread, after Finish; the last use of this object.
  void OnDone() override {
    generation_.Detach();
    delete this;
  }

 private:
  // Starts the next write, or finishes the call when everything is written
  // (or it was cancelled). Neither StartWrite nor Finish calls back into this
  // reactor inline, and OnDone cannot run while a reaction or the engine
  // thread (which holds the sink's lock) is inside this object.
  void ProgressLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || writing_) return;
    if (cancel_status_.has_value()) {
      finished_ = true;
      Finish(Reply(method_, *cancel_status_));
      return;
    }
    if (!pending_.empty()) {
      write_buffer_ = SerializeResponse(pending_.front());
      pending_.pop_front();
      if (complete_ && pending_.empty() && final_status_.ok()) {
        // The last message and the status in one batch. Written apart, the
        // status waited for OnWriteDone on a gRPC thread, which runs at
        // --io_nice behind the engine's: a scheduling hop at the end of
        // every call before the client sees it end.
        finished_ = true;
        StartWriteAndFinish(&write_buffer_, grpc::WriteOptions(),
                            Reply(method_, final_status_));
        return;
      }
      writing_ = true;
      StartWrite(&write_buffer_);
      return;
    }
    if (complete_) {
      finished_ = true;
      Finish(Reply(method_, final_status_));
    }
  }

  const char* const method_;
  grpc::CallbackServerContext& context_;
  ScheduledGeneration generation_;

  absl::Mutex mu_;
  // Output not yet written, one message per run of a choice's chunks.
  std::deque<v1::CompletionChunk> pending_ ABSL_GUARDED_BY(mu_);
  grpc::ByteBuffer write_buffer_ ABSL_GUARDED_BY(mu_);  // the write in flight
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool complete_ ABSL_GUARDED_BY(mu_) = false;  // the sink is done
  absl::Status final_status_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> cancel_status_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // Finish was called
};

// Tokenize, Detokenize and GetModelInfo answer at once.
grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context,
                                    const char* method,
                                    const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(Reply(method, status));
  return reactor;
}

}  // namespace

GenerationService::GenerationService(const Options& options)
    : options_(options), anonymous_(std::make_shared<const ApiKey>()) {}

absl::StatusOr<std::shared_ptr<const ApiKey>> GenerationService::Authenticate(
    const grpc::CallbackServerContext& context) const {
  if (options_.api_keys == nullptr) return anonymous_;
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  absl::StatusOr<std::shared_ptr<const ApiKey>> key =
      options_.api_keys->Authenticate(
          it == metadata.end()
              ? absl::string_view()
              : absl::string_view(it->second.data(), it->second.size()));
  if (!key.ok() && options_.metrics != nullptr) {
    options_.metrics->RecordUnauthenticated();
  }
  return key;
}

CallRequest GenerationService::Prepare(
    const grpc::CallbackServerContext& context,
    const grpc::ByteBuffer& request, bool chat) const {
  CallRequest call;
  absl::StatusOr<std::shared_ptr<const ApiKey>> key = Authenticate(context);
  if (!key.ok()) {
    call.prepared = key.status();
    return call;
  }
  call.key = *std::move(key);
  call.prepared = chat ? PrepareChat(request) : PrepareCompletion(request);
  // The server's own bound on a request's time, under the call's deadline.
  call.deadline = std::min(DeadlineOf(context),
                           absl::Now() + options_.max_request_time);
  return call;
}

void GenerationService::CountRequest(const char* method) const {
  if (options_.metrics != nullptr) {
    options_.metrics->RecordApiRequest("grpc", method);
  }
}

absl::StatusOr<PreparedRequest> GenerationService::PrepareCompletion(
    const grpc::ByteBuffer& buffer) const {
  v1::CompletionRequest request;
  if (absl::Status st = ParseRequest(buffer, request); !st.ok()) return st;
  return options_.builder->BuildCompletion(request);
}

absl::StatusOr<PreparedRequest> GenerationService::PrepareChat(
    const grpc::ByteBuffer& buffer) const {
  v1::ChatRequest request;
  if (absl::Status st = ParseRequest(buffer, request); !st.ok()) return st;
  return options_.builder->BuildChat(request);
}

grpc::ServerUnaryReactor* GenerationService::Complete(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  CountRequest("Complete");
  auto* reactor = new UnaryGenerationReactor(
      "Complete", context, response, *options_.scheduler, options_.metrics,
      options_.output_worker);
  reactor->Start(Prepare(*context, *request, /*chat=*/false),
                 *options_.tokenizer);
  return reactor;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerationService::CompleteStream(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  CountRequest("CompleteStream");
  auto* reactor = new StreamGenerationReactor(
      "CompleteStream", context, *options_.scheduler, options_.metrics,
      options_.output_worker);
  reactor->Start(Prepare(*context, *request, /*chat=*/false),
                 *options_.tokenizer);
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::Chat(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  CountRequest("Chat");
  auto* reactor = new UnaryGenerationReactor(
      "Chat", context, response, *options_.scheduler, options_.metrics,
      options_.output_worker);
  reactor->Start(Prepare(*context, *request, /*chat=*/true),
                 *options_.tokenizer);
  return reactor;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerationService::ChatStream(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  CountRequest("ChatStream");
  auto* reactor = new StreamGenerationReactor(
      "ChatStream", context, *options_.scheduler, options_.metrics,
      options_.output_worker);
  reactor->Start(Prepare(*context, *request, /*chat=*/true),
                 *options_.tokenizer);
  return reactor;
}

absl::Status GenerationService::DoTokenize(const grpc::ByteBuffer& buffer,
                                           grpc::ByteBuffer& response) const {
  v1::TokenizeRequest request;
  if (absl::Status st = ParseRequest(buffer, request); !st.ok()) return st;
  if (absl::Status st = options_.builder->validator().ValidateTokenize(request);
      !st.ok()) {
    return st;
  }
  const bool add_special_tokens =
      request.has_add_special_tokens() ? request.add_special_tokens() : true;
  absl::StatusOr<std::vector<TokenId>> ids =
      options_.tokenizer->Encode(request.text(), add_special_tokens);
  if (!ids.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("text: ", ids.status().message()));
  }
  v1::TokenizeResponse reply;
  for (TokenId id : *ids) {
    reply.add_token_ids(id);
    // Decode replaces the bytes of a partial character with U+FFFD, which
    // keeps the proto3 string valid UTF-8.
    reply.add_tokens(options_.tokenizer->Decode(
        std::span<const TokenId>(&id, 1), /*skip_special_tokens=*/false));
  }
  response = SerializeResponse(reply);
  return absl::OkStatus();
}

absl::Status GenerationService::DoDetokenize(const grpc::ByteBuffer& buffer,
                                             grpc::ByteBuffer& response) const {
  v1::DetokenizeRequest request;
  if (absl::Status st = ParseRequest(buffer, request); !st.ok()) return st;
  if (absl::Status st =
          options_.builder->validator().ValidateDetokenize(request);
      !st.ok()) {
    return st;
  }
  v1::DetokenizeResponse reply;
  reply.set_text(options_.tokenizer->Decode(
      std::span<const TokenId>(request.token_ids().data(),
                               request.token_ids().size()),
      request.skip_special_tokens()));
  response = SerializeResponse(reply);
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* GenerationService::Tokenize(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  CountRequest("Tokenize");
  absl::Status status = Authenticate(*context).status();
  if (status.ok()) status = DoTokenize(*request, *response);
  return FinishNow(context, "Tokenize", status);
}

grpc::ServerUnaryReactor* GenerationService::Detokenize(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  CountRequest("Detokenize");
  absl::Status status = Authenticate(*context).status();
  if (status.ok()) status = DoDetokenize(*request, *response);
  return FinishNow(context, "Detokenize", status);
}

grpc::ServerUnaryReactor* GenerationService::GetModelInfo(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  CountRequest("GetModelInfo");
  v1::GetModelInfoRequest parsed;
  absl::Status status = Authenticate(*context).status();
  if (status.ok()) status = ParseRequest(*request, parsed);
  if (status.ok()) *response = SerializeResponse(options_.model_info);
  return FinishNow(context, "GetModelInfo", status);
}

}  // namespace strata
