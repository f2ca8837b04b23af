// Conversion between gRPC byte buffers and protobuf messages for the
// Generation service.
//
// Why the service takes raw bytes: proto3 refuses to parse a string field that
// is not valid UTF-8, and gRPC's callback handlers answer such a request with
// UNIMPLEMENTED and an empty message before any Strata code runs. Parsing here
// lets the server answer INVALID_ARGUMENT naming the field instead
// ("messages[1].content: invalid UTF-8 at byte 3"), like every other bad
// input.
#ifndef STRATA_SERVER_MESSAGE_CODEC_H_
#define STRATA_SERVER_MESSAGE_CODEC_H_

#include <google/protobuf/message.h>
#include <grpcpp/support/byte_buffer.h>

#include "absl/status/status.h"

namespace strata {

// Parses `buffer` into `message`. A request that does not parse is
// INVALID_ARGUMENT: naming the first string field that is not valid UTF-8
// (path as in the validator: "prompt.text", "sampling.stop[2]"), or saying the
// bytes are not a serialized message of that type.
absl::Status ParseRequest(const grpc::ByteBuffer& buffer,
                          google::protobuf::Message& message);

// Serializes `message` (whose strings Strata keeps valid UTF-8) into a new
// buffer.
grpc::ByteBuffer SerializeResponse(const google::protobuf::Message& message);

// Installs (once per process; later calls do nothing) a protobuf log handler
// that drops protobuf's own ERROR line about a string field with invalid
// UTF-8: that is a client's mistake, answered INVALID_ARGUMENT by
// ParseRequest, and one log line at ERROR per bad request would let any
// client flood the server's error log. Every other protobuf message is
// written to stderr as protobuf's default handler writes it.
void InstallProtobufLogFilter();

}  // namespace strata

#endif  // STRATA_SERVER_MESSAGE_CODEC_H_
