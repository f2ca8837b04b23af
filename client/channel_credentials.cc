#include "client/channel_credentials.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace strata {
namespace {

absl::StatusOr<std::string> ReadFile(const char* flag,
                                     const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream data;
  if (!in || !(data << in.rdbuf())) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": cannot read ", path));
  }
  return data.str();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>>
MakeChannelCredentials(const ClientTlsOptions& options) {
  if (!options.enabled()) return grpc::InsecureChannelCredentials();
  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError(
        options.cert_file.empty() ? "--tls_cert: required with --tls_key"
                                  : "--tls_key: required with --tls_cert");
  }
  grpc::SslCredentialsOptions ssl;
  if (!options.ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadFile("tls_ca", options.ca_file);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *std::move(ca);
  }
  if (!options.cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadFile("tls_cert", options.cert_file);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadFile("tls_key", options.key_file);
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *std::move(cert);
    ssl.pem_private_key = *std::move(key);
  }
  return grpc::SslCredentials(ssl);
}

void AddTlsChannelArguments(const ClientTlsOptions& options,
                            grpc::ChannelArguments& args) {
  if (!options.server_name.empty()) {
    args.SetSslTargetNameOverride(options.server_name);
  }
}

}  // namespace strata
