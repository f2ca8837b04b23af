// HttpSession: one client connection of the OpenAI-compatible HTTP API
// (Boost.Beast over Asio; docs/api-http.md says why this library).
//
// Requests are read whole (bounded by HttpApiOptions::max_body_bytes and
// request_timeout), routed, and /v1/completions and /v1/chat/completions are
// translated into the gRPC service's protobuf requests (OpenAiRequest), built
// by the same RequestBuilder and submitted through HttpGeneration. While a
// generation runs the session also watches the socket: a client that closes
// it cancels the generation at the scheduler's next step, as a gRPC
// cancellation does.
//
// One session logic over two streams: PlainHttpSession (beast::tcp_stream)
// and HttpsSession (beast::ssl_stream over one), so HTTPS is the same code
// with a TLS handshake before the first request and a close_notify at the
// end. Both are instantiated in http_session.cc; nothing else differs.
//
// Threading: every handler of a session runs on its strand; the thread that
// delivers output (the output worker's) only queues it in HttpGeneration and
// posts Pump() here.
#ifndef STRATA_SERVER_HTTP_SESSION_H_
#define STRATA_SERVER_HTTP_SESSION_H_

#include <array>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>

#include "server/http_api.h"
#include "server/http_error.h"
#include "server/http_generation.h"
#include "server/openai_request.h"
#include "server/openai_response.h"

namespace strata {

// `Stream`: boost::beast::tcp_stream, or an ssl_stream over one.
template <class Stream>
class HttpSession : public std::enable_shared_from_this<HttpSession<Stream>> {
 public:
  using Request = boost::beast::http::request<boost::beast::http::string_body>;

  // `tls_context`: the context an ssl_stream was made with, kept for as long
  // as the connection lives (a SIGHUP reload replaces the server's while
  // this connection keeps its own); null for plaintext.
  HttpSession(Stream stream, HttpApi& api,
              std::shared_ptr<boost::asio::ssl::context> tls_context = nullptr);
  ~HttpSession();

  // TLS: handshakes (bounded by request_timeout); then reads the first
  // request.
  void Run();

 private:
  static constexpr bool kTls =
      !std::is_same_v<Stream, boost::beast::tcp_stream>;

  // The TCP stream under the TLS one (the stream itself when plaintext):
  // its timers bound every operation, and closing its socket ends them.
  boost::beast::tcp_stream& Tcp() {
    return boost::beast::get_lowest_layer(stream_);
  }

  void Handshake();
  void OnHandshake(boost::beast::error_code ec);
  void DoRead();
  void OnRead(boost::beast::error_code ec);
  void Route();
  void ServeModels(absl::string_view path);
  void ServeGeneration(OpenAiEndpoint endpoint);

  // Writes a whole response, then reads the next request or closes.
  void SendJson(int status, std::string body,
                std::optional<int> retry_after_seconds = std::nullopt);
  void SendError(const HttpError& error);
  // Ends the connection gracefully: TLS's close_notify, then a lingering
  // TCP close (see Discard).
  void Close();
  void LingeringClose();
  void Discard();

  // Generation: output written as it comes (Pump), the socket watched for
  // the client leaving (WatchClient), and the end (EndGeneration).
  void WatchClient();
  void OnClientEvent(boost::beast::error_code ec, size_t bytes);
  void Pump();
  void PumpStream(HttpGeneration::Output output);
  void WriteStream(std::string data, bool last);
  void EndGeneration(bool keep_alive);
  // generation_ and its counters released.
  void ReleaseGeneration();
  void ClientGone(const char* why);
  // The next request, or close, once the watch on the socket has ended.
  void Continue(bool keep_alive);

  // Declared before stream_, so destroyed after it.
  std::shared_ptr<boost::asio::ssl::context> tls_context_;
  Stream stream_;
  boost::beast::flat_buffer buffer_;
  std::optional<
      boost::beast::http::request_parser<boost::beast::http::string_body>>
      parser_;
  Request request_;
  bool keep_alive_ = false;  // of the request being answered
  HttpApi& api_;

  // The generation being answered (null between requests).
  std::shared_ptr<HttpGeneration> generation_;
  // The caller's API key (the anonymous key when keys are off).
  std::shared_ptr<const ApiKey> key_ = std::make_shared<const ApiKey>();
  std::optional<OpenAiRenderer> renderer_;
  bool stream_mode_ = false;
  bool include_usage_ = false;
  v1::CompletionResponse gathered_;  // unary: the choices so far
  bool writing_ = false;
  bool finished_writing_ = false;  // the stream's last chunk is written
  bool client_gone_ = false;
  std::string write_data_;  // the SSE write in flight
  std::unique_ptr<boost::beast::http::response<boost::beast::http::empty_body>>
      stream_header_;
  std::unique_ptr<
      boost::beast::http::response_serializer<boost::beast::http::empty_body>>
      stream_serializer_;

  // The watch on the socket while a generation runs.
  bool watching_ = false;
  std::optional<bool> continue_after_watch_;  // keep_alive, once ended
  std::array<char, 4096> watch_buffer_;
};

using PlainHttpSession = HttpSession<boost::beast::tcp_stream>;
using HttpsSession =
    HttpSession<boost::beast::ssl_stream<boost::beast::tcp_stream>>;

}  // namespace strata

#endif  // STRATA_SERVER_HTTP_SESSION_H_
