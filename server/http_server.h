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
// Threading: Boost.Asio with api.options.num_threads threads; each
// connection (HttpSession) runs on a strand, so thousands of mostly idle
// SSE streams cost no thread each. Start/StartDraining/CloseListener/Stop
// are called by one thread (the Server's); num_active from any.
#ifndef STRATA_SERVER_HTTP_SERVER_H_
#define STRATA_SERVER_HTTP_SERVER_H_

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/http_api.h"

namespace strata {

class HttpServer {
 public:
  // Binds api->options.host:port and starts the threads. UNAVAILABLE when
  // the address cannot be bound. `api` is owned by the server.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      std::unique_ptr<HttpApi> api);

  // Stop(absl::ZeroDuration()).
  ~HttpServer();

  int32_t port() const { return port_; }

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

  std::unique_ptr<HttpApi> api_;
  boost::asio::io_context io_context_;
  boost::asio::ip::tcp::acceptor acceptor_;
  std::vector<std::thread> threads_;
  int32_t port_ = 0;
  bool stopped_ = false;
};

}  // namespace strata

#endif  // STRATA_SERVER_HTTP_SERVER_H_
