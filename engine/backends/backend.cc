#include "engine/backends/backend.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"

namespace strata {

absl::Status Backend::CheckExitConfidenceArgs(
    const Tensor& logits, std::span<const ExitConfidence> kinds,
    std::span<float> out) {
  const int64_t rows = logits.rank() == 0 ? 1 : logits.dim(0);
  const bool hidden_kind =
      std::any_of(kinds.begin(), kinds.end(), IsHiddenExitConfidence);
  if (static_cast<int64_t>(kinds.size()) != rows ||
      static_cast<int64_t>(out.size()) != rows ||
      logits.type() != ElementType::kF32 || hidden_kind) {
    return absl::InternalError(
        absl::StrCat("ExitConfidences of ", logits.DebugString(), " with ",
                     kinds.size(), " kinds and ", out.size(), " outputs"));
  }
  return absl::OkStatus();
}

void Backend::SplitColumns(const Tensor& x, std::span<Tensor* const> parts) {
  STRATA_CHECK(false)
      << name() << " reports no WeightRowAlignment: nothing fused to split";
}

SoftmaxStats Backend::RowSoftmaxStats(std::span<const float> row) const {
  SoftmaxStats stats;
  if (row.empty()) return stats;
  stats.max = *std::max_element(row.begin(), row.end());
  if (!std::isfinite(stats.max)) return stats;
  double sum = 0.0;
  for (float x : row) sum += std::exp(static_cast<double>(x) - stats.max);
  stats.sum_exp = sum;
  return stats;
}

absl::Status Backend::ExitConfidences(const Tensor& logits,
                                      std::span<const ExitConfidence> kinds,
                                      std::span<float> out) {
  if (absl::Status s = CheckExitConfidenceArgs(logits, kinds, out); !s.ok()) {
    return s;
  }
  const int64_t rows = logits.rank() == 0 ? 1 : logits.dim(0);
  if (rows == 0) return absl::OkStatus();
  const size_t vocab = static_cast<size_t>(logits.num_elements() / rows);
  std::vector<float> host(logits.num_elements());
  if (absl::Status s = CopyToHost(logits, host); !s.ok()) return s;
  for (int64_t i = 0; i < rows; ++i) {
    const std::span<const float> row(host.data() + i * vocab, vocab);
    out[i] = ComputeExitConfidence(row, kinds[i], RowSoftmaxStats(row));
  }
  return absl::OkStatus();
}

absl::Status Backend::CheckHiddenExitConfidenceArgs(
    const Tensor& state, std::span<const int32_t> rows, const Tensor& prev,
    const Tensor& classifier, std::span<const int32_t> loops,
    std::span<const ExitConfidence> kinds, std::span<float> out) {
  const size_t r = rows.size();
  bool ok = state.rank() == 2 && state.type() == ElementType::kF32 &&
            loops.size() == r && kinds.size() == r && out.size() == r;
  const int64_t n = ok ? state.dim(0) : 0, hidden = ok ? state.dim(1) : 0;
  for (size_t j = 0; ok && j < r; ++j) {
    ok = rows[j] >= 0 && rows[j] < n && IsHiddenExitConfidence(kinds[j]);
    if (ok && kinds[j] == ExitConfidence::kSaturation) {
      ok = prev.rank() == 2 && prev.type() == ElementType::kF32 &&
           prev.dim(0) == static_cast<int64_t>(r) && prev.dim(1) == hidden;
    }
    if (ok && kinds[j] == ExitConfidence::kClassifier) {
      ok = classifier.rank() == 2 && classifier.type() == ElementType::kF32 &&
           classifier.dim(1) == hidden + 1 && loops[j] >= 0 &&
           loops[j] < classifier.dim(0);
    }
  }
  if (!ok) {
    return absl::InternalError(absl::StrCat(
        "HiddenExitConfidences of ", state.DebugString(), " with ", r,
        " rows, prev ", prev.DebugString(), ", classifier ",
        classifier.DebugString(), ", ", loops.size(), " loops, ",
        kinds.size(), " kinds and ", out.size(), " outputs"));
  }
  return absl::OkStatus();
}

absl::Status Backend::HiddenExitConfidences(
    const Tensor& state, std::span<const int32_t> rows, const Tensor& prev,
    const Tensor& classifier, std::span<const int32_t> loops,
    std::span<const ExitConfidence> kinds, float eps, std::span<float> out) {
  if (absl::Status s = CheckHiddenExitConfidenceArgs(state, rows, prev,
                                                     classifier, loops, kinds,
                                                     out);
      !s.ok()) {
    return s;
  }
  if (rows.empty()) return absl::OkStatus();
  // Host copies of hidden-sized rows (the states, the previous states, the
  // small classifier table): O(rows * hidden), never the logits.
  auto host = [this](const Tensor& t) -> absl::StatusOr<std::vector<float>> {
    std::vector<float> v(t.empty() ? 0 : t.num_elements());
    if (!v.empty()) {
      if (absl::Status s = CopyToHost(t, v); !s.ok()) return s;
    }
    return v;
  };
  absl::StatusOr<std::vector<float>> h = host(state);
  if (!h.ok()) return h.status();
  absl::StatusOr<std::vector<float>> p = host(prev);
  if (!p.ok()) return p.status();
  absl::StatusOr<std::vector<float>> c = host(classifier);
  if (!c.ok()) return c.status();
  ComputeHiddenExitConfidences(h->data(), state.dim(1), rows, p->data(),
                               c->data(), loops, kinds, eps, out);
  return absl::OkStatus();
}

size_t ElementSize(ElementType type) {
  switch (type) {
    case ElementType::kF32:
      return 4;
    case ElementType::kF16:
    case ElementType::kBF16:
      return 2;
    case ElementType::kI8:
      return 1;
  }
  return 0;
}

std::string_view ElementTypeName(ElementType type) {
  switch (type) {
    case ElementType::kF32:
      return "f32";
    case ElementType::kF16:
      return "f16";
    case ElementType::kBF16:
      return "bf16";
    case ElementType::kI8:
      return "i8";
  }
  return "unknown";
}

Tensor::Tensor(void* data, ElementType type, absl::Span<const int64_t> shape,
               std::unique_ptr<Storage> storage)
    : data_(data),
      type_(type),
      shape_(shape.begin(), shape.end()),
      storage_(std::move(storage)) {}

Tensor::Tensor(Tensor&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      type_(other.type_),
      shape_(std::move(other.shape_)),
      storage_(std::move(other.storage_)) {
  other.shape_.clear();
}

Tensor& Tensor::operator=(Tensor&& other) noexcept {
  if (this != &other) {
    data_ = std::exchange(other.data_, nullptr);
    type_ = other.type_;
    shape_ = std::move(other.shape_);
    other.shape_.clear();
    storage_ = std::move(other.storage_);
  }
  return *this;
}

int64_t Tensor::num_elements() const {
  if (shape_.empty()) return data_ == nullptr ? 0 : 1;
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

size_t Tensor::size_bytes() const {
  return static_cast<size_t>(num_elements()) * ElementSize(type_);
}

Tensor Tensor::Rows(int64_t begin, int64_t count) const {
  STRATA_CHECK(!shape_.empty());
  STRATA_CHECK(begin >= 0 && count >= 0 && begin + count <= shape_[0]);
  const int64_t row_elements = shape_[0] == 0 ? 0 : num_elements() / shape_[0];
  Tensor view;
  view.data_ =
      static_cast<char*>(data_) + begin * row_elements * ElementSize(type_);
  view.type_ = type_;
  view.shape_ = shape_;
  view.shape_[0] = count;
  return view;
}

std::string Tensor::DebugString() const {
  return absl::StrCat(std::string(ElementTypeName(type_)), "[",
                      absl::StrJoin(shape_, ","), "]");
}

}  // namespace strata
