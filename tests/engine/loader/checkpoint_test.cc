#include "engine/loader/checkpoint.h"

#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::string kDataDir = std::string(STRATA_SOURCE_DIR) + "/tests/data";
const std::string kLlamaDir = kDataDir + "/tiny-llama";
const std::string kQwenDir = kDataDir + "/tiny-qwen2";

std::string MakeTempDir() {
  std::string tmpl =
      (fs::temp_directory_path() / "strata_checkpoint_test_XXXXXX").string();
  EXPECT_NE(mkdtemp(tmpl.data()), nullptr);
  return tmpl;
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Writes a one-tensor safetensors file.
void WriteOneTensor(const std::string& path, const std::string& name,
                    const std::string& dtype, const std::string& shape,
                    const std::string& data) {
  const std::string header =
      absl::StrCat(R"({")", name, R"(": {"dtype": ")", dtype, R"(", "shape": )",
                   shape, R"(, "data_offsets": [0, )", data.size(), "]}}");
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) {
    bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  }
  WriteAll(path, bytes + header + data);
}

// Reads `count` bf16 values at `offset` of `path`, widened by hand.
std::vector<float> ReadBf16(const std::string& path, uint64_t offset,
                            size_t count) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(offset));
  std::vector<float> out(count);
  for (size_t i = 0; i < count; ++i) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    const uint32_t bits = (static_cast<uint32_t>(b[1]) << 24) |
                          (static_cast<uint32_t>(b[0]) << 16);
    std::memcpy(&out[i], &bits, 4);
  }
  return out;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir(); }
  void TearDown() override { fs::remove_all(dir_); }
  // A copy of a fixture folder's weight files in the temp dir.
  void CopyFixture(const std::string& from) {
    for (const fs::directory_entry& entry : fs::directory_iterator(from)) {
      fs::copy_file(entry.path(), fs::path(dir_) / entry.path().filename());
    }
  }
  std::string dir_;
};

TEST(CheckpointFixtureTest, SingleFile) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(kLlamaDir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const Checkpoint& c = **checkpoint;
  EXPECT_EQ(c.files().size(), 1u);
  std::vector<std::string> names = c.TensorNames();
  EXPECT_EQ(names.size(), 21u);
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(names.front(), "lm_head.weight");

  const std::vector<int64_t> shape = {32, 64};
  absl::StatusOr<std::vector<float>> k =
      c.LoadF32("model.layers.1.self_attn.k_proj.weight", shape);
  ASSERT_TRUE(k.ok()) << k.status();
  ASSERT_EQ(k->size(), 32u * 64);
  const TensorView* view = c.Find("model.layers.1.self_attn.k_proj.weight");
  ASSERT_NE(view, nullptr);
  EXPECT_EQ(std::memcmp(k->data(), view->data.data(), view->data.size()), 0);
  // Weights are finite and not all zero.
  float sum_abs = 0.0f;
  for (float x : *k) {
    EXPECT_TRUE(std::isfinite(x));
    sum_abs += std::fabs(x);
  }
  EXPECT_GT(sum_abs, 0.0f);
}

TEST(CheckpointFixtureTest, ShapeMismatchNamesFileTensorAndOffset) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(kLlamaDir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const std::vector<int64_t> wrong = {64, 32};
  absl::StatusOr<std::vector<float>> q =
      (*checkpoint)->LoadF32("model.layers.0.self_attn.q_proj.weight", wrong);
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  const TensorView* view =
      (*checkpoint)->Find("model.layers.0.self_attn.q_proj.weight");
  EXPECT_THAT(q.status().ToString(),
              AllOf(HasSubstr("tiny-llama/model.safetensors"),
                    HasSubstr("'model.layers.0.self_attn.q_proj.weight'"),
                    HasSubstr(absl::StrCat("file offset ", view->file_offset)),
                    HasSubstr("has shape [64,64] but config.json implies "
                              "[64,32]")));
  // Rank mismatch too.
  const std::vector<int64_t> flat = {64 * 64};
  EXPECT_FALSE((*checkpoint)
                   ->LoadF32("model.layers.0.self_attn.q_proj.weight", flat)
                   .ok());
}

TEST(CheckpointFixtureTest, MissingTensorNamesExpectedFile) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(kLlamaDir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const std::vector<int64_t> shape = {64};
  absl::StatusOr<std::vector<float>> missing =
      (*checkpoint)->LoadF32("model.layers.9.input_layernorm.weight", shape);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().ToString(),
              AllOf(HasSubstr("tiny-llama/model.safetensors"),
                    HasSubstr("model.layers.9.input_layernorm.weight")));
  EXPECT_EQ((*checkpoint)->Find("model.layers.9.input_layernorm.weight"),
            nullptr);
}

TEST(CheckpointFixtureTest, ShardedBf16) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(kQwenDir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const Checkpoint& c = **checkpoint;
  EXPECT_EQ(c.files().size(), 2u);
  EXPECT_EQ(c.TensorNames().size(), 26u);
  const TensorView* embed = c.Find("model.embed_tokens.weight");
  ASSERT_NE(embed, nullptr);
  EXPECT_THAT(embed->file, HasSubstr("model-00001-of-00002.safetensors"));
  EXPECT_EQ(embed->dtype, DType::kBF16);
  const TensorView* bias = c.Find("model.layers.1.self_attn.k_proj.bias");
  ASSERT_NE(bias, nullptr);
  EXPECT_THAT(bias->file, HasSubstr("model-00002-of-00002.safetensors"));

  const std::vector<int64_t> shape = {1795, 64};
  absl::StatusOr<std::vector<float>> values =
      c.LoadF32("model.embed_tokens.weight", shape);
  ASSERT_TRUE(values.ok()) << values.status();
  EXPECT_EQ(*values, ReadBf16(embed->file, embed->file_offset, 1795 * 64));

  // Missing tensors in a sharded checkpoint name the index.
  const std::vector<int64_t> hidden = {64};
  EXPECT_THAT(c.LoadF32("lm_head.weight", hidden).status().ToString(),
              HasSubstr("model.safetensors.index.json"));
}

TEST_F(CheckpointTest, IndexNamingAMissingShard) {
  CopyFixture(kQwenDir);
  fs::remove(fs::path(dir_) / "model-00002-of-00002.safetensors");
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(dir_);
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(checkpoint.status().ToString(),
              AllOf(HasSubstr("model.safetensors.index.json"),
                    HasSubstr("model-00002-of-00002.safetensors")));
}

TEST_F(CheckpointTest, IndexMappingATensorToTheWrongShard) {
  CopyFixture(kQwenDir);
  const std::string index_path = dir_ + "/model.safetensors.index.json";
  std::ifstream in(index_path);
  std::string text(std::istreambuf_iterator<char>(in), {});
  in.close();
  const std::string entry =
      R"("model.norm.weight": "model-00002-of-00002.safetensors")";
  const size_t pos = text.find(entry);
  ASSERT_NE(pos, std::string::npos);
  text.replace(pos, entry.size(),
               R"("model.norm.weight": "model-00001-of-00002.safetensors")");
  WriteAll(index_path, text);
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(dir_);
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(checkpoint.status().ToString(),
              AllOf(HasSubstr("model.safetensors.index.json"),
                    HasSubstr("model.norm.weight"),
                    HasSubstr("model-00001-of-00002.safetensors")));
}

TEST_F(CheckpointTest, IndexMayNotLeaveTheFolder) {
  WriteAll(dir_ + "/model.safetensors.index.json",
           R"({"weight_map": {"w": "../elsewhere.safetensors"}})");
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(dir_);
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      checkpoint.status().ToString(),
      AllOf(HasSubstr("model.safetensors.index.json"), HasSubstr("'w'")));
}

TEST_F(CheckpointTest, MalformedIndex) {
  WriteAll(dir_ + "/model.safetensors.index.json", "{not json");
  EXPECT_EQ(Checkpoint::Open(dir_).status().code(),
            absl::StatusCode::kInvalidArgument);
  WriteAll(dir_ + "/model.safetensors.index.json", R"({"metadata": {}})");
  EXPECT_THAT(Checkpoint::Open(dir_).status().ToString(),
              HasSubstr("weight_map"));
}

TEST_F(CheckpointTest, DuplicateTensorAcrossShards) {
  WriteOneTensor(dir_ + "/a.safetensors", "w", "F32", "[1]",
                 std::string(4, '\0'));
  WriteOneTensor(dir_ + "/b.safetensors", "w", "F32", "[1]",
                 std::string(4, '\0'));
  WriteAll(dir_ + "/model.safetensors.index.json",
           R"({"weight_map": {"w": "a.safetensors", "v": "b.safetensors"}})");
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(dir_);
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(checkpoint.status().ToString(),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("a.safetensors"),
                    HasSubstr("b.safetensors")));
}

TEST_F(CheckpointTest, EmptyFolderIsNotFound) {
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(dir_);
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(checkpoint.status().ToString(), HasSubstr(dir_));
  EXPECT_EQ(Checkpoint::Open(dir_ + "/nope").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(CheckpointTest, CorruptShardErrorPassesThrough) {
  WriteAll(dir_ + "/model.safetensors", "short");
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(dir_);
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      checkpoint.status().ToString(),
      AllOf(HasSubstr("model.safetensors"), HasSubstr("truncated header")));
}

TEST_F(CheckpointTest, ConvertsF16IncludingSpecialValues) {
  // 1, -2, 65504 (max), 2^-24 (smallest subnormal), 2^-14 (smallest normal),
  // 0x0300 (a subnormal: 3 * 2^-16... = 768 * 2^-24), -0, +inf, -inf, NaN.
  const uint16_t halfs[] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x0400,
                            0x0300, 0x8000, 0x7C00, 0xFC00, 0x7E00};
  std::string data(sizeof(halfs), '\0');
  std::memcpy(data.data(), halfs, sizeof(halfs));  // little-endian host
  WriteOneTensor(dir_ + "/model.safetensors", "h", "F16", "[10]", data);
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(dir_);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const std::vector<int64_t> shape = {10};
  absl::StatusOr<std::vector<float>> values =
      (*checkpoint)->LoadF32("h", shape);
  ASSERT_TRUE(values.ok()) << values.status();
  const std::vector<float>& v = *values;
  EXPECT_EQ(v[0], 1.0f);
  EXPECT_EQ(v[1], -2.0f);
  EXPECT_EQ(v[2], 65504.0f);
  EXPECT_EQ(v[3], std::ldexp(1.0f, -24));
  EXPECT_EQ(v[4], std::ldexp(1.0f, -14));
  EXPECT_EQ(v[5], std::ldexp(768.0f, -24));
  EXPECT_EQ(v[6], 0.0f);
  EXPECT_TRUE(std::signbit(v[6]));
  EXPECT_EQ(v[7], std::numeric_limits<float>::infinity());
  EXPECT_EQ(v[8], -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(v[9]));
}

TEST_F(CheckpointTest, UnsupportedDTypeIsRefused) {
  WriteOneTensor(dir_ + "/model.safetensors", "ids", "I32", "[2]",
                 std::string(8, '\0'));
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(dir_);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const std::vector<int64_t> shape = {2};
  absl::StatusOr<std::vector<float>> values =
      (*checkpoint)->LoadF32("ids", shape);
  EXPECT_EQ(values.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(values.status().ToString(),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("'ids'"),
                    HasSubstr("file offset"), HasSubstr("dtype I32")));
}

TEST_F(CheckpointTest, LoadIntoChecksOutputSize) {
  WriteOneTensor(dir_ + "/model.safetensors", "w", "F32", "[2]",
                 std::string(8, '\0'));
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint =
      Checkpoint::Open(dir_);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const std::vector<int64_t> shape = {2};
  std::vector<float> out(3, 7.0f);
  EXPECT_FALSE((*checkpoint)->LoadF32Into("w", shape, out).ok());
  out.resize(2);
  EXPECT_TRUE((*checkpoint)->LoadF32Into("w", shape, out).ok());
  EXPECT_THAT(out, ElementsAre(0.0f, 0.0f));
}

}  // namespace
}  // namespace strata
