// The same prompts at temperature 0 give the same token ids over the
// OpenAI-compatible HTTP API (return_token_ids) as over gRPC: both build the
// request with the same RequestBuilder and run on the same scheduler. Also
// the strata_api_requests_total split by protocol.
#include <grpcpp/grpcpp.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/v1/generation.grpc.pb.h"
#include "tests/integration/stratad_daemon.h"
#include "tests/testing/net_util.h"

namespace strata {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using strata::testing::StratadDaemon;
using Json = nlohmann::json;

// One POST over a fresh loopback connection; the status and the JSON body.
std::pair<int, Json> PostJson(int port, const std::string& target,
                              const Json& body) {
  boost::asio::io_context io;
  boost::asio::ip::tcp::resolver resolver(io);
  beast::tcp_stream stream(io);
  stream.connect(resolver.resolve("127.0.0.1", std::to_string(port)));
  http::request<http::string_body> request(http::verb::post, target, 11);
  request.set(http::field::host, "127.0.0.1");
  request.set(http::field::content_type, "application/json");
  request.body() = body.dump();
  request.prepare_payload();
  http::write(stream, request);
  beast::flat_buffer buffer;
  http::response<http::string_body> response;
  http::read(stream, buffer, response);
  return {static_cast<int>(response.result_int()),
          Json::parse(response.body(), nullptr, false)};
}

class HttpGrpcParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    http_port_ = strata::testing::FreePort();
    metrics_port_ = strata::testing::FreePort();
    auto daemon = StratadDaemon::Start(
        std::string(STRATA_SOURCE_DIR) + "/models/strata-recursive-tiny",
        {absl::StrCat("--http_port=", http_port_),
         absl::StrCat("--metrics_port=", metrics_port_)});
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    daemon_ = *std::move(daemon);
    stub_ = v1::Generation::NewStub(daemon_->channel());
  }

  // Complete or Chat, unary.
  template <typename Request>
  v1::CompletionResponse Grpc(const Request& request) {
    grpc::ClientContext context;
    v1::CompletionResponse response;
    grpc::Status status;
    if constexpr (std::is_same_v<Request, v1::ChatRequest>) {
      status = stub_->Chat(&context, request, &response);
    } else {
      status = stub_->Complete(&context, request, &response);
    }
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  int http_port_ = 0;
  int metrics_port_ = 0;
  std::unique_ptr<StratadDaemon> daemon_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

std::vector<int> Ids(const Json& choice) {
  return choice.at("token_ids").get<std::vector<int>>();
}

TEST_F(HttpGrpcParityTest, GreedyTokensAreTheSameOverBothProtocols) {
  for (const std::string prompt :
       {"Once upon a time", "The little dog ran", "Tom and Lily"}) {
    v1::CompletionRequest request;
    request.set_text(prompt);
    request.mutable_sampling()->set_temperature(0);
    request.mutable_sampling()->set_max_tokens(24);
    const v1::CompletionResponse grpc = Grpc(request);
    ASSERT_GT(grpc.token_ids_size(), 0);

    const auto [status, body] = PostJson(http_port_, "/v1/completions",
                                         {{"prompt", prompt},
                                          {"temperature", 0},
                                          {"max_tokens", 24},
                                          {"return_token_ids", true}});
    ASSERT_EQ(status, 200) << body.dump();
    const Json& choice = body["choices"][0];
    EXPECT_THAT(Ids(choice), ::testing::ElementsAreArray(grpc.token_ids()))
        << prompt;
    EXPECT_EQ(choice["text"], grpc.text());
    EXPECT_EQ(body["usage"]["prompt_tokens"], grpc.usage().prompt_tokens());
  }

  v1::ChatRequest chat;
  v1::ChatMessage* message = chat.add_messages();
  message->set_role("user");
  message->set_content("Tell me a story about a frog.");
  chat.mutable_sampling()->set_temperature(0);
  chat.mutable_sampling()->set_max_tokens(24);
  const v1::CompletionResponse grpc = Grpc(chat);
  const auto [status, body] = PostJson(
      http_port_, "/v1/chat/completions",
      {{"messages",
        {{{"role", "user"},
          {"content",
           {{{"type", "text"}, {"text", "Tell me a story about a frog."}}}}}}},
       {"temperature", 0},
       {"max_tokens", 24},
       {"return_token_ids", true}});
  ASSERT_EQ(status, 200) << body.dump();
  EXPECT_THAT(Ids(body["choices"][0]),
              ::testing::ElementsAreArray(grpc.token_ids()));
  EXPECT_EQ(body["choices"][0]["message"]["content"], grpc.text());

  // One request per protocol and endpoint above, counted apart.
  const std::string metrics = strata::testing::HttpBody(
      strata::testing::HttpGet(metrics_port_, "/metrics"));
  EXPECT_EQ(strata::testing::PrometheusValue(
                metrics,
                "strata_api_requests_total{endpoint=\"Complete\",protocol="
                "\"grpc\"}"),
            3);
  EXPECT_EQ(strata::testing::PrometheusValue(
                metrics,
                "strata_api_requests_total{endpoint=\"/v1/completions\","
                "protocol=\"http\"}"),
            3);
  EXPECT_EQ(strata::testing::PrometheusValue(
                metrics,
                "strata_api_requests_total{endpoint=\"/v1/chat/completions\","
                "protocol=\"http\"}"),
            1);
}

TEST_F(HttpGrpcParityTest, BothProtocolsRefuseWithTheSameMessage) {
  v1::CompletionRequest request;
  request.set_text("hi");
  request.mutable_sampling()->set_top_p(1.5f);
  grpc::ClientContext context;
  v1::CompletionResponse response;
  const grpc::Status grpc_status =
      stub_->Complete(&context, request, &response);
  ASSERT_EQ(grpc_status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  const auto [status, body] = PostJson(http_port_, "/v1/completions",
                                       {{"prompt", "hi"}, {"top_p", 1.5}});
  ASSERT_EQ(status, 400);
  // gRPC names the proto path, HTTP the JSON field; the rest is the same.
  EXPECT_EQ(
      absl::StrCat("sampling.", body["error"]["message"].get<std::string>()),
      grpc_status.error_message());
  EXPECT_EQ(body["error"]["param"], "top_p");
}

}  // namespace
}  // namespace strata
