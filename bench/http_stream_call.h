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
//
// With TLS options (the same ClientTlsOptions as the gRPC channel, so one
// set of --tls_* flags serves both protocols) every connection is HTTPS:
// the server's certificate is checked against the CA and the target's host
// (or server_name), and a client certificate is presented for mutual TLS.
// The exchange is written once over the stream type (plain TCP or TLS); a
// failed handshake is a failed request like any other transport error.
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
#include "client/channel_credentials.h"

namespace strata::bench {

class HttpTransport {
 public:
  struct Options {
    std::string target = "";  // "host:port" or "[v6]:port"
    int32_t threads = 2;      // run the io_context
    // enabled(): HTTPS. Empty ca_file: the system's roots.
    ClientTlsOptions tls = {};
  };

  // Resolves the target once and, for TLS, loads the CA and the client
  // certificate once. INVALID_ARGUMENT naming the option (http_target,
  // tls_ca, tls_cert, tls_key, tls_server_name) when one cannot be used.
  static absl::StatusOr<std::unique_ptr<HttpTransport>> Create(
      const Options& options);
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
