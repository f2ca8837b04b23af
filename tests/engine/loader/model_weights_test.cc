#include "engine/loader/model_weights.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

const std::string kDataDir = std::string(STRATA_SOURCE_DIR) + "/tests/data";

struct Loaded {
  ModelConfig config;
  std::unique_ptr<Checkpoint> checkpoint;
};

Loaded OpenFixture(const std::string& name) {
  const std::string dir = kDataDir + "/" + name;
  absl::StatusOr<ModelConfig> config =
      ModelConfig::FromFile(dir + "/config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(dir);
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
  return {*config, *std::move(checkpoint)};
}

// Expects `field` to equal the named checkpoint tensor converted to f32.
void ExpectTensor(const Checkpoint& checkpoint, const std::string& name,
                  const std::vector<float>& field) {
  const TensorView* view = checkpoint.Find(name);
  ASSERT_NE(view, nullptr) << name;
  absl::StatusOr<std::vector<float>> expected =
      checkpoint.LoadF32(name, view->shape);
  ASSERT_TRUE(expected.ok()) << expected.status();
  EXPECT_EQ(field, *expected) << name;
}

void ExpectMatchesCheckpoint(const ModelWeights& w, const Checkpoint& c,
                             const ModelConfig& config) {
  ExpectTensor(c, "model.embed_tokens.weight", w.embed_tokens);
  ExpectTensor(c, "model.norm.weight", w.final_norm);
  if (!config.tie_word_embeddings) ExpectTensor(c, "lm_head.weight", w.lm_head);
  ASSERT_EQ(w.layers.size(), static_cast<size_t>(config.num_hidden_layers));
  for (int i = 0; i < config.num_hidden_layers; ++i) {
    const LayerWeights& l = w.layers[i];
    const std::string p = absl::StrCat("model.layers.", i, ".");
    ExpectTensor(c, p + "input_layernorm.weight", l.input_norm);
    ExpectTensor(c, p + "self_attn.q_proj.weight", l.q_proj);
    ExpectTensor(c, p + "self_attn.k_proj.weight", l.k_proj);
    ExpectTensor(c, p + "self_attn.v_proj.weight", l.v_proj);
    ExpectTensor(c, p + "self_attn.o_proj.weight", l.o_proj);
    ExpectTensor(c, p + "post_attention_layernorm.weight",
                 l.post_attention_norm);
    ExpectTensor(c, p + "mlp.gate_proj.weight", l.gate_proj);
    ExpectTensor(c, p + "mlp.up_proj.weight", l.up_proj);
    ExpectTensor(c, p + "mlp.down_proj.weight", l.down_proj);
    if (config.attention_bias) {
      ExpectTensor(c, p + "self_attn.q_proj.bias", l.q_bias);
      ExpectTensor(c, p + "self_attn.k_proj.bias", l.k_bias);
      ExpectTensor(c, p + "self_attn.v_proj.bias", l.v_bias);
    }
  }
}

TEST(ModelWeightsTest, LoadsTinyLlama) {
  Loaded m = OpenFixture("tiny-llama");
  ASSERT_NE(m.checkpoint, nullptr);
  absl::StatusOr<ModelWeights> weights =
      ModelWeights::Load(*m.checkpoint, m.config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelWeights& w = *weights;
  EXPECT_EQ(w.embed_tokens.size(), 1808u * 64);
  EXPECT_EQ(w.lm_head.size(), 1808u * 64);
  EXPECT_EQ(w.final_norm.size(), 64u);
  ASSERT_EQ(w.layers.size(), 2u);
  EXPECT_EQ(w.layers[0].q_proj.size(), 64u * 64);
  EXPECT_EQ(w.layers[0].k_proj.size(), 32u * 64);
  EXPECT_EQ(w.layers[0].o_proj.size(), 64u * 64);
  EXPECT_EQ(w.layers[1].gate_proj.size(), 160u * 64);
  EXPECT_EQ(w.layers[1].down_proj.size(), 64u * 160);
  EXPECT_TRUE(w.layers[0].q_bias.empty());
  EXPECT_TRUE(w.layers[0].k_bias.empty());
  EXPECT_TRUE(w.layers[0].v_bias.empty());
  EXPECT_NE(w.embed_tokens, w.lm_head);  // untied
  ExpectMatchesCheckpoint(w, *m.checkpoint, m.config);
}

TEST(ModelWeightsTest, LoadsTinyQwen2ShardedBf16Tied) {
  Loaded m = OpenFixture("tiny-qwen2");
  ASSERT_NE(m.checkpoint, nullptr);
  absl::StatusOr<ModelWeights> weights =
      ModelWeights::Load(*m.checkpoint, m.config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelWeights& w = *weights;
  EXPECT_EQ(w.embed_tokens.size(), 1795u * 64);
  EXPECT_TRUE(w.lm_head.empty());  // tied: use embed_tokens
  ASSERT_EQ(w.layers.size(), 2u);
  EXPECT_EQ(w.layers[1].q_bias.size(), 64u);
  EXPECT_EQ(w.layers[1].k_bias.size(), 32u);
  EXPECT_EQ(w.layers[1].v_bias.size(), 32u);
  ExpectMatchesCheckpoint(w, *m.checkpoint, m.config);
}

TEST(ModelWeightsTest, ShapeDisagreeingWithConfigIsRefused) {
  Loaded m = OpenFixture("tiny-llama");
  ASSERT_NE(m.checkpoint, nullptr);
  m.config.intermediate_size = 128;
  absl::StatusOr<ModelWeights> weights =
      ModelWeights::Load(*m.checkpoint, m.config);
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(weights.status().ToString(),
              AllOf(HasSubstr("model.safetensors"),
                    HasSubstr("'model.layers.0.mlp.gate_proj.weight'"),
                    HasSubstr("file offset"),
                    HasSubstr("has shape [160,64] but config.json implies "
                              "[128,64]")));

  m.config.intermediate_size = 160;
  m.config.num_key_value_heads = 4;  // the checkpoint has 2 kv heads
  weights = ModelWeights::Load(*m.checkpoint, m.config);
  EXPECT_THAT(weights.status().ToString(),
              AllOf(HasSubstr("'model.layers.0.self_attn.k_proj.weight'"),
                    HasSubstr("has shape [32,64] but config.json implies "
                              "[64,64]")));
}

TEST(ModelWeightsTest, MissingLayerIsNamed) {
  Loaded m = OpenFixture("tiny-llama");
  ASSERT_NE(m.checkpoint, nullptr);
  m.config.num_hidden_layers = 3;
  absl::StatusOr<ModelWeights> weights =
      ModelWeights::Load(*m.checkpoint, m.config);
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(weights.status().ToString(),
              AllOf(HasSubstr("model.safetensors"),
                    HasSubstr("model.layers.2.input_layernorm.weight")));
}

TEST(ModelWeightsTest, UntiedWithoutLmHeadIsAnError) {
  Loaded m = OpenFixture("tiny-qwen2");
  ASSERT_NE(m.checkpoint, nullptr);
  m.config.tie_word_embeddings = false;
  absl::StatusOr<ModelWeights> weights =
      ModelWeights::Load(*m.checkpoint, m.config);
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(weights.status().ToString(),
              AllOf(HasSubstr("lm_head.weight"),
                    HasSubstr("model.safetensors.index.json")));
}

TEST(ModelWeightsTest, TiedIgnoresAStoredLmHead) {
  Loaded m = OpenFixture("tiny-llama");
  ASSERT_NE(m.checkpoint, nullptr);
  m.config.tie_word_embeddings = true;
  absl::StatusOr<ModelWeights> weights =
      ModelWeights::Load(*m.checkpoint, m.config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_TRUE(weights->lm_head.empty());
}

TEST(ModelWeightsTest, BiasMismatchWithConfigIsRefused) {
  // Biases present but config says none: loading would silently drop them.
  Loaded qwen = OpenFixture("tiny-qwen2");
  ASSERT_NE(qwen.checkpoint, nullptr);
  qwen.config.attention_bias = false;
  absl::StatusOr<ModelWeights> weights =
      ModelWeights::Load(*qwen.checkpoint, qwen.config);
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(weights.status().ToString(),
              AllOf(HasSubstr("model.layers.0.self_attn.q_proj.bias"),
                    HasSubstr("attention_bias")));

  // Config says biases but the checkpoint has none.
  Loaded llama = OpenFixture("tiny-llama");
  ASSERT_NE(llama.checkpoint, nullptr);
  llama.config.attention_bias = true;
  weights = ModelWeights::Load(*llama.checkpoint, llama.config);
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(weights.status().ToString(),
              HasSubstr("model.layers.0.self_attn.q_proj.bias"));
}

}  // namespace
}  // namespace strata
