#include "engine/exit_defaults.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/loader/safetensors_file.h"
#include "nlohmann/json.hpp"

namespace strata {
namespace {

using json = nlohmann::json;

constexpr char kWeight[] = "exit_classifier.weight";
constexpr char kBias[] = "exit_classifier.bias";

// The float32 data of `name` in `file` after checking its shape.
absl::StatusOr<const float*> F32Tensor(const SafetensorsFile& file,
                                       const char* name,
                                       const std::vector<int64_t>& shape) {
  const TensorView* view = file.Find(name);
  if (view == nullptr || view->shape != shape || view->dtype != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.path(), ": expected float32 tensor '", name, "' of shape [",
        absl::StrJoin(shape, ", "), "] (config.json \"exit_classifier\")"));
  }
  return reinterpret_cast<const float*>(view->data.data());
}

absl::Status LoadClassifier(const std::string& model_dir, const json& spec,
                            const ModelConfig& config, ExitDefaults* out) {
  if (!spec.is_object() || !spec.contains("file") ||
      !spec["file"].is_string()) {
    return absl::InvalidArgumentError(
        "config.json: \"exit_classifier\" must be an object with a string "
        "\"file\"");
  }
  const std::string name = spec["file"].get<std::string>();
  // A file in the model folder, not a path out of it.
  if (name.empty() || name.find('/') != std::string::npos || name == "..") {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: \"exit_classifier\".file '", name,
        "' must be a file name in the model folder"));
  }
  if (config.num_loops < 2) {
    return absl::InvalidArgumentError(
        "config.json: \"exit_classifier\" on a model with one loop");
  }
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open((std::filesystem::path(model_dir) / name).string());
  if (!file.ok()) return file.status();
  const int64_t loops = config.num_loops - 1;
  const int64_t hidden = config.hidden_size;
  absl::StatusOr<const float*> w = F32Tensor(**file, kWeight, {loops, hidden});
  if (!w.ok()) return w.status();
  absl::StatusOr<const float*> b = F32Tensor(**file, kBias, {loops});
  if (!b.ok()) return b.status();
  out->classifier.resize(static_cast<size_t>(loops * (hidden + 1)));
  for (int64_t l = 0; l < loops; ++l) {
    float* row = out->classifier.data() + l * (hidden + 1);
    std::memcpy(row, *w + l * hidden, static_cast<size_t>(hidden) * 4);
    row[hidden] = (*b)[l];
  }
  for (float v : out->classifier) {
    if (!std::isfinite(v)) {
      return absl::InvalidArgumentError(
          absl::StrCat((*file)->path(), ": exit classifier is not finite"));
    }
  }
  return absl::OkStatus();
}

absl::Status LoadThresholds(const json& spec, ExitDefaults* out) {
  if (!spec.is_object()) {
    return absl::InvalidArgumentError(
        "config.json: \"exit_thresholds\" must be an object");
  }
  for (const auto& [key, value] : spec.items()) {
    absl::StatusOr<ExitConfidence> kind = ParseExitConfidence(key);
    if (!kind.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config.json: \"exit_thresholds\": ", kind.status().message()));
    }
    if (!value.is_number() || !(value.get<double>() >= 0.0) ||
        value.get<double>() > 1.0) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: \"exit_thresholds\".", key,
                       " must be a number in [0, 1]"));
    }
    out->thresholds[static_cast<size_t>(*kind)] = value.get<float>();
  }
  return absl::OkStatus();
}

}  // namespace

ExitConfidence ExitDefaults::DefaultConfidence() const {
  return has_classifier() ? ExitConfidence::kClassifier
                          : ExitConfidence::kMaxProb;
}

float ExitDefaults::DefaultThreshold(ExitConfidence kind) const {
  return thresholds[static_cast<size_t>(kind)].value_or(1.0f);
}

absl::StatusOr<ExitDefaults> LoadExitDefaults(const std::string& model_dir,
                                              const ModelConfig& config) {
  ExitDefaults out;
  const std::filesystem::path path =
      std::filesystem::path(model_dir) / "config.json";
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read ", path.string()));
  }
  const json doc = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), " is not a JSON object"));
  }
  if (auto it = doc.find("exit_classifier"); it != doc.end()) {
    if (absl::Status s = LoadClassifier(model_dir, *it, config, &out);
        !s.ok()) {
      return s;
    }
  }
  if (auto it = doc.find("exit_thresholds"); it != doc.end()) {
    if (absl::Status s = LoadThresholds(*it, &out); !s.ok()) return s;
  }
  return out;
}

}  // namespace strata
