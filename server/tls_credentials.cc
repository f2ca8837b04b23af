#include "server/tls_credentials.h"

#include <grpc/grpc.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace strata {
namespace {

// Certificate files are small; a bound keeps a wrong path (a device, a huge
// file) from being read whole.
constexpr std::streamsize kMaxPemBytes = 1 << 20;

absl::StatusOr<std::string> ReadPem(const char* flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": cannot read ", path));
  }
  std::string data(kMaxPemBytes + 1, '\0');
  in.read(data.data(), kMaxPemBytes + 1);
  data.resize(static_cast<size_t>(in.gcount()));
  if (static_cast<std::streamsize>(data.size()) > kMaxPemBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, ": ", path, " is larger than ", kMaxPemBytes, " bytes"));
  }
  return data;
}

struct BioDeleter {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Deleter {
  void operator()(X509* x509) const { X509_free(x509); }
};
struct PkeyDeleter {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};

std::unique_ptr<BIO, BioDeleter> MemoryBio(const std::string& pem) {
  return std::unique_ptr<BIO, BioDeleter>(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// The first certificate of a PEM bundle, or null.
std::unique_ptr<X509, X509Deleter> FirstCertificate(const std::string& pem) {
  auto bio = MemoryBio(pem);
  if (bio == nullptr) return nullptr;
  return std::unique_ptr<X509, X509Deleter>(
      PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
}

}  // namespace

absl::StatusOr<TlsPem> LoadTlsFiles(const TlsFiles& files) {
  TlsPem pem;
  absl::StatusOr<std::string> cert = ReadPem("tls_cert", files.cert_file);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadPem("tls_key", files.key_file);
  if (!key.ok()) return key.status();
  pem.cert_chain = *std::move(cert);
  pem.private_key = *std::move(key);
  if (!files.client_ca_file.empty()) {
    absl::StatusOr<std::string> ca =
        ReadPem("tls_client_ca", files.client_ca_file);
    if (!ca.ok()) return ca.status();
    pem.client_ca = *std::move(ca);
    if (FirstCertificate(pem.client_ca) == nullptr) {
      ERR_clear_error();
      return absl::InvalidArgumentError(
          absl::StrCat("tls_client_ca: no PEM certificate in ",
                       files.client_ca_file));
    }
  }

  std::unique_ptr<X509, X509Deleter> leaf = FirstCertificate(pem.cert_chain);
  if (leaf == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("tls_cert: no PEM certificate in ", files.cert_file));
  }
  auto key_bio = MemoryBio(pem.private_key);
  std::unique_ptr<EVP_PKEY, PkeyDeleter> private_key(
      key_bio == nullptr ? nullptr
                         : PEM_read_bio_PrivateKey(key_bio.get(), nullptr,
                                                   nullptr, nullptr));
  if (private_key == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(
        "tls_key: no unencrypted PEM private key in ", files.key_file));
  }
  // gRPC would only find out at the first handshake (and fail every one).
  if (X509_check_private_key(leaf.get(), private_key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("tls_key: ", files.key_file,
                     " is not the private key of the certificate in ",
                     files.cert_file));
  }
  return pem;
}

namespace {

// grpc::ServerCredentials over a core grpc_server_credentials object: the
// C++ API has no SSL credentials with a config fetcher, the core API does.
// gRPC's Server binds ports (and external acceptors) through
// AddPortToServer, which grpc_server_add_http2_port implements for any
// core credentials.
class CoreServerCredentials final : public grpc::ServerCredentials {
 public:
  explicit CoreServerCredentials(grpc_server_credentials* credentials)
      : credentials_(credentials) {}
  ~CoreServerCredentials() override {
    grpc_server_credentials_release(credentials_);
  }

  void SetAuthMetadataProcessor(
      const std::shared_ptr<grpc::AuthMetadataProcessor>&) override {
    // Nothing in stratad sets one; refusing beats silently ignoring it.
    STRATA_LOG(FATAL) << "TlsCredentials: SetAuthMetadataProcessor is not "
                         "supported";
  }

 private:
  int AddPortToServer(const std::string& addr, grpc_server* server) override {
    return grpc_server_add_http2_port(server, addr.c_str(), credentials_);
  }

  grpc_server_credentials* const credentials_;  // owned (one reference)
};

}  // namespace

absl::StatusOr<std::unique_ptr<TlsCredentials>> TlsCredentials::Create(
    TlsPem pem) {
  std::unique_ptr<TlsCredentials> tls(new TlsCredentials());
  const bool mutual = !pem.client_ca.empty();
  tls->Update(std::move(pem));
  // With a client CA every client must present a certificate it signed.
  grpc_ssl_server_credentials_options* options =
      grpc_ssl_server_credentials_create_options_using_config_fetcher(
          mutual ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                 : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
          &TlsCredentials::FetchConfig, tls.get());
  grpc_server_credentials* credentials =
      grpc_ssl_server_credentials_create_with_options(options);
  if (credentials == nullptr) {
    return absl::InternalError("gRPC did not create SSL server credentials");
  }
  tls->credentials_ = std::make_shared<CoreServerCredentials>(credentials);
  return tls;
}

TlsCredentials::~TlsCredentials() = default;

void TlsCredentials::Update(TlsPem pem) {
  absl::MutexLock lock(&mu_);
  pem_ = std::move(pem);
  ++generation_;
}

int64_t TlsCredentials::generation() const {
  absl::MutexLock lock(&mu_);
  return generation_;
}

grpc_ssl_certificate_config_reload_status TlsCredentials::FetchConfig(
    void* self, grpc_ssl_server_certificate_config** config) {
  auto* tls = static_cast<TlsCredentials*>(self);
  absl::MutexLock lock(&tls->mu_);
  if (tls->served_generation_ == tls->generation_) {
    return GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED;
  }
  const grpc_ssl_pem_key_cert_pair pair = {
      .private_key = tls->pem_.private_key.c_str(),
      .cert_chain = tls->pem_.cert_chain.c_str()};
  // gRPC 1.51 asserts that a fetched config has root certificates
  // (ssl_security_connector.cc: "config->pem_root_certs != nullptr") even
  // when no client certificate is requested. Without a client CA the
  // server's own chain stands in: with GRPC_SSL_DONT_REQUEST_CLIENT_
  // CERTIFICATE no certificate request is sent and nothing is verified
  // against it.
  const std::string& roots =
      tls->pem_.client_ca.empty() ? tls->pem_.cert_chain : tls->pem_.client_ca;
  // gRPC copies the strings and owns (and destroys) the config.
  *config = grpc_ssl_server_certificate_config_create(roots.c_str(), &pair, 1);
  if (*config == nullptr) return GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_FAIL;
  tls->served_generation_ = tls->generation_;
  return GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_NEW;
}

}  // namespace strata
