// Client-side channel credentials for strata-cli and strata-bench: plaintext,
// TLS (a CA to verify the server with) or mutual TLS (plus a client
// certificate and key), from file paths given as flags.
#ifndef STRATA_CLIENT_CHANNEL_CREDENTIALS_H_
#define STRATA_CLIENT_CHANNEL_CREDENTIALS_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace strata {

struct ClientTlsOptions {
  // PEM CA bundle that signed the server's certificate. Empty with use_tls:
  // the system's roots (gRPC's default).
  std::string ca_file;
  // Mutual TLS: this client's PEM certificate chain and key (both or
  // neither).
  std::string cert_file;
  std::string key_file;
  // Name to check the server's certificate against instead of the target's
  // host (e.g. the certificate says "stratad.internal" and the target is an
  // IP address).
  std::string server_name;
  // TLS even without a CA file (set by any of the fields above too).
  bool use_tls = false;

  bool enabled() const {
    return use_tls || !ca_file.empty() || !cert_file.empty() ||
           !key_file.empty() || !server_name.empty();
  }
};

// Insecure credentials when `options` asks for no TLS; SSL credentials
// otherwise. INVALID_ARGUMENT naming the flag (tls_ca, tls_cert, tls_key) for
// an unreadable file or a certificate without its key.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>>
MakeChannelCredentials(const ClientTlsOptions& options);

// Adds what `options` needs to a channel's arguments (the server name
// override).
void AddTlsChannelArguments(const ClientTlsOptions& options,
                            grpc::ChannelArguments& args);

}  // namespace strata

#endif  // STRATA_CLIENT_CHANNEL_CREDENTIALS_H_
