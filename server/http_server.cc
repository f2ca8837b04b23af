#include "server/http_server.h"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "server/http_session.h"

namespace strata {
namespace {

namespace net = boost::asio;
using tcp = net::ip::tcp;

}  // namespace

HttpServer::HttpServer(std::unique_ptr<HttpApi> api)
    : api_(std::move(api)), acceptor_(io_context_) {}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    std::unique_ptr<HttpApi> api) {
  std::unique_ptr<HttpServer> server(new HttpServer(std::move(api)));
  const HttpApiOptions& options = server->api_->options;
  const auto cannot_listen = [&](const std::string& why) {
    return absl::UnavailableError(
        absl::StrCat("http_port: could not listen on ", options.host, ":",
                     options.port, ": ", why));
  };
  boost::system::error_code ec;
  tcp::resolver resolver(server->io_context_);
  auto endpoints = resolver.resolve(options.host, std::to_string(options.port),
                                    tcp::resolver::passive, ec);
  if (ec || endpoints.empty()) {
    return cannot_listen(ec ? ec.message() : "no address");
  }
  const tcp::endpoint endpoint = endpoints.begin()->endpoint();
  tcp::acceptor& acceptor = server->acceptor_;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(1024, ec);
  if (ec) return cannot_listen(ec.message());
  server->port_ = acceptor.local_endpoint().port();
  server->Accept();
  const int num_threads = std::max(1, options.num_threads);
  for (int i = 0; i < num_threads; ++i) {
    server->threads_.emplace_back([s = server.get()] {
      // Runs until Stop: the acceptor (or the guard) keeps it busy.
      auto guard = net::make_work_guard(s->io_context_);
      s->io_context_.run();
    });
  }
  return server;
}

HttpServer::~HttpServer() { Stop(absl::ZeroDuration()); }

void HttpServer::Accept() {
  acceptor_.async_accept(
      net::make_strand(io_context_),
      [this](boost::system::error_code ec, tcp::socket socket) {
        if (ec == net::error::operation_aborted || !acceptor_.is_open()) {
          return;  // the listener closed
        }
        if (!ec) {
          socket.set_option(tcp::no_delay(true), ec);
          std::make_shared<HttpSession>(std::move(socket), *api_)->Run();
        } else {
          // EMFILE and friends: the connection waits in the backlog.
          STRATA_LOG(WARNING) << "http accept: " << ec.message();
        }
        Accept();
      });
}

void HttpServer::StartDraining() { api_->draining.store(true); }

void HttpServer::CloseListener() {
  // The acceptor belongs to the io_context's threads: close it there.
  absl::Notification closed;
  net::post(io_context_, [this, &closed] {
    boost::system::error_code ignored;
    acceptor_.close(ignored);
    closed.Notify();
  });
  if (!threads_.empty()) closed.WaitForNotification();
}

void HttpServer::Stop(absl::Duration grace) {
  if (stopped_) return;
  stopped_ = true;
  api_->draining.store(true);
  CloseListener();
  const absl::Time deadline = absl::Now() + grace;
  while (num_active() > 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  // Handlers still pending (idle keep-alive reads, unfinished streams) are
  // dropped with the io_context; each session's destructor cancels its
  // generation.
  io_context_.stop();
  for (std::thread& thread : threads_) thread.join();
  threads_.clear();
}

}  // namespace strata
