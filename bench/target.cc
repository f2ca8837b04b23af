#include "bench/target.h"

#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace strata::bench {
namespace {

bool IsLoopbackIpv4(absl::string_view host) {
  const std::vector<absl::string_view> parts = absl::StrSplit(host, '.');
  if (parts.size() != 4) return false;
  for (absl::string_view part : parts) {
    int octet = 0;
    if (part.empty() || !absl::SimpleAtoi(part, &octet) || octet < 0 ||
        octet > 255) {
      return false;
    }
  }
  return parts[0] == "127";
}

bool IsLoopbackHost(absl::string_view host) {
  const std::string lower = absl::AsciiStrToLower(host);
  if (lower == "localhost" || lower == "ip6-localhost" ||
      absl::EndsWith(lower, ".localhost")) {
    return true;
  }
  if (lower == "::1" || lower == "0:0:0:0:0:0:0:1") return true;
  if (absl::StartsWith(lower, "::ffff:")) {
    return IsLoopbackIpv4(absl::string_view(lower).substr(7));
  }
  return IsLoopbackIpv4(lower);
}

// Splits "host:port" / "[v6]:port" / "host" into the host part; empty when
// malformed.
std::string HostOf(absl::string_view authority) {
  if (absl::StartsWith(authority, "[")) {
    const size_t close = authority.find(']');
    if (close == absl::string_view::npos) return "";
    return std::string(authority.substr(1, close - 1));
  }
  const size_t colon = authority.find(':');
  if (colon == absl::string_view::npos) return std::string(authority);
  if (authority.find(':', colon + 1) != absl::string_view::npos) {
    return std::string(authority);  // a bare IPv6 literal without a port
  }
  return std::string(authority.substr(0, colon));
}

}  // namespace

bool IsLoopbackTarget(const std::string& target) {
  absl::string_view rest = target;
  if (absl::StartsWith(rest, "unix:") ||
      absl::StartsWith(rest, "unix-abstract:")) {
    return true;
  }
  for (absl::string_view scheme : {"dns:///", "dns:", "ipv4:", "ipv6:"}) {
    if (absl::ConsumePrefix(&rest, scheme)) break;
  }
  if (rest.empty()) return false;
  // "ipv4:a:p,b:p" lists several addresses; all must be local.
  for (absl::string_view authority : absl::StrSplit(rest, ',')) {
    const std::string host = HostOf(authority);
    if (host.empty() || !IsLoopbackHost(host)) return false;
  }
  return true;
}

absl::Status CheckTarget(const std::string& target, bool allow_remote) {
  if (target.empty()) return absl::InvalidArgumentError("empty target");
  if (allow_remote || IsLoopbackTarget(target)) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      "target '", target,
      "' is not a loopback address; strata-bench only loads daemons on this "
      "machine unless --allow_remote_target is given"));
}

}  // namespace strata::bench
