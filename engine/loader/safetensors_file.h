// Read-only, memory-mapped access to one .safetensors file.
//
// Format: an 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
// "__metadata__": {...}}, then the data section; offsets are relative to the
// start of the data section (8 + N). Open() validates the whole header up
// front so that a TensorView handed out later is always in bounds.
#ifndef STRATA_ENGINE_LOADER_SAFETENSORS_FILE_H_
#define STRATA_ENGINE_LOADER_SAFETENSORS_FILE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace strata {

enum class DType { kF32, kF16, kBF16, kF64, kI8, kU8, kI16, kI32, kI64, kBool };

// The safetensors spelling: "F32", "F16", "BF16", "F64", "I8", "U8", "I16",
// "I32", "I64", "BOOL".
std::string_view DTypeName(DType dtype);
// Bytes per element.
size_t DTypeSize(DType dtype);

// One tensor inside a mapped file. `data` stays valid as long as the owning
// SafetensorsFile lives.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::span<const std::byte> data;  // [num_elements() * DTypeSize(dtype)]
                                    // bytes, into the memory map
  std::string file;                 // path of the file holding it
  uint64_t file_offset = 0;         // absolute offset of data in the file
  int64_t num_elements() const;
};

// A memory-mapped .safetensors file. Validates on Open: file >= 8 bytes,
// header length fits in the file and is sane (< 100 MB), header is a JSON
// object, every entry has a known dtype, shape of non-negative ints,
// data_offsets [b, e] with b <= e, e within the data section, (e - b) ==
// product(shape) * dtype size, no overlapping tensors. Every error names the
// file, the tensor (when there is one) and the byte offset concerned, e.g.
// "model.safetensors: tensor 'x.weight' data_offsets end 4096 (file offset
// 4200) is past the end of the file (3000 bytes)".
//
// Thread-safety: immutable after Open; safe to read from any thread.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(
      const std::string& path);
  ~SafetensorsFile();  // unmaps

  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // nullptr if absent.
  const TensorView* Find(std::string_view name) const;
  // In order of file offset.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const std::string& path() const { return path_; }
  // The "__metadata__" string map of the header (empty when absent).
  const std::vector<std::pair<std::string, std::string>>& metadata() const {
    return metadata_;
  }

 private:
  SafetensorsFile() = default;

  std::string path_;
  void* map_ = nullptr;  // [map_size_] bytes, PROT_READ; nullptr if empty
  size_t map_size_ = 0;
  std::vector<TensorView> tensors_;
  absl::flat_hash_map<std::string, size_t> index_;  // name -> tensors_ index
  std::vector<std::pair<std::string, std::string>> metadata_;
};

}  // namespace strata

#endif  // STRATA_ENGINE_LOADER_SAFETENSORS_FILE_H_
