// HttpServer: the OpenAI-compatible HTTP API of stratad (docs/api-http.md),
// on its own port beside gRPC, over the same RequestBuilder and Scheduler.
//
//   auto http = HttpServer::Start(api);  // listening once this returns
//   ...
//   http->StartDraining();               // SIGTERM: new requests 503
//   ... wait for http->num_active() == 0 (or the grace period) ...
//   http->CloseListener();               // then new connections are refused
//   http->Stop(grace);                   // what is left is cut
//
// HTTPS: started with the TLS files' contents (the same --tls_cert,
// --tls_key and --tls_client_ca as the gRPC port), the port speaks TLS only.
// The server holds one ssl::context, built from them; each accepted
// connection takes a reference to the current one, so ReloadTls (SIGHUP)
// swaps it for new connections while open ones keep theirs to their end.
//
// Threading: Boost.Asio with api.options.num_threads threads; each
// connection (HttpSession) runs on a strand, so thousands of mostly idle
// SSE streams cost no thread each. Start/StartDraining/CloseListener/Stop
// are called by one thread (the Server's); num_active and ReloadTls from
// any.
#ifndef STRATA_SERVER_HTTP_SERVER_H_
#define STRATA_SERVER_HTTP_SERVER_H_

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/http_api.h"
#include "server/tls_credentials.h"

namespace strata {

class HttpServer {
 public:
  // Binds api->options.host:port and starts the threads. UNAVAILABLE when
  // the address cannot be bound. `api` is owned by the server. `tls`: serve
  // HTTPS only with this certificate (and, with a client CA, require client
  // certificates it signed); null: plaintext. INVALID_ARGUMENT when OpenSSL
  // refuses the PEM.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      std::unique_ptr<HttpApi> api, const TlsPem* tls = nullptr);

  // Stop(absl::ZeroDuration()).
  ~HttpServer();

  int32_t port() const { return port_; }

  // New connections use `pem` from now on; open ones keep what they
  // handshook with. An error (INVALID_ARGUMENT: OpenSSL refuses the PEM)
  // changes nothing. FAILED_PRECONDITION on a plaintext server.
  absl::Status ReloadTls(const TlsPem& pem);

  // From now on every new request is answered 503 (kept-alive connections
  // are closed after their answer); responses in flight continue.
  void StartDraining();
  // Generations being answered.
  int num_active() const { return api_->active_generations.load(); }
  // New connections are refused from now on.
  void CloseListener();
  // Closes the listener, waits up to `grace` for the responses in flight,
  // then stops every connection and joins the threads. Idempotent.
  void Stop(absl::Duration grace);

 private:
  explicit HttpServer(std::unique_ptr<HttpApi> api);
  void Accept();
  std::shared_ptr<boost::asio::ssl::context> tls_context() const;

  std::unique_ptr<HttpApi> api_;
  mutable absl::Mutex tls_mu_;
  // What new connections handshake with (null when plaintext, for the
  // server's life); each session holds the one it was made with.
  std::shared_ptr<boost::asio::ssl::context> tls_context_
      ABSL_GUARDED_BY(tls_mu_);
  boost::asio::io_context io_context_;
  boost::asio::ip::tcp::acceptor acceptor_;
  std::vector<std::thread> threads_;
  int32_t port_ = 0;
  bool stopped_ = false;
};

}  // namespace strata

#endif  // STRATA_SERVER_HTTP_SERVER_H_
