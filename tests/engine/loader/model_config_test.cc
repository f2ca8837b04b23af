#include "engine/loader/model_config.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::string kDataDir = std::string(STRATA_SOURCE_DIR) + "/tests/data";

// A minimal valid config; tests splice extra keys in after the first brace.
constexpr char kMinimal[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
  "num_hidden_layers": 2, "num_attention_heads": 4})";

std::string With(const std::string& extra) {
  return absl::StrCat("{", extra, ",", std::string(kMinimal).substr(1));
}

absl::Status ParseError(const std::string& json) {
  return ModelConfig::FromJson(json, "config.json").status();
}

TEST(ModelConfigTest, ParsesTinyLlamaFixture) {
  absl::StatusOr<ModelConfig> config =
      ModelConfig::FromFile(kDataDir + "/tiny-llama/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "LlamaForCausalLM");
  EXPECT_EQ(config->model_type, "llama");
  EXPECT_EQ(config->vocab_size, 1808);
  EXPECT_EQ(config->hidden_size, 64);
  EXPECT_EQ(config->intermediate_size, 160);
  EXPECT_EQ(config->num_hidden_layers, 2);
  EXPECT_EQ(config->num_attention_heads, 4);
  EXPECT_EQ(config->num_key_value_heads, 2);
  EXPECT_EQ(config->head_dim, 16);
  EXPECT_EQ(config->max_position_embeddings, 512);
  EXPECT_FLOAT_EQ(config->rms_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(config->rope_theta, 500000.0f);
  ASSERT_TRUE(config->rope_scaling.has_value());
  EXPECT_EQ(config->rope_scaling->rope_type, "llama3");
  EXPECT_FLOAT_EQ(config->rope_scaling->factor, 8.0f);
  EXPECT_FLOAT_EQ(config->rope_scaling->low_freq_factor, 1.0f);
  EXPECT_FLOAT_EQ(config->rope_scaling->high_freq_factor, 4.0f);
  EXPECT_EQ(config->rope_scaling->original_max_position_embeddings, 64);
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_FALSE(config->attention_bias);
  EXPECT_EQ(config->torch_dtype, "float32");
  EXPECT_EQ(config->bos_token_id, 1792);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(1793, 1801));
  EXPECT_THAT(config->DebugString(),
              AllOf(HasSubstr("LlamaForCausalLM"), HasSubstr("llama3")));
}

TEST(ModelConfigTest, ParsesTinyQwen2Fixture) {
  absl::StatusOr<ModelConfig> config =
      ModelConfig::FromFile(kDataDir + "/tiny-qwen2/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "Qwen2ForCausalLM");
  EXPECT_EQ(config->model_type, "qwen2");
  EXPECT_EQ(config->vocab_size, 1795);
  EXPECT_EQ(config->num_key_value_heads, 2);
  EXPECT_EQ(config->head_dim, 16);
  EXPECT_FALSE(config->rope_scaling.has_value());  // "rope_scaling": null
  EXPECT_TRUE(config->tie_word_embeddings);
  EXPECT_TRUE(config->attention_bias);  // implied by the architecture
  EXPECT_EQ(config->torch_dtype, "bfloat16");
  EXPECT_EQ(config->bos_token_id, 1792);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(1794));  // a plain int
}

TEST(ModelConfigTest, Defaults) {
  absl::StatusOr<ModelConfig> config =
      ModelConfig::FromJson(kMinimal, "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->num_key_value_heads, 4);
  EXPECT_EQ(config->head_dim, 8);
  EXPECT_EQ(config->max_position_embeddings, 2048);
  EXPECT_FLOAT_EQ(config->rms_norm_eps, 1e-6f);
  EXPECT_FLOAT_EQ(config->rope_theta, 10000.0f);
  EXPECT_FALSE(config->rope_scaling.has_value());
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_FALSE(config->attention_bias);
  EXPECT_FALSE(config->bos_token_id.has_value());
  EXPECT_TRUE(config->eos_token_ids.empty());
  EXPECT_TRUE(config->torch_dtype.empty());
}

TEST(ModelConfigTest, NullMeansUnset) {
  absl::StatusOr<ModelConfig> config = ModelConfig::FromJson(
      With(R"("head_dim": null, "num_key_value_heads": null,
              "eos_token_id": null, "bos_token_id": null)"),
      "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->head_dim, 8);
  EXPECT_EQ(config->num_key_value_heads, 4);
}

TEST(ModelConfigTest, ExplicitHeadDimNeedNotDivideHidden) {
  absl::StatusOr<ModelConfig> config = ModelConfig::FromJson(
      absl::StrReplaceAll(With(R"("head_dim": 16)"),
                          {{R"("hidden_size": 32)", R"("hidden_size": 30)"}}),
      "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->head_dim, 16);
}

TEST(ModelConfigTest, ArchitectureFromModelType) {
  absl::StatusOr<ModelConfig> config = ModelConfig::FromJson(
      R"({"model_type": "mistral", "vocab_size": 10, "hidden_size": 8,
          "intermediate_size": 8, "num_hidden_layers": 1,
          "num_attention_heads": 2})",
      "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "MistralForCausalLM");
  EXPECT_FALSE(config->attention_bias);
}

TEST(ModelConfigTest, Qwen2BiasCanBeTurnedOff) {
  absl::StatusOr<ModelConfig> config = ModelConfig::FromJson(
      absl::StrReplaceAll(With(R"("attention_bias": false)"),
                          {{"LlamaForCausalLM", "Qwen2ForCausalLM"}}),
      "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->attention_bias);
}

TEST(ModelConfigTest, RopeScalingVariants) {
  // "type" instead of "rope_type", and defaults for the other fields.
  absl::StatusOr<ModelConfig> config = ModelConfig::FromJson(
      With(R"("rope_scaling": {"type": "llama3", "factor": 32.0})"),
      "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->rope_scaling.has_value());
  EXPECT_FLOAT_EQ(config->rope_scaling->factor, 32.0f);
  EXPECT_EQ(config->rope_scaling->original_max_position_embeddings, 8192);

  config = ModelConfig::FromJson(
      With(R"("rope_scaling": {"rope_type": "default"})"), "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->rope_scaling.has_value());

  absl::Status status =
      ParseError(With(R"("rope_scaling": {"rope_type": "yarn", "factor": 4})"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.ToString(),
              AllOf(HasSubstr("config.json"),
                    HasSubstr("rope_scaling.rope_type 'yarn'")));

  status = ParseError(
      With(R"("rope_scaling": {"rope_type": "llama3", "factor": "big"})"));
  EXPECT_THAT(status.ToString(), HasSubstr("rope_scaling.factor"));
  status = ParseError(With(
      R"("rope_scaling": {"rope_type": "llama3", "low_freq_factor": 4,
                          "high_freq_factor": 4})"));
  EXPECT_THAT(status.ToString(), HasSubstr("rope_scaling.high_freq_factor"));
}

TEST(ModelConfigTest, UnsupportedArchitectureIsUnimplemented) {
  absl::Status status = ParseError(
      absl::StrReplaceAll(kMinimal, {{"LlamaForCausalLM", "GPT2LMHeadModel"}}));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(status.ToString(),
              AllOf(HasSubstr("config.json"), HasSubstr("GPT2LMHeadModel")));

  status = ParseError(With(R"("hidden_act": "gelu")"));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(status.ToString(), HasSubstr("hidden_act 'gelu'"));
  status = ParseError(With(R"("mlp_bias": true)"));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
}

TEST(ModelConfigTest, KvHeadsMustDivideHeads) {
  absl::Status status = ParseError(With(R"("num_key_value_heads": 3)"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "config.json: num_key_value_heads (3) must divide "
            "num_attention_heads (4)");
}

TEST(ModelConfigTest, BadValuesAreNamed) {
  struct Case {
    std::string json;
    std::string expected;
  };
  const Case cases[] = {
      {absl::StrReplaceAll(kMinimal, {{R"("hidden_size": 32,)", ""}}),
       "config.json: missing required key hidden_size"},
      {absl::StrReplaceAll(kMinimal,
                           {{R"("vocab_size": 100)", R"("vocab_size": -5)"}}),
       "config.json: vocab_size (-5) must be positive"},
      {absl::StrReplaceAll(
           kMinimal, {{R"("vocab_size": 100)", R"("vocab_size": "100")"}}),
       "vocab_size must be an integer"},
      {absl::StrReplaceAll(kMinimal, {{R"("num_hidden_layers": 2)",
                                       R"("num_hidden_layers": 0)"}}),
       "num_hidden_layers (0) must be positive"},
      {absl::StrReplaceAll(kMinimal, {{R"("num_hidden_layers": 2)",
                                       R"("num_hidden_layers": 1e3)"}}),
       "num_hidden_layers must be an integer"},
      {absl::StrReplaceAll(kMinimal, {{R"("vocab_size": 100)",
                                       R"("vocab_size": 99999999999)"}}),
       "vocab_size (99999999999) is out of range"},
      {absl::StrReplaceAll(kMinimal,
                           {{R"("hidden_size": 32)", R"("hidden_size": 30)"}}),
       "num_attention_heads (4) must divide hidden_size (30)"},
      {With(R"("head_dim": 7)"), "head_dim (7) must be even"},
      {With(R"("rms_norm_eps": 0)"), "rms_norm_eps (0) must be positive"},
      {With(R"("rope_theta": -1)"), "rope_theta (-1) must be positive"},
      {With(R"("tie_word_embeddings": "yes")"),
       "tie_word_embeddings must be true or false"},
      {With(R"("torch_dtype": "int8")"), "torch_dtype 'int8'"},
      {With(R"("eos_token_id": [1, -2])"), "eos_token_id"},
      {With(R"("bos_token_id": "x")"), "bos_token_id"},
      {absl::StrReplaceAll(kMinimal, {{R"(["LlamaForCausalLM"])", "[]"}}),
       "architectures must be a non-empty list"},
      {"{", "config.json: not valid JSON"},
      {"[1]", "config.json: expected a JSON object"},
  };
  for (const Case& c : cases) {
    absl::Status status = ParseError(c.json);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.json;
    EXPECT_THAT(status.ToString(), HasSubstr(c.expected)) << c.json;
    EXPECT_THAT(status.ToString(), HasSubstr("config.json")) << c.json;
  }
}

TEST(ModelConfigTest, MissingFileIsNotFound) {
  absl::StatusOr<ModelConfig> config =
      ModelConfig::FromFile(kDataDir + "/does-not-exist/config.json");
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(config.status().ToString(), HasSubstr("does-not-exist"));
}

}  // namespace
}  // namespace strata
