// TlsCredentials: the gRPC port's TLS (and optional mutual TLS) server
// credentials, whose certificate, key and client CA can be swapped while the
// server runs (stratad reloads them on SIGHUP). LoadTlsFiles reads and
// checks the files once for both ports (the HTTP API's HTTPS takes the same
// TlsPem, server/http_server.h).
//
//   TlsFiles files = {.cert_file = "server.pem", .key_file = "server.key"};
//   auto tls = TlsCredentials::Create(*LoadTlsFiles(files));
//   builder.AddExternalConnectionAcceptor(FROM_FD, (*tls)->server_credentials());
//   ...
//   (*tls)->Update(*LoadTlsFiles(files));  // SIGHUP: for new handshakes
//
// How the swap works: gRPC's SSL server credentials take a "certificate
// config fetcher" (grpc_ssl_server_credentials_create_options_using_config_
// fetcher, in gRPC since 1.9 and in Debian's 1.51), a callback it runs before
// every handshake. Update() stores the new PEM, and the next handshake's
// callback hands gRPC the new config. Connections already open keep their
// TLS session and their streams: nothing is dropped. Files that are
// unreadable or do not match (key not of the certificate) fail
// LoadTlsFiles, so the caller never gets as far as Update and the current
// certificate stays in place.
//
// Thread-safe: Update() from any thread; gRPC calls the fetcher on its own.
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
  // `pem` as LoadTlsFiles returns it. Whether mutual TLS is on (a client CA
  // given) is fixed here for the credentials' life.
  static absl::StatusOr<std::unique_ptr<TlsCredentials>> Create(TlsPem pem);
  ~TlsCredentials();

  TlsCredentials(const TlsCredentials&) = delete;
  TlsCredentials& operator=(const TlsCredentials&) = delete;

  // For ServerBuilder (a listening port or an external acceptor). Valid for
  // as long as this object lives; the server using them must be destroyed
  // first.
  std::shared_ptr<grpc::ServerCredentials> server_credentials() const {
    return credentials_;
  }

  // Handshakes from now on present `pem`'s certificate (and check clients
  // against its CA). `pem` comes from LoadTlsFiles with the same files as
  // Create's, so whether mutual TLS is on does not change.
  void Update(TlsPem pem);

  // Certificates taken so far (1 after Create).
  int64_t generation() const;

 private:
  TlsCredentials() = default;

  // gRPC's fetcher callback (grpc_ssl_server_certificate_config_callback).
  static grpc_ssl_certificate_config_reload_status FetchConfig(
      void* self, grpc_ssl_server_certificate_config** config);

  mutable absl::Mutex mu_;
  TlsPem pem_ ABSL_GUARDED_BY(mu_);
  int64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  // The generation gRPC last took (its security connector holds it).
  int64_t served_generation_ ABSL_GUARDED_BY(mu_) = 0;
  std::shared_ptr<grpc::ServerCredentials> credentials_;
};

}  // namespace strata

#endif  // STRATA_SERVER_TLS_CREDENTIALS_H_
