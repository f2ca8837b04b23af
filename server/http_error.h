// HttpError: the one place where Strata's absl::Status becomes what an
// OpenAI-compatible HTTP client sees: an HTTP status code and the body
//   {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
// (docs/api-http.md, "Errors", lists every case). The gRPC side has its own
// one place (server/status_util.h); both start from the same absl::Status, so
// a request refused over one protocol is refused with the same message over
// the other.
#ifndef STRATA_SERVER_HTTP_ERROR_H_
#define STRATA_SERVER_HTTP_ERROR_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace strata {

struct HttpError {
  int http_status = 500;
  std::string message;
  std::string type;   // "invalid_request_error", "rate_limit_error", ...
  std::string param;  // the JSON field at fault; "" = null
  std::string code;   // "model_not_found", "queue_full", ...; "" = null
  // Seconds for a Retry-After header (429 and 503); nullopt = none.
  std::optional<int> retry_after_seconds;

  // The error object as JSON text.
  std::string ToJson() const;
};

// Status -> HTTP status, type and code:
//   INVALID_ARGUMENT, OUT_OF_RANGE  400 invalid_request_error (param = field)
//   UNAUTHENTICATED                 401 authentication_error
//   PERMISSION_DENIED               403 permission_error
//   NOT_FOUND                       404 invalid_request_error
//   RESOURCE_EXHAUSTED              429 rate_limit_error, Retry-After
//   UNAVAILABLE                     503 service_unavailable, Retry-After
//   DEADLINE_EXCEEDED               504 timeout
//   CANCELLED                       499 (nginx's "client closed request")
//   anything else                   500 server_error
// Validator messages name proto paths ("sampling.temperature: ...",
// "prompt.token_ids[3]: ..."); they are rewritten to the JSON field a client
// sent ("temperature: ...", "prompt[3]: ...") and that field is the param.
HttpError HttpErrorFromStatus(const absl::Status& status);

// The JSON field of a proto path as the validator writes it.
std::string JsonFieldOfProtoPath(absl::string_view path);

// Errors the HTTP layer raises itself, before a Status exists.
HttpError NotFoundError(std::string message, std::string code);
HttpError BodyTooLargeError(size_t limit_bytes);
HttpError MethodNotAllowedError(absl::string_view method,
                                absl::string_view path);

}  // namespace strata

#endif  // STRATA_SERVER_HTTP_ERROR_H_
