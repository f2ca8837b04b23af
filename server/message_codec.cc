#include "server/message_codec.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/unknown_field_set.h>
#include <google/protobuf/stubs/logging.h>
#include <grpcpp/support/slice.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "text/utf8.h"

namespace strata {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::UnknownField;
using google::protobuf::UnknownFieldSet;

// The name a field is reported by: its oneof's name first when it has one
// ("prompt.text"), then "[i]" for the i-th element of a repeated field.
std::string FieldPath(std::string_view prefix, const FieldDescriptor& field,
                      int index) {
  std::string path(prefix);
  if (!path.empty()) path += '.';
  if (const auto* oneof = field.real_containing_oneof(); oneof != nullptr) {
    absl::StrAppend(&path, oneof->name(), ".");
  }
  path += field.name();
  if (field.is_repeated()) absl::StrAppend(&path, "[", index, "]");
  return path;
}

// Walks the wire form of a message of type `type` without protobuf's UTF-8
// check and returns the first string field holding invalid UTF-8.
std::optional<absl::Status> FindInvalidString(std::string_view bytes,
                                              const Descriptor& type,
                                              std::string_view prefix) {
  UnknownFieldSet fields;
  if (!fields.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return std::nullopt;
  }
  absl::flat_hash_map<int, int> occurrences;  // field number -> seen so far
  for (int i = 0; i < fields.field_count(); ++i) {
    const UnknownField& wire = fields.field(i);
    if (wire.type() != UnknownField::TYPE_LENGTH_DELIMITED) continue;
    const FieldDescriptor* field = type.FindFieldByNumber(wire.number());
    if (field == nullptr) continue;
    const int index = occurrences[wire.number()]++;
    const std::string& value = wire.length_delimited();
    if (field->type() == FieldDescriptor::TYPE_STRING) {
      if (std::optional<size_t> at = FindInvalidUtf8(value); at.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat(
            FieldPath(prefix, *field, index), ": invalid UTF-8 at byte ", *at));
      }
    } else if (field->type() == FieldDescriptor::TYPE_MESSAGE) {
      std::optional<absl::Status> found = FindInvalidString(
          value, *field->message_type(), FieldPath(prefix, *field, index));
      if (found.has_value()) return found;
    }
  }
  return std::nullopt;
}

}  // namespace

absl::Status ParseRequest(const grpc::ByteBuffer& buffer,
                          google::protobuf::Message& message) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (buffer.Valid()) {
    if (!buffer.Dump(&slices).ok()) {
      return absl::InvalidArgumentError("request: unreadable payload");
    }
    bytes.reserve(buffer.Length());
    for (const grpc::Slice& slice : slices) {
      bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    }
  }
  if (message.ParseFromString(bytes)) return absl::OkStatus();
  message.Clear();
  const Descriptor& type = *message.GetDescriptor();
  if (std::optional<absl::Status> found = FindInvalidString(bytes, type, "");
      found.has_value()) {
    return *found;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("request: not a serialized ", type.full_name(), " message"));
}

grpc::ByteBuffer SerializeResponse(const google::protobuf::Message& message) {
  const std::string bytes = message.SerializeAsString();
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

namespace {

void FilterProtobufLog(google::protobuf::LogLevel level, const char* filename,
                       int line, const std::string& message) {
  if (absl::StrContains(message, "invalid UTF-8 data")) return;
  static const char* const kLevelNames[] = {"INFO", "WARNING", "ERROR",
                                            "FATAL"};
  const int index = std::clamp(static_cast<int>(level), 0, 3);
  std::fprintf(stderr, "[libprotobuf %s %s:%d] %s\n", kLevelNames[index],
               filename, line, message.c_str());
  std::fflush(stderr);
}

}  // namespace

void InstallProtobufLogFilter() {
  static const bool installed = [] {
    google::protobuf::SetLogHandler(&FilterProtobufLog);
    return true;
  }();
  (void)installed;
}

}  // namespace strata
