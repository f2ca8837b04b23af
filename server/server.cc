#include "server/server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "engine/chat_template.h"

namespace strata {
namespace {

constexpr char kGenerationServiceName[] = "strata.v1.Generation";
// How long cancelled requests get to reach their clients at shutdown.
constexpr absl::Duration kCancelGrace = absl::Seconds(2);

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

Server::~Server() { Shutdown(absl::ZeroDuration()); }

std::string Server::address() const {
  return JoinHostPort(options_.host, port_);
}

absl::Status Server::Start() {
  if (options_.port < 0 || options_.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("port: must be in [0, 65535], got ", options_.port));
  }
  if (options_.max_model_len < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_model_len: must be >= 0 (0 = default), got ",
                     options_.max_model_len));
  }

  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::FromDirectory(options_.model_dir);
  if (!tokenizer.ok()) return tokenizer.status();
  tokenizer_ = *std::move(tokenizer);

  absl::StatusOr<std::unique_ptr<ModelRunner>> runner = ModelRunner::Create(
      ModelRunner::Options{.model_dir = options_.model_dir,
                           .backend = options_.backend,
                           .kv_cache_bytes = options_.kv_cache_bytes,
                           .dtype = options_.dtype,
                           .quantization = options_.quantization,
                           .gpu_memory_fraction = options_.gpu_memory_fraction,
                           .block_size = options_.block_size,
                           .num_threads = options_.num_threads});
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
    absl::StatusOr<ChatFormat> named = ParseChatFormat(options_.chat_template);
    if (!named.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chat_template: unknown format \"", options_.chat_template,
          "\" (expected llama3, chatml or mistral)"));
    }
    chat_format = *named;
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

  absl::StatusOr<std::unique_ptr<RequestBuilder>> builder =
      RequestBuilder::Create(RequestBuilder::Options{
          .tokenizer = tokenizer_.get(),
          .vocab_size = std::min(config.vocab_size, tokenizer_->vocab_size()),
          .max_model_len = max_model_len,
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
  scheduler_options.max_waiting_requests = options_.max_waiting_requests;
  scheduler_options.max_waiting_tokens = options_.max_waiting_tokens;
  absl::StatusOr<std::unique_ptr<Scheduler>> scheduler =
      Scheduler::Create(scheduler_options);
  if (!scheduler.ok()) return scheduler.status();
  scheduler_ = *std::move(scheduler);

  metrics_ = std::make_unique<Metrics>(
      Metrics::Options{.model_name = ModelName(options_.model_dir),
                       .architecture = config.architecture,
                       .dtype = config.torch_dtype,
                       .backend = options_.backend,
                       .version = STRATA_VERSION});
  if (absl::Status st =
          metrics_->StartExposer(options_.host, options_.metrics_port);
      !st.ok()) {
    return st;
  }

  engine_loop_ =
      EngineLoop::Start(EngineLoop::Options{.scheduler = scheduler_.get(),
                                            .executor = runner_.get(),
                                            .observer = metrics_.get()});

  model_info_.set_name(ModelName(options_.model_dir));
  model_info_.set_architecture(config.architecture);
  model_info_.set_context_length(max_model_len);
  model_info_.set_vocab_size(config.vocab_size);
  model_info_.set_dtype(config.torch_dtype);
  model_info_.set_num_layers(config.num_hidden_layers);
  model_info_.set_hidden_size(config.hidden_size);
  model_info_.set_num_attention_heads(config.num_attention_heads);
  model_info_.set_num_key_value_heads(config.num_key_value_heads);
  if (chat_format.has_value()) {
    model_info_.set_chat_template(std::string(ChatFormatName(*chat_format)));
  }
  model_info_.set_backend(options_.backend);
  for (TokenId eos : tokenizer_->eos_token_ids()) {
    model_info_.add_eos_token_ids(eos);
  }
  if (std::optional<TokenId> bos = tokenizer_->bos_token_id();
      bos.has_value()) {
    model_info_.set_bos_token_id(*bos);
  }

  service_ = std::make_unique<GenerationService>(
      GenerationService::Options{.tokenizer = tokenizer_.get(),
                                 .builder = builder_.get(),
                                 .scheduler = scheduler_.get(),
                                 .metrics = metrics_.get(),
                                 .model_info = model_info_});

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder_grpc;
  const std::string requested = JoinHostPort(options_.host, options_.port);
  builder_grpc.AddListeningPort(requested, grpc::InsecureServerCredentials(),
                                &port_);
  builder_grpc.RegisterService(service_.get());
  grpc_server_ = builder_grpc.BuildAndStart();
  if (grpc_server_ == nullptr || port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("could not listen on ", requested,
                     " (address in use, or host not a local address?)"));
  }
  grpc::HealthCheckServiceInterface* health =
      grpc_server_->GetHealthCheckService();
  if (health == nullptr) {
    return absl::InternalError("the gRPC health service is not available");
  }
  // NOT_SERVING until a warm-up step has run through the whole engine.
  health->SetServingStatus("", false);
  health->SetServingStatus(kGenerationServiceName, false);
  if (absl::Status st = WarmUp(); !st.ok()) return st;
  health->SetServingStatus("", true);
  health->SetServingStatus(kGenerationServiceName, true);

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
        metrics_->SetEngineStalled(!ready);
      }});
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

bool Server::WaitForIdle(absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  while (scheduler_->num_waiting() + scheduler_->num_running() > 0) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

void Server::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  // First, so that it cannot turn readiness back on while draining.
  watchdog_.reset();
  if (grpc_server_ != nullptr &&
      grpc_server_->GetHealthCheckService() != nullptr) {
    // Load balancers stop sending new calls; also NOT_SERVING for Watch.
    grpc_server_->GetHealthCheckService()->Shutdown();
  }
  if (scheduler_ != nullptr) {
    scheduler_->StopAccepting();
    if (engine_loop_ != nullptr && !WaitForIdle(grace)) {
      STRATA_LOG(INFO) << "cancelling "
                       << scheduler_->num_running() + scheduler_->num_waiting()
                       << " requests still running after the "
                       << absl::FormatDuration(grace) << " grace period";
      scheduler_->CancelAll(
          absl::UnavailableError("the server is shutting down"));
      if (!WaitForIdle(kCancelGrace)) {
        STRATA_LOG(WARNING) << "requests still held after cancellation";
      }
    }
  }
  if (grpc_server_ != nullptr) {
    // Calls and connections still open after the deadline are cancelled; the
    // reactors finish at once on cancellation, so this returns by then.
    grpc_server_->Shutdown(std::chrono::system_clock::now() +
                           absl::ToChronoSeconds(kCancelGrace));
  }
  if (engine_loop_ != nullptr) engine_loop_->Stop();
  if (grpc_server_ != nullptr) STRATA_LOG(INFO) << "server stopped";
}

}  // namespace strata
