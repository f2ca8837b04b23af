// One streaming request over gRPC (CompleteStream or ChatStream). gRPC calls
// OnReadDone/OnDone on its callback threads, one at a time per call; OnDone
// is the last callback and ends the call (BenchCall::End).
#ifndef STRATA_BENCH_GRPC_STREAM_CALL_H_
#define STRATA_BENCH_GRPC_STREAM_CALL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "bench/bench_call.h"
#include "bench/load_runner.h"
#include "bench/workload.h"
#include "grpcpp/grpcpp.h"
#include "strata/v1/generation.grpc.pb.h"

namespace strata::bench {

class GrpcStreamCall final : public BenchCall,
                             public grpc::ClientReadReactor<v1::CompletionChunk> {
 public:
  GrpcStreamCall(std::shared_ptr<RunState> state, int64_t index,
                 const BenchRequest& request, const LoadRunner::Options& options,
                 v1::Generation::Stub* stub);

  void Start() override;
  void TryCancel() override;

  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  v1::Generation::Stub* const stub_;
  const int32_t prompt_len_;
  const absl::Duration request_timeout_;
  bool chat_ = false;
  grpc::ClientContext context_;
  v1::CompletionRequest completion_request_;
  v1::ChatRequest chat_request_;
  v1::CompletionChunk chunk_;  // the read buffer
  BenchClock::time_point start_;
  BenchClock::time_point last_token_;
  int64_t ids_received_ = 0;
  v1::FinishReason finish_reason_ = v1::FINISH_REASON_UNSPECIFIED;
  std::string finish_message_;
  std::atomic<bool> cancelled_by_bench_{false};
  bool has_usage_ = false;
  v1::Usage usage_;
  RequestRecord record_;
};

}  // namespace strata::bench

#endif  // STRATA_BENCH_GRPC_STREAM_CALL_H_
