#include "server/http_session.h"

#include <boost/asio/buffer.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/stream_base.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace strata {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;

constexpr absl::string_view kCompletionsPath = "/v1/completions";
constexpr absl::string_view kChatPath = "/v1/chat/completions";
constexpr absl::string_view kModelsPath = "/v1/models";
constexpr absl::string_view kHealthPath = "/health";
// How long a closing connection waits for the client (its close_notify, the
// rest of a body it is still sending) before the socket is closed.
constexpr std::chrono::seconds kCloseTimeout(2);

std::string RandomId(absl::string_view prefix) {
  absl::BitGen bitgen;
  return absl::StrFormat("%s%016x%08x", prefix, absl::Uniform<uint64_t>(bitgen),
                         absl::Uniform<uint32_t>(bitgen));
}

absl::string_view MethodOf(const http::request<http::string_body>& request) {
  return absl::string_view(request.method_string().data(),
                           request.method_string().size());
}

absl::string_view PathOf(absl::string_view target) {
  return target.substr(0, target.find('?'));
}

std::string SseEvent(const nlohmann::json& json) {
  return absl::StrCat("data: ", DumpJson(json), "\n\n");
}

}  // namespace

template <class Stream>
HttpSession<Stream>::HttpSession(Stream stream, HttpApi& api,
                                 std::shared_ptr<net::ssl::context> tls_context)
    : tls_context_(std::move(tls_context)),
      stream_(std::move(stream)),
      api_(api) {}

template <class Stream>
HttpSession<Stream>::~HttpSession() {
  // The connection went away (closed, timed out, server stopping) while a
  // generation was still being answered: let the scheduler drop it.
  if (generation_ != nullptr) {
    generation_->Cancel(absl::CancelledError("the HTTP connection closed"));
    ReleaseGeneration();
  }
}

template <class Stream>
void HttpSession<Stream>::Run() {
  net::dispatch(stream_.get_executor(),
                [self = this->shared_from_this()] { self->Handshake(); });
}

template <class Stream>
void HttpSession<Stream>::Handshake() {
  if constexpr (!kTls) {
    DoRead();
  } else {
    // Bounded like a request: a client that connects and says nothing (or
    // trickles its hello) is dropped at request_timeout, not kept forever.
    Tcp().expires_after(
        absl::ToChronoMilliseconds(api_.options.request_timeout));
    stream_.async_handshake(
        net::ssl::stream_base::server,
        [self = this->shared_from_this()](beast::error_code ec) {
          self->OnHandshake(ec);
        });
  }
}

template <class Stream>
void HttpSession<Stream>::OnHandshake(beast::error_code ec) {
  if (ec) {
    // Plaintext HTTP on the TLS port, an untrusted or missing client
    // certificate, a scanner, a timeout: the client's mistake, so counted,
    // not logged (a log line per connection would let anyone fill the log).
    if (api_.metrics != nullptr) api_.metrics->RecordHttpTlsHandshakeFailure();
    beast::error_code ignored;
    Tcp().socket().close(ignored);
    return;
  }
  Tcp().expires_never();
  DoRead();
}

template <class Stream>
void HttpSession<Stream>::DoRead() {
  parser_.emplace();
  parser_->body_limit(api_.options.max_body_bytes);
  // One deadline for the whole request (and the idle time before it), so a
  // client trickling bytes cannot hold the connection.
  Tcp().expires_after(absl::ToChronoMilliseconds(api_.options.request_timeout));
  http::async_read(stream_, buffer_, *parser_,
                   [self = this->shared_from_this()](
                       beast::error_code ec, size_t) { self->OnRead(ec); });
}

template <class Stream>
void HttpSession<Stream>::OnRead(beast::error_code ec) {
  if (ec == http::error::body_limit) {
    keep_alive_ = false;
    SendError(BodyTooLargeError(api_.options.max_body_bytes));
    return;
  }
  // TLS: a client that closes the TCP connection without a close_notify
  // (most do, between requests) reads as stream_truncated.
  if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
      ec == net::error::operation_aborted ||
      ec == net::ssl::error::stream_truncated) {
    Close();
    return;
  }
  if (ec) {
    // Not HTTP: answer what we can and leave (the stream is unusable).
    keep_alive_ = false;
    HttpError error = HttpErrorFromStatus(absl::InvalidArgumentError(
        absl::StrCat("malformed HTTP request: ", ec.message())));
    error.code = "bad_request";
    SendError(error);
    return;
  }
  Tcp().expires_never();
  request_ = parser_->release();
  keep_alive_ = request_.keep_alive() && !api_.draining.load();
  Route();
}

template <class Stream>
void HttpSession<Stream>::Route() {
  const absl::string_view path = PathOf(
      absl::string_view(request_.target().data(), request_.target().size()));
  const http::verb verb = request_.method();
  const bool generation = path == kCompletionsPath || path == kChatPath;
  const bool models = path == kModelsPath ||
                      absl::StartsWith(path, absl::StrCat(kModelsPath, "/"));
  if (api_.metrics != nullptr) {
    api_.metrics->RecordApiRequest(
        "http", generation || path == kHealthPath || path == kModelsPath ? path
                : models ? "/v1/models/{model}"
                         : "other");
  }
  if (path == kHealthPath && verb == http::verb::get) {
    const bool ok = !api_.draining.load() && api_.serving && api_.serving();
    SendJson(ok ? 200 : 503,
             ok ? R"({"status":"ok"})" : R"({"status":"not serving"})");
    return;
  }
  if (api_.draining.load()) {
    SendError(HttpErrorFromStatus(absl::UnavailableError(
        "the server is draining (shutting down); retry on another replica")));
    return;
  }
  if (absl::StartsWith(path, "/v1/") && api_.check_api_key) {
    const auto header = request_.find(http::field::authorization);
    const absl::string_view authorization =
        header == request_.end()
            ? absl::string_view()
            : absl::string_view(header->value().data(), header->value().size());
    absl::StatusOr<std::shared_ptr<const ApiKey>> key =
        api_.check_api_key(authorization);
    if (!key.ok()) {
      SendError(HttpErrorFromStatus(key.status()));
      return;
    }
    key_ = *std::move(key);
  }
  if (generation) {
    if (verb != http::verb::post) {
      SendError(MethodNotAllowedError(MethodOf(request_), path));
      return;
    }
    ServeGeneration(path == kChatPath ? OpenAiEndpoint::kChatCompletions
                                      : OpenAiEndpoint::kCompletions);
    return;
  }
  if (models) {
    if (verb != http::verb::get) {
      SendError(MethodNotAllowedError(MethodOf(request_), path));
      return;
    }
    ServeModels(path);
    return;
  }
  SendError(NotFoundError(
      absl::StrCat("no route for ", MethodOf(request_), " ", path),
      "not_found"));
}

template <class Stream>
void HttpSession<Stream>::ServeModels(absl::string_view path) {
  const nlohmann::json model = {{"id", api_.model_id},
                                {"object", "model"},
                                {"created", api_.created},
                                {"owned_by", "strata"},
                                {"max_model_len", api_.context_length}};
  if (path == kModelsPath) {
    SendJson(200, DumpJson({{"object", "list"}, {"data", {model}}}));
    return;
  }
  const absl::string_view id = path.substr(kModelsPath.size() + 1);
  if (id != api_.model_id) {
    SendError(NotFoundError(absl::StrCat("The model `", id,
                                         "` does not exist; this server "
                                         "serves `",
                                         api_.model_id, "`"),
                            "model_not_found"));
    return;
  }
  SendJson(200, DumpJson(model));
}

template <class Stream>
void HttpSession<Stream>::ServeGeneration(OpenAiEndpoint endpoint) {
  absl::StatusOr<OpenAiRequest> parsed =
      ParseOpenAiRequest(endpoint, request_.body());
  if (!parsed.ok()) {
    SendError(HttpErrorFromStatus(parsed.status()));
    return;
  }
  if (!parsed->model.empty() && parsed->model != api_.model_id) {
    HttpError error =
        NotFoundError(absl::StrCat("The model `", parsed->model,
                                   "` does not exist; this server serves `",
                                   api_.model_id, "`"),
                      "model_not_found");
    error.param = "model";
    SendError(error);
    return;
  }
  // The same builder as gRPC: validation, tokenizing, limits.
  std::vector<PreparedRequest> prompts;
  if (endpoint == OpenAiEndpoint::kChatCompletions) {
    absl::StatusOr<PreparedRequest> prepared =
        api_.builder->BuildChat(parsed->chat);
    if (!prepared.ok()) {
      SendError(HttpErrorFromStatus(prepared.status()));
      return;
    }
    prompts.push_back(*std::move(prepared));
  } else {
    for (const v1::CompletionRequest& request : parsed->completions) {
      absl::StatusOr<PreparedRequest> prepared =
          api_.builder->BuildCompletion(request);
      if (!prepared.ok()) {
        SendError(HttpErrorFromStatus(prepared.status()));
        return;
      }
      prompts.push_back(*std::move(prepared));
    }
  }
  const int32_t n = prompts.front().n;

  std::weak_ptr<HttpSession<Stream>> weak = this->weak_from_this();
  auto executor = stream_.get_executor();
  generation_ = std::make_shared<HttpGeneration>(
      *api_.scheduler, api_.metrics, api_.output_worker, *api_.tokenizer,
      [weak, executor] {
        net::post(executor, [weak] {
          if (auto self = weak.lock()) self->Pump();
        });
      });
  if (absl::Status st =
          generation_->Submit(std::move(prompts), n, *key_,
                              absl::InfiniteFuture());
      !st.ok()) {
    generation_.reset();
    SendError(HttpErrorFromStatus(st));
    return;
  }
  api_.active_generations.fetch_add(1);
  if (api_.metrics != nullptr) api_.metrics->AddOpenHttpResponses(1);
  const bool chat = endpoint == OpenAiEndpoint::kChatCompletions;
  renderer_.emplace(OpenAiRenderer::Options{
      .endpoint = endpoint,
      .id = RandomId(chat ? "chatcmpl-" : "cmpl-"),
      .created = absl::ToUnixSeconds(absl::Now()),
      .model = api_.model_id,
      .system_fingerprint = api_.system_fingerprint,
      .logprobs = parsed->logprobs,
      .return_token_ids = parsed->return_token_ids,
      .include_usage = parsed->stream && parsed->include_usage,
      .tokenizer = api_.tokenizer});
  stream_mode_ = parsed->stream;
  include_usage_ = parsed->include_usage;
  gathered_.Clear();
  finished_writing_ = false;
  client_gone_ = false;
  WatchClient();
  if (stream_mode_) {
    stream_header_ = std::make_unique<http::response<http::empty_body>>(
        http::status::ok, request_.version());
    stream_header_->set(http::field::server, "stratad");
    stream_header_->set(http::field::content_type, "text/event-stream");
    stream_header_->set(http::field::cache_control, "no-cache");
    // nginx: do not buffer this response (deploy/nginx/strata.conf also
    // turns buffering off for the API).
    stream_header_->set("X-Accel-Buffering", "no");
    stream_header_->keep_alive(keep_alive_);
    stream_header_->chunked(true);
    stream_serializer_ =
        std::make_unique<http::response_serializer<http::empty_body>>(
            *stream_header_);
    writing_ = true;
    Tcp().expires_after(absl::ToChronoMilliseconds(api_.options.write_timeout));
    http::async_write_header(
        stream_, *stream_serializer_,
        [self = this->shared_from_this()](beast::error_code ec, size_t) {
          self->writing_ = false;
          self->Tcp().expires_never();
          if (ec) {
            self->ClientGone("writing the response header failed");
            return;
          }
          self->Pump();
        });
  }
}

template <class Stream>
void HttpSession<Stream>::WatchClient() {
  watching_ = true;
  continue_after_watch_.reset();
  // Through the stream (TLS decrypts a pipelined request). No timer bounds
  // this read: OnRead turned the read timer off, and the write timeouts set
  // while it is pending leave it alone (basic_stream re-arms only the idle
  // direction), so the watch lasts as long as the generation.
  stream_.async_read_some(
      net::buffer(watch_buffer_),
      [self = this->shared_from_this()](beast::error_code ec, size_t bytes) {
        self->OnClientEvent(ec, bytes);
      });
}

template <class Stream>
void HttpSession<Stream>::OnClientEvent(beast::error_code ec, size_t bytes) {
  watching_ = false;
  if (bytes > 0) {
    // The client pipelined its next request: keep it for DoRead. (We stop
    // watching; its leaving is then noticed by the next failed write.)
    auto space = buffer_.prepare(bytes);
    net::buffer_copy(space, net::buffer(watch_buffer_.data(), bytes));
    buffer_.commit(bytes);
  }
  if (generation_ != nullptr) {
    if (ec && ec != net::error::operation_aborted) {
      ClientGone("the client closed the connection");
    }
    return;
  }
  if (continue_after_watch_.has_value()) {
    const bool keep_alive = *continue_after_watch_;
    continue_after_watch_.reset();
    Continue(keep_alive && (!ec || ec == net::error::operation_aborted));
  }
}

template <class Stream>
void HttpSession<Stream>::ClientGone(const char* why) {
  if (generation_ == nullptr) return;
  client_gone_ = true;
  generation_->Cancel(absl::CancelledError(why));
  beast::error_code ignored;
  Tcp().socket().shutdown(net::ip::tcp::socket::shutdown_both, ignored);
  Tcp().socket().close(ignored);  // aborts a write in flight
  if (!writing_) EndGeneration(false);
}

template <class Stream>
void HttpSession<Stream>::Pump() {
  if (generation_ == nullptr || writing_ || client_gone_) return;
  HttpGeneration::Output output = generation_->Take();
  if (stream_mode_) {
    PumpStream(std::move(output));
    return;
  }
  for (v1::CompletionChunk& chunk : output.chunks) {
    AppendChunk(std::move(chunk), gathered_);
  }
  if (!output.complete) return;
  std::optional<std::string> body;
  if (output.status.ok())
    body = DumpJson(renderer_->Unary(gathered_, output.usage));
  EndGeneration(keep_alive_);
  // EndGeneration may wait for the socket watch to stop; the answer is
  // written now and the next read waits for both (Continue).
  if (body.has_value()) {
    SendJson(200, *std::move(body));
  } else {
    SendError(HttpErrorFromStatus(output.status));
  }
}

template <class Stream>
void HttpSession<Stream>::PumpStream(HttpGeneration::Output output) {
  std::string data;
  for (const v1::CompletionChunk& chunk : output.chunks) {
    data += SseEvent(renderer_->Chunk(chunk));
  }
  if (output.complete) {
    if (!output.status.ok()) {
      // Headers are out: the error travels as an event (as vLLM does).
      data += SseEvent(
          nlohmann::json::parse(HttpErrorFromStatus(output.status).ToJson()));
    } else if (include_usage_) {
      data += SseEvent(renderer_->UsageChunk(output.usage));
    }
    data += "data: [DONE]\n\n";
  }
  if (data.empty()) return;
  WriteStream(std::move(data), output.complete);
}

template <class Stream>
void HttpSession<Stream>::WriteStream(std::string data, bool last) {
  write_data_ = std::move(data);
  writing_ = true;
  Tcp().expires_after(absl::ToChronoMilliseconds(api_.options.write_timeout));
  auto on_written = [self = this->shared_from_this(), last](
                        beast::error_code ec, size_t) {
    self->writing_ = false;
    self->Tcp().expires_never();
    if (ec) {
      self->ClientGone("writing to the client failed or timed out");
      if (self->generation_ != nullptr) self->EndGeneration(false);
      return;
    }
    if (self->client_gone_) return;
    if (last) {
      self->EndGeneration(self->keep_alive_);
      return;
    }
    self->Pump();  // what arrived during the write, merged
  };
  if (last) {
    // The data and the terminating zero-length chunk in one write.
    std::vector<net::const_buffer> buffers;
    auto chunk = http::make_chunk(net::buffer(write_data_));
    auto end = http::make_chunk_last();
    for (auto b : chunk) buffers.push_back(b);
    for (auto b : end) buffers.push_back(b);
    net::async_write(stream_, buffers, std::move(on_written));
  } else {
    net::async_write(stream_, http::make_chunk(net::buffer(write_data_)),
                     std::move(on_written));
  }
}

template <class Stream>
void HttpSession<Stream>::ReleaseGeneration() {
  generation_.reset();  // detaches: no more output
  api_.active_generations.fetch_sub(1);
  if (api_.metrics != nullptr) api_.metrics->AddOpenHttpResponses(-1);
}

template <class Stream>
void HttpSession<Stream>::EndGeneration(bool keep_alive) {
  if (generation_ == nullptr) return;
  ReleaseGeneration();
  if (!stream_mode_) {
    // The unary answer is still to be written (SendJson/SendError), which
    // then continues; only the watch needs stopping.
    if (watching_) {
      beast::error_code ignored;
      Tcp().socket().cancel(ignored);
    }
    return;
  }
  if (client_gone_ || !Tcp().socket().is_open()) {
    Close();
    return;
  }
  Continue(keep_alive);
}

template <class Stream>
void HttpSession<Stream>::Continue(bool keep_alive) {
  if (watching_) {
    // Cancel the watch first; its handler continues from here.
    continue_after_watch_ = keep_alive;
    beast::error_code ignored;
    Tcp().socket().cancel(ignored);
    return;
  }
  if (keep_alive && !api_.draining.load()) {
    DoRead();
  } else {
    Close();
  }
}

template <class Stream>
void HttpSession<Stream>::SendJson(int status, std::string body,
                                   std::optional<int> retry_after_seconds) {
  auto response = std::make_shared<http::response<http::string_body>>(
      static_cast<http::status>(status), request_.version());
  response->set(http::field::server, "stratad");
  response->set(http::field::content_type, "application/json");
  if (retry_after_seconds.has_value()) {
    response->set(http::field::retry_after,
                  std::to_string(*retry_after_seconds));
  }
  response->keep_alive(keep_alive_ && !api_.draining.load());
  response->body() = std::move(body);
  response->prepare_payload();
  Tcp().expires_after(absl::ToChronoMilliseconds(api_.options.write_timeout));
  http::async_write(stream_, *response,
                    [self = this->shared_from_this(), response](
                        beast::error_code ec, size_t) {
                      self->Tcp().expires_never();
                      self->Continue(!ec && response->keep_alive());
                    });
}

template <class Stream>
void HttpSession<Stream>::SendError(const HttpError& error) {
  SendJson(error.http_status, error.ToJson(), error.retry_after_seconds);
}

template <class Stream>
void HttpSession<Stream>::Close() {
  if (!Tcp().socket().is_open()) return;
  // The whole close, TLS's included, gets a bounded time.
  Tcp().expires_after(kCloseTimeout);
  if constexpr (kTls) {
    // close_notify first, so that the client can tell our end of the
    // response from a cut connection; it completes when the client answers
    // with its own, closes, or sends more data (then the TCP close below
    // discards it).
    stream_.async_shutdown([self = this->shared_from_this()](
                               beast::error_code) { self->LingeringClose(); });
  } else {
    LingeringClose();
  }
}

template <class Stream>
void HttpSession<Stream>::LingeringClose() {
  if (!Tcp().socket().is_open()) return;
  // Closing with unread input (the rest of a body over the limit) would
  // reset the connection and could destroy the answer before the client
  // reads it. So: end our side, discard what the client still sends until
  // it closes too (raw bytes: TLS is done by now).
  beast::error_code ignored;
  Tcp().socket().shutdown(net::ip::tcp::socket::shutdown_send, ignored);
  Discard();
}

template <class Stream>
void HttpSession<Stream>::Discard() {
  Tcp().async_read_some(
      net::buffer(watch_buffer_),
      [self = this->shared_from_this()](beast::error_code ec, size_t) {
        if (!ec) {
          self->Discard();
          return;
        }
        beast::error_code ignored;
        self->Tcp().socket().close(ignored);
      });
}
template class HttpSession<beast::tcp_stream>;
template class HttpSession<beast::ssl_stream<beast::tcp_stream>>;

}  // namespace strata
