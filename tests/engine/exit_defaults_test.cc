// ExitDefaults (engine/exit_defaults.h): the bundled model's classifier and
// calibrated thresholds load; a model folder with a malformed
// "exit_classifier" / "exit_thresholds" is refused naming the key or file.
#include "engine/exit_defaults.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "engine/loader/model_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace strata {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

const std::string kBundled =
    std::string(STRATA_SOURCE_DIR) + "/models/strata-recursive-tiny";
const std::string kFixture =
    std::string(STRATA_SOURCE_DIR) + "/tests/data/tiny-recursive";

ModelConfig Config(const std::string& dir) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromFile(dir + "/config.json");
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : ModelConfig{};
}

TEST(ExitDefaultsTest, BundledModelHasClassifierAndThresholds) {
  const ModelConfig config = Config(kBundled);
  absl::StatusOr<ExitDefaults> d = LoadExitDefaults(kBundled, config);
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_TRUE(d->has_classifier());
  EXPECT_EQ(d->classifier.size(),
            static_cast<size_t>((config.num_loops - 1) *
                                (config.hidden_size + 1)));
  EXPECT_EQ(d->DefaultConfidence(), ExitConfidence::kClassifier);
  for (int k = 0; k < kNumExitConfidences; ++k) {
    const float t = d->DefaultThreshold(static_cast<ExitConfidence>(k));
    EXPECT_GE(t, 0.0f);
    EXPECT_LE(t, 1.0f);
  }
}

TEST(ExitDefaultsTest, FixtureWithoutKeysHasNone) {
  absl::StatusOr<ExitDefaults> d = LoadExitDefaults(kFixture, Config(kFixture));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->has_classifier());
  EXPECT_EQ(d->DefaultConfidence(), ExitConfidence::kMaxProb);
  EXPECT_EQ(d->DefaultThreshold(ExitConfidence::kMaxProb), 1.0f);
}

class ExitDefaultsFolderTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("strata_exit_defaults_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::copy(kFixture, dir_, fs::copy_options::recursive);
    config_ = Config(dir_.string());
  }
  void TearDown() override { fs::remove_all(dir_); }

  // config.json with `key` set to `value` (JSON text).
  absl::StatusOr<ExitDefaults> LoadWith(const std::string& key,
                                        const std::string& value) {
    nlohmann::json config;
    std::ifstream(dir_ / "config.json") >> config;
    config[key] = nlohmann::json::parse(value);
    std::ofstream(dir_ / "config.json") << config.dump(1);
    return LoadExitDefaults(dir_.string(), config_);
  }

  fs::path dir_;
  ModelConfig config_;
};

TEST_F(ExitDefaultsFolderTest, LoadsClassifierAndThresholds) {
  absl::StatusOr<ExitDefaults> d = LoadWith(
      "exit_classifier", R"({"file": "exit_classifier_fixture.safetensors"})");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->has_classifier());
  EXPECT_EQ(d->classifier.size(), 2u * (64 + 1));
  d = LoadWith("exit_thresholds", R"({"margin": 0.25, "saturation": 0})");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->DefaultConfidence(), ExitConfidence::kClassifier);
  EXPECT_EQ(d->DefaultThreshold(ExitConfidence::kMargin), 0.25f);
  EXPECT_EQ(d->DefaultThreshold(ExitConfidence::kSaturation), 0.0f);
  EXPECT_EQ(d->DefaultThreshold(ExitConfidence::kClassifier), 1.0f);
}

TEST_F(ExitDefaultsFolderTest, RefusesMalformedKeys) {
  struct Case {
    const char* key;
    const char* value;
    const char* message;
  };
  for (const Case& c : {
           Case{"exit_classifier", R"("x.safetensors")", "\"file\""},
           Case{"exit_classifier", R"({"file": "../model.safetensors"})",
                "in the model folder"},
           Case{"exit_classifier", R"({"file": "absent.safetensors"})",
                "absent.safetensors"},
           // A file without the tensors (the model's weights).
           Case{"exit_classifier", R"({"file": "model.safetensors"})",
                "exit_classifier.weight"},
           Case{"exit_thresholds", R"({"entropy": 0.5})", "entropy"},
           Case{"exit_thresholds", R"({"margin": 1.5})", "margin"},
           Case{"exit_thresholds", R"([0.5])", "exit_thresholds"},
       }) {
    SCOPED_TRACE(std::string(c.key) + " = " + c.value);
    SetUp();
    absl::StatusOr<ExitDefaults> d = LoadWith(c.key, c.value);
    ASSERT_FALSE(d.ok());
    EXPECT_THAT(d.status().message(), HasSubstr(c.message));
  }
}

}  // namespace
}  // namespace strata
