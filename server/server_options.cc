#include "server/server_options.h"

#include <algorithm>
#include <cstdint>
#include <thread>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "text/chat_template.h"

namespace strata {
namespace {

absl::Status CheckPort(const char* name, int32_t port) {
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": must be in [0, 65535], got ", port));
  }
  return absl::OkStatus();
}

absl::Status CheckPositive(const char* name, int64_t value) {
  if (value <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": must be positive, got ", value));
  }
  return absl::OkStatus();
}

absl::Status CheckNonNegative(const char* name, int64_t value) {
  if (value < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": must be >= 0, got ", value));
  }
  return absl::OkStatus();
}

}  // namespace

int32_t DefaultHttpThreads() {
  const int32_t cores =
      static_cast<int32_t>(std::max(1u, std::thread::hardware_concurrency()));
  return std::clamp(cores / 4, 1, 8);
}

absl::Status ValidateServerOptions(const ServerOptions& options) {
  for (absl::Status st :
       {CheckPort("port", options.port),
        CheckPort("metrics_port", options.metrics_port),
        CheckPort("http_port", options.http_port),
        CheckNonNegative("http_threads", options.http_threads),
        CheckPositive("http_max_body_bytes",
                      static_cast<int64_t>(options.http_max_body_bytes)),
        CheckPositive("kv_cache_bytes", options.kv_cache_bytes),
        CheckPositive("block_size", options.block_size),
        CheckPositive("max_num_seqs", options.max_num_seqs),
        CheckPositive("max_tokens_per_step", options.max_tokens_per_step),
        CheckPositive("max_prompt_bytes", options.max_prompt_bytes)}) {
    if (!st.ok()) return st;
  }
  if (options.max_model_len < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_model_len: must be >= 0 (0 = default), got ",
                     options.max_model_len));
  }
  if (options.prompt_exits && options.kv_fill != KvFillPolicy::kPropagate) {
    // The scheduler plans no recompute fills for prompt tokens.
    return absl::InvalidArgumentError(
        "prompt_exits: needs kv_fill propagate (a prompt token's skipped "
        "loops are not recomputed)");
  }
  if (options.io_nice < 0 || options.io_nice > 19) {
    return absl::InvalidArgumentError(
        absl::StrCat("io_nice: must be in [0, 19], got ", options.io_nice));
  }
  if (options.backend.num_threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "threads: must be >= 0, got ", options.backend.num_threads));
  }
  if (!options.chat_template.empty() &&
      !ParseChatFormat(options.chat_template).ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("chat_template: unknown format \"", options.chat_template,
                     "\" (expected llama3, chatml or mistral)"));
  }
  if (options.max_request_time <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_request_time: must be positive, got ",
                     absl::FormatDuration(options.max_request_time)));
  }
  if (options.max_connection_age < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_connection_age: must be at least 1ms, got ",
                     absl::FormatDuration(options.max_connection_age)));
  }
  for (const auto& [name, timeout] :
       {std::pair{"http_request_timeout", options.http_request_timeout},
        std::pair{"http_write_timeout", options.http_write_timeout}}) {
    if (timeout < absl::Milliseconds(1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": must be at least 1ms, got ", absl::FormatDuration(timeout)));
    }
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        options.tls_cert_file.empty()
            ? "tls_cert: required with tls_key"
            : "tls_key: required with tls_cert");
  }
  if (!options.tls_client_ca_file.empty() && options.tls_cert_file.empty()) {
    return absl::InvalidArgumentError(
        "tls_client_ca: mutual TLS needs tls_cert and tls_key too");
  }
  return absl::OkStatus();
}

}  // namespace strata
