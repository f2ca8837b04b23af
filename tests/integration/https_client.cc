#include "tests/integration/https_client.h"

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <cstddef>
#include <memory>

#include "absl/strings/str_cat.h"

namespace strata::testing {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
namespace ssl = net::ssl;

// Complete before the stream exists: an SSL object copies its context's
// certificate when it is made.
ssl::context ClientContext(const std::string& ca_file,
                           const std::string& cert_file,
                           const std::string& key_file) {
  ssl::context context(ssl::context::tls_client);
  // Errors surface at the handshake (nothing trusted, no certificate).
  beast::error_code ignored;
  context.load_verify_file(ca_file, ignored);
  if (!cert_file.empty()) {
    context.use_certificate_chain_file(cert_file, ignored);
    context.use_private_key_file(key_file, ssl::context::pem, ignored);
  }
  return context;
}

}  // namespace

HttpsClient::HttpsClient(int port, const std::string& ca_file,
                         const std::string& cert_file,
                         const std::string& key_file)
    : port_(port),
      context_(ClientContext(ca_file, cert_file, key_file)),
      stream_(io_, context_) {
  stream_.set_verify_mode(ssl::verify_peer);
  stream_.set_verify_callback(ssl::host_name_verification("127.0.0.1"));
}

template <class Begin>
beast::error_code HttpsClient::Await(Begin begin) {
  beast::error_code result = net::error::timed_out;
  beast::get_lowest_layer(stream_).expires_after(
      absl::ToChronoMilliseconds(kTimeout));
  begin([&result](beast::error_code ec, std::size_t = 0) { result = ec; });
  io_.restart();
  io_.run();
  beast::get_lowest_layer(stream_).expires_never();
  return result;
}

beast::error_code HttpsClient::Connect() {
  const net::ip::tcp::endpoint server(net::ip::make_address("127.0.0.1"),
                                      static_cast<uint16_t>(port_));
  beast::error_code ec = Await([&](auto handler) {
    beast::get_lowest_layer(stream_).async_connect(server, handler);
  });
  if (ec) return ec;
  return Await([&](auto handler) {
    stream_.async_handshake(ssl::stream_base::client, handler);
  });
}

std::string HttpsClient::PeerCertificatePem() {
  std::unique_ptr<X509, decltype(&X509_free)> cert(
      SSL_get1_peer_certificate(stream_.native_handle()), &X509_free);
  if (cert == nullptr) return "";
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()),
                                                &BIO_free);
  PEM_write_bio_X509(bio.get(), cert.get());
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

http::request<http::string_body> HttpsClient::Request(
    http::verb verb, const std::string& target, const std::string& body) const {
  http::request<http::string_body> request(verb, target, 11);
  request.set(http::field::host, "127.0.0.1");
  if (!body.empty()) {
    request.set(http::field::content_type, "application/json");
    request.body() = body;
  }
  request.prepare_payload();
  return request;
}

absl::StatusOr<int> HttpsClient::Start(http::verb verb,
                                       const std::string& target,
                                       const std::string& body) {
  const http::request<http::string_body> request = Request(verb, target, body);
  beast::error_code ec = Await(
      [&](auto handler) { http::async_write(stream_, request, handler); });
  parser_.emplace();
  if (!ec) {
    ec = Await([&](auto handler) {
      http::async_read_header(stream_, buffer_, *parser_, handler);
    });
  }
  if (ec) {
    return absl::UnavailableError(absl::StrCat(target, ": ", ec.message()));
  }
  return static_cast<int>(parser_->get().result_int());
}

absl::StatusOr<HttpsClient::Response> HttpsClient::Send(
    http::verb verb, const std::string& target, const std::string& body) {
  if (absl::StatusOr<int> status = Start(verb, target, body); !status.ok()) {
    return status.status();
  }
  const beast::error_code ec = Await([&](auto handler) {
    http::async_read(stream_, buffer_, *parser_, handler);
  });
  if (ec) {
    return absl::UnavailableError(absl::StrCat(target, ": ", ec.message()));
  }
  return parser_->release();
}

absl::Status HttpsClient::ReadSome() {
  const beast::error_code ec = Await([&](auto handler) {
    http::async_read_some(stream_, buffer_, *parser_, handler);
  });
  if (ec) return absl::UnavailableError(ec.message());
  return absl::OkStatus();
}

}  // namespace strata::testing
