// Prometheus metrics of one stratad process: what the engine loop does each
// step, how requests end, and how long they took. docs/metrics.md lists every
// metric with its type, labels and meaning; keep the two in step.
//
// Threading: the prometheus-cpp metric objects are thread-safe, so every
// method may be called from any thread. OnStep is meant for the engine thread
// (it runs inside the loop and is quick: a few atomic adds and two histogram
// observations).
#ifndef STRATA_SERVER_METRICS_H_
#define STRATA_SERVER_METRICS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "scheduler/engine_loop.h"
#include "scheduler/request.h"
#include "server/metrics_http_server.h"

namespace strata {

class Metrics : public StepObserver {
 public:
  struct Options {
    // Labels of strata_model_info.
    std::string model_name;
    std::string architecture;  // e.g. "LlamaForCausalLM"
    std::string dtype;         // e.g. "f32", "bf16", "int8"
    std::string backend;       // e.g. "cpu"
    // Label of strata_build_info.
    std::string version;
    // Recursive models: the loops of the shared block (1 = a plain model;
    // the exit-depth histogram has one bucket per loop) and the KV fill
    // policy (label of strata_kv_fill_tokens_total).
    int32_t num_loops = 1;
    std::string kv_fill = "propagate";
  };

  // Latency histogram buckets (seconds): 1 ms to 2 min, so both a GPU's
  // millisecond decode steps and a CPU's multi-second prefills land inside.
  static const std::vector<double>& LatencyBuckets();
  // Batch size buckets (requests per step): 1, 2, 4, ..., 2048.
  static const std::vector<double>& BatchSizeBuckets();
  // Tokens-per-step buckets: 1, 2, 4, ..., 8192.
  static const std::vector<double>& StepTokensBuckets();

  // Registers every metric in a new registry; nothing is exposed yet.
  explicit Metrics(const Options& options);
  ~Metrics() override;

  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Serves the registry as text at http://host:port/metrics (see
  // server/metrics_http_server.h, one thread of its own). port 0 means "don't
  // expose" and returns OK. Errors: INVALID_ARGUMENT for a port outside [0,
  // 65535], FAILED_PRECONDITION when already started, UNAVAILABLE when the
  // address cannot be bound.
  // `state`, when given, is read at every scrape to refresh the queue and
  // KV gauges, so a scrape sees requests that arrived (or ended) since the
  // engine loop last reported; it must stay callable until StopExposer().
  absl::Status StartExposer(const std::string& host, int port,
                            std::function<StepStats()> state = nullptr);

  // Stops serving (joins the exposer's threads); a no-op when not started.
  void StopExposer();

  // The port the exposer listens on; 0 when it is not running.
  int exposer_port() const;

  // One engine step: batch size, tokens, duration, queue and KV gauges, and
  // the increments of the scheduler's running totals (preemptions, prefix
  // cache) since the previous call.
  void OnStep(const StepStats& stats) override;
  // The queue and KV gauges, after a cancel or an expiry with no step.
  void OnStateChange(const StepStats& stats) override;

  // A generated token ran `loops` loops (exit depth; 1 on a plain model).
  void RecordTokenLoops(int32_t loops);

  // A request ended (any thread): strata_requests_total by outcome, token
  // counters and the latency histograms; with a key name (an API key's
  // NAME, never the key) also the strata_key_* counters of that key.
  void RecordFinish(const FinishInfo& info, const std::string& key_name = "");

  // Admission refused the request (RESOURCE_EXHAUSTED or UNAVAILABLE at
  // Submit): counts it as outcome="rejected" (and for its key, if any).
  void RecordRejected(const std::string& key_name = "");

  // A call without a valid API key (UNAUTHENTICATED).
  void RecordUnauthenticated();

  // A request arrived on the public API: strata_api_requests_total by
  // protocol ("grpc" or "http") and endpoint (the gRPC method or the HTTP
  // path). Counted once, before validation, so refused requests show too.
  void RecordApiRequest(absl::string_view protocol, absl::string_view endpoint);

  // HTTP responses in flight (strata_http_responses_open): +1 when a
  // generation starts answering over HTTP, -1 when its connection is done
  // with it (written, failed or abandoned by the client).
  void AddOpenHttpResponses(int delta);

  // An HTTPS connection whose TLS handshake failed or timed out (a client's
  // mistake: counted here, never logged per connection).
  void RecordHttpTlsHandshakeFailure();

  // Result of the readiness watchdog: 1 while the engine loop is stuck.
  void SetEngineStalled(bool stalled);

  std::shared_ptr<prometheus::Registry> registry() { return registry_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;

  // strata_requests_total by outcome.
  prometheus::Counter* requests_ok_;
  prometheus::Counter* requests_cancelled_;
  prometheus::Counter* requests_deadline_;
  prometheus::Counter* requests_rejected_;
  prometheus::Counter* requests_error_;
  prometheus::Counter* unauthenticated_;

  // Per API key name: created on a key's first request.
  prometheus::Family<prometheus::Counter>* key_requests_;
  prometheus::Family<prometheus::Counter>* key_prompt_tokens_;
  prometheus::Family<prometheus::Counter>* key_generation_tokens_;

  prometheus::Gauge* requests_running_;
  prometheus::Gauge* requests_waiting_;
  prometheus::Gauge* kv_blocks_used_;
  prometheus::Gauge* kv_blocks_total_;
  prometheus::Gauge* engine_stalled_;
  prometheus::Family<prometheus::Counter>* api_requests_;
  prometheus::Gauge* http_responses_open_;
  prometheus::Counter* http_tls_handshake_failures_;

  prometheus::Counter* prefix_queried_tokens_;
  prometheus::Counter* prefix_hit_tokens_;
  prometheus::Counter* preemptions_;
  prometheus::Counter* prompt_tokens_;
  prometheus::Counter* generation_tokens_;
  prometheus::Counter* engine_steps_;
  prometheus::Counter* engine_step_failures_;

  prometheus::Histogram* time_to_first_token_;
  prometheus::Histogram* time_per_output_token_;
  prometheus::Histogram* e2e_latency_;
  prometheus::Histogram* queue_time_;
  prometheus::Histogram* step_duration_;
  prometheus::Histogram* step_batch_size_;
  prometheus::Histogram* step_tokens_;
  prometheus::Histogram* token_loops_;
  prometheus::Counter* kv_fill_tokens_;
  prometheus::Counter* prompt_exit_tokens_;

  // The scheduler's running totals at the previous OnStep, to turn them into
  // counter increments.
  absl::Mutex step_mu_;
  int64_t last_preemptions_ ABSL_GUARDED_BY(step_mu_) = 0;
  int64_t last_prefix_queried_ ABSL_GUARDED_BY(step_mu_) = 0;
  int64_t last_prefix_hit_ ABSL_GUARDED_BY(step_mu_) = 0;
  int64_t last_early_exits_ ABSL_GUARDED_BY(step_mu_) = 0;
  int64_t last_prompt_exits_ ABSL_GUARDED_BY(step_mu_) = 0;

  mutable absl::Mutex exposer_mu_;
  std::unique_ptr<MetricsHttpServer> exposer_ ABSL_GUARDED_BY(exposer_mu_);
  int exposer_port_ ABSL_GUARDED_BY(exposer_mu_) = 0;
};

}  // namespace strata

#endif  // STRATA_SERVER_METRICS_H_
