// An in-process stand-in for stratad's Generation service, for testing the
// load generator against a real gRPC server on loopback: it streams one
// chunk per token (max_tokens of them) with a configurable delay, and can
// fail, hang, or be shut down mid-run.
#ifndef STRATA_TESTS_BENCH_FAKE_GENERATION_SERVICE_H_
#define STRATA_TESTS_BENCH_FAKE_GENERATION_SERVICE_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "strata/v1/generation.grpc.pb.h"

namespace strata::bench {

class FakeGenerationService final : public v1::Generation::Service {
 public:
  struct Behavior {
    uint32_t vocab_size = 1000;
    uint32_t context_length = 4096;
    std::chrono::microseconds token_delay{500};
    int32_t fail_every = 0;          // every n-th request: RESOURCE_EXHAUSTED
    bool hang = false;               // never answer; wait for cancellation
    bool finish_with_error = false;  // last chunk says FINISH_REASON_ERROR
  };

  explicit FakeGenerationService(Behavior behavior) : behavior_(behavior) {}

  grpc::Status GetModelInfo(grpc::ServerContext*,
                            const v1::GetModelInfoRequest*,
                            v1::ModelInfo* info) override {
    info->set_name("fake");
    info->set_backend("cpu");
    info->set_dtype("f32");
    info->set_vocab_size(behavior_.vocab_size);
    info->set_context_length(behavior_.context_length);
    info->add_eos_token_ids(2);
    info->set_bos_token_id(1);
    return grpc::Status::OK;
  }

  grpc::Status CompleteStream(
      grpc::ServerContext* context, const v1::CompletionRequest* request,
      grpc::ServerWriter<v1::CompletionChunk>* writer) override {
    {
      absl::MutexLock lock(&mu_);
      requests_.push_back(*request);
    }
    const int32_t prompt_len =
        request->has_token_ids() ? request->token_ids().ids_size()
                                 : static_cast<int32_t>(request->text().size());
    return Generate(context, request->sampling(), prompt_len, writer);
  }

  grpc::Status ChatStream(
      grpc::ServerContext* context, const v1::ChatRequest* request,
      grpc::ServerWriter<v1::CompletionChunk>* writer) override {
    int32_t prompt_len = 0;
    for (const v1::ChatMessage& m : request->messages()) {
      prompt_len += static_cast<int32_t>(m.content().size());
    }
    num_chat_.fetch_add(1);
    return Generate(context, request->sampling(), prompt_len, writer);
  }

  int64_t num_started() const { return num_started_.load(); }
  int64_t num_finished() const { return num_finished_.load(); }
  int64_t num_chat() const { return num_chat_.load(); }
  std::vector<v1::CompletionRequest> requests() const {
    absl::MutexLock lock(&mu_);
    return requests_;
  }

 private:
  grpc::Status Generate(grpc::ServerContext* context,
                        const v1::SamplingParams& sampling, int32_t prompt_len,
                        grpc::ServerWriter<v1::CompletionChunk>* writer) {
    const int64_t n = num_started_.fetch_add(1) + 1;
    if (behavior_.fail_every > 0 && n % behavior_.fail_every == 0) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "queue full");
    }
    if (behavior_.hang) {
      while (!context->IsCancelled()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    }
    const uint32_t max_tokens =
        sampling.has_max_tokens() ? sampling.max_tokens() : 16;
    for (uint32_t i = 0; i < max_tokens; ++i) {
      std::this_thread::sleep_for(behavior_.token_delay);
      v1::CompletionChunk chunk;
      chunk.add_token_ids(static_cast<int32_t>(100 + i % 50));
      chunk.set_text("x");
      if (!writer->Write(chunk)) {
        return grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
      }
    }
    v1::CompletionChunk last;
    last.set_finish_reason(behavior_.finish_with_error
                               ? v1::FINISH_REASON_ERROR
                               : v1::FINISH_REASON_LENGTH);
    last.mutable_usage()->set_prompt_tokens(prompt_len);
    last.mutable_usage()->set_completion_tokens(max_tokens);
    last.mutable_usage()->set_cached_prompt_tokens(prompt_len / 2);
    writer->Write(last);
    num_finished_.fetch_add(1);
    return grpc::Status::OK;
  }

  const Behavior behavior_;
  std::atomic<int64_t> num_started_{0};
  std::atomic<int64_t> num_finished_{0};
  std::atomic<int64_t> num_chat_{0};
  mutable absl::Mutex mu_;
  std::vector<v1::CompletionRequest> requests_ ABSL_GUARDED_BY(mu_);
};

// The fake service listening on 127.0.0.1 (a free port).
class FakeServer {
 public:
  explicit FakeServer(FakeGenerationService::Behavior behavior = {})
      : service_(behavior) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
  }
  ~FakeServer() { Shutdown(); }

  bool ok() const { return server_ != nullptr && port_ > 0; }
  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }
  FakeGenerationService& service() { return service_; }

  // Stops serving: calls in flight are cancelled after `grace`.
  void Shutdown(
      std::chrono::milliseconds grace = std::chrono::milliseconds(0)) {
    if (server_ == nullptr) return;
    server_->Shutdown(std::chrono::system_clock::now() + grace);
    server_->Wait();
    server_.reset();
  }

 private:
  FakeGenerationService service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace strata::bench

#endif  // STRATA_TESTS_BENCH_FAKE_GENERATION_SERVICE_H_
