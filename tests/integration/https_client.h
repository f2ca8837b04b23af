// HttpsClient: a small blocking HTTPS/1.1 client for the tests of stratad's
// HTTP API over TLS (Beast's ssl_stream over OpenSSL). Underneath every call
// is asynchronous and bounded by kTimeout (the TCP stream's timer), so a
// server that never answers fails a test instead of hanging it.
//
//   HttpsClient client(port, pki.Path("ca.pem"));
//   ASSERT_FALSE(client.Connect());
//   auto response = client.Send(http::verb::get, "/v1/models");
#ifndef STRATA_TESTS_INTEGRATION_HTTPS_CLIENT_H_
#define STRATA_TESTS_INTEGRATION_HTTPS_CLIENT_H_

#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace strata::testing {

class HttpsClient {
 public:
  static constexpr absl::Duration kTimeout = absl::Seconds(30);
  using Response =
      boost::beast::http::response<boost::beast::http::string_body>;

  // Trusts only the CA in `ca_file` and checks the server's certificate
  // names 127.0.0.1; presents `cert_file` and `key_file` when given (mutual
  // TLS).
  HttpsClient(int port, const std::string& ca_file,
              const std::string& cert_file = "",
              const std::string& key_file = "");

  // TCP connect to 127.0.0.1:port, then the TLS handshake.
  boost::beast::error_code Connect();
  // PEM of the certificate the server presented; "" before Connect.
  std::string PeerCertificatePem();

  // One request on the connection and its whole response; the error of
  // writing or reading it otherwise (e.g. the server refused the
  // handshake: TLS 1.3 clients learn it only here).
  absl::StatusOr<Response> Send(boost::beast::http::verb verb,
                                const std::string& target,
                                const std::string& body = "");

  // A response read as it arrives (server-sent events): Start writes the
  // request and reads the header (the HTTP status), ReadSome the next part
  // of the body (body() accumulates it, chunked framing removed) until
  // done().
  absl::StatusOr<int> Start(boost::beast::http::verb verb,
                            const std::string& target, const std::string& body);
  absl::Status ReadSome();
  bool done() const { return parser_.has_value() && parser_->is_done(); }
  const std::string& body() const { return parser_->get().body(); }

 private:
  // Runs the io_context until the operation `start` began (given its
  // completion handler) completes, within kTimeout; its error.
  template <class Begin>
  boost::beast::error_code Await(Begin begin);
  boost::beast::http::request<boost::beast::http::string_body> Request(
      boost::beast::http::verb verb, const std::string& target,
      const std::string& body) const;

  int port_;
  boost::asio::io_context io_;
  boost::asio::ssl::context context_;
  boost::beast::ssl_stream<boost::beast::tcp_stream> stream_;
  boost::beast::flat_buffer buffer_;
  std::optional<
      boost::beast::http::response_parser<boost::beast::http::string_body>>
      parser_;
};

}  // namespace strata::testing

#endif  // STRATA_TESTS_INTEGRATION_HTTPS_CLIENT_H_
