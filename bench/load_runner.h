// Drives a running stratad over gRPC or its OpenAI-compatible HTTP API and
// times every streamed token.
//
// One dispatcher thread (the caller of Run) sends requests; the transport's
// threads receive the chunks (one BenchCall per request: GrpcStreamCall, a
// gRPC reactor, or HttpStreamCall, Server-Sent Events over Asio) and record
// timings. Two load shapes:
//   closed loop  `concurrency` clients, each sending its next request as soon
//                as its previous one ends (throughput at a fixed load);
//   open loop    requests arrive at `request_rate` per second (Poisson, or
//                gamma with `burstiness`), independent of how fast the
//                daemon answers; `concurrency` > 0 caps the requests in
//                flight (vLLM's --max-concurrency), 0 leaves them uncapped.
//
// Every run is bounded: at most num_requests are sent; none after `duration`;
// each request has a deadline (request_timeout); after max_run_time anything
// still in flight is cancelled. A daemon that dies or refuses shows up as
// failed requests (by gRPC code), and after abort_after_consecutive_errors
// failures in a row the run stops sending and reports why.
//
// Threading: a LoadRunner runs one Run() at a time; GetModelInfo() and Run()
// must not be called concurrently from several threads.
#ifndef STRATA_BENCH_LOAD_RUNNER_H_
#define STRATA_BENCH_LOAD_RUNNER_H_

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "bench/metrics.h"
#include "bench/workload.h"
#include "client/channel_credentials.h"
#include "grpcpp/grpcpp.h"
#include "strata/v1/generation.grpc.pb.h"

namespace strata::bench {

enum class LoadMode { kClosedLoop, kOpenLoop };

// How requests travel. Model information (vocabulary, context, special
// ids) always comes over gRPC (GetModelInfo): the OpenAI API has no place
// for it.
enum class Protocol { kGrpc, kHttp };

absl::StatusOr<Protocol> ParseProtocol(const std::string& name);
const char* ProtocolName(Protocol protocol);

absl::StatusOr<LoadMode> ParseLoadMode(const std::string& name);
const char* LoadModeName(LoadMode mode);

class HttpTransport;

class LoadRunner {
 public:
  struct Options {
    std::string target = "127.0.0.1:50051";
    bool allow_remote_target = false;  // refuse non-loopback targets unless set
    int32_t num_channels = 1;  // separate HTTP/2 connections, round-robin
    absl::Duration request_timeout = absl::Seconds(120);  // per request
    absl::Duration connect_timeout = absl::Seconds(30);   // GetModelInfo
    int32_t abort_after_consecutive_errors = 20;          // 0: never stop early
    // Sampling sent with every request (max_tokens comes from the workload).
    float temperature = 0;   // greedy
    bool ignore_eos = true;  // so output lengths are exactly max_tokens
    // Recursive models: early-exit threshold and measure sent with every
    // request; unset: the fields are left out and the server applies the
    // model's defaults (its calibrated threshold, its classifier).
    std::optional<float> exit_threshold = std::nullopt;
    std::optional<v1::ExitConfidence> exit_confidence = std::nullopt;
    // Choices per request (sampling.n); 1 leaves it unset.
    int32_t n = 1;
    // Sent as `authorization: Bearer KEY` when not empty (--api_keys_file on
    // the daemon).
    std::string api_key = "";
    // Log a progress line to stderr this often (0: never).
    absl::Duration progress_interval = absl::ZeroDuration();
    // TLS or mutual TLS to the daemon (default: plaintext), for both the
    // gRPC channel and, with kHttp, HTTPS to http_target.
    ClientTlsOptions tls = {};
    // kHttp: generation requests go to http_target ("host:port" of
    // stratad --http_port), as POST /v1/completions or
    // /v1/chat/completions with "stream": true.
    Protocol protocol = Protocol::kGrpc;
    std::string http_target = "";
    int32_t http_threads = 2;  // Asio threads reading the streams
  };

  struct RunOptions {
    LoadMode mode = LoadMode::kClosedLoop;
    int32_t concurrency = 1;  // closed: clients (>= 1); open: cap (0 = none)
    double request_rate = std::numeric_limits<double>::infinity();  // open
    double burstiness = 1.0;                                        // open
    int64_t num_requests = 100;                                     // >= 1
    absl::Duration duration = absl::ZeroDuration();   // send window; 0: unset
    absl::Duration max_run_time = absl::Minutes(30);  // then cancel the rest
    int64_t first_index = 0;    // workload index of the first request
    uint64_t seed = 0;          // arrival times
    std::string label = "run";  // names progress lines
  };

  struct RunResult {
    std::vector<RequestRecord> records;  // [completed or failed], end order
    double duration_s = 0;               // first send -> last request ended
    int64_t num_sent = 0;
    int64_t max_concurrent_requests = 0;
    // In flight at max_run_time and cancelled by the bench (their records
    // say cancelled_by_bench); not an abort when the send window (duration)
    // had ended by then.
    int64_t num_cancelled_by_bench = 0;
    bool aborted = false;      // stopped sending early (errors or deadline)
    std::string abort_reason;  // why, for the report
  };

  // INVALID_ARGUMENT for a bad option (a non-loopback target without
  // allow_remote_target, unreadable TLS files, ...).
  static absl::StatusOr<std::unique_ptr<LoadRunner>> Create(
      const Options& options);
  ~LoadRunner();

  // Waits (up to connect_timeout) for the daemon to answer GetModelInfo.
  absl::StatusOr<v1::ModelInfo> GetModelInfo();

  // Runs one measured phase (or a warm-up) with `workload` and returns the
  // per-request records. Fails only on bad options; daemon failures are
  // records.
  absl::StatusOr<RunResult> Run(const Workload& workload,
                                const RunOptions& run);

 private:
  LoadRunner(const Options& options,
             std::shared_ptr<grpc::ChannelCredentials> credentials,
             std::unique_ptr<HttpTransport> http);

  Options options_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;      // [num_channels]
  std::vector<std::unique_ptr<v1::Generation::Stub>> stubs_;  // [num_channels]
  std::unique_ptr<HttpTransport> http_;  // kHttp only
};

}  // namespace strata::bench

#endif  // STRATA_BENCH_LOAD_RUNNER_H_
