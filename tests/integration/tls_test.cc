// TLS on stratad's gRPC port, against the real daemon: a CA and certificates
// are made at run time with openssl (Debian's), then TLS calls, plaintext
// and unauthenticated clients refused, mutual TLS, and a SIGHUP reload that
// swaps the certificate while a stream on an open connection continues.
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "strata/v1/generation.grpc.pb.h"
#include "tests/integration/pki.h"
#include "tests/integration/stratad_daemon.h"
#include "tests/integration/subprocess.h"

namespace strata {
namespace {

namespace fs = std::filesystem;
using strata::testing::GrpcTlsCredentials;
using strata::testing::Pki;
using strata::testing::RunCommand;
using strata::testing::StratadDaemon;

// A channel on a connection of its own (channels in one process otherwise
// share connections to the same target).
std::shared_ptr<grpc::Channel> NewChannel(
    const std::string& address,
    std::shared_ptr<grpc::ChannelCredentials> credentials,
    grpc::ChannelArguments args = {}) {
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, credentials, args);
}

// GetModelInfo with a 10 s deadline; sets `peer_pem` to the certificate the
// server presented (when the call got that far).
grpc::Status Info(const std::shared_ptr<grpc::Channel>& channel,
                  std::string* peer_pem = nullptr) {
  auto stub = v1::Generation::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(10));
  v1::ModelInfo info;
  grpc::Status status =
      stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
  if (peer_pem != nullptr && context.auth_context() != nullptr) {
    for (const grpc::string_ref& value :
         context.auth_context()->FindPropertyValues("x509_pem_cert")) {
      *peer_pem = std::string(value.data(), value.size());
    }
  }
  return status;
}

class TlsTest : public strata::testing::PkiTest {};

TEST_F(TlsTest, TlsCallWorksAndPlaintextIsRefused) {
  auto daemon = StratadDaemon::Start(strata::testing::TinyLlamaDir(),
                                     {"--tls_cert=" + pki_.Path("server.pem"),
                                      "--tls_key=" + pki_.Path("server.key")},
                                     GrpcTlsCredentials(pki_, "ca"));
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  const std::string address = (*daemon)->address();

  std::string peer;
  EXPECT_TRUE(
      Info(NewChannel(address, GrpcTlsCredentials(pki_, "ca")), &peer).ok());
  EXPECT_EQ(peer, pki_.Read("server.pem"));

  // Plaintext HTTP/2 on the TLS port: the handshake fails, the call too.
  const grpc::Status plaintext =
      Info(NewChannel(address, grpc::InsecureChannelCredentials()));
  EXPECT_EQ(plaintext.error_code(), grpc::StatusCode::UNAVAILABLE)
      << plaintext.error_message();
  // A client that does not trust the server's CA refuses it.
  EXPECT_FALSE(
      Info(NewChannel(address, GrpcTlsCredentials(pki_, "rogue-ca"))).ok());

  // strata-cli speaks TLS with --tls_ca, and fails without it.
  auto cli = RunCommand({strata::testing::StrataCliPath(), "--addr=" + address,
                         "--tls_ca=" + pki_.Path("ca.pem"), "--max_tokens=4",
                         "--temperature=0", "complete", "Hello"},
                        absl::Seconds(60));
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_EQ(cli->exit_status, 0) << cli->err;
  EXPECT_NE(cli->err.find("completion 4 tokens"), std::string::npos)
      << cli->err;
  cli = RunCommand({strata::testing::StrataCliPath(), "--addr=" + address,
                    "--timeout=5s", "info"},
                   absl::Seconds(60));
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_EQ(cli->exit_status, 1) << cli->out;
  EXPECT_TRUE((*daemon)->Alive());
}

TEST_F(TlsTest, MutualTlsRequiresAClientCertificateFromTheCa) {
  auto daemon = StratadDaemon::Start(strata::testing::TinyLlamaDir(),
                                     {"--tls_cert=" + pki_.Path("server.pem"),
                                      "--tls_key=" + pki_.Path("server.key"),
                                      "--tls_client_ca=" + pki_.Path("ca.pem")},
                                     GrpcTlsCredentials(pki_, "ca", "client"));
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  const std::string address = (*daemon)->address();

  EXPECT_TRUE(
      Info(NewChannel(address, GrpcTlsCredentials(pki_, "ca", "client"))).ok());
  const grpc::Status no_cert =
      Info(NewChannel(address, GrpcTlsCredentials(pki_, "ca")));
  EXPECT_EQ(no_cert.error_code(), grpc::StatusCode::UNAVAILABLE)
      << no_cert.error_message();
  const grpc::Status rogue =
      Info(NewChannel(address, GrpcTlsCredentials(pki_, "ca", "rogue-client")));
  EXPECT_EQ(rogue.error_code(), grpc::StatusCode::UNAVAILABLE)
      << rogue.error_message();

  // strata-cli with a client certificate.
  auto cli = RunCommand({strata::testing::StrataCliPath(), "--addr=" + address,
                         "--tls_ca=" + pki_.Path("ca.pem"),
                         "--tls_cert=" + pki_.Path("client.pem"),
                         "--tls_key=" + pki_.Path("client.key"), "info"},
                        absl::Seconds(60));
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_EQ(cli->exit_status, 0) << cli->err;
  EXPECT_TRUE((*daemon)->Alive());
}

TEST_F(TlsTest, BadFilesAreRefusedAtStartNamingTheFlag) {
  auto daemon = StratadDaemon::Start(strata::testing::TinyLlamaDir(),
                                     {"--tls_cert=" + pki_.Path("server.pem"),
                                      "--tls_key=" + pki_.Path("server2.key")},
                                     GrpcTlsCredentials(pki_, "ca"));
  ASSERT_FALSE(daemon.ok());
  EXPECT_NE(daemon.status().message().find("tls_key:"), std::string::npos)
      << daemon.status();
  daemon = StratadDaemon::Start(strata::testing::TinyLlamaDir(),
                                {"--tls_cert=" + pki_.Path("server.pem")});
  ASSERT_FALSE(daemon.ok());
  EXPECT_NE(daemon.status().message().find("tls_key: required"),
            std::string::npos)
      << daemon.status();
}

// SIGHUP swaps the certificate for new connections; a stream on a connection
// opened before keeps going to its end, and that connection keeps serving
// new calls. A reload with broken files changes nothing.
TEST_F(TlsTest, SighupSwapsTheCertificateWhileAnOpenStreamContinues) {
  const fs::path live = pki_.Path("live");
  fs::create_directories(live);
  fs::copy_file(pki_.Path("server.pem"), live / "cert.pem");
  fs::copy_file(pki_.Path("server.key"), live / "key.pem");
  auto daemon =
      StratadDaemon::Start(strata::testing::TinyLlamaDir(),
                           {"--tls_cert=" + (live / "cert.pem").string(),
                            "--tls_key=" + (live / "key.pem").string()},
                           GrpcTlsCredentials(pki_, "ca"));
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  const std::string address = (*daemon)->address();

  // The stream's client reads slowly: a 1 KiB receive window (no
  // auto-growth) holds the server's ~8 KiB of chunks back, so the stream
  // is still open, its data unsent, when the certificate changes.
  grpc::ChannelArguments slow_reader;
  slow_reader.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  slow_reader.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  const std::shared_ptr<grpc::Channel> old_connection =
      NewChannel(address, GrpcTlsCredentials(pki_, "ca"), slow_reader);
  auto stub = v1::Generation::NewStub(old_connection);
  grpc::ClientContext stream_context;
  stream_context.set_deadline(std::chrono::system_clock::now() +
                              std::chrono::seconds(120));
  v1::CompletionRequest request;
  request.mutable_token_ids()->add_ids(1792);
  request.mutable_sampling()->set_max_tokens(400);
  request.mutable_sampling()->set_temperature(0);
  request.mutable_sampling()->set_ignore_eos(true);
  auto reader = stub->CompleteStream(&stream_context, request);
  v1::CompletionChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  int64_t tokens = chunk.token_ids_size();

  fs::copy_file(pki_.Path("server2.pem"), live / "cert.pem",
                fs::copy_options::overwrite_existing);
  fs::copy_file(pki_.Path("server2.key"), live / "key.pem",
                fs::copy_options::overwrite_existing);
  ASSERT_EQ(kill((*daemon)->process().pid(), SIGHUP), 0);
  // The daemon takes the signal on its main thread; new handshakes present
  // the new certificate once it has.
  std::string peer;
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (peer != pki_.Read("server2.pem") && absl::Now() < give_up) {
    peer.clear();
    ASSERT_TRUE(
        Info(NewChannel(address, GrpcTlsCredentials(pki_, "ca")), &peer).ok());
    if (peer != pki_.Read("server2.pem"))
      absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(peer, pki_.Read("server2.pem"));

  // The old connection: still up, still the old certificate, new calls too.
  std::string old_peer;
  EXPECT_TRUE(Info(old_connection, &old_peer).ok());
  EXPECT_EQ(old_peer, pki_.Read("server.pem"));
  // And the stream runs to its end.
  while (reader->Read(&chunk)) tokens += chunk.token_ids_size();
  const grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(tokens, 400);
  EXPECT_EQ(chunk.finish_reason(), v1::FINISH_REASON_LENGTH);

  // A broken reload (key of another certificate) keeps the current one.
  fs::copy_file(pki_.Path("server.key"), live / "key.pem",
                fs::copy_options::overwrite_existing);
  ASSERT_EQ(kill((*daemon)->process().pid(), SIGHUP), 0);
  const absl::Time logged_by = absl::Now() + absl::Seconds(10);
  while ((*daemon)->process().ReadStderr().find("TLS reload failed") ==
             std::string::npos &&
         absl::Now() < logged_by) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_NE((*daemon)->process().ReadStderr().find("TLS reload failed"),
            std::string::npos);
  peer.clear();
  EXPECT_TRUE(
      Info(NewChannel(address, GrpcTlsCredentials(pki_, "ca")), &peer).ok());
  EXPECT_EQ(peer, pki_.Read("server2.pem"));
  EXPECT_TRUE((*daemon)->Alive());
}

}  // namespace
}  // namespace strata
