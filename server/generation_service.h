// strata.v1.Generation over gRPC's callback API.
//
// The RPC classes are thin: parse the request (server/message_codec.h), build
// a PreparedRequest (server/request_builder.h), submit it to the scheduler with
// a GenerationSink, and relay the sink's chunks to the client. Every method
// takes and returns raw bytes so that a request protobuf refuses to parse is
// still answered INVALID_ARGUMENT naming the field (see message_codec.h).
//
// Threading contract:
// - The method handlers (Complete, CompleteStream, ...) run on gRPC threads,
//   many at once; they only read the service's immutable state and call the
//   thread-safe Scheduler::Submit.
// - Reactor callbacks OnCancel, OnWriteDone and OnDone run on gRPC threads;
//   GenerationListener callbacks run on the engine thread. Each reactor guards
//   its state with its own mutex; the sink's mutex orders "deliver" against
//   "detach" (OnDone detaches before the reactor is deleted).
// - A reactor finishes its RPC at once on cancellation (client cancel,
//   deadline, server shutdown) and asks the scheduler to drop the request; it
//   never waits for the engine.
#ifndef STRATA_SERVER_GENERATION_SERVICE_H_
#define STRATA_SERVER_GENERATION_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include "scheduler/scheduler.h"
#include "server/api_key_store.h"
#include "server/metrics.h"
#include "server/output_worker.h"
#include "server/request_builder.h"
#include "strata/v1/generation.grpc.pb.h"
#include "strata/v1/generation.pb.h"
#include "text/tokenizer.h"

namespace strata {

using RawGenerationService = v1::Generation::WithRawCallbackMethod_Complete<
    v1::Generation::WithRawCallbackMethod_CompleteStream<
        v1::Generation::WithRawCallbackMethod_Chat<
            v1::Generation::WithRawCallbackMethod_ChatStream<
                v1::Generation::WithRawCallbackMethod_Tokenize<
                    v1::Generation::WithRawCallbackMethod_Detokenize<
                        v1::Generation::WithRawCallbackMethod_GetModelInfo<
                            v1::Generation::Service>>>>>>>;

// A generation call's request, prepared, and what the call adds to it: who
// sent it and until when it may run.
struct CallRequest {
  absl::StatusOr<PreparedRequest> prepared;
  std::shared_ptr<const ApiKey> key;  // set when prepared is OK
  absl::Time deadline = absl::InfiniteFuture();
};

class GenerationService final : public RawGenerationService {
 public:
  struct Options {
    const Tokenizer* tokenizer = nullptr;     // borrowed
    const RequestBuilder* builder = nullptr;  // borrowed
    Scheduler* scheduler = nullptr;           // borrowed
    Metrics* metrics = nullptr;               // borrowed; optional
    // Borrowed; optional: where sinks detokenize (inline on the engine
    // thread without one).
    OutputWorker* output_worker = nullptr;
    v1::ModelInfo model_info;  // answer of GetModelInfo
    // When set, every method needs `authorization: Bearer KEY` metadata
    // naming one of its keys (UNAUTHENTICATED otherwise); null = open, every
    // call is the anonymous tenant "". Borrowed.
    const ApiKeyStore* api_keys = nullptr;
    // The longest a generation may run, whatever the call's own deadline:
    // then it ends with DEADLINE_EXCEEDED (--max_request_time).
    absl::Duration max_request_time = absl::InfiniteDuration();
  };

  // Everything borrowed must outlive the gRPC server this is registered with.
  explicit GenerationService(const Options& options);

  grpc::ServerUnaryReactor* Complete(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* CompleteStream(
      grpc::CallbackServerContext* context,
      const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Chat(grpc::CallbackServerContext* context,
                                 const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* ChatStream(
      grpc::CallbackServerContext* context,
      const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;

 private:
  // strata_api_requests_total{protocol="grpc", endpoint=method}.
  void CountRequest(const char* method) const;
  absl::StatusOr<PreparedRequest> PrepareCompletion(
      const grpc::ByteBuffer& request) const;
  absl::StatusOr<PreparedRequest> PrepareChat(
      const grpc::ByteBuffer& request) const;
  // The caller's key: UNAUTHENTICATED without a valid one when keys are
  // required; the anonymous key (name "") when they are not.
  absl::StatusOr<std::shared_ptr<const ApiKey>> Authenticate(
      const grpc::CallbackServerContext& context) const;
  // Authenticate, parse and build the request, and bound its time.
  CallRequest Prepare(const grpc::CallbackServerContext& context,
                             const grpc::ByteBuffer& request, bool chat) const;
  absl::Status DoTokenize(const grpc::ByteBuffer& request,
                          grpc::ByteBuffer& response) const;
  absl::Status DoDetokenize(const grpc::ByteBuffer& request,
                            grpc::ByteBuffer& response) const;

  const Options options_;
  const std::shared_ptr<const ApiKey> anonymous_;
};

}  // namespace strata

#endif  // STRATA_SERVER_GENERATION_SERVICE_H_
