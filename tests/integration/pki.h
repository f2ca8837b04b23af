// A throwaway public key infrastructure for the TLS tests: a scratch folder
// with CAs and certificates made at run time by the openssl command
// (Debian's `openssl`, scripts/install-deps.sh), so no key is checked in and
// none expires.
#ifndef STRATA_TESTS_INTEGRATION_PKI_H_
#define STRATA_TESTS_INTEGRATION_PKI_H_

#include <grpcpp/security/credentials.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace strata::testing {

// The whole contents of a file ("" when it cannot be read).
std::string ReadFile(const std::filesystem::path& path);

// Files are NAME.pem (certificate) and NAME.key (its unencrypted key).
// Server certificates are for 127.0.0.1 and localhost. A failed openssl
// run fails the test (gtest ASSERT inside).
class Pki {
 public:
  Pki();
  ~Pki();
  Pki(const Pki&) = delete;
  Pki& operator=(const Pki&) = delete;

  // NAME.key and NAME.pem: a self-signed CA.
  void MakeCa(const std::string& name);
  // NAME.key and NAME.pem signed by `ca`; `ext` is "server" or "client".
  void MakeLeaf(const std::string& name, const std::string& ca,
                const std::string& ext);

  std::string Path(const std::string& file) const;
  std::string Read(const std::string& file) const;

 private:
  void Openssl(std::vector<std::string> args);

  std::filesystem::path dir_;
};

// gRPC channel credentials trusting `ca` and, when `client` is set,
// presenting that certificate (mutual TLS).
std::shared_ptr<grpc::ChannelCredentials> GrpcTlsCredentials(
    const Pki& pki, const std::string& ca, const std::string& client = "");

// The TLS tests' cast: "ca" with "server", "server2" (a second server
// certificate, for rotation) and "client", and an unrelated "rogue-ca" with
// "rogue-client".
class PkiTest : public ::testing::Test {
 protected:
  void SetUp() override;

  Pki pki_;
};

}  // namespace strata::testing

#endif  // STRATA_TESTS_INTEGRATION_PKI_H_
