// ServerOptions: everything stratad is told at start, typed (the flags are
// parsed once, in stratad_main.cc), and the checks that need no model file
// (ValidateServerOptions), which Server::Create runs before anything loads.
#ifndef STRATA_SERVER_SERVER_OPTIONS_H_
#define STRATA_SERVER_SERVER_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/backends/backend_options.h"
#include "engine/exit_policy.h"

namespace strata {

struct ServerOptions {
  // Folder with config.json, tokenizer.json, tokenizer_config.json and the
  // safetensors weights.
  std::string model_dir = "models/strata-tiny";
  std::string host = "127.0.0.1";
  int32_t port = 50051;  // 0 picks a free port (see Server::port())
  // Backend, dtype, quantization, device, graphs, GPU memory share and
  // kernel threads, parsed from the flags once (ParseBackendOptions).
  BackendOptions backend;
  int64_t kv_cache_bytes = 256LL << 20;
  int32_t block_size = 16;
  int32_t max_num_seqs = 32;
  int32_t max_tokens_per_step = 2048;  // token budget of one engine step
  bool enable_prefix_caching = true;
  bool static_batching = false;  // baseline policy for benchmarks
  // Recursive models: depth-wise loop batching (one loop per item per step,
  // items at different loops batched together; --loop_batching=depthwise)
  // or sequence-wise (all loops of an item in one step); and the K/V of
  // loops skipped by an early exit (KvFillPolicy).
  bool depthwise = true;
  KvFillPolicy kv_fill = KvFillPolicy::kPropagate;
  // Prompt tokens of requests that may exit exit too (--prompt_exits;
  // Scheduler::Options::prompt_exits); refused with kv_fill recompute.
  // stratad's flag defaults to on (off under recompute); here it stays off,
  // so a server built in code keeps exact prompt K/V unless it asks.
  bool prompt_exits = false;
  // Prompt plus output tokens per request; 0 = min(max_position_embeddings,
  // 4096).
  int32_t max_model_len = 0;
  int32_t max_waiting_requests = 256;
  int64_t max_waiting_tokens = 1 << 20;  // prompt tokens queued, all requests
  // "llama3", "chatml" or "mistral"; "" = detect from tokenizer_config.json.
  std::string chat_template;
  // Prometheus text format at http://metrics_host:metrics_port/metrics;
  // 0 = off. The metrics listener has its own host, loopback by default, so
  // that --host=0.0.0.0 does not expose metrics too (docs/security.md).
  int32_t metrics_port = 0;
  std::string metrics_host = "127.0.0.1";
  // API keys (server/api_key_store.h); "" = none: every call is allowed,
  // as the anonymous tenant.
  std::string api_keys_file;
  // A generation ends with DEADLINE_EXCEEDED after this long, whatever the
  // call's own deadline.
  absl::Duration max_request_time = absl::Minutes(5);
  // Most bytes of prompt text per request (RequestValidator::Limits); the
  // gRPC message limit is this plus kRequestOverheadBytes.
  int64_t max_prompt_bytes = 1 << 20;
  // Readiness watchdog: pending work and no completed engine step for this
  // long turns strata.v1.Generation NOT_SERVING.
  absl::Duration stall_timeout = absl::Seconds(30);
  // Every client connection gets a graceful GOAWAY after this long (gRPC's
  // max_connection_age, +-10% jitter; calls in flight finish, the client
  // reconnects for its next call). A drain waits for this, so that proxies
  // have left every connection before the server stops taking calls (see
  // Shutdown); keep it below the drain's grace.
  absl::Duration max_connection_age = absl::Seconds(2);
  // TLS on the gRPC port (server/tls_credentials.h) and, when http_port is
  // set, HTTPS on the HTTP API port (server/http_server.h): PEM certificate
  // chain and key, both or neither; with a client CA, mutual TLS (clients
  // must present a certificate it signed). Empty: plaintext.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  // OpenAI-compatible HTTP API (docs/api-http.md) on this port; 0 = off.
  int32_t http_port = 0;
  // Asio threads of the HTTP API; 0 = DefaultHttpThreads().
  int32_t http_threads = 0;
  size_t http_max_body_bytes = 4 << 20;
  absl::Duration http_request_timeout = absl::Seconds(30);
  absl::Duration http_write_timeout = absl::Seconds(30);
  // The model id of /v1/models and of the "model" field; "" = the model
  // folder's name.
  std::string served_model_name;
  // Once serving, every thread but the engine's compute threads and the
  // metrics listener runs this much nicer than they do
  // (server/io_priority.h), 0 to 19; 0 = off.
  // stratad's --io_nice defaults to 10; in-process servers (tests) leave
  // their process's threads alone unless asked.
  int32_t io_nice = 0;
};

// INVALID_ARGUMENT naming the option for a value no model could make valid:
// ports out of range, a non-positive block size, KV budget, sequence or
// token budget, a negative max_model_len, an unknown chat template, a
// max_connection_age under 1ms, an io_nice outside [0, 19], a TLS
// certificate without its key (or the reverse), a client CA without a
// certificate. Checks that need the model (max_model_len against the
// model's context) come after it loads.
// One HTTP thread per 4 cores, 1 to 8. Connections mostly wait; every
// thread beyond what the sockets need competes with the engine's threads
// for the cores (on 2 cores a second one cost 5% of output tok/s at 64
// streams, docs/benchmarks.md).
int32_t DefaultHttpThreads();

absl::Status ValidateServerOptions(const ServerOptions& options);

}  // namespace strata

#endif  // STRATA_SERVER_SERVER_OPTIONS_H_
