#include "engine/loader/safetensors_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace strata {
namespace {

using json = nlohmann::json;

// A header larger than this is refused: real checkpoints have headers of a
// few hundred KB, so anything bigger is corruption (and would be parsed into
// memory in full).
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;
constexpr uint64_t kHeaderLengthBytes = 8;

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kF32, "F32", 4},   {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2}, {DType::kF64, "F64", 8},
    {DType::kI8, "I8", 1},     {DType::kU8, "U8", 1},
    {DType::kI16, "I16", 2},   {DType::kI32, "I32", 4},
    {DType::kI64, "I64", 8},   {DType::kBool, "BOOL", 1},
};

std::optional<DType> ParseDType(std::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return std::nullopt;
}

// Reads a non-negative integer that fits in uint64 from a JSON value.
std::optional<uint64_t> AsUint(const json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer()) {
    const int64_t v = value.get<int64_t>();
    if (v >= 0) return static_cast<uint64_t>(v);
  }
  return std::nullopt;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

// data_start + offset for messages; offsets come from the file and may be
// absurd.
std::string FileOffset(uint64_t data_start, uint64_t offset) {
  uint64_t sum = 0;
  if (__builtin_add_overflow(data_start, offset, &sum)) {
    return "beyond 2^64";
  }
  return absl::StrCat(sum);
}

absl::Status Invalid(const std::string& path, const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", message));
}

}  // namespace

std::string_view DTypeName(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info.name;
  }
  return "?";
}

size_t DTypeSize(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info.size;
  }
  return 0;
}

int64_t TensorView::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(map_, map_size_);
}

const TensorView* SafetensorsFile::Find(std::string_view name) const {
  // absl::string_view is not std::string_view in this abseil build.
  auto it = index_.find(absl::string_view(name.data(), name.size()));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    std::string message = absl::StrCat(path, ": cannot open: ", strerror(err));
    if (err == ENOENT) return absl::NotFoundError(message);
    return absl::FailedPreconditionError(message);
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": cannot stat: ", strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return Invalid(path, "not a regular file");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  // The object owns the map from here on, so every early return unmaps.
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  if (file_size > 0) {
    void* map = mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      const int err = errno;
      close(fd);
      return absl::FailedPreconditionError(absl::StrCat(
          path, ": cannot mmap ", file_size, " bytes: ", strerror(err)));
    }
    file->map_ = map;
    file->map_size_ = file_size;
  }
  close(fd);  // the mapping keeps the file referenced
  const auto* bytes = static_cast<const std::byte*>(file->map_);

  if (file_size < kHeaderLengthBytes) {
    return Invalid(path,
                   absl::StrCat("truncated header: the file has ", file_size,
                                " bytes, fewer than the 8-byte header "
                                "length at offset 0"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) {
    header_len = (header_len << 8) | std::to_integer<uint64_t>(bytes[i]);
  }
  if (header_len > kMaxHeaderBytes) {
    return Invalid(path, absl::StrCat("header length ", header_len,
                                      " (at offset 0) exceeds the limit of ",
                                      kMaxHeaderBytes, " bytes"));
  }
  if (kHeaderLengthBytes + header_len > file_size) {
    return Invalid(
        path,
        absl::StrCat("truncated header: header length ", header_len,
                     " (at offset 0) ends at "
                     "offset ",
                     kHeaderLengthBytes + header_len,
                     ", past the end of the file (", file_size, " bytes)"));
  }
  const uint64_t data_start = kHeaderLengthBytes + header_len;
  const uint64_t data_size = file_size - data_start;

  const char* header_begin =
      reinterpret_cast<const char*>(bytes + kHeaderLengthBytes);
  const std::string_view header_text(header_begin, header_len);
  json header;
  try {
    header = json::parse(header_begin, header_begin + header_len);
  } catch (const json::parse_error& e) {
    // e.byte is 1-based within the header text.
    const uint64_t at = kHeaderLengthBytes + (e.byte > 0 ? e.byte - 1 : 0);
    return Invalid(path, absl::StrCat("header is not valid JSON (error near "
                                      "file offset ",
                                      at, "): ", e.what()));
  } catch (const json::exception& e) {
    return Invalid(
        path, absl::StrCat("header at offset 8 is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) {
    return Invalid(path, absl::StrCat("header at offset 8 is a JSON ",
                                      header.type_name(), ", not an object"));
  }

  std::vector<TensorView>& tensors = file->tensors_;
  tensors.reserve(header.size());
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) {
        return Invalid(path, "__metadata__ is not a JSON object");
      }
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return Invalid(path, absl::StrCat("__metadata__ value for '", key,
                                            "' is not a string"));
        }
        file->metadata_.emplace_back(key, value.get<std::string>());
      }
      continue;
    }
    const std::string where = absl::StrCat("tensor '", name, "'");
    // For malformed entries, point at the entry's key in the header text
    // (the first occurrence of the quoted name; exact for ordinary names).
    const size_t key_pos = header_text.find(absl::StrCat("\"", name, "\""));
    const std::string entry_where =
        key_pos == std::string_view::npos
            ? absl::StrCat(where, " (header at file offset 8)")
            : absl::StrCat(where, " (header entry at file offset ",
                           kHeaderLengthBytes + key_pos, ")");
    if (!entry.is_object()) {
      return Invalid(path,
                     absl::StrCat(entry_where, ": header entry is a JSON ",
                                  entry.type_name(), ", not an object"));
    }
    TensorView view;
    view.name = name;
    view.file = path;

    auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end() || !dtype_it->is_string()) {
      return Invalid(
          path, absl::StrCat(entry_where, ": missing or non-string dtype"));
    }
    const std::string dtype_name = dtype_it->get<std::string>();
    std::optional<DType> dtype = ParseDType(dtype_name);
    if (!dtype.has_value()) {
      return Invalid(path, absl::StrCat("unknown dtype '", dtype_name, "' for ",
                                        entry_where));
    }
    view.dtype = *dtype;

    auto shape_it = entry.find("shape");
    if (shape_it == entry.end() || !shape_it->is_array()) {
      return Invalid(path,
                     absl::StrCat(entry_where, ": missing or non-array shape"));
    }
    // Element count with overflow detection; a product that does not fit is
    // necessarily larger than the file.
    uint64_t num_elements = 1;
    bool overflow = false;
    for (const json& dim : *shape_it) {
      std::optional<uint64_t> d = AsUint(dim);
      if (!d.has_value() ||
          *d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Invalid(path,
                       absl::StrCat(entry_where, ": shape ", shape_it->dump(),
                                    " has an entry that is not a "
                                    "non-negative integer"));
      }
      view.shape.push_back(static_cast<int64_t>(*d));
      overflow |= __builtin_mul_overflow(num_elements, *d, &num_elements);
    }
    uint64_t num_bytes = 0;
    overflow |=
        __builtin_mul_overflow(num_elements, DTypeSize(view.dtype), &num_bytes);

    auto offsets_it = entry.find("data_offsets");
    if (offsets_it == entry.end() || !offsets_it->is_array() ||
        offsets_it->size() != 2) {
      return Invalid(path, absl::StrCat(entry_where,
                                        ": data_offsets must be an "
                                        "array [begin, end]"));
    }
    std::optional<uint64_t> begin = AsUint((*offsets_it)[0]);
    std::optional<uint64_t> end = AsUint((*offsets_it)[1]);
    if (!begin.has_value() || !end.has_value()) {
      return Invalid(
          path, absl::StrCat(entry_where, ": data_offsets ", offsets_it->dump(),
                             " are not non-negative integers"));
    }
    if (*begin > *end) {
      return Invalid(
          path, absl::StrCat(where, ": data_offsets begin ", *begin,
                             " (file offset ", FileOffset(data_start, *begin),
                             ") is after end ", *end));
    }
    if (*end > data_size) {
      return Invalid(
          path, absl::StrCat(where, ": data_offsets end ", *end,
                             " (file offset ", FileOffset(data_start, *end),
                             ") is past the end of the file (", file_size,
                             " bytes)"));
    }
    if (overflow || *end - *begin != num_bytes) {
      return Invalid(
          path,
          absl::StrCat(where, ": data_offsets [", *begin, ", ", *end,
                       "] (file offset ", data_start + *begin, ") hold ",
                       *end - *begin, " bytes but shape ",
                       ShapeString(view.shape), " of ", dtype_name, " needs ",
                       overflow ? std::string("more than 2^64")
                                : absl::StrCat(num_bytes),
                       " bytes"));
    }
    view.file_offset = data_start + *begin;
    view.data = std::span<const std::byte>(bytes + view.file_offset, num_bytes);
    tensors.push_back(std::move(view));
  }

  // Order by position in the file; then overlaps are adjacent. Empty tensors
  // occupy no bytes and cannot overlap anything.
  std::sort(tensors.begin(), tensors.end(),
            [](const TensorView& a, const TensorView& b) {
              if (a.file_offset != b.file_offset) {
                return a.file_offset < b.file_offset;
              }
              return a.data.size() < b.data.size();
            });
  const TensorView* previous = nullptr;  // the non-empty one reaching furthest
  for (const TensorView& view : tensors) {
    if (view.data.empty()) continue;
    if (previous != nullptr &&
        view.file_offset < previous->file_offset + previous->data.size()) {
      return Invalid(
          path, absl::StrCat("tensor '", view.name, "' (file offset ",
                             view.file_offset, ", ", view.data.size(),
                             " bytes) overlaps tensor '", previous->name,
                             "' (file offset ", previous->file_offset, ", ",
                             previous->data.size(), " bytes)"));
    }
    if (previous == nullptr ||
        view.file_offset + view.data.size() >
            previous->file_offset + previous->data.size()) {
      previous = &view;
    }
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    file->index_.emplace(tensors[i].name, i);
  }
  return file;
}

}  // namespace strata
