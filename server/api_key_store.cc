#include "server/api_key_store.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace strata {
namespace {

absl::Status LineError(absl::string_view source, int line,
                       absl::string_view problem) {
  return absl::InvalidArgumentError(
      absl::StrCat(source, " line ", line, ": ", problem));
}

}  // namespace

ApiKeyStore::Digest ApiKeyStore::Sha256(absl::string_view data) {
  Digest digest;
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(),
         digest.data());
  return digest;
}

absl::StatusOr<ApiKeyStore::Table> ApiKeyStore::ParseTable(
    absl::string_view text, absl::string_view source) {
  Table table;
  absl::flat_hash_set<std::string> names;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    if (const size_t hash = line.find('#'); hash != absl::string_view::npos) {
      line = line.substr(0, hash);
    }
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (fields.empty()) continue;
    if (fields.size() < 2) {
      return LineError(source, line_number, "expected NAME KEY [options]");
    }
    auto key = std::make_shared<ApiKey>();
    key->name = std::string(fields[0]);
    if (!names.insert(key->name).second) {
      return LineError(source, line_number,
                       absl::StrCat("duplicate name \"", key->name, "\""));
    }
    for (size_t i = 2; i < fields.size(); ++i) {
      absl::string_view option = fields[i];
      if (option == "admin") {
        key->admin = true;
      } else if (absl::ConsumePrefix(&option, "max_concurrency=")) {
        if (!absl::SimpleAtoi(option, &key->max_concurrency) ||
            key->max_concurrency < 1) {
          return LineError(source, line_number,
                           "max_concurrency must be a positive integer");
        }
      } else if (absl::ConsumePrefix(&option, "max_queued_tokens=")) {
        if (!absl::SimpleAtoi(option, &key->max_queued_tokens) ||
            key->max_queued_tokens < 1) {
          return LineError(source, line_number,
                           "max_queued_tokens must be a positive integer");
        }
      } else {
        return LineError(
            source, line_number,
            absl::StrCat("unknown option \"", option,
                         "\" (expected max_concurrency=N, "
                         "max_queued_tokens=N or admin)"));
      }
    }
    const Digest digest = Sha256(fields[1]);
    for (const Entry& other : table) {
      if (other.digest == digest) {
        return LineError(source, line_number,
                         absl::StrCat("the key of \"", key->name,
                                      "\" is also the key of \"",
                                      other.key->name, "\""));
      }
    }
    table.push_back(Entry{digest, std::move(key)});
  }
  if (table.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": no keys (every request would be refused)"));
  }
  return table;
}

absl::StatusOr<std::unique_ptr<ApiKeyStore>> ApiKeyStore::Parse(
    absl::string_view text, absl::string_view source) {
  absl::StatusOr<Table> table = ParseTable(text, source);
  if (!table.ok()) return table.status();
  std::unique_ptr<ApiKeyStore> store(new ApiKeyStore());
  absl::MutexLock lock(&store->mu_);
  store->table_ = std::make_shared<const Table>(*std::move(table));
  return store;
}

absl::StatusOr<std::unique_ptr<ApiKeyStore>> ApiKeyStore::Load(
    const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("api_keys_file: cannot read ",
                                            path));
  }
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<std::unique_ptr<ApiKeyStore>> store =
      Parse(text.str(), absl::StrCat("api_keys_file ", path));
  if (store.ok()) (*store)->path_ = path;
  return store;
}

absl::Status ApiKeyStore::Reload() {
  if (path_.empty()) return absl::OkStatus();
  absl::StatusOr<std::unique_ptr<ApiKeyStore>> fresh = Load(path_);
  if (!fresh.ok()) return fresh.status();
  std::shared_ptr<const Table> table;
  {
    absl::MutexLock lock(&(*fresh)->mu_);
    table = (*fresh)->table_;
  }
  absl::MutexLock lock(&mu_);
  table_ = std::move(table);
  return absl::OkStatus();
}

int32_t ApiKeyStore::num_keys() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int32_t>(table_->size());
}

absl::StatusOr<std::shared_ptr<const ApiKey>> ApiKeyStore::Authenticate(
    absl::string_view authorization) const {
  absl::string_view value = absl::StripAsciiWhitespace(authorization);
  if (value.empty()) {
    return absl::UnauthenticatedError(
        "no API key: send the header \"authorization: Bearer KEY\"");
  }
  constexpr absl::string_view kScheme = "bearer ";
  if (value.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    return absl::UnauthenticatedError(
        "the authorization header must be \"Bearer KEY\"");
  }
  const Digest presented =
      Sha256(absl::StripAsciiWhitespace(value.substr(kScheme.size())));
  std::shared_ptr<const Table> table;
  {
    absl::MutexLock lock(&mu_);
    table = table_;
  }
  // Every entry is compared, whichever matches: the time taken does not
  // depend on which key (or how much of one) was right.
  std::shared_ptr<const ApiKey> match;
  for (const Entry& entry : *table) {
    const bool equal = CRYPTO_memcmp(entry.digest.data(), presented.data(),
                                     presented.size()) == 0;
    if (equal) match = entry.key;
  }
  if (match == nullptr) return absl::UnauthenticatedError("unknown API key");
  return match;
}

}  // namespace strata
