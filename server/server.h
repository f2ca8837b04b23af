// Server: one model served over gRPC. Owns the whole stack of a stratad
// process: tokenizer, model runner (engine), scheduler, engine loop, and the
// gRPC server with strata.v1.Generation and the standard health service
// (reflection is added by the binary that links gRPC's reflection plugin; see
// stratad_main.cc).
//
//   auto server = Server::Create(options);   // loads the model, starts serving
//   ...
//   (*server)->Shutdown(absl::Seconds(5));   // on SIGTERM
//
// Threading: Create, Shutdown and the destructor are called by one thread
// (main); the accessors may be called from any thread. A thread of the
// Server's own accepts connections (it owns the listening socket and hands
// each connection to gRPC) until Shutdown.
#ifndef STRATA_SERVER_SERVER_H_
#define STRATA_SERVER_SERVER_H_

#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/model_runner.h"
#include "scheduler/engine_loop.h"
#include "scheduler/scheduler.h"
#include "server/api_key_store.h"
#include "server/generation_service.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/output_worker.h"
#include "server/readiness_watchdog.h"
#include "server/request_builder.h"
#include "server/server_options.h"
#include "server/tls_credentials.h"
#include "strata/v1/generation.pb.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace strata {

class Server {
 public:
  // The default for ServerOptions::max_model_len = 0.
  static constexpr int32_t kDefaultMaxModelLen = 4096;

  // Loads the model and starts serving; the health service reports SERVING
  // for "" and "strata.v1.Generation" once this returns. Errors name what is
  // wrong (a model file, an option, the address that could not be bound).
  static absl::StatusOr<std::unique_ptr<Server>> Create(
      const ServerOptions& options);

  // Shutdown(absl::ZeroDuration()) unless already shut down.
  ~Server();

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Drains and stops, without failing a call that reached the server:
  //   1. health NOT_SERVING (Check and Watch);
  //   2. the listener stops taking connections (new ones are refused: a
  //      proxy retries them elsewhere, a client gets UNAVAILABLE), while
  //      every open connection keeps being served, new calls included;
  //   3. the open connections reach max_connection_age and get a graceful
  //      GOAWAY, so proxies and clients leave them; running calls finish;
  //   4. once both are done, or at `grace`, the gRPC server shuts down; calls
  //      still running then are cancelled with UNAVAILABLE.
  // Then the engine loop stops. Idempotent. docs/operations.md, "Drain",
  // explains why each step is there.
  void Shutdown(absl::Duration grace);

  // The bound port (the chosen one when options.port was 0).
  int32_t port() const { return port_; }
  // "host:port" as bound.
  std::string address() const;
  const v1::ModelInfo& model_info() const { return model_info_; }
  // Re-reads --api_keys_file (on SIGHUP); on error the current keys stay.
  // OK when the server has no keys file.
  absl::Status ReloadApiKeys();

  // The port of the OpenAI-compatible HTTP API; 0 when off.
  int32_t http_port() const {
    return http_server_ != nullptr ? http_server_->port() : 0;
  }
  // The port /metrics is served on; 0 when off.
  int32_t metrics_port() const { return metrics_->exposer_port(); }
  const ServerOptions& options() const { return options_; }

  // Re-reads the TLS certificate, key and client CA (stratad: on SIGHUP),
  // for the gRPC port and the HTTP API's HTTPS together. New connections
  // get them; open ones keep theirs and are not dropped. An error
  // (unreadable files, a key not of the certificate) changes nothing on
  // either port. FAILED_PRECONDITION when TLS is off.
  absl::Status ReloadTls();

 private:
  explicit Server(const ServerOptions& options) : options_(options) {}

  // Validates the options (ValidateServerOptions, before any file is
  // read), then builds tokenizer, engine, scheduler, metrics and the gRPC
  // server, and starts serving.
  absl::Status Start();
  // What strata.v1.Generation/Info reports.
  v1::ModelInfo BuildModelInfo(const ModelConfig& config, int32_t max_model_len,
                               std::optional<ChatFormat> chat_format) const;
  // Runs one one-token request through the engine so that the first real
  // request does not pay for cold caches; health turns SERVING after it.
  absl::Status WarmUp();
  // Waits until the scheduler holds no request or `timeout` passes.
  bool WaitForIdle(absl::Duration timeout) const;
  // Starts the OpenAI-compatible HTTP API when options_.http_port is set;
  // HTTPS only with `tls` (the gRPC port's certificate), else plaintext.
  absl::Status StartHttp(const ModelConfig& config, const TlsPem* tls);
  // Binds and listens on options_.host:options_.port (sets port_); the
  // accepted connections go to gRPC through acceptor_ (AcceptLoop).
  absl::Status Listen();
  // options_.io_nice > 0: the I/O threads below the compute threads
  // (server/io_priority.h); a failure is logged, not fatal.
  void LowerIoPriority();
  void AcceptLoop();
  // Stops taking connections without resetting one a client has already
  // opened (see server.cc), and closes the listening socket.
  void StopListening();

  const ServerOptions options_;
  v1::ModelInfo model_info_;
  int32_t port_ = 0;
  bool shut_down_ = false;
  // Our own listening socket, so that it can close while gRPC keeps serving
  // the connections it has (grpc::Server::Shutdown would do both at once).
  int listen_fd_ = -1;
  std::atomic<bool> stop_accepting_{false};
  std::thread accept_thread_;
  std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor_;

  // Destroyed bottom-up: the gRPC server first (no call left), then the
  // engine loop (no step left), then the scheduler (whose destructor still
  // ends held requests, posting to the output worker), then the worker
  // (which runs what was posted, with the tokenizer and metrics), then the
  // engine.
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<ApiKeyStore> api_keys_;  // null without --api_keys_file
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<OutputWorker> output_worker_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<RequestBuilder> builder_;
  std::unique_ptr<EngineLoop> engine_loop_;
  std::unique_ptr<GenerationService> service_;
  // Null when TLS is off; outlives grpc_server_, whose handshakes call it.
  std::unique_ptr<TlsCredentials> tls_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<ReadinessWatchdog> watchdog_;
  // What gRPC health says for strata.v1.Generation, for GET /health.
  std::atomic<bool> serving_{false};
  // Stopped before the engine loop, like the gRPC server.
  std::unique_ptr<HttpServer> http_server_;
};

}  // namespace strata

#endif  // STRATA_SERVER_SERVER_H_
