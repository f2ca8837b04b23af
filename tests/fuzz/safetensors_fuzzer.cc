// Arbitrary bytes as a .safetensors file: SafetensorsFile::Open validates the
// header (JSON, dtypes, shapes, offsets) and must refuse, not crash on, any
// malformed one; every tensor it accepts must lie inside the file.
#include <cstddef>
#include <cstdint>

#include "common/logging.h"
#include "engine/loader/safetensors_file.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path =
      strata::fuzz::WriteScratch("input.safetensors", data, size);
  absl::StatusOr<std::unique_ptr<strata::SafetensorsFile>> file =
      strata::SafetensorsFile::Open(path);
  if (!file.ok()) return 0;
  for (const strata::TensorView& tensor : (*file)->tensors()) {
    const uint64_t bytes = tensor.data.size();
    STRATA_CHECK(bytes == static_cast<uint64_t>(tensor.num_elements()) *
                              strata::DTypeSize(tensor.dtype))
        << tensor.name << ": size disagrees with its shape";
    STRATA_CHECK(tensor.file_offset + bytes <= size)
        << tensor.name << " ends past the file";
    // Touch the first and last byte: both must be mapped.
    if (bytes > 0) {
      const volatile std::byte* p = tensor.data.data();
      (void)p[0];
      (void)p[bytes - 1];
    }
  }
  return 0;
}
