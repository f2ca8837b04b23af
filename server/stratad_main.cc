// stratad: the Strata daemon. Turns flags into ServerOptions, starts the
// Server, and shuts it down cleanly on SIGTERM or SIGINT.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/internal/parse.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "common/mutex_mode.h"
#include "engine/backends/backend_options.h"
#include "engine/exit_policy.h"
#include "server/server.h"

ABSL_FLAG(std::string, model, "models/strata-recursive-tiny",
          "Model folder: config.json, tokenizer.json, tokenizer_config.json "
          "and model.safetensors (or an index plus shards). The default is "
          "the bundled trained model.");
ABSL_FLAG(std::string, host, "127.0.0.1",
          "Address to listen on; 0.0.0.0 (or ::) serves other machines.");
ABSL_FLAG(int32_t, port, 50051, "TCP port; 0 picks a free one.");
ABSL_FLAG(int32_t, metrics_port, 0,
          "Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 9464); "
          "0 = off.");
ABSL_FLAG(int32_t, http_port, 0,
          "Serve the OpenAI-compatible HTTP API (/v1/completions, "
          "/v1/chat/completions, /v1/models, /health) on this port, e.g. "
          "8000; 0 = off. See docs/api-http.md.");
ABSL_FLAG(std::string, served_model_name, "",
          "The model id the HTTP API reports and accepts in \"model\"; "
          "empty = the model folder's name.");
ABSL_FLAG(int32_t, http_threads, 0,
          "Threads serving HTTP connections (parsing, writing); generation "
          "runs on the engine thread. 0 = one per 4 CPU cores (at least 1, "
          "at most 8).");
ABSL_FLAG(int64_t, http_max_body_bytes, 4 << 20,
          "HTTP request bodies above this are refused with 413.");
ABSL_FLAG(absl::Duration, http_request_timeout, absl::Seconds(30),
          "Time to receive one whole HTTP request (headers and body, and "
          "the idle time before it on a kept-alive connection).");
ABSL_FLAG(absl::Duration, http_write_timeout, absl::Seconds(30),
          "An HTTP write making no progress for this long ends the "
          "connection and cancels its generation (a client that stopped "
          "reading).");
ABSL_FLAG(std::string, port_file, "",
          "If set, the bound port is written to this file once serving "
          "(handy with --port=0).");
ABSL_FLAG(std::string, backend, "cpu",
          "Compute backend: cpu (cuda when built with CUDA and a GPU is "
          "present).");
ABSL_FLAG(int32_t, threads, 0, "Kernel worker threads; 0 = one per core.");
ABSL_FLAG(int32_t, io_nice, 10,
          "Once serving, every thread but the engine thread, the kernel "
          "workers and the metrics listener (so gRPC, HTTP, output) runs "
          "this much nicer, 0-19, "
          "so that on busy cores streaming yields to the engine rather than "
          "preempting it mid-step; 0 = all at one priority. See "
          "docs/serving.md.");
ABSL_FLAG(int64_t, kv_cache_mb, 256,
          "Memory for the paged KV cache, in MiB; bounds how many tokens all "
          "running requests hold together.");
ABSL_FLAG(int32_t, block_size, 16, "Tokens per KV cache block.");
ABSL_FLAG(int32_t, max_num_seqs, 32,
          "Most requests batched into one engine step.");
ABSL_FLAG(int32_t, max_tokens_per_step, 2048,
          "Token budget of one engine step: long prompts are split into "
          "chunks of at most this many tokens while running requests keep "
          "decoding.");
ABSL_FLAG(bool, enable_prefix_caching, true,
          "Reuse the KV cache of prompt prefixes seen before (e.g. shared "
          "system prompts).");
ABSL_FLAG(bool, static_batching, false,
          "Admit a new batch only when the running one has finished (a "
          "baseline for benchmarks; continuous batching is the default).");
ABSL_FLAG(std::string, loop_batching, "depthwise",
          "Recursive models: depthwise (while some request may exit early "
          "and more than one sequence runs, each step runs one loop of every "
          "item, so items at different loops share a step and a slot freed "
          "by an early exit is refilled at once; otherwise whole passes) or "
          "sequencewise (each step runs all loops of its items).");
ABSL_FLAG(std::string, kv_fill, "propagate",
          "Recursive models: K/V of the loops an early-exiting token skips: "
          "propagate (computed from its exit state, cheap, approximate) or "
          "recompute (the skipped loops run later, exact).");
ABSL_FLAG(bool, prompt_exits, true,
          "Recursive models under --kv_fill=propagate: a request that may "
          "exit early applies its exit rule to its prompt tokens too, each "
          "stopping at its own exit loop (the prompt's last token runs every "
          "loop); fewer loops for long prompts, at the quality the held-out "
          "table measures (docs/recursive-models.md). Off by default under "
          "--kv_fill=recompute, which cannot take it.");
ABSL_FLAG(std::string, dtype, "",
          "Device backends: weight and KV cache dtype, bf16 or f16; empty = "
          "the backend's default (bf16 on cuda). cpu: bf16 multiplies bf16 "
          "weights by bf16 activations (vdpbf16ps, AVX-512 BF16), f16 is "
          "refused; empty = f32 compute (docs/engine.md).");
ABSL_FLAG(std::string, quantization, "none",
          "Linear-layer weights: none, int8 or llm.int8 (cuda: weight-only "
          "int8; cpu: int8 weights x per-row int8 activations, "
          "docs/engine.md); a backend that cannot honour the value refuses "
          "to start.");
ABSL_FLAG(int32_t, int8_group_size, 0,
          "--quantization=int8/llm.int8 on the cpu backend: one weight scale "
          "per group of this many inputs (a multiple of 4 up to 1024; 32-128 "
          "are the usual choices) instead of one per output channel (0). "
          "The cuda backend refuses it.");
ABSL_FLAG(int32_t, device, 0, "CUDA backend: device ordinal.");
ABSL_FLAG(float, llm_int8_threshold, 6.0f,
          "--quantization=llm.int8: activation columns with |x| >= this are "
          "outliers kept in 16 bits.");
ABSL_FLAG(double, gpu_memory_fraction, 0.0,
          "CUDA backend: share of GPU memory for weights and KV cache; 0 = "
          "size the KV cache from --kv_cache_mb.");
ABSL_FLAG(bool, cuda_graphs, false,
          "CUDA backend: record decode steps as CUDA graphs, one per batch "
          "size and block-table stride, and replay them (one launch per "
          "step instead of one per op). Off by default until measured on a "
          "GPU; see docs/cuda.md.");
ABSL_FLAG(absl::Duration, stall_timeout, absl::Seconds(30),
          "Readiness: when requests are pending and the engine has not "
          "completed a step for this long, health for strata.v1.Generation "
          "turns NOT_SERVING (liveness, service \"\", stays SERVING) until a "
          "step completes again.");
ABSL_FLAG(int32_t, max_model_len, 0,
          "Most tokens (prompt + output) per request; 0 = the smaller of the "
          "model's max_position_embeddings and 4096.");
ABSL_FLAG(int32_t, max_waiting_requests, 256,
          "Queued requests beyond this are refused with RESOURCE_EXHAUSTED.");
ABSL_FLAG(int64_t, max_waiting_tokens, 1 << 20,
          "Queued prompt tokens (all waiting requests together) beyond this "
          "are refused with RESOURCE_EXHAUSTED.");
ABSL_FLAG(std::string, chat_template, "",
          "Chat format for Chat requests: llama3, chatml or mistral; empty = "
          "detected from the model's tokenizer_config.json.");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(5),
          "On SIGTERM/SIGINT, how long the drain may take: running requests "
          "finish (and open connections are served) for up to this long, "
          "then what is left is cancelled. Keep it above "
          "--max_connection_age.");
ABSL_FLAG(absl::Duration, max_connection_age, absl::Seconds(2),
          "Each client connection is closed gracefully (HTTP/2 GOAWAY; calls "
          "in flight finish) after this long, so that load balancers spread "
          "reconnecting clients and a drain can move proxies off this "
          "replica without failing a call. A drain lasts at least 1.1x this.");
ABSL_FLAG(std::string, tls_cert, "",
          "TLS on the gRPC port and on --http_port (which then serves HTTPS "
          "only): PEM certificate chain (leaf first); needs --tls_key. "
          "Reloaded on SIGHUP (new connections get it, open ones are kept). "
          "Empty = plaintext on both.");
ABSL_FLAG(std::string, tls_key, "",
          "TLS: PEM private key of --tls_cert (unencrypted). Reloaded on "
          "SIGHUP.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "Mutual TLS on the gRPC and HTTP API ports: PEM CA bundle; every "
          "client must present a certificate it signed. Reloaded on SIGHUP. "
          "Empty = no client certificate asked.");

// Security and fairness (docs/security.md).
ABSL_FLAG(std::string, metrics_host, "127.0.0.1",
          "Address the metrics listener binds (--metrics_port); loopback by "
          "default, whatever --host is. 0.0.0.0 exposes metrics to the "
          "network.");
ABSL_FLAG(std::string, api_keys_file, "",
          "API keys, one per line: NAME KEY [max_concurrency=N] "
          "[max_queued_tokens=N] [admin] (# starts a comment). When set, "
          "every strata.v1.Generation call needs 'authorization: Bearer "
          "KEY'. Re-read on SIGHUP. Empty = no keys, every call allowed.");
ABSL_FLAG(absl::Duration, max_request_time, absl::Minutes(5),
          "A generation ends with DEADLINE_EXCEEDED after this long, "
          "whatever the call's own deadline.");
ABSL_FLAG(int64_t, max_prompt_bytes, 1 << 20,
          "Most bytes of prompt text per request (completion text, a chat's "
          "messages, Tokenize text); longer is INVALID_ARGUMENT before any "
          "tokenizing. The gRPC message limit is this plus 64 KiB.");

namespace strata {
namespace {

constexpr char kUsage[] =
    R"(stratad serves a Llama-family language model over gRPC and, with
--http_port, the OpenAI-compatible HTTP API
(service strata.v1.Generation, plus grpc.health.v1 and server reflection).

Usage: stratad [flags]

Example:
  stratad --port=50051 --http_port=8000
  strata-cli --addr=127.0.0.1:50051 complete "Once upon a time"
  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \
    -d '{"prompt": "Once upon a time", "max_tokens": 16}'


SIGHUP reloads the API keys (--api_keys_file) and the TLS files (--tls_cert,
--tls_key, --tls_client_ca).
Stop it with Ctrl-C or SIGTERM: it turns health NOT_SERVING, refuses new
connections, serves the open ones until they reach --max_connection_age and
its running requests are done (at most --shutdown_grace), then exits 0.)";

absl::Status WritePortFile(const std::string& path, int32_t port) {
  // Written aside then renamed, so a reader never sees a partial number.
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << port << "\n";
    if (!out.good()) {
      return absl::UnavailableError(absl::StrCat("cannot write ", tmp));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot rename ", tmp, " to ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

int Run(int argc, char** argv) {
  UseReleaseMutexMode();
  absl::SetProgramUsageMessage(kUsage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() > 1) {
    std::fprintf(stderr,
                 "stratad: unexpected argument \"%s\" (flags are --name=value;"
                 " see --help)\n",
                 args[1]);
    return 2;
  }

  // SIGINT/SIGTERM are blocked in every thread (threads inherit the mask of
  // the thread that creates them, so this comes first) and taken by sigwait
  // below: shutdown then runs on the main thread, not in a signal handler.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  // SIGHUP (reload the TLS files) likewise, taken by the same sigwait.
  sigset_t wait_signals = stop_signals;
  sigaddset(&wait_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &wait_signals, nullptr);

  // Must precede the server's construction; the plugin then adds the
  // reflection service to every server this process builds.
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  ServerOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  // Every string flag is parsed here, once, into the options' types.
  absl::StatusOr<BackendOptions> backend = ParseBackendOptions(
      absl::GetFlag(FLAGS_backend), absl::GetFlag(FLAGS_dtype),
      absl::GetFlag(FLAGS_quantization));
  absl::StatusOr<KvFillPolicy> kv_fill =
      ParseKvFillPolicy(absl::GetFlag(FLAGS_kv_fill));
  const std::string loop_batching = absl::GetFlag(FLAGS_loop_batching);
  for (const absl::Status& st :
       {backend.status(), kv_fill.status(),
        loop_batching == "depthwise" || loop_batching == "sequencewise"
            ? absl::OkStatus()
            : absl::InvalidArgumentError(
                  absl::StrCat("--loop_batching: \"", loop_batching,
                               "\" is neither depthwise nor sequencewise"))}) {
    if (!st.ok()) {
      std::fprintf(stderr, "stratad: %s\n", st.ToString().c_str());
      return 2;
    }
  }
  options.backend = *std::move(backend);
  options.backend.num_threads = absl::GetFlag(FLAGS_threads);
  options.backend.device = absl::GetFlag(FLAGS_device);
  options.backend.llm_int8_threshold = absl::GetFlag(FLAGS_llm_int8_threshold);
  options.backend.int8_group_size = absl::GetFlag(FLAGS_int8_group_size);
  options.backend.gpu_memory_fraction =
      absl::GetFlag(FLAGS_gpu_memory_fraction);
  options.backend.step_graphs = absl::GetFlag(FLAGS_cuda_graphs);
  options.kv_fill = *kv_fill;
  options.depthwise = loop_batching == "depthwise";
  // On by default, but only where it can be: --kv_fill=recompute plans no
  // fills for prompt tokens, so there the default is off and only an
  // explicit --prompt_exits is refused (ValidateServerOptions). Debian 12's
  // abseil keeps CommandLineFlag::IsSpecifiedOnCommandLine() private; its
  // parser answers the same question through WasPresentOnCommandLine().
  options.prompt_exits = absl::GetFlag(FLAGS_prompt_exits);
  if (options.kv_fill == KvFillPolicy::kRecompute &&
      !absl::flags_internal::WasPresentOnCommandLine("prompt_exits")) {
    options.prompt_exits = false;
  }
  options.kv_cache_bytes = absl::GetFlag(FLAGS_kv_cache_mb) << 20;
  options.block_size = absl::GetFlag(FLAGS_block_size);
  options.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs);
  options.max_tokens_per_step = absl::GetFlag(FLAGS_max_tokens_per_step);
  options.enable_prefix_caching = absl::GetFlag(FLAGS_enable_prefix_caching);
  options.static_batching = absl::GetFlag(FLAGS_static_batching);
  options.max_model_len = absl::GetFlag(FLAGS_max_model_len);
  options.max_waiting_requests = absl::GetFlag(FLAGS_max_waiting_requests);
  options.max_waiting_tokens = absl::GetFlag(FLAGS_max_waiting_tokens);
  options.chat_template = absl::GetFlag(FLAGS_chat_template);
  options.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  options.stall_timeout = absl::GetFlag(FLAGS_stall_timeout);
  options.max_connection_age = absl::GetFlag(FLAGS_max_connection_age);
  options.metrics_host = absl::GetFlag(FLAGS_metrics_host);
  options.api_keys_file = absl::GetFlag(FLAGS_api_keys_file);
  options.max_request_time = absl::GetFlag(FLAGS_max_request_time);
  options.max_prompt_bytes = absl::GetFlag(FLAGS_max_prompt_bytes);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.http_port = absl::GetFlag(FLAGS_http_port);
  options.served_model_name = absl::GetFlag(FLAGS_served_model_name);
  options.http_threads = absl::GetFlag(FLAGS_http_threads);
  options.io_nice = absl::GetFlag(FLAGS_io_nice);
  options.http_max_body_bytes = static_cast<size_t>(
      std::max<int64_t>(0, absl::GetFlag(FLAGS_http_max_body_bytes)));
  options.http_request_timeout = absl::GetFlag(FLAGS_http_request_timeout);
  options.http_write_timeout = absl::GetFlag(FLAGS_http_write_timeout);

  absl::StatusOr<std::unique_ptr<Server>> server = Server::Create(options);
  if (!server.ok()) {
    std::fprintf(stderr, "stratad: cannot start: %s\n",
                 server.status().ToString().c_str());
    return 1;
  }
  const v1::ModelInfo& info = (*server)->model_info();
  std::string metrics = "off";
  if ((*server)->metrics_port() != 0) {
    metrics = absl::StrCat(":", (*server)->metrics_port(), "/metrics");
  }
  std::printf(
      "stratad listening on %s%s (model %s, %s, %u layers, context %u, chat "
      "template %s, backend %s, metrics %s)\n"
      "  try: strata-cli --addr=%s complete \"Once upon a time\"\n",
      (*server)->address().c_str(),
      options.tls_cert_file.empty()
          ? ""
          : (options.tls_client_ca_file.empty() ? " with TLS"
                                                : " with mutual TLS"),
      options.model_dir.c_str(), info.architecture().c_str(), info.num_layers(),
      info.context_length(),
      info.chat_template().empty() ? "none" : info.chat_template().c_str(),
      info.backend().c_str(), metrics.c_str(), (*server)->address().c_str());
  if ((*server)->http_port() != 0) {
    std::printf(
        "  OpenAI-compatible HTTP API on %s://%s:%d/v1 (model id \"%s\")\n",
        options.tls_cert_file.empty() ? "http" : "https", options.host.c_str(),
        (*server)->http_port(),
        options.served_model_name.empty() ? info.name().c_str()
                                          : options.served_model_name.c_str());
  }
  std::fflush(stdout);

  if (const std::string path = absl::GetFlag(FLAGS_port_file); !path.empty()) {
    if (absl::Status st = WritePortFile(path, (*server)->port()); !st.ok()) {
      std::fprintf(stderr, "stratad: %s\n", st.ToString().c_str());
      return 1;
    }
  }

  int signal_number = 0;
  while (sigwait(&wait_signals, &signal_number) == 0 &&
         signal_number == SIGHUP) {
    // SIGHUP re-reads the API keys and the TLS files; each keeps what it
    // has when its new files are bad.
    if (absl::Status st = (*server)->ReloadApiKeys(); !st.ok()) {
      STRATA_LOG(WARNING) << "SIGHUP: keeping the current API keys: " << st;
    }
    if (options.tls_cert_file.empty()) {
      STRATA_LOG(INFO) << "received SIGHUP: nothing to reload (TLS is off)";
    } else if (absl::Status st = (*server)->ReloadTls(); st.ok()) {
      STRATA_LOG(INFO) << "received SIGHUP: reloaded the TLS certificate "
                          "(gRPC and HTTP API ports); new connections use it";
    } else {
      STRATA_LOG(ERROR) << "received SIGHUP: TLS reload failed, keeping the "
                           "current certificate: "
                        << st;
    }
  }
  STRATA_LOG(INFO) << "received " << strsignal(signal_number)
                   << ", draining (a second SIGTERM or SIGINT exits at once)";
  // The drain below may take --shutdown_grace; an operator who signals again
  // wants out now.
  std::thread([stop_signals] {
    int second = 0;
    sigwait(&stop_signals, &second);
    STRATA_LOG(WARNING) << "received " << strsignal(second)
                        << " while draining; exiting now";
    std::_Exit(1);
  }).detach();
  (*server)->Shutdown(absl::GetFlag(FLAGS_shutdown_grace));
  server->reset();
  STRATA_LOG(INFO) << "stratad stopped";
  return 0;
}

}  // namespace
}  // namespace strata

int main(int argc, char** argv) { return strata::Run(argc, argv); }
