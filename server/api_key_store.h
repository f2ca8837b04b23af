// ApiKeyStore: the API keys stratad accepts (--api_keys_file), and the one
// authenticator every front end (gRPC metadata, the HTTP Authorization
// header) asks.
//
// File format, one key per line, `#` starts a comment:
//
//   NAME KEY [max_concurrency=N] [max_queued_tokens=N] [admin]
//
// NAME is what metrics and logs show (never the key); KEY is the secret a
// client sends as `authorization: Bearer KEY`. Only SHA-256 digests of the
// keys are kept in memory, and a presented key is compared with every
// stored digest in constant time (CRYPTO_memcmp, no early exit), so neither
// a memory dump nor response timing reveals a key.
//
// Threading: Authenticate may be called from any number of threads at once;
// Reload (SIGHUP) swaps the whole table atomically, so a call sees either the
// old keys or the new ones.
#ifndef STRATA_SERVER_API_KEY_STORE_H_
#define STRATA_SERVER_API_KEY_STORE_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace strata {

// What a key grants, as the scheduler enforces it (0 = no limit).
struct ApiKey {
  std::string name;
  int32_t max_concurrency = 0;    // requests queued or running at once
  int64_t max_queued_tokens = 0;  // prompt tokens waiting for admission
  // priority counts across keys (not only among the key's own requests).
  bool admin = false;
};

class ApiKeyStore {
 public:
  using Digest = std::array<unsigned char, 32>;  // SHA-256

  // Parses a keys file's text. INVALID_ARGUMENT naming the line for a
  // malformed line, a duplicate name or key, or no key at all.
  static absl::StatusOr<std::unique_ptr<ApiKeyStore>> Parse(
      absl::string_view text, absl::string_view source = "api keys");
  // Reads and parses `path`.
  static absl::StatusOr<std::unique_ptr<ApiKeyStore>> Load(
      const std::string& path);

  // Re-reads the file Load read. On error the current keys stay.
  absl::Status Reload();

  // The key of an `authorization` header value ("Bearer KEY", scheme case
  // insensitive). UNAUTHENTICATED when the value is missing, malformed or
  // names no key; the message never repeats what was sent.
  absl::StatusOr<std::shared_ptr<const ApiKey>> Authenticate(
      absl::string_view authorization) const;

  int32_t num_keys() const;

  static Digest Sha256(absl::string_view data);

 private:
  struct Entry {
    Digest digest;
    std::shared_ptr<const ApiKey> key;
  };
  using Table = std::vector<Entry>;

  static absl::StatusOr<Table> ParseTable(absl::string_view text,
                                          absl::string_view source);

  std::string path_;  // "" when parsed from text
  mutable absl::Mutex mu_;
  std::shared_ptr<const Table> table_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata

#endif  // STRATA_SERVER_API_KEY_STORE_H_
