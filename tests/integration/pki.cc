#include "tests/integration/pki.h"

#include <unistd.h>

#include <fstream>
#include <sstream>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/integration/subprocess.h"

namespace strata::testing {

namespace fs = std::filesystem;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream data;
  data << in.rdbuf();
  return data.str();
}

Pki::Pki() {
  dir_ = fs::temp_directory_path() /
         absl::StrCat("strata-tls-test-", getpid(), "-",
                      absl::ToUnixNanos(absl::Now()));
  fs::create_directories(dir_);
  std::ofstream(dir_ / "server.ext")
      << "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
         "extendedKeyUsage=serverAuth\n";
  std::ofstream(dir_ / "client.ext") << "extendedKeyUsage=clientAuth\n";
}

Pki::~Pki() { fs::remove_all(dir_); }

void Pki::MakeCa(const std::string& name) {
  Openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt",
           "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
           "/CN=" + name, "-keyout", Path(name + ".key"), "-out",
           Path(name + ".pem")});
}

void Pki::MakeLeaf(const std::string& name, const std::string& ca,
                   const std::string& ext) {
  Openssl({"req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
           "-nodes", "-subj", "/CN=" + name, "-keyout", Path(name + ".key"),
           "-out", Path(name + ".csr")});
  Openssl({"x509", "-req", "-in", Path(name + ".csr"), "-CA", Path(ca + ".pem"),
           "-CAkey", Path(ca + ".key"), "-CAcreateserial", "-days", "2",
           "-extfile", Path(ext + ".ext"), "-out", Path(name + ".pem")});
}

std::string Pki::Path(const std::string& file) const { return dir_ / file; }

std::string Pki::Read(const std::string& file) const {
  return ReadFile(dir_ / file);
}

std::shared_ptr<grpc::ChannelCredentials> GrpcTlsCredentials(
    const Pki& pki, const std::string& ca, const std::string& client) {
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = pki.Read(ca + ".pem");
  if (!client.empty()) {
    ssl.pem_cert_chain = pki.Read(client + ".pem");
    ssl.pem_private_key = pki.Read(client + ".key");
  }
  return grpc::SslCredentials(ssl);
}

void PkiTest::SetUp() {
  pki_.MakeCa("ca");
  pki_.MakeCa("rogue-ca");
  pki_.MakeLeaf("server", "ca", "server");
  pki_.MakeLeaf("server2", "ca", "server");
  pki_.MakeLeaf("client", "ca", "client");
  pki_.MakeLeaf("rogue-client", "rogue-ca", "client");
}

void Pki::Openssl(std::vector<std::string> args) {
  args.insert(args.begin(), "/usr/bin/openssl");
  absl::StatusOr<CommandResult> result = RunCommand(args, absl::Seconds(60));
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->exit_status, 0) << result->err;
}

}  // namespace strata::testing
