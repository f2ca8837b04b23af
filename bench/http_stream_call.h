// One streaming request over the OpenAI-compatible HTTP API (POST
// /v1/completions or /v1/chat/completions with "stream": true), read as
// Server-Sent Events. The bench asks for `return_token_ids` and
// `stream_options.include_usage`, so a chunk's token count and the final
// usage are the same figures the gRPC stream carries.
//
// HttpTransport is the Asio side all of a runner's HTTP calls share: one
// io_context run by a few threads and the target's resolved address. Each
// call opens its own connection (Connection: close); on loopback a connect
// costs well under a millisecond against requests of hundreds.
#ifndef STRATA_BENCH_HTTP_STREAM_CALL_H_
#define STRATA_BENCH_HTTP_STREAM_CALL_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "bench/bench_call.h"
#include "bench/load_runner.h"
#include "bench/workload.h"

namespace strata::bench {

class HttpTransport {
 public:
  // Resolves `target` ("host:port") once; `threads` run the io_context.
  static absl::StatusOr<std::unique_ptr<HttpTransport>> Create(
      const std::string& target, int threads);
  ~HttpTransport();  // stops the io_context and joins its threads

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  explicit HttpTransport(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class HttpStreamCall final : public BenchCall {
 public:
  HttpStreamCall(std::shared_ptr<RunState> state, int64_t index,
                 const BenchRequest& request,
                 const LoadRunner::Options& options, HttpTransport* transport);
  ~HttpStreamCall() override;

  void Start() override;
  void TryCancel() override;

  // The Asio side of the call, shared with its handlers so that a cancel
  // posted after the call ended touches nothing freed.
  struct Exchange;

 private:
  friend struct Exchange;
  void Finish(RequestRecord record, BenchClock::time_point now) {
    End(std::move(record), now);
  }

  absl::Duration request_timeout_;
  std::shared_ptr<Exchange> exchange_;
};

}  // namespace strata::bench

#endif  // STRATA_BENCH_HTTP_STREAM_CALL_H_
