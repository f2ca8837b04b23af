// Arbitrary CompletionRequest / ChatRequest bytes through what the server
// runs on every call: protobuf parsing, RequestValidator and RequestBuilder
// (tokenization, chat templates, sampling checks). The first byte picks the
// message type; the rest is its wire encoding. Any input must end in a
// request or an INVALID_ARGUMENT (never a crash, a leak or a hang).
#include <cstddef>
#include <cstdint>

#include "common/logging.h"
#include "server/request_builder.h"
#include "strata/v1/generation.pb.h"
#include "tests/fuzz/fuzz_util.h"
#include "text/chat_template.h"

namespace {

const strata::RequestBuilder& Builder() {
  static const strata::RequestBuilder* builder = [] {
    const strata::Tokenizer& tokenizer =
        strata::fuzz::FixtureTokenizer("tiny-llama");
    auto created = strata::RequestBuilder::Create(
        {.tokenizer = &tokenizer,
         .vocab_size = tokenizer.vocab_size(),
         .max_model_len = 512,
         .num_loops = 4,
         .default_chat_format = strata::ChatFormat::kLlama3});
    STRATA_CHECK(created.ok()) << created.status();
    return created->release();
  }();
  return *builder;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool chat = data[0] & 1;
  ++data;
  --size;
  absl::StatusOr<strata::PreparedRequest> prepared;
  if (chat) {
    strata::v1::ChatRequest request;
    if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
    prepared = Builder().BuildChat(request);
  } else {
    strata::v1::CompletionRequest request;
    if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
    prepared = Builder().BuildCompletion(request);
  }
  // Every refusal is a client mistake, named as such.
  STRATA_CHECK(prepared.ok() ||
               prepared.status().code() ==
                   absl::StatusCode::kInvalidArgument ||
               prepared.status().code() == absl::StatusCode::kOutOfRange)
      << prepared.status();
  return 0;
}
