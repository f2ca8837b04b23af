#include "engine/loader/safetensors_file.h"

#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

const std::string kLlamaFile =
    std::string(STRATA_SOURCE_DIR) + "/tests/data/tiny-llama/model.safetensors";

std::string MakeTempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() /
                      "strata_safetensors_test_XXXXXX")
                         .string();
  EXPECT_NE(mkdtemp(tmpl.data()), nullptr);
  return tmpl;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string LengthPrefix(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out;
}

// A safetensors file with `header` as its JSON header and `data` after it.
std::string Build(const std::string& header, const std::string& data) {
  return LengthPrefix(header.size()) + header + data;
}

class SafetensorsFileTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir(); }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Writes `bytes` to a file in the temp dir and tries to open it.
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> OpenBytes(
      const std::string& bytes) {
    path_ = dir_ + "/model.safetensors";
    WriteAll(path_, bytes);
    return SafetensorsFile::Open(path_);
  }

  std::string dir_;
  std::string path_;
};

TEST(DTypeTest, NamesAndSizes) {
  EXPECT_EQ(DTypeName(DType::kF32), "F32");
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
  EXPECT_EQ(DTypeName(DType::kBool), "BOOL");
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kI64), 8u);
  EXPECT_EQ(DTypeSize(DType::kU8), 1u);
}

TEST(SafetensorsFixtureTest, OpensTinyLlama) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(kLlamaFile);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsFile& f = **file;
  EXPECT_EQ(f.path(), kLlamaFile);
  EXPECT_EQ(f.tensors().size(), 21u);
  // Sorted by position in the file.
  for (size_t i = 1; i < f.tensors().size(); ++i) {
    EXPECT_LT(f.tensors()[i - 1].file_offset, f.tensors()[i].file_offset);
  }
  const TensorView* embed = f.Find("model.embed_tokens.weight");
  ASSERT_NE(embed, nullptr);
  EXPECT_EQ(embed->dtype, DType::kF32);
  EXPECT_EQ(embed->shape, (std::vector<int64_t>{1808, 64}));
  EXPECT_EQ(embed->num_elements(), 1808 * 64);
  EXPECT_EQ(embed->data.size(), 1808u * 64 * 4);
  EXPECT_EQ(embed->file, kLlamaFile);
  // The data view and file_offset agree with the bytes on disk.
  const std::string bytes = ReadAll(kLlamaFile);
  ASSERT_LE(embed->file_offset + embed->data.size(), bytes.size());
  EXPECT_EQ(std::memcmp(bytes.data() + embed->file_offset, embed->data.data(),
                        embed->data.size()),
            0);
  EXPECT_EQ(f.Find("no.such.tensor"), nullptr);
  EXPECT_THAT(
      f.metadata(),
      ::testing::Contains(std::pair<std::string, std::string>("format", "pt")));
}

TEST_F(SafetensorsFileTest, ParsesEveryDTypeEmptyAndScalarTensors) {
  std::string data;
  data += std::string(8, '\x01');  // a: I64 [1]       [0, 8)
  data += std::string(3, '\x01');  // b: BOOL [3]      [8, 11)
  data += std::string(1, '\x00');  // padding byte     [11, 12)
  data += std::string(4, '\x02');  // c: F32 [] scalar [12, 16)
  const std::string header =
      R"({"__metadata__": {"k": "v"},
          "a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]},
          "b": {"dtype": "BOOL", "shape": [3], "data_offsets": [8, 11]},
          "c": {"dtype": "F32", "shape": [], "data_offsets": [12, 16]},
          "e": {"dtype": "BF16", "shape": [0, 5], "data_offsets": [12, 12]}})";
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      OpenBytes(Build(header, data));
  ASSERT_TRUE(file.ok()) << file.status();
  const uint64_t data_start = 8 + header.size();
  const TensorView* c = (*file)->Find("c");
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(c->shape.empty());
  EXPECT_EQ(c->num_elements(), 1);
  EXPECT_EQ(c->file_offset, data_start + 12);
  const TensorView* e = (*file)->Find("e");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->num_elements(), 0);
  EXPECT_TRUE(e->data.empty());
  EXPECT_EQ((*file)->Find("b")->dtype, DType::kBool);
  EXPECT_EQ((*file)->tensors().size(), 4u);
}

TEST_F(SafetensorsFileTest, MissingFileIsNotFound) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(dir_ + "/absent.safetensors");
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file.status().ToString(), HasSubstr("absent.safetensors"));
}

TEST_F(SafetensorsFileTest, TruncatedFileShorterThanHeaderLength) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      OpenBytes(std::string("\x10\x00", 2));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().ToString(),
              AllOf(HasSubstr(path_), HasSubstr("truncated header"),
                    HasSubstr("offset 0"), HasSubstr("2 bytes")));
  file = OpenBytes("");
  EXPECT_THAT(file.status().ToString(),
              AllOf(HasSubstr(path_), HasSubstr("truncated header")));
}

TEST_F(SafetensorsFileTest, HeaderLengthPastEndOfFile) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      OpenBytes(LengthPrefix(1000) + "{}");
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().ToString(),
              AllOf(HasSubstr(path_), HasSubstr("header length 1000"),
                    HasSubstr("offset 1008"),
                    HasSubstr("past the end of the file (10 bytes)")));
}

TEST_F(SafetensorsFileTest, InsaneHeaderLength) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      OpenBytes(LengthPrefix(1ull << 40) + "{}");
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().ToString(),
              AllOf(HasSubstr(path_), HasSubstr("exceeds the limit"),
                    HasSubstr("offset 0")));
}

TEST_F(SafetensorsFileTest, NonJsonHeader) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      OpenBytes(Build(R"({"a": {"dtype": "F32",, }})", ""));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  // The second comma is at header byte 22, i.e. file offset 30.
  EXPECT_THAT(file.status().ToString(),
              AllOf(HasSubstr(path_), HasSubstr("not valid JSON"),
                    HasSubstr("file offset 30")));
}

TEST_F(SafetensorsFileTest, HeaderNotAnObject) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      OpenBytes(Build("[1, 2]", ""));
  EXPECT_THAT(file.status().ToString(),
              AllOf(HasSubstr(path_), HasSubstr("offset 8"),
                    HasSubstr("not an object")));
}

TEST_F(SafetensorsFileTest, UnknownDType) {
  const std::string header =
      R"({"x.weight": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}})";
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      OpenBytes(Build(header, "ab"));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  // The key "x.weight" starts at header byte 1 = file offset 9.
  EXPECT_THAT(file.status().ToString(),
              AllOf(HasSubstr(path_),
                    HasSubstr("unknown dtype 'F8_E4M3' for tensor 'x.weight'"),
                    HasSubstr("file offset 9")));
}

TEST_F(SafetensorsFileTest, NegativeOrFractionalShape) {
  for (const char* shape : {"[-1, 2]", "[1.5]", "\"2\""}) {
    const std::string header =
        absl::StrCat(R"({"t": {"dtype": "U8", "shape": )", shape,
                     R"(, "data_offsets": [0, 2]}})");
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        OpenBytes(Build(header, "ab"));
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument)
        << shape;
    EXPECT_THAT(file.status().ToString(),
                AllOf(HasSubstr(path_), HasSubstr("tensor 't'"),
                      HasSubstr("shape"), HasSubstr("file offset 9")));
  }
}

TEST_F(SafetensorsFileTest, BeginAfterEnd) {
  const std::string header =
      R"({"t": {"dtype": "U8", "shape": [0], "data_offsets": [2, 1]}})";
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      OpenBytes(Build(header, "ab"));
  EXPECT_THAT(
      file.status().ToString(),
      AllOf(HasSubstr(path_), HasSubstr("tensor 't'"), HasSubstr("begin 2"),
            HasSubstr(absl::StrCat("file offset ", 8 + header.size() + 2))));
}

TEST_F(SafetensorsFileTest, OffsetsPastEndOfFile) {
  // Cut the real fixture short: the last tensor now runs past the end.
  const std::string bytes = ReadAll(kLlamaFile);
  ASSERT_GT(bytes.size(), 100000u);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> fixture =
      SafetensorsFile::Open(kLlamaFile);
  ASSERT_TRUE(fixture.ok());
  const TensorView& last = (*fixture)->tensors().back();
  const uint64_t last_end = last.file_offset + last.data.size();
  const uint64_t cut = bytes.size() - 5000;
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      OpenBytes(bytes.substr(0, cut));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().ToString(),
              AllOf(HasSubstr(path_),
                    HasSubstr(absl::StrCat("tensor '", last.name, "'")),
                    HasSubstr(absl::StrCat("(file offset ", last_end,
                                           ") is past the end of the file (",
                                           cut, " bytes)"))));
}

TEST_F(SafetensorsFileTest, AbsurdOffsetsDoNotWrapAround) {
  const std::string header =
      R"({"t": {"dtype": "U8", "shape": [1], "data_offsets": [18446744073709551614, 18446744073709551615]}})";
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      OpenBytes(Build(header, "a"));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().ToString(),
              AllOf(HasSubstr(path_), HasSubstr("tensor 't'"),
                    HasSubstr("file offset beyond 2^64"),
                    HasSubstr("past the end of the file")));
}

TEST_F(SafetensorsFileTest, SizeDisagreesWithShape) {
  const std::string header =
      R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})";
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      OpenBytes(Build(header, std::string(24, '\0')));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().ToString(),
              AllOf(HasSubstr(path_), HasSubstr("tensor 'w'"),
                    HasSubstr(absl::StrCat("file offset ", 8 + header.size())),
                    HasSubstr("hold 20 bytes"), HasSubstr("[2,3]"),
                    HasSubstr("needs 24 bytes")));
}

TEST_F(SafetensorsFileTest, ShapeProductOverflowIsASizeError) {
  const std::string header =
      R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 4]}})";
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      OpenBytes(Build(header, std::string(4, '\0')));
  EXPECT_THAT(file.status().ToString(),
              AllOf(HasSubstr(path_), HasSubstr("tensor 'w'"),
                    HasSubstr("more than 2^64")));
}

TEST_F(SafetensorsFileTest, OverlappingTensors) {
  const std::string header =
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})";
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      OpenBytes(Build(header, std::string(12, '\0')));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  const uint64_t data_start = 8 + header.size();
  EXPECT_THAT(file.status().ToString(),
              AllOf(HasSubstr(path_), HasSubstr("tensor 'b'"),
                    HasSubstr("tensor 'a'"), HasSubstr("overlaps"),
                    HasSubstr(absl::StrCat("file offset ", data_start + 4)),
                    HasSubstr(absl::StrCat("file offset ", data_start))));
}

TEST_F(SafetensorsFileTest, OverlapHiddenBehindASmallTensor) {
  // c lies inside a; b starts after c but still inside a.
  const std::string header =
      R"({"a": {"dtype": "U8", "shape": [10], "data_offsets": [0, 10]},
          "c": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]},
          "b": {"dtype": "U8", "shape": [4], "data_offsets": [5, 9]}})";
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      OpenBytes(Build(header, std::string(10, '\0')));
  EXPECT_THAT(file.status().ToString(), HasSubstr("overlaps tensor 'a'"));
}

TEST_F(SafetensorsFileTest, MalformedEntries) {
  for (const char* entry :
       {R"("t": 5)", R"("t": {"shape": [1], "data_offsets": [0, 1]})",
        R"("t": {"dtype": "U8", "data_offsets": [0, 1]})",
        R"("t": {"dtype": "U8", "shape": [1]})",
        R"("t": {"dtype": "U8", "shape": [1], "data_offsets": [0]})",
        R"("t": {"dtype": "U8", "shape": [1], "data_offsets": [-1, 0]})"}) {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        OpenBytes(Build(absl::StrCat("{", entry, "}"), "a"));
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument)
        << entry;
    EXPECT_THAT(file.status().ToString(),
                AllOf(HasSubstr(path_), HasSubstr("tensor 't'"),
                      HasSubstr("file offset 9")))
        << entry;
  }
}

}  // namespace
}  // namespace strata
