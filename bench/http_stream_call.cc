#include "bench/http_stream_call.h"

#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include <array>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace strata::bench {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
using Json = nlohmann::json;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;

struct HttpTransport::Impl {
  net::io_context io;
  net::executor_work_guard<net::io_context::executor_type> work{
      io.get_executor()};
  tcp::resolver::results_type endpoints;
  std::string host;  // the Host header
  // HTTPS when set: every connection's SSL object is made from this context
  // (CA, client certificate, the name to verify), so files are read once.
  std::unique_ptr<ssl::context> tls;
  std::string sni;  // the name sent as SNI; empty for an IP address
  std::vector<std::thread> threads;
};

namespace {

// The client side of TLS from the same options as the gRPC channel. The
// server's name is checked by OpenSSL itself (X509_VERIFY_PARAM) rather than
// a verify callback, so a mismatch is reported by the handshake as
// "hostname mismatch" or "IP address mismatch", not a bare failure.
absl::StatusOr<std::unique_ptr<ssl::context>> ClientTlsContext(
    const ClientTlsOptions& tls, const std::string& name, bool name_is_ip) {
  auto context = std::make_unique<ssl::context>(ssl::context::tls_client);
  beast::error_code ec;
  if (tls.ca_file.empty()) {
    context->set_default_verify_paths(ec);
  } else {
    context->load_verify_file(tls.ca_file, ec);
  }
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tls_ca: cannot load '", tls.ca_file, "': ", ec.message()));
  }
  if (tls.cert_file.empty() != tls.key_file.empty()) {
    return absl::InvalidArgumentError(
        "tls_cert and tls_key must be given together");
  }
  if (!tls.cert_file.empty()) {
    context->use_certificate_chain_file(tls.cert_file, ec);
    if (ec) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tls_cert: cannot load '", tls.cert_file, "': ", ec.message()));
    }
    context->use_private_key_file(tls.key_file, ssl::context::pem, ec);
    if (ec) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tls_key: cannot load '", tls.key_file, "': ", ec.message()));
    }
  }
  context->set_verify_mode(ssl::verify_peer);
  X509_VERIFY_PARAM* param = SSL_CTX_get0_param(context->native_handle());
  const int named = name_is_ip
                        ? X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str())
                        : X509_VERIFY_PARAM_set1_host(param, name.c_str(), 0);
  if (named != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tls_server_name: OpenSSL cannot check the name '", name, "'"));
  }
  return context;
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpTransport>> HttpTransport::Create(
    const Options& options) {
  const std::string& target = options.target;
  // "host:port" or "[v6]:port".
  const size_t colon = target.rfind(':');
  if (colon == std::string::npos || colon + 1 == target.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("http_target must be host:port, got '", target, "'"));
  }
  std::string host = target.substr(0, colon);
  const std::string port = target.substr(colon + 1);
  std::string name = host;
  if (name.size() >= 2 && name.front() == '[' && name.back() == ']') {
    name = name.substr(1, name.size() - 2);
  }
  auto impl = std::make_unique<Impl>();
  beast::error_code ec;
  tcp::resolver resolver(impl->io);
  impl->endpoints = resolver.resolve(name, port, ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot resolve http_target '", target, "': ", ec.message()));
  }
  if (options.tls.enabled()) {
    const std::string& verify_name =
        options.tls.server_name.empty() ? name : options.tls.server_name;
    net::ip::make_address(verify_name, ec);
    const bool name_is_ip = !ec;
    absl::StatusOr<std::unique_ptr<ssl::context>> context =
        ClientTlsContext(options.tls, verify_name, name_is_ip);
    if (!context.ok()) return context.status();
    impl->tls = *std::move(context);
    // RFC 6066: SNI carries host names only.
    if (!name_is_ip) impl->sni = verify_name;
  }
  impl->host = std::move(host);
  for (int i = 0; i < std::max(options.threads, 1); ++i) {
    impl->threads.emplace_back([io = &impl->io] { io->run(); });
  }
  return std::unique_ptr<HttpTransport>(new HttpTransport(std::move(impl)));
}

HttpTransport::HttpTransport(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

HttpTransport::~HttpTransport() {
  impl_->work.reset();
  impl_->io.stop();
  for (std::thread& t : impl_->threads) t.join();
}

namespace {

// "max_prob", "margin", ...: the enum's name without its prefix, as the
// HTTP API reads it.
std::string ExitConfidenceName(v1::ExitConfidence confidence) {
  absl::string_view name = v1::ExitConfidence_Name(confidence);
  absl::ConsumePrefix(&name, "EXIT_CONFIDENCE_");
  return absl::AsciiStrToLower(name);
}

// The request body: the same sampling the gRPC call sends, in the OpenAI
// shape with our extensions as extra fields.
Json RequestBody(const BenchRequest& request,
                 const LoadRunner::Options& options) {
  Json body = Json::object();
  if (request.kind == BenchRequest::Kind::kChat) {
    Json messages = Json::array();
    for (const ChatTurn& turn : request.messages) {
      messages.push_back({{"role", turn.role}, {"content", turn.content}});
    }
    body["messages"] = std::move(messages);
  } else if (request.kind == BenchRequest::Kind::kText) {
    body["prompt"] = request.text;
  } else {
    body["prompt"] = request.token_ids;
  }
  body["max_tokens"] = request.output_len;
  body["temperature"] = options.temperature;
  body["ignore_eos"] = options.ignore_eos;
  if (options.exit_threshold.has_value()) {
    body["exit_threshold"] = *options.exit_threshold;
  }
  if (options.exit_confidence.has_value()) {
    body["exit_confidence"] = ExitConfidenceName(*options.exit_confidence);
  }
  if (options.n > 1) body["n"] = options.n;
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  body["return_token_ids"] = true;
  return body;
}

}  // namespace

// Everything an exchange does but touch the connection: the request, the
// Server-Sent Events and the record. StreamExchange<Stream> below owns the
// connection (plain TCP or TLS) and drives it; from Begin on, every member
// is used on that connection's strand only (cancelled_by_bench excepted).
struct HttpStreamCall::Exchange {
  virtual ~Exchange() = default;

  // Starts the exchange on its strand.
  virtual void Begin() = 0;
  // Closes the connection on the strand, so that the pending operation
  // fails and the exchange ends; nothing once it has ended.
  virtual void Abort() = 0;
  // Closes the connection (without a TLS close_notify: the response, or
  // the bench's interest in it, is over).
  virtual void Close() = 0;

  // Takes what a read of the body left in read_buffer; false when the read
  // failed (the exchange has then ended).
  bool TakeRead(beast::error_code ec) {
    if (ec == http::error::need_buffer) ec = {};
    const size_t got = read_buffer.size() - parser->get().body().size;
    text.append(read_buffer.data(), got);
    if (ec) {
      TransportFailed(ec, "reading the stream");
      return false;
    }
    if (status == 200) TakeEvents();
    return true;
  }

  // Points the parser's body at read_buffer for the next read.
  void PrepareRead() {
    auto& body = parser->get().body();
    body.data = read_buffer.data();
    body.size = read_buffer.size();
  }

  void NewParser() {
    parser.emplace();
    // A stream has no length. (Not boost::none: Boost 1.74 compares
    // lengths against an empty limit as exceeded.)
    parser->body_limit(std::numeric_limits<std::uint64_t>::max());
  }

  // Handles every complete event ("...\n\n") in `text`.
  void TakeEvents() {
    size_t end;
    while ((end = text.find("\n\n")) != std::string::npos) {
      const std::string event = text.substr(0, end);
      text.erase(0, end + 2);
      for (absl::string_view line : absl::StrSplit(event, '\n')) {
        if (!absl::ConsumePrefix(&line, "data:")) continue;
        absl::ConsumePrefix(&line, " ");
        OnData(line);
      }
    }
  }

  void OnData(absl::string_view data) {
    if (data == "[DONE]") {
      done = true;
      return;
    }
    const Json json = Json::parse(data, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded() || !json.is_object()) {
      stream_error = absl::StrCat("not JSON: ", data.substr(0, 200));
      return;
    }
    if (json.contains("error")) {
      stream_error = json["error"].value("message", json["error"].dump());
      return;
    }
    const BenchClock::time_point now = BenchClock::now();
    if (json.contains("choices") && json["choices"].is_array()) {
      for (const Json& choice : json["choices"]) {
        int64_t ids = 0;
        if (auto it = choice.find("token_ids");
            it != choice.end() && it->is_array()) {
          ids = static_cast<int64_t>(it->size());
        }
        std::string piece;
        if (auto it = choice.find("text");
            it != choice.end() && it->is_string()) {
          piece = it->get<std::string>();
        } else if (auto delta = choice.find("delta");
                   delta != choice.end() && delta->is_object()) {
          piece = delta->value("content", "");
        }
        if (ids > 0 || !piece.empty()) {
          if (record.ttft_s < 0) {
            record.ttft_s = SecondsBetween(start, now);
          } else {
            record.itl_s.push_back(SecondsBetween(last_token, now));
          }
          last_token = now;
          ids_received += ids;
        }
        if (auto it = choice.find("finish_reason");
            it != choice.end() && it->is_string()) {
          finish_reason = it->get<std::string>();
        }
      }
    }
    if (auto it = json.find("usage"); it != json.end() && it->is_object()) {
      has_usage = true;
      prompt_tokens = it->value("prompt_tokens", int64_t{0});
      completion_tokens = it->value("completion_tokens", int64_t{0});
      if (auto details = it->find("prompt_tokens_details");
          details != it->end() && details->is_object()) {
        cached_tokens = details->value("cached_tokens", int64_t{0});
      }
    }
  }

  void Complete() {
    if (status != 200) {
      const Json json = Json::parse(text, nullptr, false);
      std::string message = text.substr(0, 300);
      if (json.is_object() && json.contains("error") &&
          json["error"].is_object()) {
        message = json["error"].value("message", message);
      }
      return Fail(absl::StrCat("HTTP_", status), message);
    }
    if (!stream_error.empty()) return Fail(kFinishReasonError, stream_error);
    if (!done || (finish_reason != "stop" && finish_reason != "length")) {
      return Fail(kIncompleteStream,
                  "stream ended without a finish reason and [DONE]");
    }
    record.success = true;
    Finish();
  }

  // `doing`: "connecting", "reading the header", ...; `detail`: what else
  // is known of the cause ("" when nothing).
  void TransportFailed(beast::error_code ec, absl::string_view doing,
                       absl::string_view detail = "") {
    if (cancelled_by_bench.load()) return Fail("CANCELLED", "");
    if (ec == beast::error::timeout) {
      return Fail("DEADLINE_EXCEEDED",
                  absl::StrCat("request timeout while ", doing));
    }
    // An OpenSSL error says it is TLS's, or a refused certificate (with TLS
    // 1.3 the client learns it on its first read, after the handshake)
    // reads like a network fault.
    const bool tls = ec.category() == net::error::get_ssl_category() ||
                     ec == ssl::error::stream_truncated;
    Fail("UNAVAILABLE",
         absl::StrCat(doing, ": ", tls ? "TLS: " : "", ec.message(),
                      detail.empty() ? "" : absl::StrCat(" (", detail, ")")));
  }

  void Fail(std::string code, std::string message) {
    if (cancelled_by_bench.load()) {
      record.cancelled_by_bench = true;
      message = "cancelled by the bench";
    }
    record.error_code = std::move(code);
    record.error_message = std::move(message);
    Finish();
  }

  void Finish() {
    if (owner == nullptr) return;
    const BenchClock::time_point now = BenchClock::now();
    record.e2el_s = SecondsBetween(start, now);
    record.prompt_tokens =
        has_usage ? prompt_tokens : std::max<int64_t>(prompt_len, 0);
    record.output_tokens = has_usage ? completion_tokens : ids_received;
    record.cached_prompt_tokens = cached_tokens;
    Close();
    HttpStreamCall* const done_owner = owner;
    owner = nullptr;
    done_owner->Finish(std::move(record), now);  // may destroy the owner
  }

  HttpStreamCall* owner = nullptr;  // until Finish
  http::request<http::string_body> request;
  beast::flat_buffer buffer;
  std::optional<http::response_parser<http::buffer_body>> parser;
  std::array<char, 16384> read_buffer;
  std::string text;  // SSE not yet handled, or an error body
  unsigned status = 0;
  std::chrono::steady_clock::time_point deadline;
  BenchClock::time_point start;
  BenchClock::time_point last_token;
  std::atomic<bool> cancelled_by_bench{false};
  int32_t prompt_len = 0;
  int64_t ids_received = 0;
  bool done = false;
  std::string finish_reason;
  std::string stream_error;
  bool has_usage = false;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;
  RequestRecord record;
};

namespace {

// The connection side of an exchange, written once for both streams:
// `Stream` is beast::tcp_stream (plaintext) or TlsStream (a TLS handshake
// after the connect). Timeouts live on the TCP layer in both.
template <class Stream>
class StreamExchange final
    : public HttpStreamCall::Exchange,
      public std::enable_shared_from_this<StreamExchange<Stream>> {
 public:
  static constexpr bool kTls = std::is_same_v<Stream, TlsStream>;

  explicit StreamExchange(HttpTransport::Impl& transport)
      : transport_(transport), stream_(NewStream(transport)) {}

  void Begin() override {
    net::post(stream_.get_executor(),
              [self = this->shared_from_this()] { self->Connect(); });
  }

  void Abort() override {
    net::post(stream_.get_executor(), [self = this->shared_from_this()] {
      if (self->owner == nullptr) return;  // ended already
      self->Close();
    });
  }

 private:
  static Stream NewStream(HttpTransport::Impl& transport) {
    if constexpr (kTls) {
      return Stream(net::make_strand(transport.io), *transport.tls);
    } else {
      return Stream(net::make_strand(transport.io));
    }
  }

  beast::tcp_stream& Tcp() { return beast::get_lowest_layer(stream_); }

  void Close() override {
    beast::error_code ignored;
    Tcp().socket().shutdown(tcp::socket::shutdown_both, ignored);
    Tcp().close();
  }

  void Connect() {
    if (cancelled_by_bench.load()) return Fail("CANCELLED", "not sent");
    Tcp().expires_at(deadline);
    Tcp().async_connect(transport_.endpoints,
                        [self = this->shared_from_this()](
                            beast::error_code ec, const tcp::endpoint&) {
                          self->Connected(ec);
                        });
  }

  void Connected(beast::error_code ec) {
    if (ec) return TransportFailed(ec, "connecting");
    if constexpr (kTls) {
      if (!transport_.sni.empty() &&
          !SSL_set_tlsext_host_name(stream_.native_handle(),
                                    transport_.sni.c_str())) {
        return Fail("UNAVAILABLE", "TLS: cannot set the server name (SNI)");
      }
      Tcp().expires_at(deadline);
      stream_.async_handshake(
          ssl::stream_base::client,
          [self = this->shared_from_this()](beast::error_code ec) {
            if (ec) return self->HandshakeFailed(ec);
            self->Write();
          });
    } else {
      Write();
    }
  }

  // "certificate verify failed" alone does not say which check failed
  // (unknown CA, name mismatch, expiry): OpenSSL's verify result does.
  void HandshakeFailed(beast::error_code ec) {
    const long verify = SSL_get_verify_result(stream_.native_handle());
    TransportFailed(
        ec, "handshaking",
        verify == X509_V_OK ? "" : X509_verify_cert_error_string(verify));
  }

  void Write() {
    Tcp().expires_at(deadline);
    http::async_write(
        stream_, request,
        [self = this->shared_from_this()](beast::error_code ec, size_t) {
          if (ec) return self->TransportFailed(ec, "sending the request");
          self->NewParser();
          self->Tcp().expires_at(self->deadline);
          http::async_read_header(
              self->stream_, self->buffer, *self->parser,
              [self](beast::error_code ec, size_t) {
                if (ec) return self->TransportFailed(ec, "reading the header");
                self->status = self->parser->get().result_int();
                self->ReadBody();
              });
        });
  }

  void ReadBody() {
    if (parser->is_done()) return Complete();
    PrepareRead();
    Tcp().expires_at(deadline);
    http::async_read_some(
        stream_, buffer, *parser,
        [self = this->shared_from_this()](beast::error_code ec, size_t) {
          if (self->TakeRead(ec)) self->ReadBody();
        });
  }

  HttpTransport::Impl& transport_;  // outlives every call
  Stream stream_;
};

}  // namespace

HttpStreamCall::HttpStreamCall(std::shared_ptr<RunState> state, int64_t index,
                               const BenchRequest& request,
                               const LoadRunner::Options& options,
                               HttpTransport* transport)
    : BenchCall(std::move(state)) {
  HttpTransport::Impl& impl = transport->impl();
  if (impl.tls != nullptr) {
    exchange_ = std::make_shared<StreamExchange<TlsStream>>(impl);
  } else {
    exchange_ = std::make_shared<StreamExchange<beast::tcp_stream>>(impl);
  }
  Exchange& x = *exchange_;
  x.owner = this;
  x.prompt_len = request.prompt_len;
  x.record.index = index;
  x.record.target_output_tokens = request.output_len;
  x.deadline = std::chrono::steady_clock::now();  // set again at Start
  const bool chat = request.kind == BenchRequest::Kind::kChat;
  x.request = http::request<http::string_body>(
      http::verb::post, chat ? "/v1/chat/completions" : "/v1/completions", 11);
  x.request.set(http::field::host, impl.host);
  x.request.set(http::field::content_type, "application/json");
  x.request.set(http::field::accept, "text/event-stream");
  x.request.keep_alive(false);
  if (!options.api_key.empty()) {
    x.request.set(http::field::authorization, "Bearer " + options.api_key);
  }
  x.request.body() = RequestBody(request, options).dump();
  x.request.prepare_payload();
  request_timeout_ = options.request_timeout;
}

HttpStreamCall::~HttpStreamCall() = default;

void HttpStreamCall::Start() {
  Exchange& x = *exchange_;
  x.start = BenchClock::now();
  x.record.start_s = SecondsBetween(state_->start, x.start);
  // The deadline counts from sending, as for gRPC.
  x.deadline = std::chrono::steady_clock::now() +
               absl::ToChronoNanoseconds(request_timeout_);
  x.Begin();
}

void HttpStreamCall::TryCancel() {
  exchange_->cancelled_by_bench.store(true);
  exchange_->Abort();  // the pending operation fails; the call then ends
}

}  // namespace strata::bench
