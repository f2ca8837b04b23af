// strata-cli: a small command-line client for stratad.
//
//   strata-cli complete "Once upon a time"
//   strata-cli chat --system="Be brief." "What is a tensor?"
//   strata-cli tokenize "Hello world"
//   strata-cli detokenize 9906 1917
//   strata-cli info
//   strata-cli health
//
// Generated text streams to stdout as it arrives; usage (tokens, time to
// first token, finish reason) goes to stderr at the end. A failed RPC prints
// its gRPC code and message and exits 1.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/channel_credentials.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server/status_util.h"
#include "strata/v1/generation.grpc.pb.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50051", "stratad address, host:port.");
ABSL_FLAG(std::string, api_key, "",
          "API key sent as 'authorization: Bearer KEY' (stratad "
          "--api_keys_file); also read from $STRATA_API_KEY when empty, "
          "which keeps it out of the process list.");
ABSL_FLAG(int32_t, max_tokens, -1,
          "Most tokens to generate; -1 = the server's default (256).");
ABSL_FLAG(double, temperature, -1,
          "Sampling temperature, 0 = greedy; -1 = the server's default (1).");
ABSL_FLAG(int32_t, top_k, -1, "Keep the k most likely tokens; -1 = unset.");
ABSL_FLAG(double, top_p, -1, "Nucleus sampling mass in (0, 1]; -1 = unset.");
ABSL_FLAG(double, min_p, -1,
          "Minimum probability relative to the top token; "
          "-1 = unset.");
ABSL_FLAG(double, repetition_penalty, -1, "In (0, 10]; -1 = unset.");
ABSL_FLAG(int64_t, seed, -1,
          "Sampling seed for reproducible output; -1 = "
          "random.");
ABSL_FLAG(int32_t, n, 1,
          "Choices to generate from the prompt (sampling.n, 1-16); with more "
          "than one, each choice is printed whole as it ends.");
ABSL_FLAG(std::vector<std::string>, stop, {}, "Comma-separated stop strings.");
ABSL_FLAG(bool, ignore_eos, false, "Keep generating past end-of-sequence.");
ABSL_FLAG(double, exit_threshold, -1,
          "Recursive models: early-exit confidence threshold in [0, 1]; "
          "-1 = unset (full depth).");
ABSL_FLAG(std::string, exit_confidence, "",
          "Recursive models: max_prob, margin, saturation or classifier; "
          "empty = the model's default (its classifier when it has one).");
ABSL_FLAG(int32_t, exit_min_loops, -1,
          "Recursive models: loops every token runs at least; -1 = unset.");
ABSL_FLAG(bool, stream, true,
          "Stream text as it is generated (CompleteStream/ChatStream).");
ABSL_FLAG(std::string, system, "", "chat: a system message to send first.");
ABSL_FLAG(std::string, chat_template, "",
          "chat: llama3, chatml or mistral instead of the model's own.");
ABSL_FLAG(bool, skip_special_tokens, true,
          "detokenize: leave out special tokens.");
ABSL_FLAG(bool, tls, false,
          "Connect with TLS, verifying the server against the system's CAs "
          "(implied by --tls_ca, --tls_cert, --tls_server_name).");
ABSL_FLAG(std::string, tls_ca, "",
          "TLS: PEM CA bundle that signed stratad's certificate.");
ABSL_FLAG(std::string, tls_cert, "",
          "Mutual TLS: this client's PEM certificate chain (with --tls_key).");
ABSL_FLAG(std::string, tls_key, "",
          "Mutual TLS: this client's PEM private key.");
ABSL_FLAG(std::string, tls_server_name, "",
          "TLS: name to check the server's certificate against instead of "
          "the host in --addr.");
ABSL_FLAG(absl::Duration, timeout, absl::ZeroDuration(),
          "Deadline for the call, e.g. 30s; 0 = none.");

namespace strata {
namespace {

constexpr char kUsage[] = R"(strata-cli talks to a running stratad.

Usage: strata-cli [flags] <command> [arguments]

Commands:
  complete TEXT      complete the text
  chat MESSAGE       send one user message (with --system) and print the reply
  tokenize TEXT      print the token ids and the text of each token
  detokenize ID...   print the text of token ids
  info               print what model the server runs
  health [SERVICE]   grpc.health.v1 Check ("" = the whole server); exit 0
                     only when SERVING (usable as a container health check)

Examples:
  strata-cli complete "Once upon a time" --max_tokens=32 --temperature=0
  strata-cli complete "Once upon a time" --n=3 --seed=7 --max_tokens=16
  strata-cli --addr=127.0.0.1:50051 chat --system="Be brief." "Hi there"
  strata-cli --tls_ca=ca.pem [--tls_cert=me.pem --tls_key=me.key] info)";

int Fail(const grpc::Status& status) {
  const absl::Status error = FromGrpcStatus(status);
  std::fprintf(stderr, "strata-cli: %s\n", error.ToString().c_str());
  return 1;
}

int UsageError(const std::string& message) {
  std::fprintf(stderr, "strata-cli: %s (see --help)\n", message.c_str());
  return 2;
}

void PrepareContext(grpc::ClientContext& context) {
  std::string key = absl::GetFlag(FLAGS_api_key);
  if (const char* env = std::getenv("STRATA_API_KEY");
      key.empty() && env != nullptr) {
    key = env;
  }
  if (!key.empty()) context.AddMetadata("authorization", "Bearer " + key);
  const absl::Duration timeout = absl::GetFlag(FLAGS_timeout);
  if (timeout > absl::ZeroDuration()) {
    context.set_deadline(std::chrono::system_clock::now() +
                         absl::ToChronoMilliseconds(timeout));
  }
}

// --exit_confidence names a v1::ExitConfidence (lower case, no prefix).
bool ExitConfidenceFlagOk() {
  const std::string c = absl::GetFlag(FLAGS_exit_confidence);
  v1::ExitConfidence measure;
  return c.empty() ||
         v1::ExitConfidence_Parse(
             absl::StrCat("EXIT_CONFIDENCE_", absl::AsciiStrToUpper(c)),
             &measure);
}

v1::SamplingParams SamplingFromFlags() {
  v1::SamplingParams sampling;
  if (int32_t v = absl::GetFlag(FLAGS_max_tokens); v >= 0) {
    sampling.set_max_tokens(static_cast<uint32_t>(v));
  }
  if (double v = absl::GetFlag(FLAGS_temperature); v >= 0) {
    sampling.set_temperature(static_cast<float>(v));
  }
  if (int32_t v = absl::GetFlag(FLAGS_top_k); v >= 0) sampling.set_top_k(v);
  if (double v = absl::GetFlag(FLAGS_top_p); v >= 0) {
    sampling.set_top_p(static_cast<float>(v));
  }
  if (double v = absl::GetFlag(FLAGS_min_p); v >= 0) {
    sampling.set_min_p(static_cast<float>(v));
  }
  if (double v = absl::GetFlag(FLAGS_repetition_penalty); v >= 0) {
    sampling.set_repetition_penalty(static_cast<float>(v));
  }
  if (int64_t v = absl::GetFlag(FLAGS_seed); v >= 0) {
    sampling.set_seed(static_cast<uint64_t>(v));
  }
  if (int32_t v = absl::GetFlag(FLAGS_n); v != 1) {
    sampling.set_n(static_cast<uint32_t>(std::max(v, 0)));
  }
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) {
    sampling.add_stop(stop);
  }
  sampling.set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  if (double v = absl::GetFlag(FLAGS_exit_threshold); v >= 0) {
    sampling.set_exit_threshold(static_cast<float>(v));
  }
  // Checked in main (ExitConfidenceFlagOk) before any request is built.
  if (const std::string c = absl::GetFlag(FLAGS_exit_confidence); !c.empty()) {
    v1::ExitConfidence measure = v1::EXIT_CONFIDENCE_MAX_PROB;
    v1::ExitConfidence_Parse(
        absl::StrCat("EXIT_CONFIDENCE_", absl::AsciiStrToUpper(c)), &measure);
    sampling.set_exit_confidence(measure);
  }
  if (int32_t v = absl::GetFlag(FLAGS_exit_min_loops); v >= 0) {
    sampling.set_exit_min_loops(static_cast<uint32_t>(v));
  }
  return sampling;
}

const char* FinishReasonText(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_CANCELLED:
      return "cancelled";
    case v1::FINISH_REASON_ERROR:
      return "error";
    default:
      return "unspecified";
  }
}

void PrintUsage(v1::FinishReason reason, const std::string& stop_reason,
                const v1::Usage& usage) {
  std::string stop;
  if (!stop_reason.empty()) stop = absl::StrCat(" (", stop_reason, ")");
  std::fprintf(stderr,
               "\n[finish: %s%s | prompt %u tokens (%u cached), completion %u "
               "tokens (mean loops %.2f) | queue %.3fs | time to first token "
               "%.3fs]\n",
               FinishReasonText(reason), stop.c_str(), usage.prompt_tokens(),
               usage.cached_prompt_tokens(), usage.completion_tokens(),
               usage.mean_loops(), usage.queue_time_seconds(),
               usage.time_to_first_token_seconds());
}

// One whole choice of an n > 1 request: a header line, then its text.
void PrintChoice(uint32_t index, const std::string& text,
                 v1::FinishReason reason, const std::string& stop_reason) {
  std::string stop;
  if (!stop_reason.empty()) stop = absl::StrCat(" (", stop_reason, ")");
  std::printf("--- choice %u [finish: %s%s] ---\n%s\n", index,
              FinishReasonText(reason), stop.c_str(), text.c_str());
  std::fflush(stdout);
}

// Streams or waits, prints the text, and the usage at the end. With n > 1
// choices, each is printed whole once it ends (their chunks interleave).
template <typename Request, typename StreamCall, typename UnaryCall>
int Generate(const Request& request, StreamCall stream_call,
             UnaryCall unary_call) {
  grpc::ClientContext context;
  PrepareContext(context);
  const bool several = absl::GetFlag(FLAGS_n) > 1;
  if (!absl::GetFlag(FLAGS_stream)) {
    v1::CompletionResponse response;
    grpc::Status status = unary_call(&context, request, &response);
    if (!status.ok()) return Fail(status);
    if (several) {
      for (const v1::Choice& choice : response.choices()) {
        PrintChoice(choice.index(), choice.text(), choice.finish_reason(),
                    choice.stop_reason());
      }
    } else {
      std::fwrite(response.text().data(), 1, response.text().size(), stdout);
      std::fflush(stdout);
    }
    PrintUsage(response.finish_reason(), response.stop_reason(),
               response.usage());
    return 0;
  }
  std::unique_ptr<grpc::ClientReader<v1::CompletionChunk>> reader =
      stream_call(&context, request);
  v1::CompletionChunk chunk;
  v1::CompletionChunk last;
  std::map<uint32_t, std::string> texts;  // n > 1: each choice's text so far
  while (reader->Read(&chunk)) {
    if (several) {
      texts[chunk.index()] += chunk.text();
      if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
        PrintChoice(chunk.index(), texts[chunk.index()], chunk.finish_reason(),
                    chunk.stop_reason());
      }
    } else {
      std::fwrite(chunk.text().data(), 1, chunk.text().size(), stdout);
      std::fflush(stdout);
    }
    if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) last = chunk;
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) {
    std::fputc('\n', stdout);
    return Fail(status);
  }
  PrintUsage(last.finish_reason(), last.stop_reason(), last.usage());
  return 0;
}

int Run(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) return UsageError("no command given");
  const std::string command = args[1];
  std::vector<std::string> operands(args.begin() + 2, args.end());

  const ClientTlsOptions tls{.ca_file = absl::GetFlag(FLAGS_tls_ca),
                             .cert_file = absl::GetFlag(FLAGS_tls_cert),
                             .key_file = absl::GetFlag(FLAGS_tls_key),
                             .server_name = absl::GetFlag(FLAGS_tls_server_name),
                             .use_tls = absl::GetFlag(FLAGS_tls)};
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      MakeChannelCredentials(tls);
  if (!credentials.ok()) {
    return UsageError(std::string(credentials.status().message()));
  }
  grpc::ChannelArguments channel_args;
  AddTlsChannelArguments(tls, channel_args);
  const std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(
      absl::GetFlag(FLAGS_addr), *credentials, channel_args);
  auto stub = v1::Generation::NewStub(channel);
  if (!ExitConfidenceFlagOk()) {
    return UsageError(
        "--exit_confidence must be max_prob, margin, saturation or classifier");
  }

  if (command == "complete") {
    if (operands.size() != 1) return UsageError("complete takes one TEXT");
    v1::CompletionRequest request;
    request.set_text(operands[0]);
    *request.mutable_sampling() = SamplingFromFlags();
    return Generate(
        request,
        [&](grpc::ClientContext* c, const v1::CompletionRequest& r) {
          return stub->CompleteStream(c, r);
        },
        [&](grpc::ClientContext* c, const v1::CompletionRequest& r,
            v1::CompletionResponse* out) { return stub->Complete(c, r, out); });
  }
  if (command == "chat") {
    if (operands.size() != 1) return UsageError("chat takes one MESSAGE");
    v1::ChatRequest request;
    if (const std::string system = absl::GetFlag(FLAGS_system);
        !system.empty()) {
      v1::ChatMessage* message = request.add_messages();
      message->set_role("system");
      message->set_content(system);
    }
    v1::ChatMessage* message = request.add_messages();
    message->set_role("user");
    message->set_content(operands[0]);
    request.set_chat_template(absl::GetFlag(FLAGS_chat_template));
    *request.mutable_sampling() = SamplingFromFlags();
    return Generate(
        request,
        [&](grpc::ClientContext* c, const v1::ChatRequest& r) {
          return stub->ChatStream(c, r);
        },
        [&](grpc::ClientContext* c, const v1::ChatRequest& r,
            v1::CompletionResponse* out) { return stub->Chat(c, r, out); });
  }
  if (command == "tokenize") {
    if (operands.size() != 1) return UsageError("tokenize takes one TEXT");
    grpc::ClientContext context;
    PrepareContext(context);
    v1::TokenizeRequest request;
    request.set_text(operands[0]);
    v1::TokenizeResponse response;
    grpc::Status status = stub->Tokenize(&context, request, &response);
    if (!status.ok()) return Fail(status);
    for (int i = 0; i < response.token_ids_size(); ++i) {
      std::printf("%d\t\"%s\"\n", response.token_ids(i),
                  response.tokens(i).c_str());
    }
    std::fprintf(stderr, "[%d tokens]\n", response.token_ids_size());
    return 0;
  }
  if (command == "detokenize") {
    if (operands.empty()) return UsageError("detokenize takes token ids");
    v1::DetokenizeRequest request;
    for (const std::string& operand : operands) {
      int32_t id = 0;
      if (!absl::SimpleAtoi(operand, &id)) {
        return UsageError(absl::StrCat("not a token id: \"", operand, "\""));
      }
      request.add_token_ids(id);
    }
    request.set_skip_special_tokens(absl::GetFlag(FLAGS_skip_special_tokens));
    grpc::ClientContext context;
    PrepareContext(context);
    v1::DetokenizeResponse response;
    grpc::Status status = stub->Detokenize(&context, request, &response);
    if (!status.ok()) return Fail(status);
    std::printf("%s\n", response.text().c_str());
    return 0;
  }
  if (command == "info") {
    if (!operands.empty()) return UsageError("info takes no arguments");
    grpc::ClientContext context;
    PrepareContext(context);
    v1::ModelInfo info;
    grpc::Status status =
        stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
    if (!status.ok()) return Fail(status);
    std::printf("%s", info.DebugString().c_str());
    return 0;
  }
  if (command == "health") {
    if (operands.size() > 1) return UsageError("health takes one SERVICE");
    auto health = grpc::health::v1::Health::NewStub(channel);
    grpc::ClientContext context;
    PrepareContext(context);
    grpc::health::v1::HealthCheckRequest request;
    if (!operands.empty()) request.set_service(operands[0]);
    grpc::health::v1::HealthCheckResponse response;
    grpc::Status status = health->Check(&context, request, &response);
    if (!status.ok()) return Fail(status);
    std::printf("%s\n",
                grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
                    response.status())
                    .c_str());
    return response.status() == grpc::health::v1::HealthCheckResponse::SERVING
               ? 0
               : 1;
  }
  return UsageError(absl::StrCat("unknown command \"", command, "\""));
}

}  // namespace
}  // namespace strata

int main(int argc, char** argv) { return strata::Run(argc, argv); }
