#include "server/http_server.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/thread_name.h"
#include "server/http_session.h"

namespace strata {
namespace {

namespace net = boost::asio;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;

// Sent in the certificate request, so that a client holding several
// certificates presents one these CAs signed (gRPC's port does the same).
absl::Status AddClientCaNames(const std::string& pem, SSL_CTX* context) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (bio == nullptr) return absl::InternalError("BIO_new_mem_buf failed");
  int num_added = 0;
  while (X509* ca = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
    num_added += SSL_CTX_add_client_CA(context, ca);  // copies the name
    X509_free(ca);
  }
  BIO_free(bio);
  ERR_clear_error();  // the end of the bundle reads as an error
  if (num_added == 0) {
    return absl::InvalidArgumentError("tls_client_ca: no CA name to send");
  }
  return absl::OkStatus();
}

// The HTTPS port's context from checked PEM (LoadTlsFiles): the same
// certificate, key and client CA as gRPC's, TLS 1.2 and 1.3 only (gRPC's
// range too).
absl::StatusOr<std::shared_ptr<ssl::context>> NewTlsContext(const TlsPem& pem) {
  auto context = std::make_shared<ssl::context>(ssl::context::tls_server);
  SSL_CTX* native = context->native_handle();
  SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION);
  boost::system::error_code ec;
  context->use_certificate_chain(net::buffer(pem.cert_chain), ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("tls_cert: OpenSSL refused the chain: ", ec.message()));
  }
  context->use_private_key(net::buffer(pem.private_key), ssl::context::pem, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("tls_key: OpenSSL refused the key: ", ec.message()));
  }
  if (!pem.client_ca.empty()) {
    // Mutual TLS, as gRPC's REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_
    // VERIFY: no certificate, or one the CA did not sign, fails the
    // handshake.
    context->add_certificate_authority(net::buffer(pem.client_ca), ec);
    if (ec) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tls_client_ca: OpenSSL refused the bundle: ", ec.message()));
    }
    if (absl::Status st = AddClientCaNames(pem.client_ca, native); !st.ok()) {
      return st;
    }
    context->set_verify_mode(ssl::verify_peer |
                             ssl::verify_fail_if_no_peer_cert);
  }
  // OpenSSL refuses to resume a session under peer verification unless the
  // context names its sessions (the handshake fails instead); the name is
  // arbitrary but fixed.
  static constexpr unsigned char kSessionContext[] = "stratad-http";
  SSL_CTX_set_session_id_context(native, kSessionContext,
                                 sizeof(kSessionContext) - 1);
  return context;
}

}  // namespace

HttpServer::HttpServer(std::unique_ptr<HttpApi> api)
    : api_(std::move(api)), acceptor_(io_context_) {}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    std::unique_ptr<HttpApi> api, const TlsPem* tls) {
  std::unique_ptr<HttpServer> server(new HttpServer(std::move(api)));
  if (tls != nullptr) {
    absl::StatusOr<std::shared_ptr<ssl::context>> context = NewTlsContext(*tls);
    if (!context.ok()) return context.status();
    absl::MutexLock lock(&server->tls_mu_);
    server->tls_context_ = *std::move(context);
  }
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
      SetCurrentThreadName("strata-http");
      // Runs until Stop: the acceptor (or the guard) keeps it busy.
      auto guard = net::make_work_guard(s->io_context_);
      s->io_context_.run();
    });
  }
  return server;
}

HttpServer::~HttpServer() { Stop(absl::ZeroDuration()); }

absl::Status HttpServer::ReloadTls(const TlsPem& pem) {
  // Whether the port speaks TLS is fixed at Start: a plaintext server's
  // context stays null.
  if (tls_context() == nullptr) {
    return absl::FailedPreconditionError("the HTTP port is plaintext");
  }
  absl::StatusOr<std::shared_ptr<ssl::context>> context = NewTlsContext(pem);
  if (!context.ok()) return context.status();
  absl::MutexLock lock(&tls_mu_);
  tls_context_ = *std::move(context);
  return absl::OkStatus();
}

std::shared_ptr<ssl::context> HttpServer::tls_context() const {
  absl::MutexLock lock(&tls_mu_);
  return tls_context_;
}

void HttpServer::Accept() {
  acceptor_.async_accept(
      net::make_strand(io_context_),
      [this](boost::system::error_code ec, tcp::socket socket) {
        if (ec == net::error::operation_aborted || !acceptor_.is_open()) {
          return;  // the listener closed
        }
        if (!ec) {
          socket.set_option(tcp::no_delay(true), ec);
          if (std::shared_ptr<ssl::context> tls = tls_context()) {
            // The session keeps `tls`: a reload may replace tls_context_.
            boost::beast::ssl_stream<boost::beast::tcp_stream> stream(
                std::move(socket), *tls);
            std::make_shared<HttpsSession>(std::move(stream), *api_,
                                           std::move(tls))
                ->Run();
          } else {
            std::make_shared<PlainHttpSession>(
                boost::beast::tcp_stream(std::move(socket)), *api_)
                ->Run();
          }
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
