#include "engine/loader/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace strata {
namespace {

using json = nlohmann::json;

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

std::string ShapeString(std::span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

// IEEE half -> float, including subnormals, infinities and NaN.
inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {
    // Subnormal: normalise the mantissa.
    int e = -1;
    do {
      ++e;
      mantissa <<= 1;
    } while ((mantissa & 0x400u) == 0);
    bits = sign | (static_cast<uint32_t>(112 - e) << 23) |
           ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Converts `count` little-endian elements of `dtype` at `src` (any alignment)
// into `dst`.
void ConvertToF32(DType dtype, const std::byte* src, size_t count, float* dst) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, count * sizeof(float));
      break;
    case DType::kBF16:
      for (size_t i = 0; i < count; ++i) {
        uint16_t v;
        std::memcpy(&v, src + 2 * i, 2);
        const uint32_t bits = static_cast<uint32_t>(v) << 16;
        std::memcpy(&dst[i], &bits, 4);
      }
      break;
    case DType::kF16:
      for (size_t i = 0; i < count; ++i) {
        uint16_t v;
        std::memcpy(&v, src + 2 * i, 2);
        dst[i] = HalfToFloat(v);
      }
      break;
    default:
      break;  // refused by the caller
  }
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return buffer.str();
}

// A shard name from an index must be a plain file name inside the model
// folder: no directories, so an index cannot point outside it.
bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(
    const std::string& model_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(model_dir, ec)) {
    return absl::NotFoundError(absl::StrCat(model_dir, ": not a directory"));
  }
  std::unique_ptr<Checkpoint> checkpoint(new Checkpoint());
  checkpoint->model_dir_ = model_dir;
  const std::string index_path = (fs::path(model_dir) / kIndexFile).string();
  const std::string single_path = (fs::path(model_dir) / kSingleFile).string();

  // Tensor name -> shard file name, from the index (empty for a single file).
  std::vector<std::pair<std::string, std::string>> weight_map;
  std::vector<std::string> file_names;
  if (fs::exists(index_path, ec)) {
    checkpoint->default_file_ = index_path;
    absl::StatusOr<std::string> text = ReadFile(index_path);
    if (!text.ok()) return text.status();
    json index = json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": not a JSON object"));
    }
    auto map_it = index.find("weight_map");
    if (map_it == index.end() || !map_it->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": missing weight_map object"));
    }
    std::set<std::string> unique_files;
    for (const auto& [tensor, file] : map_it->items()) {
      if (!file.is_string() || !IsPlainFileName(file.get<std::string>())) {
        return absl::InvalidArgumentError(absl::StrCat(
            index_path, ": weight_map entry for tensor '", tensor,
            "' must be a file name in the model folder, got ", file.dump()));
      }
      weight_map.emplace_back(tensor, file.get<std::string>());
      unique_files.insert(file.get<std::string>());
    }
    if (weight_map.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": weight_map is empty"));
    }
    file_names.assign(unique_files.begin(), unique_files.end());
  } else if (fs::exists(single_path, ec)) {
    checkpoint->default_file_ = single_path;
    file_names.push_back(kSingleFile);
  } else {
    return absl::NotFoundError(absl::StrCat(model_dir, ": no ", kSingleFile,
                                            " or ", kIndexFile, " found"));
  }

  for (const std::string& name : file_names) {
    const std::string path = (fs::path(model_dir) / name).string();
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::Open(path);
    if (!file.ok()) {
      if (absl::IsNotFound(file.status()) && !weight_map.empty()) {
        return absl::NotFoundError(absl::StrCat(
            index_path, ": shard '", name,
            "' named in weight_map is missing: ", file.status().message()));
      }
      return file.status();
    }
    for (const TensorView& view : (*file)->tensors()) {
      auto [it, inserted] = checkpoint->tensors_.emplace(view.name, &view);
      if (!inserted) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": tensor '", view.name, "' (file offset ",
                         view.file_offset, ") is also in ", it->second->file,
                         " (file offset ", it->second->file_offset, ")"));
      }
    }
    checkpoint->files_.push_back(*std::move(file));
  }

  // The index and the shards must agree on where each tensor lives.
  for (const auto& [tensor, file] : weight_map) {
    auto it = checkpoint->tensors_.find(tensor);
    const std::string expected = (fs::path(model_dir) / file).string();
    if (it == checkpoint->tensors_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": tensor '", tensor, "' is mapped to ",
                       file, " but ", expected, " does not contain it"));
    }
    if (it->second->file != expected) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": tensor '", tensor, "' is mapped to ",
                       file, " but is stored in ", it->second->file));
    }
  }
  return checkpoint;
}

const TensorView* Checkpoint::Find(std::string_view name) const {
  // absl::string_view is not std::string_view in this abseil build.
  auto it = tensors_.find(absl::string_view(name.data(), name.size()));
  return it == tensors_.end() ? nullptr : it->second;
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, view] : tensors_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

absl::Status Checkpoint::LoadF32Into(std::string_view name_view,
                                     std::span<const int64_t> expected_shape,
                                     std::span<float> out) const {
  const TensorView* view = Find(name_view);
  const std::string name(name_view);
  if (view == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(default_file_, ": tensor '", name, "' not found"));
  }
  if (!std::equal(view->shape.begin(), view->shape.end(),
                  expected_shape.begin(), expected_shape.end())) {
    return absl::InvalidArgumentError(absl::StrCat(
        view->file, ": tensor '", name, "' (file offset ", view->file_offset,
        ") has shape ", ShapeString(view->shape), " but config.json implies ",
        ShapeString(expected_shape)));
  }
  if (view->dtype != DType::kF32 && view->dtype != DType::kF16 &&
      view->dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat(
        view->file, ": tensor '", name, "' (file offset ", view->file_offset,
        ") has dtype ", std::string(DTypeName(view->dtype)),
        "; only F32, F16 and BF16 weights are supported"));
  }
  const size_t count = static_cast<size_t>(view->num_elements());
  if (out.size() != count) {
    return absl::InvalidArgumentError(
        absl::StrCat("LoadF32Into: output holds ", out.size(),
                     " floats but tensor '", name, "' has ", count));
  }
  ConvertToF32(view->dtype, view->data.data(), count, out.data());
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> Checkpoint::LoadF32(
    std::string_view name, std::span<const int64_t> expected_shape) const {
  const TensorView* view = Find(name);
  // Check before allocating: a corrupt shape must not cause a huge resize.
  if (view == nullptr ||
      !std::equal(view->shape.begin(), view->shape.end(),
                  expected_shape.begin(), expected_shape.end())) {
    absl::Status status = LoadF32Into(name, expected_shape, {});
    return status;
  }
  std::vector<float> out(static_cast<size_t>(view->num_elements()));
  if (absl::Status s = LoadF32Into(name, expected_shape, out); !s.ok()) {
    return s;
  }
  return out;
}

}  // namespace strata
