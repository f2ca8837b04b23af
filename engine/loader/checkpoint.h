// A model folder's weights: model.safetensors, or
// model.safetensors.index.json + shards.
#ifndef STRATA_ENGINE_LOADER_CHECKPOINT_H_
#define STRATA_ENGINE_LOADER_CHECKPOINT_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/loader/safetensors_file.h"

namespace strata {

// Opens every weight file of a Hugging Face model directory (memory-mapped;
// nothing is copied until LoadF32). With an index, every shard it names must
// exist and hold exactly the tensors the index maps to it.
//
// Thread-safety: immutable after Open; LoadF32 may run concurrently.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(
      const std::string& model_dir);

  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  // nullptr if absent.
  const TensorView* Find(std::string_view name) const;
  // Sorted.
  std::vector<std::string> TensorNames() const;

  // Converts F32/F16/BF16 to f32 after checking the shape. Errors name the
  // file, tensor and offset: missing tensor (NOT_FOUND, naming the file
  // expected), shape mismatch ("... has shape [64,32] but config.json implies
  // [64,64]"), unsupported dtype (INVALID_ARGUMENT).
  absl::StatusOr<std::vector<float>> LoadF32(
      std::string_view name, std::span<const int64_t> expected_shape) const;
  // As LoadF32, writing into `out`, which must hold exactly the expected
  // number of elements. [product(expected_shape)]
  absl::Status LoadF32Into(std::string_view name,
                           std::span<const int64_t> expected_shape,
                           std::span<float> out) const;

  const std::string& model_dir() const { return model_dir_; }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const {
    return files_;
  }

 private:
  Checkpoint() = default;

  std::string model_dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  absl::flat_hash_map<std::string, const TensorView*> tensors_;
  // The file name a missing tensor was expected in (for error messages).
  std::string default_file_;
};

}  // namespace strata

#endif  // STRATA_ENGINE_LOADER_CHECKPOINT_H_
