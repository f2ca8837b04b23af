#include "server/http_error.h"

#include <nlohmann/json.hpp>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace strata {
namespace {

// The status code nginx logs when the client closed the connection; the
// client never reads it, but logs and metrics of proxies do.
constexpr int kClientClosedRequest = 499;

// Every code but INVALID_ARGUMENT (which also names the field).
struct StatusMapping {
  absl::StatusCode status;
  int http_status;
  const char* type;
  const char* code;  // "" = null
  bool retry_after;  // Retry-After: 1
};

constexpr StatusMapping kMappings[] = {
    {absl::StatusCode::kUnauthenticated, 401, "authentication_error",
     "invalid_api_key", false},
    {absl::StatusCode::kPermissionDenied, 403, "permission_error", "", false},
    {absl::StatusCode::kNotFound, 404, "invalid_request_error", "not_found",
     false},
    {absl::StatusCode::kResourceExhausted, 429, "rate_limit_error",
     "queue_full", true},
    {absl::StatusCode::kUnavailable, 503, "service_unavailable", "unavailable",
     true},
    {absl::StatusCode::kDeadlineExceeded, 504, "timeout", "deadline_exceeded",
     false},
    {absl::StatusCode::kCancelled, kClientClosedRequest, "cancelled", "",
     false},
};
constexpr StatusMapping kServerError = {
    absl::StatusCode::kInternal, 500, "server_error", "internal_error", false};

const StatusMapping& MappingOf(absl::StatusCode code) {
  for (const StatusMapping& mapping : kMappings) {
    if (mapping.status == code) return mapping;
  }
  return kServerError;
}

}  // namespace

std::string JsonFieldOfProtoPath(absl::string_view path) {
  // SamplingParams fields are top-level body fields in the OpenAI API.
  absl::ConsumePrefix(&path, "sampling.");
  // The prompt oneof: "prompt.text" is the string prompt, and
  // "prompt.token_ids[i]" the i-th id of a token prompt.
  if (absl::ConsumePrefix(&path, "prompt.text") ||
      absl::ConsumePrefix(&path, "prompt.token_ids")) {
    return absl::StrCat("prompt", path);
  }
  return std::string(path);
}

std::string HttpError::ToJson() const {
  nlohmann::json error = {{"message", message},
                          {"type", type},
                          {"param", nullptr},
                          {"code", nullptr}};
  if (!param.empty()) error["param"] = param;
  if (!code.empty()) error["code"] = code;
  return nlohmann::json{{"error", std::move(error)}}.dump(
      -1, ' ', false, nlohmann::json::error_handler_t::replace);
}

HttpError HttpErrorFromStatus(const absl::Status& status) {
  HttpError error;
  error.message = std::string(status.message());
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange: {
      error.http_status = 400;
      error.type = "invalid_request_error";
      error.code = "invalid_value";
      // "field: problem" -> the JSON field's name, in param and message.
      const size_t colon = error.message.find(": ");
      if (colon != std::string::npos &&
          error.message.find(' ') >= colon) {  // a path has no spaces
        error.param = JsonFieldOfProtoPath(
            absl::string_view(error.message).substr(0, colon));
        error.message = absl::StrCat(error.param, error.message.substr(colon));
        // "prompt[3]" -> "prompt": param names the field, not the element.
        error.param = error.param.substr(0, error.param.find('['));
      }
      break;
    }
    default: {
      const StatusMapping& mapping = MappingOf(status.code());
      error.http_status = mapping.http_status;
      error.type = mapping.type;
      error.code = mapping.code;
      if (mapping.retry_after) error.retry_after_seconds = 1;
      break;
    }
  }
  return error;
}

namespace {

HttpError MakeError(int http_status, std::string message, std::string code) {
  HttpError error;
  error.http_status = http_status;
  error.message = std::move(message);
  error.type = "invalid_request_error";
  error.code = std::move(code);
  return error;
}

}  // namespace

HttpError NotFoundError(std::string message, std::string code) {
  return MakeError(404, std::move(message), std::move(code));
}

HttpError BodyTooLargeError(size_t limit_bytes) {
  return MakeError(413,
                   absl::StrCat("the request body exceeds the limit of ",
                                limit_bytes, " bytes (--http_max_body_bytes)"),
                   "request_too_large");
}

HttpError MethodNotAllowedError(absl::string_view method,
                                absl::string_view path) {
  return MakeError(405, absl::StrCat(method, " is not allowed on ", path),
                   "method_not_allowed");
}

}  // namespace strata
