// HttpApi: what the OpenAI-compatible HTTP sessions share: the same
// tokenizer, RequestBuilder and Scheduler the gRPC service uses, the served
// model's identity, the server's state (readiness, drain), and the limits
// of the HTTP layer (server/http_server.h explains the threading).
#ifndef STRATA_SERVER_HTTP_API_H_
#define STRATA_SERVER_HTTP_API_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "scheduler/scheduler.h"
#include "server/api_key_store.h"
#include "server/metrics.h"
#include "server/output_worker.h"
#include "server/request_builder.h"
#include "text/tokenizer.h"

namespace strata {

struct HttpApiOptions {
  std::string host = "127.0.0.1";
  int32_t port = 0;  // 0 picks a free port
  // Threads running every connection (accept, parse, write); generation
  // runs on the engine and output worker threads, so a few serve thousands of streams.
  int32_t num_threads = 2;
  // Bodies above this are refused (413) before they are read whole.
  size_t max_body_bytes = 4 << 20;
  // Time allowed to receive one whole request, headers and body, from the
  // moment the server starts waiting for it; on a kept-alive connection
  // that includes the idle time before it. Trickling bytes does not extend
  // it (slowloris).
  absl::Duration request_timeout = absl::Seconds(30);
  // A single write to a client that makes no progress for this long ends
  // the connection (and cancels its generation): a reader that stopped.
  absl::Duration write_timeout = absl::Seconds(30);
};

struct HttpApi {
  const Tokenizer* tokenizer = nullptr;     // borrowed
  const RequestBuilder* builder = nullptr;  // borrowed
  Scheduler* scheduler = nullptr;           // borrowed
  Metrics* metrics = nullptr;               // borrowed; optional
  OutputWorker* output_worker = nullptr;    // borrowed; as for gRPC
  std::string model_id;                     // /v1/models id
  int64_t created = 0;                      // Unix seconds the model loaded
  uint32_t context_length = 0;
  std::string system_fingerprint;
  // Whether gRPC health says SERVING (GET /health answers 200 only then).
  std::function<bool()> serving;
  // API keys: the caller's key from the Authorization header ("" when
  // absent), checked before any /v1/ request is routed (the same
  // ApiKeyStore as gRPC's; UNAUTHENTICATED becomes 401). Null: no keys, the
  // API is open and every request runs as the anonymous tenant.
  std::function<absl::StatusOr<std::shared_ptr<const ApiKey>>(
      absl::string_view authorization)>
      check_api_key;
  HttpApiOptions options;

  // Set when the drain starts: new requests are answered 503.
  std::atomic<bool> draining{false};
  // Generations being answered (unary or streaming); the drain waits for 0.
  std::atomic<int> active_generations{0};
};

}  // namespace strata

#endif  // STRATA_SERVER_HTTP_API_H_
