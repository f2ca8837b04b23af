#include "server/server.h"

#include <grpc/grpc.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <linux/filter.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/thread_name.h"
#include "engine/exit_defaults.h"
#include "server/io_priority.h"
#include "server/message_codec.h"
#include "text/chat_template.h"

namespace strata {
namespace {

constexpr char kGenerationServiceName[] = "strata.v1.Generation";
// How long cancelled requests get to reach their clients at shutdown.
constexpr absl::Duration kCancelGrace = absl::Seconds(2);
// How long a TCP handshake under way may take to complete once the listener
// drops new connection attempts (a round trip; generous for a LAN).
constexpr absl::Duration kHandshakeSettle = absl::Milliseconds(100);
// Room for a request's fields other than its prompt text (sampling, stop
// strings, chat roles) in the gRPC message limit.
constexpr int64_t kRequestOverheadBytes = 64 << 10;
// After a connection's age GOAWAY: the client's PING ack and its leaving.
constexpr absl::Duration kGoawaySettle = absl::Milliseconds(200);

TlsFiles TlsFilesOf(const ServerOptions& options) {
  return {.cert_file = options.tls_cert_file,
          .key_file = options.tls_key_file,
          .client_ca_file = options.tls_client_ca_file};
}

std::string JoinHostPort(const std::string& host, int32_t port) {
  if (absl::StrContains(host, ':') && !absl::StartsWith(host, "[")) {
    return absl::StrCat("[", host, "]:", port);  // IPv6 literal
  }
  return absl::StrCat(host, ":", port);
}

// "models/strata-tiny/" -> "strata-tiny".
std::string ModelName(std::string_view model_dir) {
  while (model_dir.size() > 1 && model_dir.back() == '/') {
    model_dir.remove_suffix(1);
  }
  const size_t slash = model_dir.rfind('/');
  return std::string(slash == std::string_view::npos
                         ? model_dir
                         : model_dir.substr(slash + 1));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Create(
    const ServerOptions& options) {
  std::unique_ptr<Server> server(new Server(options));
  if (absl::Status status = server->Start(); !status.ok()) return status;
  return server;
}

Server::~Server() {
  Shutdown(absl::ZeroDuration());
  // Scrapes read the scheduler, which goes before the metrics do.
  if (metrics_ != nullptr) metrics_->StopExposer();
}

std::string Server::address() const {
  return JoinHostPort(options_.host, port_);
}

v1::ModelInfo Server::BuildModelInfo(
    const ModelConfig& config, int32_t max_model_len,
    std::optional<ChatFormat> chat_format) const {
  v1::ModelInfo info;
  info.set_name(ModelName(options_.model_dir));
  info.set_architecture(config.architecture);
  info.set_context_length(max_model_len);
  info.set_vocab_size(config.vocab_size);
  info.set_dtype(config.torch_dtype);
  info.set_num_layers(config.num_hidden_layers);
  info.set_num_loops(static_cast<uint32_t>(config.num_loops));
  info.set_hidden_size(config.hidden_size);
  info.set_num_attention_heads(config.num_attention_heads);
  info.set_num_key_value_heads(config.num_key_value_heads);
  if (chat_format.has_value()) {
    info.set_chat_template(std::string(ChatFormatName(*chat_format)));
  }
  info.set_backend(options_.backend.name);
  for (TokenId eos : tokenizer_->eos_token_ids()) {
    info.add_eos_token_ids(eos);
  }
  if (std::optional<TokenId> bos = tokenizer_->bos_token_id();
      bos.has_value()) {
    info.set_bos_token_id(*bos);
  }
  return info;
}

absl::Status Server::Start() {
  if (absl::Status st = ValidateServerOptions(options_); !st.ok()) return st;
  InstallProtobufLogFilter();
  if (!options_.api_keys_file.empty()) {
    absl::StatusOr<std::unique_ptr<ApiKeyStore>> keys =
        ApiKeyStore::Load(options_.api_keys_file);
    if (!keys.ok()) return keys.status();
    api_keys_ = *std::move(keys);
    STRATA_LOG(INFO) << api_keys_->num_keys() << " API keys loaded from "
                     << options_.api_keys_file;
  }
  // TLS files are checked before the model loads (a typo fails fast), and
  // read once for both ports.
  std::optional<TlsPem> tls_pem;
  if (!options_.tls_cert_file.empty()) {
    absl::StatusOr<TlsPem> pem = LoadTlsFiles(TlsFilesOf(options_));
    if (!pem.ok()) return pem.status();
    tls_pem = *std::move(pem);
    absl::StatusOr<std::unique_ptr<TlsCredentials>> tls =
        TlsCredentials::Create(*tls_pem);
    if (!tls.ok()) return tls.status();
    tls_ = *std::move(tls);
  }

  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::FromDirectory(options_.model_dir);
  if (!tokenizer.ok()) return tokenizer.status();
  tokenizer_ = *std::move(tokenizer);

  absl::StatusOr<std::unique_ptr<ModelRunner>> runner = ModelRunner::Create(
      ModelRunner::Options{.model_dir = options_.model_dir,
                           .backend = options_.backend,
                           .kv_cache_bytes = options_.kv_cache_bytes,
                           .block_size = options_.block_size,
                           .kv_fill = options_.kv_fill});
  if (!runner.ok()) return runner.status();
  runner_ = *std::move(runner);
  const ModelConfig& config = runner_->config();

  int32_t max_model_len = options_.max_model_len;
  if (max_model_len == 0) {
    max_model_len =
        std::min(config.max_position_embeddings, kDefaultMaxModelLen);
  } else if (max_model_len > config.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_model_len: ", max_model_len,
                     " exceeds the model's max_position_embeddings (",
                     config.max_position_embeddings, ")"));
  }

  std::optional<ChatFormat> chat_format;
  if (!options_.chat_template.empty()) {
    chat_format = *ParseChatFormat(options_.chat_template);  // validated
  } else if (absl::StatusOr<ChatFormat> detected =
                 DetectChatFormat(tokenizer_->chat_template_source());
             detected.ok()) {
    chat_format = *detected;
  } else {
    STRATA_LOG(WARNING) << "no chat template recognised in "
                        << options_.model_dir
                        << "/tokenizer_config.json; Chat requests must name "
                           "one (chat_template) or start stratad with "
                           "--chat_template";
  }

  ExitDefaults exit_defaults;  // a recursive model's exit defaults
  if (config.num_loops > 1) {
    absl::StatusOr<ExitDefaults> loaded =
        LoadExitDefaults(options_.model_dir, config);
    if (!loaded.ok()) return loaded.status();
    exit_defaults = *std::move(loaded);
  }
  absl::StatusOr<std::unique_ptr<RequestBuilder>> builder =
      RequestBuilder::Create(RequestBuilder::Options{
          .tokenizer = tokenizer_.get(),
          .vocab_size = std::min(config.vocab_size, tokenizer_->vocab_size()),
          .max_model_len = max_model_len,
          .num_loops = config.num_loops,
          .max_prompt_bytes = options_.max_prompt_bytes,
          .exit_defaults = std::move(exit_defaults),
          .default_chat_format = chat_format});
  if (!builder.ok()) return builder.status();
  builder_ = *std::move(builder);

  Scheduler::Options scheduler_options;
  scheduler_options.block_size = runner_->block_size();
  scheduler_options.num_blocks = runner_->num_blocks();
  scheduler_options.max_model_len = max_model_len;
  scheduler_options.max_num_seqs = options_.max_num_seqs;
  scheduler_options.max_tokens_per_step = options_.max_tokens_per_step;
  scheduler_options.enable_prefix_caching = options_.enable_prefix_caching;
  scheduler_options.static_batching = options_.static_batching;
  scheduler_options.num_loops = config.num_loops;
  scheduler_options.depthwise = options_.depthwise;
  scheduler_options.prompt_exits = options_.prompt_exits;
  scheduler_options.max_waiting_requests = options_.max_waiting_requests;
  scheduler_options.max_waiting_tokens = options_.max_waiting_tokens;
  absl::StatusOr<std::unique_ptr<Scheduler>> scheduler =
      Scheduler::Create(scheduler_options);
  if (!scheduler.ok()) return scheduler.status();
  scheduler_ = *std::move(scheduler);

  // Detokenizing and stop strings run here, off the engine thread.
  output_worker_ = std::make_unique<OutputWorker>();

  metrics_ = std::make_unique<Metrics>(Metrics::Options{
      .model_name = ModelName(options_.model_dir),
      .architecture = config.architecture,
      .dtype = config.torch_dtype,
      .backend = options_.backend.name,
      .version = STRATA_VERSION,
      .num_loops = config.num_loops,
      .kv_fill = std::string(KvFillPolicyName(options_.kv_fill))});
  if (absl::Status st =
          metrics_->StartExposer(options_.metrics_host, options_.metrics_port,
                                 [scheduler = scheduler_.get()] {
                                   StepStats state;
                                   state.num_running = scheduler->num_running();
                                   state.num_waiting = scheduler->num_waiting();
                                   state.num_blocks_used =
                                       scheduler->num_blocks_used();
                                   state.num_blocks_total =
                                       scheduler->options().num_blocks;
                                   return state;
                                 });
      !st.ok()) {
    return st;
  }

  engine_loop_ =
      EngineLoop::Start(EngineLoop::Options{.scheduler = scheduler_.get(),
                                            .executor = runner_.get(),
                                            .observer = metrics_.get(),
                                            .delivery = output_worker_.get()});

  model_info_ = BuildModelInfo(config, max_model_len, chat_format);

  service_ = std::make_unique<GenerationService>(
      GenerationService::Options{.tokenizer = tokenizer_.get(),
                                 .builder = builder_.get(),
                                 .scheduler = scheduler_.get(),
                                 .metrics = metrics_.get(),
                                 .output_worker = output_worker_.get(),
                                 .model_info = model_info_,
                                 .api_keys = api_keys_.get(),
                                 .max_request_time =
                                     options_.max_request_time});

  const std::shared_ptr<grpc::ServerCredentials> credentials =
      tls_ != nullptr ? tls_->server_credentials()
                      : grpc::InsecureServerCredentials();
  if (absl::Status st = Listen(); !st.ok()) return st;
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder_grpc;
  // No AddListeningPort: connections come from our listener (AcceptLoop),
  // and the acceptor's credentials (TLS or plaintext) handshake them.
  acceptor_ = builder_grpc.experimental().AddExternalConnectionAcceptor(
      grpc::ServerBuilder::experimental_type::ExternalConnectionType::FROM_FD,
      credentials);
  // Connections end gracefully after max_connection_age; a call in flight
  // then may run as long as it needs (the age's grace is unbounded).
  builder_grpc.AddChannelArgument(
      GRPC_ARG_MAX_CONNECTION_AGE_MS,
      static_cast<int>(std::min<int64_t>(
          absl::ToInt64Milliseconds(options_.max_connection_age), INT_MAX)));
  builder_grpc.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                                  INT_MAX);
  // The body is bounded before any of it is parsed: the longest prompt
  // text the validator accepts, plus room for the other fields.
  builder_grpc.SetMaxReceiveMessageSize(static_cast<int>(std::min<int64_t>(
      options_.max_prompt_bytes + kRequestOverheadBytes, INT_MAX)));
  builder_grpc.RegisterService(service_.get());
  grpc_server_ = builder_grpc.BuildAndStart();
  if (grpc_server_ == nullptr) {
    return absl::InternalError("the gRPC server did not start");
  }
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  grpc::HealthCheckServiceInterface* health =
      grpc_server_->GetHealthCheckService();
  if (health == nullptr) {
    return absl::InternalError("the gRPC health service is not available");
  }
  // NOT_SERVING until a warm-up step has run through the whole engine.
  health->SetServingStatus("", false);
  health->SetServingStatus(kGenerationServiceName, false);
  if (absl::Status st = WarmUp(); !st.ok()) return st;
  if (absl::Status st =
          StartHttp(config, tls_pem.has_value() ? &*tls_pem : nullptr);
      !st.ok()) {
    return st;
  }
  // Before SERVING, once the server's threads exist (the watchdog's, started
  // below from this thread, inherits the priority).
  LowerIoPriority();
  health->SetServingStatus("", true);
  health->SetServingStatus(kGenerationServiceName, true);
  serving_.store(true);

  watchdog_ = ReadinessWatchdog::Start(ReadinessWatchdog::Options{
      .scheduler = scheduler_.get(),
      .loop = engine_loop_.get(),
      .stall_timeout = options_.stall_timeout,
      .on_change = [this, health](bool ready) {
        if (ready) {
          STRATA_LOG(INFO) << "engine made progress again: ready";
        } else {
          STRATA_LOG(WARNING)
              << "requests pending and no engine step completed for "
              << absl::FormatDuration(options_.stall_timeout)
              << ": not ready (health NOT_SERVING for "
              << kGenerationServiceName << ")";
        }
        health->SetServingStatus(kGenerationServiceName, ready);
        serving_.store(ready);
        metrics_->SetEngineStalled(!ready);
      }});
  return absl::OkStatus();
}

absl::Status Server::StartHttp(const ModelConfig& config, const TlsPem* tls) {
  if (options_.http_port == 0) return absl::OkStatus();
  auto api = std::make_unique<HttpApi>();
  api->tokenizer = tokenizer_.get();
  api->builder = builder_.get();
  api->scheduler = scheduler_.get();
  api->metrics = metrics_.get();
  api->output_worker = output_worker_.get();
  api->model_id = options_.served_model_name.empty()
                      ? ModelName(options_.model_dir)
                      : options_.served_model_name;
  api->created = absl::ToUnixSeconds(absl::Now());
  api->context_length = model_info_.context_length();
  api->system_fingerprint = absl::StrCat("strata-", STRATA_VERSION, "-",
                                         options_.backend.name, "-",
                                         config.torch_dtype);
  api->serving = [this] { return serving_.load(); };
  if (api_keys_ != nullptr) {
    // The same keys, limits and metrics as gRPC's (GenerationService).
    api->check_api_key = [this](absl::string_view authorization) {
      absl::StatusOr<std::shared_ptr<const ApiKey>> key =
          api_keys_->Authenticate(authorization);
      if (!key.ok()) metrics_->RecordUnauthenticated();
      return key;
    };
  }
  api->options = HttpApiOptions{
      .host = options_.host,
      .port = options_.http_port,
      .num_threads = options_.http_threads > 0 ? options_.http_threads
                                                : DefaultHttpThreads(),
      .max_body_bytes = options_.http_max_body_bytes,
      .request_timeout = options_.http_request_timeout,
      .write_timeout = options_.http_write_timeout};
  absl::StatusOr<std::unique_ptr<HttpServer>> http =
      HttpServer::Start(std::move(api), tls);
  if (!http.ok()) return http.status();
  http_server_ = *std::move(http);
  return absl::OkStatus();
}

namespace {

// Waits for the warm-up request's end.
class WarmUpSink : public RequestSink {
 public:
  bool OnToken(const TokenEvent& event) override { return true; }
  void OnFinish(const FinishInfo& info) override {
    status_ = info.status;
    done_.Notify();
  }
  absl::Status Wait(absl::Duration timeout) {
    if (!done_.WaitForNotificationWithTimeout(timeout)) {
      return absl::DeadlineExceededError(
          absl::StrCat("the warm-up step did not finish within ",
                       absl::FormatDuration(timeout)));
    }
    return status_;
  }

 private:
  absl::Notification done_;
  absl::Status status_;  // written before done_ is notified
};

}  // namespace

absl::Status Server::WarmUp() {
  auto sink = std::make_shared<WarmUpSink>();
  RequestSpec spec;
  spec.prompt = {tokenizer_->bos_token_id().value_or(0)};
  spec.max_tokens = 1;
  spec.sampling.temperature = 0.0f;
  spec.sink = sink;
  if (absl::StatusOr<RequestId> id = scheduler_->Submit(std::move(spec));
      !id.ok()) {
    return id.status();
  }
  if (absl::Status st = sink->Wait(absl::Minutes(5)); !st.ok()) {
    return absl::InternalError(
        absl::StrCat("warm-up step failed: ", st.ToString()));
  }
  return absl::OkStatus();
}

absl::Status Server::ReloadTls() {
  if (tls_ == nullptr) {
    return absl::FailedPreconditionError(
        "TLS is off (start stratad with --tls_cert and --tls_key)");
  }
  absl::StatusOr<TlsPem> pem = LoadTlsFiles(TlsFilesOf(options_));
  if (!pem.ok()) return pem.status();
  // The HTTP port's context is built first: should OpenSSL refuse what
  // LoadTlsFiles passed, neither port changes.
  if (http_server_ != nullptr) {
    if (absl::Status st = http_server_->ReloadTls(*pem); !st.ok()) return st;
  }
  tls_->Update(*std::move(pem));
  return absl::OkStatus();
}

bool Server::WaitForIdle(absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  while (scheduler_->num_requests() > 0) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

absl::Status Server::Listen() {
  const std::string requested = JoinHostPort(options_.host, options_.port);
  const auto cannot_listen = [&requested](absl::string_view why) {
    return absl::UnavailableError(
        absl::StrCat("could not listen on ", requested, ": ", why,
                     " (address in use, or host not a local address?)"));
  };
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* addresses = nullptr;
  const std::string port = std::to_string(options_.port);
  if (int error =
          getaddrinfo(options_.host.c_str(), port.c_str(), &hints, &addresses);
      error != 0) {
    return cannot_listen(gai_strerror(error));
  }
  std::string error = "no address";
  for (addrinfo* a = addresses; a != nullptr; a = a->ai_next) {
    const int fd =
        socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      error = std::strerror(errno);
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
      error = std::strerror(errno);
      close(fd);
      continue;
    }
    sockaddr_storage bound{};
    socklen_t length = sizeof(bound);
    getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length);
    port_ = ntohs(bound.ss_family == AF_INET6
                      ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                      : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    listen_fd_ = fd;
    break;
  }
  freeaddrinfo(addresses);
  if (listen_fd_ < 0) return cannot_listen(error);
  return absl::OkStatus();
}

void Server::LowerIoPriority() {
  if (options_.io_nice == 0) return;
  // The metrics listener keeps the engine's priority too: it runs a few
  // milliseconds per scrape, and a scrape under load must be answered
  // promptly and read the state as it is (a low-priority reader runs mostly
  // while the engine is idle, and would see the idle moments).
  constexpr std::string_view kComputeThreads[] = {
      kEngineThreadName, kKernelThreadName, kMetricsThreadName};
  absl::StatusOr<IoPriorityReport> report =
      LowerIoThreadPriority(options_.io_nice, kComputeThreads);
  if (!report.ok()) {
    STRATA_LOG(WARNING) << "io_nice: " << report.status()
                        << "; the I/O threads keep the engine's priority";
    return;
  }
  STRATA_LOG(INFO) << "io_nice: " << report->io_threads
                   << " I/O threads at nice " << report->io_nice << "; "
                   << report->compute_threads
                   << " engine, kernel and metrics threads at "
                   << report->compute_nice;
}

void Server::AcceptLoop() {
  SetCurrentThreadName("strata-accept");
  while (!stop_accepting_.load()) {
    const int fd =
        accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (stop_accepting_.load()) break;
      if (errno == EINTR || errno == ECONNABORTED) continue;
      // EMFILE and friends: the connection waits in the backlog.
      STRATA_LOG(WARNING) << "accept: " << std::strerror(errno);
      absl::SleepFor(absl::Milliseconds(50));
      continue;
    }
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    grpc::experimental::ExternalConnectionAcceptor::NewConnectionParameters
        connection;
    connection.listener_fd = listen_fd_;
    connection.fd = fd;  // gRPC owns it from here (and closes it)
    acceptor_->HandleNewConnection(&connection);
  }
}

void Server::StopListening() {
  if (listen_fd_ < 0) return;
  // Closing a listening socket resets the connections whose handshake is
  // done or under way but that accept() has not returned yet; a client that
  // already sent its call on one would see it fail (nginx does not re-send
  // a gRPC call it sent). So first drop new connection attempts (a socket
  // filter discarding bare SYNs: the client retransmits its SYN after a
  // second and then finds the port closed, i.e. connection refused, which a
  // proxy retries elsewhere), accept what is under way, and only then close.
  // [TCP header] byte 13: flags; SYN = 0x02, ACK = 0x10.
  sock_filter drop_syn[] = {
      BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 13),
      BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0x12),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x02, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, 0),           // a bare SYN: drop it
      BPF_STMT(BPF_RET | BPF_K, 0xffffffff),  // anything else: keep
  };
  sock_fprog program{.len = static_cast<unsigned short>(std::size(drop_syn)),
                     .filter = drop_syn};
  if (setsockopt(listen_fd_, SOL_SOCKET, SO_ATTACH_FILTER, &program,
                 sizeof(program)) == 0) {
    // Handshakes under way complete within a round trip; the accept loop
    // hands them to gRPC meanwhile.
    absl::SleepFor(kHandshakeSettle);
  } else {
    STRATA_LOG(WARNING) << "cannot filter new connections ("
                        << std::strerror(errno)
                        << "); closing the listener at once";
  }
  stop_accepting_.store(true);
  shutdown(listen_fd_, SHUT_RDWR);  // wakes accept()
  if (accept_thread_.joinable()) accept_thread_.join();
  close(listen_fd_);
  listen_fd_ = -1;
}

void Server::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  const absl::Time deadline = absl::Now() + grace;
  // First, so that it cannot turn readiness back on while draining.
  watchdog_.reset();
  grpc::HealthCheckServiceInterface* health =
      grpc_server_ != nullptr ? grpc_server_->GetHealthCheckService() : nullptr;
  if (health != nullptr) {
    // NOT_SERVING for every service name, for Check and for open Watch
    // streams, and frozen there (later SetServingStatus calls are no-ops).
    health->Shutdown();
  }
  serving_.store(false);
  // HTTP has no GOAWAY: from now on a new request gets 503 (a proxy retries
  // it elsewhere) and kept-alive connections close after their answer; the
  // responses in flight go on.
  if (http_server_ != nullptr) http_server_->StartDraining();

  // Why not grpc::Server::Shutdown at once: it closes the listener and sends
  // GOAWAY, but a call that arrives on an open connection after it began
  // (the client or proxy had not read the GOAWAY yet; the GOAWAY is graceful
  // and still lets new streams in) is answered CANCELLED, and nginx passes
  // that to its client instead of retrying. So: refuse new connections, keep
  // serving the open ones, new calls included, until max_connection_age has
  // sent each of them a graceful GOAWAY (with the server still serving, so
  // no call is lost) and clients and proxies have left them.
  StopListening();
  // Every open connection was accepted by now; gRPC jitters the age by
  // +-10%.
  const absl::Time connections_aged =
      absl::Now() + options_.max_connection_age * 1.1 + kGoawaySettle;
  if (connections_aged > deadline && grace > absl::ZeroDuration() &&
      grpc_server_ != nullptr) {
    STRATA_LOG(WARNING) << "the drain (" << absl::FormatDuration(grace)
                        << ") is shorter than max_connection_age x 1.1: "
                           "proxies may still send calls when it ends";
  }
  const auto num_requests = [this] {
    return scheduler_ == nullptr ? 0 : scheduler_->num_requests();
  };
  while (absl::Now() < deadline &&
         (absl::Now() < connections_aged || num_requests() > 0)) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  if (num_requests() > 0 && engine_loop_ != nullptr) {
    STRATA_LOG(INFO) << "cancelling " << num_requests()
                     << " requests still running after the "
                     << absl::FormatDuration(grace) << " grace period";
    scheduler_->StopAccepting();
    scheduler_->CancelAll(absl::UnavailableError(absl::StrCat(
        "the server is shutting down and the request did not finish within "
        "its drain timeout (",
        absl::FormatDuration(grace), "); retry it on another replica")));
    if (!WaitForIdle(kCancelGrace)) {
      STRATA_LOG(WARNING) << "requests still held after cancellation";
    }
  }
  if (scheduler_ != nullptr) scheduler_->StopAccepting();
  // The last chunks of finished requests on their way to the reactors.
  if (output_worker_ != nullptr && !output_worker_->WaitIdle(kCancelGrace)) {
    STRATA_LOG(WARNING) << "output still being written after "
                        << absl::FormatDuration(kCancelGrace);
  }
  if (http_server_ != nullptr) {
    // Every HTTP response was written (or its request cancelled above):
    // close the listener, give cancelled streams their error event, stop.
    http_server_->CloseListener();
    http_server_->Stop(kCancelGrace);
    http_server_.reset();
  }
  if (grpc_server_ != nullptr) {
    // What is still open gets kCancelGrace to end by itself (the last chunks
    // and statuses on their way to clients), then is cancelled: a client
    // that stopped reading, a health Watch stream.
    grpc_server_->Shutdown(std::chrono::system_clock::now() +
                           absl::ToChronoMilliseconds(kCancelGrace));
  }
  if (engine_loop_ != nullptr) engine_loop_->Stop();
  if (grpc_server_ != nullptr) STRATA_LOG(INFO) << "server stopped";
}

absl::Status Server::ReloadApiKeys() {
  if (api_keys_ == nullptr) return absl::OkStatus();
  if (absl::Status st = api_keys_->Reload(); !st.ok()) return st;
  STRATA_LOG(INFO) << "reloaded " << api_keys_->num_keys() << " API keys from "
                   << options_.api_keys_file;
  return absl::OkStatus();
}

}  // namespace strata
