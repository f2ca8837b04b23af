#include "server/message_codec.h"

#include <grpcpp/support/slice.h>

#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "strata/v1/generation.pb.h"

namespace strata {
namespace {

grpc::ByteBuffer BufferOf(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

// proto3 C++ serializes a string with invalid UTF-8 (it only logs), which is
// how a careless client puts one on the wire.
grpc::ByteBuffer WireOf(const google::protobuf::Message& message) {
  return BufferOf(message.SerializeAsString());
}

TEST(MessageCodecTest, RoundTripsAValidRequest) {
  v1::CompletionRequest sent;
  sent.set_text("héllo 🙂");
  sent.mutable_sampling()->set_temperature(0.5f);
  sent.mutable_sampling()->add_stop(std::string("\n"));
  v1::CompletionRequest parsed;
  ASSERT_TRUE(ParseRequest(WireOf(sent), parsed).ok());
  EXPECT_EQ(parsed.SerializeAsString(), sent.SerializeAsString());
}

TEST(MessageCodecTest, EmptyPayloadIsTheDefaultMessage) {
  v1::GetModelInfoRequest parsed;
  EXPECT_TRUE(ParseRequest(grpc::ByteBuffer(), parsed).ok());
}

TEST(MessageCodecTest, NamesTheTopLevelStringWithInvalidUtf8) {
  v1::CompletionRequest sent;
  sent.set_text("ab\xFF");
  v1::CompletionRequest parsed;
  const absl::Status status = ParseRequest(WireOf(sent), parsed);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "prompt.text: invalid UTF-8 at byte 2");
}

TEST(MessageCodecTest, NamesNestedAndRepeatedFields) {
  v1::CompletionRequest completion;
  completion.set_text("fine");
  completion.mutable_sampling()->add_stop(std::string("a"));
  completion.mutable_sampling()->add_stop(std::string("b"));
  completion.mutable_sampling()->add_stop("\xE2\x82");
  v1::CompletionRequest parsed_completion;
  EXPECT_EQ(ParseRequest(WireOf(completion), parsed_completion).message(),
            "sampling.stop[2]: invalid UTF-8 at byte 0");

  v1::ChatRequest chat;
  chat.add_messages()->set_content("ok");
  v1::ChatMessage* bad = chat.add_messages();
  bad->set_role("user");
  bad->set_content("x\xC0\xAF");
  v1::ChatRequest parsed_chat;
  const absl::Status status = ParseRequest(WireOf(chat), parsed_chat);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "messages[1].content: invalid UTF-8 at byte 1");
}

TEST(MessageCodecTest, GarbageIsInvalidArgument) {
  v1::CompletionRequest parsed;
  const absl::Status status = ParseRequest(BufferOf("\xFF\xFF\xFF"), parsed);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "request: not a serialized strata.v1.CompletionRequest message");
}

TEST(MessageCodecTest, SerializesResponses) {
  v1::TokenizeResponse response;
  response.add_token_ids(7);
  response.add_tokens("seven");
  v1::TokenizeResponse parsed;
  ASSERT_TRUE(ParseRequest(SerializeResponse(response), parsed).ok());
  EXPECT_EQ(parsed.tokens(0), "seven");
}

// A client's invalid UTF-8 is answered INVALID_ARGUMENT; it must not also
// write protobuf's ERROR line to the server's log, once per request.
TEST(MessageCodecTest, InvalidUtf8WritesNoErrorLogLine) {
  InstallProtobufLogFilter();
  v1::CompletionRequest sent;
  sent.set_text("ab\xFF");
  const grpc::ByteBuffer wire = WireOf(sent);
  ::testing::internal::CaptureStderr();
  v1::CompletionRequest parsed;
  const absl::Status status = ParseRequest(wire, parsed);
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(log.find("ERROR"), std::string::npos) << log;
}

}  // namespace
}  // namespace strata
