// TlsCredentials: the gRPC port's TLS (and optional mutual TLS) server
// credentials, whose certificate, key and client CA can be swapped while the
// server runs (stratad reloads them on SIGHUP).
//
//   auto tls = TlsCredentials::Create({.cert_file = "server.pem",
//                                      .key_file = "server.key"});
//   builder.AddExternalConnectionAcceptor(FROM_FD, (*tls)->server_credentials());
//   ...
//   (*tls)->Reload();  // on SIGHUP: new handshakes use the new files
//
// How the swap works: gRPC's SSL server credentials take a "certificate
// config fetcher" (grpc_ssl_server_credentials_create_options_using_config_
// fetcher, in gRPC since 1.9 and in Debian's 1.51), a callback it runs before
// every handshake. Reload() reads and checks the files, and the next
// handshake's callback hands gRPC the new config. Connections already open
// keep their TLS session and their streams: nothing is dropped. A reload
// whose files are unreadable or do not match (key not of the certificate)
// fails and leaves the current certificate in place.
//
// Thread-safe: Reload() from any thread; gRPC calls the fetcher on its own.
#ifndef STRATA_SERVER_TLS_CREDENTIALS_H_
#define STRATA_SERVER_TLS_CREDENTIALS_H_

#include <grpc/grpc_security.h>
#include <grpcpp/security/server_credentials.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace strata {

struct TlsFiles {
  std::string cert_file;       // PEM certificate chain, leaf first
  std::string key_file;        // PEM private key of the leaf
  std::string client_ca_file;  // PEM CA bundle; non-empty: mutual TLS
};

// The PEM contents of TlsFiles, checked (parses, key matches the leaf).
struct TlsPem {
  std::string cert_chain;
  std::string private_key;
  std::string client_ca;  // empty: no client certificate asked
};

// Reads and checks the files. INVALID_ARGUMENT naming the flag
// (tls_cert, tls_key, tls_client_ca) and the file for a missing or
// unreadable file, a file without a PEM certificate or key, or a key that
// is not the certificate's.
absl::StatusOr<TlsPem> LoadTlsFiles(const TlsFiles& files);

class TlsCredentials {
 public:
  static absl::StatusOr<std::unique_ptr<TlsCredentials>> Create(
      const TlsFiles& files);
  ~TlsCredentials();

  TlsCredentials(const TlsCredentials&) = delete;
  TlsCredentials& operator=(const TlsCredentials&) = delete;

  // For ServerBuilder (a listening port or an external acceptor). Valid for
  // as long as this object lives; the server using them must be destroyed
  // first.
  std::shared_ptr<grpc::ServerCredentials> server_credentials() const {
    return credentials_;
  }

  // Re-reads the same files. OK: handshakes from now on present the new
  // certificate (and check clients against the new CA). An error: nothing
  // changes. The paths are those given to Create, so whether mutual TLS is
  // on does not change.
  absl::Status Reload();

  // Successful loads so far (1 after Create).
  int64_t generation() const;

 private:
  explicit TlsCredentials(const TlsFiles& files) : files_(files) {}

  // gRPC's fetcher callback (grpc_ssl_server_certificate_config_callback).
  static grpc_ssl_certificate_config_reload_status FetchConfig(
      void* self, grpc_ssl_server_certificate_config** config);

  const TlsFiles files_;
  mutable absl::Mutex mu_;
  TlsPem pem_ ABSL_GUARDED_BY(mu_);
  int64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  // The generation gRPC last took (its security connector holds it).
  int64_t served_generation_ ABSL_GUARDED_BY(mu_) = 0;
  std::shared_ptr<grpc::ServerCredentials> credentials_;
};

}  // namespace strata

#endif  // STRATA_SERVER_TLS_CREDENTIALS_H_
