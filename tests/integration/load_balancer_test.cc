// Two real stratad replicas behind a real nginx running the shipped
// deploy/nginx/strata.conf (its replica lines and listen port rewritten to
// loopback): a bounded load of unary and streaming generations spreads over
// both replicas, one of them gets SIGTERM mid-load, and no call fails at the
// client. This is what the drain sequence (server/server.cc,
// Server::Shutdown) and nginx's retry of refused connections are for;
// docs/operations.md explains both.
//
// Skipped (with the reason) when no nginx binary is installed;
// scripts/install-deps.sh installs it, so CI runs it.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "strata/v1/generation.grpc.pb.h"
#include "tests/integration/stratad_daemon.h"
#include "tests/integration/subprocess.h"
#include "tests/testing/net_util.h"

namespace strata {
namespace {

using ::strata::testing::StratadDaemon;
using ::strata::testing::Subprocess;

constexpr int kClients = 6;  // concurrent client threads
// The load runs until this many calls have completed after replica A's
// SIGTERM (so SIGTERM is mid-load by construction, however late the poll
// below sees both replicas busy), each client making at most
// kMaxRequestsPerClient calls.
constexpr int kCallsAfterSigterm = 60;
constexpr int kMaxRequestsPerClient = 100;
constexpr uint32_t kTokens = 32;  // per call, greedy, EOS ignored
// Between a client's calls: spreads the load over a few seconds, past the
// replicas' connection age, however fast the machine generates.
constexpr absl::Duration kPause = absl::Milliseconds(75);
// Per call; generous for two replicas sharing two loaded cores.
constexpr auto kCallTimeout = std::chrono::seconds(60);

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// The nginx binary: $STRATA_NGINX, else the Debian path, else PATH; "" if
// there is none.
std::string FindNginx() {
  if (const char* env = std::getenv("STRATA_NGINX"); env != nullptr) {
    return access(env, X_OK) == 0 ? std::string(env) : "";
  }
  std::vector<std::string> candidates = {"/usr/sbin/nginx", "/usr/bin/nginx"};
  if (const char* path = std::getenv("PATH"); path != nullptr) {
    std::stringstream dirs(path);
    for (std::string dir; std::getline(dirs, dir, ':');) {
      if (!dir.empty()) candidates.push_back(dir + "/nginx");
    }
  }
  for (const std::string& candidate : candidates) {
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// A TCP connection to 127.0.0.1:port is accepted.
bool Listening(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok =
      connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

double Metric(int port, const std::string& series) {
  return strata::testing::ScrapeMetric(port, series);
}

double RequestsOk(int metrics_port) {
  return Metric(metrics_port, "strata_requests_total{outcome=\"ok\"}");
}

v1::CompletionRequest Greedy(int salt) {
  v1::CompletionRequest request;
  // Different prompts, so that calls are not all prefix-cache hits.
  request.mutable_token_ids()->add_ids(1792);
  request.mutable_token_ids()->add_ids(400 + salt % 97);
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_sampling()->set_max_tokens(kTokens);
  request.mutable_sampling()->set_ignore_eos(true);
  return request;
}

// nginx in the foreground (master_process off: one process, so SIGTERM or
// SIGKILL from Subprocess leaves nothing behind) with the shipped config.
class Nginx {
 public:
  // `upstream_ports`: the replicas' gRPC ports.
  static absl::StatusOr<std::unique_ptr<Nginx>> Start(
      const std::string& binary, const std::vector<int>& upstream_ports) {
    std::unique_ptr<Nginx> nginx(new Nginx());
    std::string pattern =
        (std::filesystem::temp_directory_path() / "strata-nginx-XXXXXX")
            .string();
    if (mkdtemp(pattern.data()) == nullptr) {
      return absl::InternalError("mkdtemp failed");
    }
    nginx->dir_ = pattern;
    nginx->port_ = strata::testing::FreePort();
    if (nginx->port_ <= 0) return absl::InternalError("no free port");

    // deploy/nginx/strata.conf with its example replicas replaced by ours
    // and its listener moved to a free loopback port; everything else (the
    // retry policy under test) as shipped.
    std::string conf =
        ReadFile(std::string(STRATA_SOURCE_DIR) + "/deploy/nginx/strata.conf");
    const std::regex server_line(
        R"(\n[ \t]*server[ \t]+\S+:50051\b([^;\n]*);)");
    std::smatch first;
    if (!std::regex_search(conf, first, server_line)) {
      return absl::FailedPreconditionError(
          "deploy/nginx/strata.conf: no `server HOST:50051 ...;` line");
    }
    const std::string parameters = first[1].str();  // max_fails=... etc.
    std::vector<std::string> servers;
    for (int port : upstream_ports) {
      servers.push_back(
          absl::StrCat("\n  server 127.0.0.1:", port, parameters, ";"));
    }
    std::string rewritten;
    bool placed = false;
    std::string rest = conf;
    for (std::smatch m; std::regex_search(rest, m, server_line);
         rest = m.suffix().str()) {
      rewritten += m.prefix().str();
      if (!placed) rewritten += absl::StrJoin(servers, "");
      placed = true;
    }
    rewritten += rest;
    const std::string listen = "listen 50051 http2;";
    const size_t at = rewritten.find(listen);
    if (at == std::string::npos) {
      return absl::FailedPreconditionError(
          "deploy/nginx/strata.conf: no `listen 50051 http2;`");
    }
    rewritten.replace(
        at, listen.size(),
        absl::StrCat("listen 127.0.0.1:", nginx->port_, " http2;"));
    // The HTTP API's server block (not under test here) must still load:
    // its example replicas resolve to loopback and it listens on a free
    // loopback port.
    const std::string http_listen = "listen 8000;";
    if (const size_t h = rewritten.find(http_listen); h != std::string::npos) {
      const int http_port = strata::testing::FreePort();
      if (http_port <= 0) return absl::InternalError("no free port");
      rewritten.replace(h, http_listen.size(),
                        absl::StrCat("listen 127.0.0.1:", http_port, ";"));
    }
    rewritten = std::regex_replace(
        rewritten, std::regex(R"(strata-[0-9]+\.strata\.internal)"),
        "127.0.0.1");
    std::ofstream(nginx->dir_ / "strata.conf") << rewritten;

    // A minimal main config around it, everything inside the temp folder.
    const std::string d = nginx->dir_.string();
    std::string user;
    if (geteuid() == 0) {
      // As root, nginx would switch its worker to `nobody`, who cannot use
      // this root-owned folder.
      const passwd* pw = getpwuid(geteuid());
      user = absl::StrCat("user ", pw != nullptr ? pw->pw_name : "root", ";\n");
    }
    std::ofstream(nginx->dir_ / "nginx.conf") << absl::StrCat(
        user, "daemon off;\nmaster_process off;\npid ", d, "/nginx.pid;\n",
        "error_log ", d, "/error.log info;\n",
        "events { worker_connections 1024; }\n", "http {\n", "  access_log ", d,
        "/access.log;\n", "  client_body_temp_path ", d, "/body;\n",
        "  proxy_temp_path ", d, "/proxy;\n", "  fastcgi_temp_path ", d,
        "/fastcgi;\n", "  uwsgi_temp_path ", d, "/uwsgi;\n",
        "  scgi_temp_path ", d, "/scgi;\n", "  include ", d, "/strata.conf;\n",
        "}\n");

    absl::StatusOr<std::unique_ptr<Subprocess>> process = Subprocess::Start(
        {binary, "-p", d, "-c", d + "/nginx.conf", "-e", d + "/error.log"});
    if (!process.ok()) return process.status();
    nginx->process_ = *std::move(process);
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (!Listening(nginx->port_)) {
      if (nginx->process_->Poll().has_value() || absl::Now() > deadline) {
        return absl::UnavailableError(absl::StrCat(
            "nginx did not start; stderr:\n", nginx->process_->ReadStderr(),
            "\nerror.log:\n", nginx->ErrorLog()));
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    return nginx;
  }

  ~Nginx() {
    if (process_ != nullptr) process_->Terminate(absl::Seconds(5));
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  int port() const { return port_; }
  std::string ErrorLog() const { return ReadFile(dir_ / "error.log"); }

 private:
  Nginx() = default;

  std::filesystem::path dir_;
  int port_ = 0;
  std::unique_ptr<Subprocess> process_;
};

// One call's outcome as the client saw it.
struct CallResult {
  bool streaming = false;
  grpc::Status status;
  int tokens = 0;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
};

CallResult Call(v1::Generation::Stub& stub, bool streaming, int salt) {
  CallResult result;
  result.streaming = streaming;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
  // The test is about calls that reach nginx: a client whose own
  // connection to nginx is down (a failed connect on a loaded machine: CI
  // once saw one client's every call fail fast, its channel backing off)
  // waits for it within the deadline instead. A call sent and then failed
  // still fails the test.
  context.set_wait_for_ready(true);
  if (streaming) {
    auto reader = stub.CompleteStream(&context, Greedy(salt));
    v1::CompletionChunk chunk;
    while (reader->Read(&chunk)) {
      result.tokens += chunk.token_ids_size();
      if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
        result.finish = chunk.finish_reason();
      }
    }
    result.status = reader->Finish();
  } else {
    v1::CompletionResponse response;
    result.status = stub.Complete(&context, Greedy(salt), &response);
    result.tokens = response.token_ids_size();
    result.finish = response.finish_reason();
  }
  return result;
}

TEST(LoadBalancerTest, SigtermOneReplicaMidLoadFailsNoCall) {
  const std::string nginx_binary = FindNginx();
  if (nginx_binary.empty()) {
    GTEST_SKIP() << "no nginx binary (set STRATA_NGINX, or install nginx: "
                    "scripts/install-deps.sh)";
  }
  const absl::Time start = absl::Now();

  // Replica A is the one stopped. One kernel thread each: two replicas share
  // the machine's cores. A short connection age, so that A's drain moves
  // nginx off A's connections while the load still runs (the default 2s
  // would do too, with a longer load).
  const int metrics_a = strata::testing::FreePort();
  const int metrics_b = strata::testing::FreePort();
  ASSERT_NE(metrics_a, metrics_b);
  auto a = StratadDaemon::Start(
      strata::testing::TinyLlamaDir(),
      {absl::StrCat("--metrics_port=", metrics_a), "--threads=1",
       "--shutdown_grace=30s", "--max_connection_age=1s"});
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = StratadDaemon::Start(
      strata::testing::TinyLlamaDir(),
      {absl::StrCat("--metrics_port=", metrics_b), "--threads=1",
       "--shutdown_grace=30s", "--max_connection_age=1s"});
  ASSERT_TRUE(b.ok()) << b.status();
  const auto port_of = [](const StratadDaemon& daemon) {
    const std::string& address = daemon.address();
    return std::stoi(address.substr(address.rfind(':') + 1));
  };
  const int port_a = port_of(**a);
  const int port_b = port_of(**b);

  auto nginx = Nginx::Start(nginx_binary, {port_a, port_b});
  ASSERT_TRUE(nginx.ok()) << nginx.status();
  const std::string lb_address = absl::StrCat("127.0.0.1:", (*nginx)->port());

  // The load: kClients threads, each with its own connection to nginx,
  // making sequential calls, unary and streaming in turn.
  std::vector<std::vector<CallResult>> results(kClients);
  std::atomic<int> num_done{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      grpc::ChannelArguments args;
      args.SetInt("strata.test.client", c);  // a connection per client
      std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(
          lb_address, grpc::InsecureChannelCredentials(), args);
      // Connected before the load, so that a first connect that fails is
      // retried by the channel rather than failing calls.
      channel->WaitForConnected(std::chrono::system_clock::now() +
                                std::chrono::seconds(20));
      auto stub = v1::Generation::NewStub(channel);
      for (int i = 0; i < kMaxRequestsPerClient && !stop.load(); ++i) {
        results[c].push_back(Call(*stub, (c + i) % 2 == 1, c * 100 + i));
        num_done.fetch_add(1);
        absl::SleepFor(kPause);
      }
    });
  }

  // SIGTERM replica A once both replicas have completed calls, while A has
  // calls in flight; then kCallsAfterSigterm more calls.
  constexpr int kMaxTotal = kClients * kMaxRequestsPerClient;
  double ok_a_at_sigterm = -1;
  double ok_b_at_sigterm = -1;
  double running_a_at_sigterm = -1;
  int done_at_sigterm = -1;
  absl::Time sigterm_time;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (absl::Now() < deadline && num_done.load() < kMaxTotal) {
    const double ok_a = RequestsOk(metrics_a);
    const double ok_b = RequestsOk(metrics_b);
    const double running_a = Metric(metrics_a, "strata_requests_running");
    if (ok_a > 0 && ok_b > 0 && running_a > 0) {
      running_a_at_sigterm = running_a;
      ok_a_at_sigterm = ok_a;
      ok_b_at_sigterm = ok_b;
      done_at_sigterm = num_done.load();
      sigterm_time = absl::Now();
      ASSERT_EQ(kill((*a)->process().pid(), SIGTERM), 0);
      break;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  // Its own bound: a slow machine may have spent most of the first one.
  const absl::Time load_deadline = sigterm_time + absl::Seconds(60);
  while (done_at_sigterm >= 0 && absl::Now() < load_deadline &&
         num_done.load() < done_at_sigterm + kCallsAfterSigterm &&
         num_done.load() < kMaxTotal) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  stop.store(true);
  for (std::thread& client : clients) client.join();
  const absl::Duration load_after_sigterm = absl::Now() - sigterm_time;
  const int total = num_done.load();
  ASSERT_GT(done_at_sigterm, -1)
      << "both replicas never served a call while the load ran (A: "
      << RequestsOk(metrics_a) << ", B: " << RequestsOk(metrics_b) << ")";
  ASSERT_GE(total - done_at_sigterm, kCallsAfterSigterm)
      << "the load did not run on after SIGTERM (" << total << " calls, "
      << done_at_sigterm << " before it)";

  // Every call succeeded in full, whichever replica served it.
  int failed = 0;
  for (int c = 0; c < kClients; ++c) {
    for (size_t i = 0; i < results[c].size(); ++i) {
      const CallResult& r = results[c][i];
      const bool full = r.status.ok() &&
                        r.tokens == static_cast<int>(kTokens) &&
                        r.finish == v1::FINISH_REASON_LENGTH;
      if (!full) ++failed;
      EXPECT_TRUE(r.status.ok())
          << "client " << c << " call " << i
          << (r.streaming ? " (streaming)" : " (unary)") << ": "
          << r.status.error_code() << " " << r.status.error_message();
      EXPECT_EQ(r.tokens, static_cast<int>(kTokens))
          << "client " << c << " call " << i;
      EXPECT_EQ(r.finish, v1::FINISH_REASON_LENGTH)
          << "client " << c << " call " << i;
    }
  }

  // A drained and exited cleanly; B took the load after A's SIGTERM.
  const std::optional<int> exit_a = (*a)->process().Wait(absl::Seconds(40));
  ASSERT_TRUE(exit_a.has_value()) << "replica A did not exit after SIGTERM";
  EXPECT_EQ(*exit_a, 0) << (*a)->process().ReadStderr();
  const double ok_b_at_end = RequestsOk(metrics_b);
  EXPECT_GT(ok_b_at_end, ok_b_at_sigterm)
      << "replica B served nothing after A's SIGTERM";

  // How often nginx found A's port closed and moved the call to B (a
  // connection refused: nothing was sent, so it may retry).
  const std::string error_log = (*nginx)->ErrorLog();
  int refused = 0;
  for (size_t at = error_log.find("(111: Connection refused)");
       at != std::string::npos;
       at = error_log.find("(111: Connection refused)", at + 1)) {
    ++refused;
  }
  std::cout << "[          ] " << total << " calls, " << failed
            << " failed; nginx retried " << refused
            << " refused connections; SIGTERM to A after " << done_at_sigterm
            << " calls (A ok " << ok_a_at_sigterm << ", running "
            << running_a_at_sigterm << "; B ok " << ok_b_at_sigterm
            << "); B ok at the end " << ok_b_at_end << "; load ran on for "
            << absl::FormatDuration(load_after_sigterm) << "; "
            << absl::FormatDuration(absl::Now() - start) << "\n";
  if (failed > 0) {
    ADD_FAILURE() << "nginx error.log:\n" << error_log;
  }
}

}  // namespace
}  // namespace strata
