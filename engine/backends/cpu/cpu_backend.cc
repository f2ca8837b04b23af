#include "engine/backends/cpu/cpu_backend.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/bf16_matmul.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/int8_matmul.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/packed_matmul.h"
#include "kernels/cpu/paged_attention.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/softmax_stats.h"

namespace strata {
namespace {

// Zero-filled memory from calloc: large pools (the KV cache) get their pages
// lazily from the OS instead of being touched up front.
class CallocStorage : public Tensor::Storage {
 public:
  explicit CallocStorage(void* data) : data_(data) {}
  ~CallocStorage() override { std::free(data_); }

 private:
  void* data_;
};

// An uploaded host vector, adopted without a copy.
class VectorStorage : public Tensor::Storage {
 public:
  explicit VectorStorage(std::vector<float> data) : data_(std::move(data)) {}
  float* data() { return data_.data(); }

 private:
  std::vector<float> data_;
};

// What a packed weight's panels hold, each read by its own kernel.
enum class PanelFormat {
  kF32,        // cpu::PackedMatMul (float)
  kBf16,       // cpu::PackedMatMul (uint16_t), widened to f32
  kBf16Pairs,  // cpu::Bf16MatMul (Compute::kBf16, --dtype=bf16)
  kInt8,       // cpu::Int8MatMul[WithOutliers] (--quantization)
};

// A weight repacked into column panels (kernels/cpu/), 64-byte aligned so
// that panel rows do not straddle cache lines, for MatMul. A table
// (embeddings, possibly tied to the LM head) also keeps its row-major f32
// copy, which the tensor's data points at, for the embedding gather; a
// Linear weight is only ever multiplied, so its tensor points at the panels.
// A slice (CpuBackend::WeightRows) points into another weight's panels and
// scales and owns nothing.
class PackedWeightStorage : public Tensor::Storage {
 public:
  struct Int8Params {
    std::vector<float> scales;  // [Int8ScaleCount(m, k, group_size)]
    int32_t group_size = 0;
    // LLM.int8() outliers; max_outliers 0 = plain int8.
    float threshold = 0.0f;
    int32_t max_outliers = 0;
  };

  PackedWeightStorage(PanelFormat format, void* packed, Int8Params int8,
                      std::vector<float> rows)
      : format_(format),
        packed_(packed),
        owns_packed_(true),
        int8_(std::move(int8)),
        scales_(int8_.scales.data()),
        rows_(std::move(rows)) {}
  ~PackedWeightStorage() override {
    if (owns_packed_) std::free(packed_);
  }

  const void* packed() const { return packed_; }
  float* rows() { return rows_.data(); }
  bool is_table() const { return !rows_.empty(); }

  // The rows from `begin` (a multiple of the panels' 16 rows) of this
  // [m, k] weight: the panels from begin / 16 and their scales, which are
  // stored panel after panel in every format.
  std::unique_ptr<PackedWeightStorage> Slice(int64_t begin, int64_t k) const;

  // Whether MultiplyAdd takes this weight: f32 panels (LoRA factors).
  bool adds() const { return format_ == PanelFormat::kF32; }
  // out += x * W^T, the product's bits as Multiply gives them (adds() only).
  void MultiplyAdd(const cpu::KernelContext& ctx, const float* x, int64_t n,
                   int64_t m, int64_t k, float* out) const {
    STRATA_CHECK(adds());
    cpu::PackedMatMulAdd(ctx, x, static_cast<const float*>(packed_), n, m, k,
                         out);
  }

  // out = x * W^T. x: [n, k], out: [n, m]
  void Multiply(const cpu::KernelContext& ctx, const float* x, int64_t n,
                int64_t m, int64_t k, float* out) const {
    switch (format_) {
      case PanelFormat::kF32:
        cpu::PackedMatMul(ctx, x, static_cast<const float*>(packed_), n, m, k,
                          out);
        return;
      case PanelFormat::kBf16:
        cpu::PackedMatMul(ctx, x, static_cast<const uint16_t*>(packed_), n, m,
                          k, out);
        return;
      case PanelFormat::kBf16Pairs:
        cpu::Bf16MatMul(ctx, /*avx512=*/true, x,
                        static_cast<const uint16_t*>(packed_), n, m, k, out);
        return;
      case PanelFormat::kInt8: {
        const cpu::Int8Panels panels{static_cast<const uint8_t*>(packed_),
                                     scales_, int8_.group_size};
        const cpu::Int8Isa isa = cpu::Int8IsaFor(ctx.isa);
        if (int8_.max_outliers > 0) {
          cpu::Int8MatMulWithOutliers(ctx, isa, x, panels, n, m, k,
                                      int8_.threshold, int8_.max_outliers, out);
        } else {
          cpu::Int8MatMul(ctx, isa, x, panels, n, m, k, out);
        }
        return;
      }
    }
  }

 private:
  // A slice's storage (Slice).
  PackedWeightStorage(PanelFormat format, void* packed, const float* scales,
                      const Int8Params& int8)
      : format_(format), packed_(packed), owns_packed_(false), scales_(scales) {
    int8_.group_size = int8.group_size;
    int8_.threshold = int8.threshold;
    int8_.max_outliers = int8.max_outliers;
  }

  PanelFormat format_;
  void* packed_;
  bool owns_packed_;
  Int8Params int8_;  // a slice keeps its scales in the whole's
  const float* scales_;
  std::vector<float> rows_;  // empty for a Linear weight
};

// Bytes of the panels of an [m, k] weight in `format`.
size_t PanelBytes(PanelFormat format, int64_t m, int64_t k) {
  switch (format) {
    case PanelFormat::kF32:
      return static_cast<size_t>(cpu::PackedWeightSize(m, k)) * sizeof(float);
    case PanelFormat::kBf16:
      return static_cast<size_t>(cpu::PackedWeightSize(m, k)) *
             sizeof(uint16_t);
    case PanelFormat::kBf16Pairs:
      return static_cast<size_t>(cpu::Bf16PairPackedSize(m, k)) *
             sizeof(uint16_t);
    case PanelFormat::kInt8:
      return static_cast<size_t>(cpu::Int8PackedBytes(m, k));
  }
  return 0;
}

std::unique_ptr<PackedWeightStorage> PackedWeightStorage::Slice(
    int64_t begin, int64_t k) const {
  const float* scales =
      format_ == PanelFormat::kInt8
          ? scales_ + cpu::Int8ScaleCount(begin, k, int8_.group_size)
          : nullptr;
  return std::unique_ptr<PackedWeightStorage>(new PackedWeightStorage(
      format_, static_cast<char*>(packed_) + PanelBytes(format_, begin, k),
      scales, int8_));
}

ElementType PanelType(PanelFormat format) {
  switch (format) {
    case PanelFormat::kF32:
      return ElementType::kF32;
    case PanelFormat::kBf16:
    case PanelFormat::kBf16Pairs:
      return ElementType::kBF16;
    case PanelFormat::kInt8:
      return ElementType::kI8;
  }
  return ElementType::kF32;
}

int64_t Product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

float* F32(const Tensor& t) { return static_cast<float*>(t.data()); }

// Rows and row width of a rank >= 1 tensor viewed as a matrix.
int64_t Rows(const Tensor& t) { return t.rank() == 0 ? 1 : t.dim(0); }
int64_t Cols(const Tensor& t) {
  const int64_t rows = Rows(t);
  return rows == 0 ? 0 : t.num_elements() / rows;
}

// in [rows, cols] times w^T -> [rows, w rows] on the calling thread, as
// MatMul computes it (packed or plain f32 w).
void MultiplyInline(const cpu::KernelContext& inline_ctx, const Tensor& w,
                    const float* in, int64_t rows, int64_t cols,
                    float* product) {
  if (const auto* packed =
          dynamic_cast<const PackedWeightStorage*>(w.storage());
      packed != nullptr) {
    packed->Multiply(inline_ctx, in, rows, Rows(w), cols, product);
  } else {
    cpu::MatMul(inline_ctx, in, F32(w), rows, Rows(w), cols, product);
  }
}

// out [rows, w rows] += in times w^T, as MultiplyInline's product added to
// out; f32 panels add in the kernel's epilogue, other weights through
// `scratch`.
void MultiplyAddInline(const cpu::KernelContext& inline_ctx, const Tensor& w,
                       const float* in, int64_t rows, int64_t cols, float* out,
                       std::vector<float>& scratch) {
  if (const auto* packed =
          dynamic_cast<const PackedWeightStorage*>(w.storage());
      packed != nullptr && packed->adds()) {
    packed->MultiplyAdd(inline_ctx, in, rows, Rows(w), cols, out);
    return;
  }
  scratch.resize(static_cast<size_t>(rows * Rows(w)));
  MultiplyInline(inline_ctx, w, in, rows, cols, scratch.data());
  cpu::Add(inline_ctx, scratch.data(), rows * Rows(w), out);
}

cpu::AttentionGeometry Geometry(const AttentionShape& s) {
  return cpu::AttentionGeometry{s.num_heads, s.num_kv_heads, s.head_dim,
                                s.block_size, s.scale};
}

}  // namespace

absl::StatusOr<std::unique_ptr<CpuBackend>> CpuBackend::Create(
    const Options& options) {
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_threads must be >= 0, got ", options.num_threads));
  }
  const cpu::Isa isa = options.isa.value_or(cpu::DefaultIsa());
  if (!cpu::IsaSupported(isa)) {
    return absl::FailedPreconditionError(
        absl::StrCat("this CPU does not support the ",
                     std::string(cpu::IsaName(isa)), " kernels"));
  }
  if (options.compute == Compute::kBf16 && !cpu::Bf16DotSupported()) {
    return absl::FailedPreconditionError(
        "bf16 compute needs AVX-512 BF16 (vdpbf16ps), which this CPU lacks");
  }
  if (options.quantization == Quantization::kLlmInt8 &&
      (!(options.llm_int8_threshold > 0.0f) ||
       options.llm_int8_max_outliers <= 0)) {
    return absl::InvalidArgumentError(
        "llm_int8_threshold and llm_int8_max_outliers must be positive");
  }
  if (!cpu::Int8GroupSizeValid(options.int8_group_size)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--int8_group_size=", options.int8_group_size,
        ": expected 0 (per output channel) or a multiple of 4 up to 1024"));
  }
  if (options.int8_group_size != 0 &&
      options.quantization == Quantization::kNone) {
    return absl::InvalidArgumentError(
        "--int8_group_size needs --quantization=int8 or llm.int8");
  }
  auto pool = std::make_unique<cpu::ThreadPool>(options.num_threads);
  return std::unique_ptr<CpuBackend>(
      new CpuBackend(std::move(pool), isa, options));
}

absl::StatusOr<std::unique_ptr<Backend>> CpuBackend::FromOptions(
    const BackendOptions& options) {
  auto refuse = [](const std::string& flag, const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " is not supported by the cpu backend (", why, ")"));
  };
  Options cpu_options;
  if (options.dtype.has_value()) {
    if (*options.dtype != ElementType::kBF16) {
      return refuse(absl::StrCat("--dtype=",
                                 std::string(ElementTypeName(*options.dtype))),
                    "it stores weights as f32, bf16 or int8; --dtype=bf16 "
                    "multiplies bf16 weights by bf16 activations");
    }
    if (!cpu::Bf16DotSupported()) {
      return absl::FailedPreconditionError(
          "--dtype=bf16 on the cpu backend needs AVX-512 BF16 (vdpbf16ps), "
          "which this CPU lacks; leave --dtype unset (f32 compute)");
    }
    if (options.quantization != Quantization::kNone) {
      return refuse("--dtype with --quantization",
                    "quantized weights are int8; leave --dtype unset");
    }
    cpu_options.compute = Compute::kBf16;
  }
  cpu_options.quantization = options.quantization;
  cpu_options.llm_int8_threshold = options.llm_int8_threshold;
  cpu_options.int8_group_size = options.int8_group_size;
  if (options.device != 0) return refuse("--device", "one host");
  if (options.step_graphs) return refuse("--cuda_graphs", "CUDA only");
  if (options.gpu_memory_fraction != 0.0) {
    return refuse("--gpu_memory_fraction", "size the pool with --kv_cache_mb");
  }
  cpu_options.num_threads = options.num_threads;
  absl::StatusOr<std::unique_ptr<CpuBackend>> backend = Create(cpu_options);
  if (!backend.ok()) return backend.status();
  return std::unique_ptr<Backend>(std::move(*backend));
}

CpuBackend::CpuBackend(std::unique_ptr<cpu::ThreadPool> pool, cpu::Isa isa,
                       const Options& options)
    : pool_(std::move(pool)), context_{isa, pool_.get()}, options_(options) {}

std::string CpuBackend::Description() const {
  std::string weights;
  if (options_.quantization != Quantization::kNone) {
    weights = absl::StrCat(
        ", ", std::string(QuantizationName(options_.quantization)), " (",
        std::string(cpu::Int8IsaName(cpu::Int8IsaFor(context_.isa))), ")");
  } else if (options_.compute == Compute::kBf16) {
    weights = ", bf16 compute";
  }
  return absl::StrCat("cpu ", std::string(cpu::IsaName(context_.isa)), ", ",
                      pool_->num_threads(), " threads", weights);
}

absl::StatusOr<Tensor> CpuBackend::Allocate(ElementType type,
                                            std::vector<int64_t> shape) {
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError("negative tensor dimension");
    }
  }
  const size_t bytes = static_cast<size_t>(Product(shape)) * ElementSize(type);
  void* data = std::calloc(bytes == 0 ? 1 : bytes, 1);
  if (data == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", bytes, " bytes of host memory"));
  }
  return Tensor(data, type, std::move(shape),
                std::make_unique<CallocStorage>(data));
}

absl::StatusOr<Tensor> CpuBackend::Upload(std::vector<float> host,
                                          std::vector<int64_t> shape) {
  if (static_cast<int64_t>(host.size()) != Product(shape)) {
    return absl::InvalidArgumentError(
        absl::StrCat("upload of ", host.size(), " floats into a tensor of ",
                     Product(shape), " elements"));
  }
  auto storage = std::make_unique<VectorStorage>(std::move(host));
  float* data = storage->data();
  return Tensor(data, ElementType::kF32, std::move(shape), std::move(storage));
}

absl::StatusOr<Tensor> CpuBackend::UploadWeight(std::vector<float> host,
                                                std::vector<int64_t> shape,
                                                WeightRole role) {
  if (role == WeightRole::kVector || shape.size() != 2) {
    return Upload(std::move(host), std::move(shape));
  }
  if (static_cast<int64_t>(host.size()) != Product(shape)) {
    return absl::InvalidArgumentError(
        absl::StrCat("upload of ", host.size(), " floats into a tensor of ",
                     Product(shape), " elements"));
  }
  const int64_t m = shape[0], k = shape[1];
  // LoRA factors stay f32: they are small and their scaled B is rarely a
  // bfloat16 value anyway.
  const bool adapter = role == WeightRole::kAdapter;
  const bool quantize =
      !adapter && options_.quantization != Quantization::kNone &&
      (role == WeightRole::kLinear || options_.quantize_tables);
  PanelFormat format = PanelFormat::kF32;
  if (quantize) {
    format = PanelFormat::kInt8;
  } else if (!adapter && options_.compute == Compute::kBf16) {
    format = PanelFormat::kBf16Pairs;  // rounded to bf16 if not already
  } else if (!adapter && cpu::IsBf16Exact(host.data(), Product(shape))) {
    format = PanelFormat::kBf16;
  }
  const size_t bytes = PanelBytes(format, m, k);
  // aligned_alloc wants a size that is a multiple of the alignment.
  void* data =
      std::aligned_alloc(64, std::max<size_t>(64, (bytes + 63) / 64 * 64));
  if (data == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", bytes, " bytes of host memory"));
  }
  PackedWeightStorage::Int8Params int8;
  switch (format) {
    case PanelFormat::kF32:
      cpu::PackWeight(host.data(), m, k, static_cast<float*>(data));
      break;
    case PanelFormat::kBf16:
      cpu::PackWeightBf16(host.data(), m, k, static_cast<uint16_t*>(data));
      break;
    case PanelFormat::kBf16Pairs:
      cpu::PackWeightBf16Pairs(host.data(), m, k, static_cast<uint16_t*>(data));
      break;
    case PanelFormat::kInt8:
      int8.group_size = options_.int8_group_size;
      int8.scales.resize(
          static_cast<size_t>(cpu::Int8ScaleCount(m, k, int8.group_size)));
      cpu::QuantizeWeightInt8(host.data(), m, k, static_cast<uint8_t*>(data),
                              int8.scales.data(), int8.group_size);
      if (options_.quantization == Quantization::kLlmInt8) {
        int8.threshold = options_.llm_int8_threshold;
        int8.max_outliers = options_.llm_int8_max_outliers;
      }
      break;
  }
  if (role == WeightRole::kTable) {
    // The panels on top of the f32 rows, for a 1.3-1.8x faster LM head (and
    // exit heads of recursive models) at batch sizes >= 4.
    auto storage = std::make_unique<PackedWeightStorage>(
        format, data, std::move(int8), std::move(host));
    float* rows = storage->rows();
    return Tensor(rows, ElementType::kF32, std::move(shape),
                  std::move(storage));
  }
  // The element type says what the panels hold (never read as rows).
  return Tensor(data, PanelType(format), std::move(shape),
                std::make_unique<PackedWeightStorage>(
                    format, data, std::move(int8), std::vector<float>()));
}

absl::Status CpuBackend::CopyToHost(const Tensor& src, std::span<float> host) {
  if (static_cast<int64_t>(host.size()) != src.num_elements()) {
    return absl::InternalError(absl::StrCat("CopyToHost of ", src.DebugString(),
                                            " into ", host.size(), " floats"));
  }
  if (!host.empty()) std::memcpy(host.data(), src.data(), src.size_bytes());
  return absl::OkStatus();
}

std::span<const float> CpuBackend::HostView(const Tensor& t) const {
  if (t.type() != ElementType::kF32 || t.data() == nullptr) return {};
  return {static_cast<const float*>(t.data()),
          static_cast<size_t>(t.num_elements())};
}

void CpuBackend::Embedding(const Tensor& table, std::span<const TokenId> ids,
                           Tensor* out) {
  STRATA_CHECK(Rows(*out) == static_cast<int64_t>(ids.size()));
  STRATA_CHECK(Cols(*out) == Cols(table));
  cpu::EmbeddingGather(context_, F32(table), Cols(table), ids, F32(*out));
}

void CpuBackend::MatMul(const Tensor& x, const Tensor& w, Tensor* out) {
  const int64_t n = Rows(x), k = Cols(x), m = Rows(w);
  STRATA_CHECK(Cols(w) == k);
  STRATA_CHECK(Rows(*out) == n);
  STRATA_CHECK(Cols(*out) == m);
  if (const auto* packed =
          dynamic_cast<const PackedWeightStorage*>(w.storage());
      packed != nullptr) {
    packed->Multiply(context_, F32(x), n, m, k, F32(*out));
  } else {
    cpu::MatMul(context_, F32(x), F32(w), n, m, k, F32(*out));
  }
}

int64_t CpuBackend::WeightRowAlignment() const { return cpu::kPanelWidth; }

absl::StatusOr<Tensor> CpuBackend::WeightRows(const Tensor& w, int64_t begin,
                                              int64_t count) const {
  const auto* packed = dynamic_cast<const PackedWeightStorage*>(w.storage());
  if (packed == nullptr || packed->is_table() || w.rank() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WeightRows slices a Linear weight from UploadWeight, not ",
        w.DebugString()));
  }
  const int64_t m = w.dim(0), k = w.dim(1);
  const int64_t align = WeightRowAlignment();
  if (begin < 0 || count <= 0 || begin + count > m || begin % align != 0 ||
      (count % align != 0 && begin + count != m)) {
    return absl::InvalidArgumentError(
        absl::StrCat("WeightRows [", begin, ", ", begin + count, ") of ", m,
                     " rows: the slice must start and end on a ", align,
                     "-row panel (or at the end)"));
  }
  std::unique_ptr<PackedWeightStorage> slice = packed->Slice(begin, k);
  void* data = const_cast<void*>(slice->packed());
  return Tensor(data, w.type(), {count, k}, std::move(slice));
}

void CpuBackend::SplitColumns(const Tensor& x, std::span<Tensor* const> parts) {
  const int64_t n = Rows(x), width = Cols(x);
  int64_t total = 0;
  for (const Tensor* part : parts) {
    STRATA_CHECK(Rows(*part) == n);
    total += Cols(*part);
  }
  STRATA_CHECK(total == width);
  const float* src = F32(x);
  for (int64_t i = 0; i < n; ++i) {
    for (Tensor* part : parts) {
      const int64_t w = Cols(*part);
      std::memcpy(F32(*part) + i * w, src,
                  static_cast<size_t>(w) * sizeof(float));
      src += w;
    }
  }
}

bool CpuBackend::AddLowRank(const Tensor& x,
                            std::span<const LowRankSegment> segments,
                            Tensor* out) {
  // A group of one part. Packed (kAdapter) and plain f32 factors alike, as
  // the CUDA backend accepts both: the op must not depend on how a test or
  // loader uploaded its pair.
  thread_local std::vector<LowRankGroupSegment> groups;  // reused per call
  groups.clear();
  for (const LowRankSegment& seg : segments) {
    groups.push_back({seg.first_row, seg.num_rows, seg.a, {seg.b}});
  }
  Tensor* const outs[] = {out};
  return AddLowRankGroup(x, groups, outs);
}

bool CpuBackend::AddLowRankGroup(const Tensor& x,
                                 std::span<const LowRankGroupSegment> segments,
                                 std::span<Tensor* const> outs) {
  const int64_t k = Cols(x);
  const int64_t parts = static_cast<int64_t>(outs.size());
  STRATA_CHECK(parts >= 1 && parts <= 3);
  struct Task {
    const LowRankGroupSegment* segment;
    int64_t first_row, num_rows;
    // The segment's A as f32 panels when it has one panel (a stacked rank
    // of at most 16), for cpu::PackedMatMulPair below; else null.
    const float* one_panel_a;
  };
  // Reused per call (a recursive step makes a few dozen of these calls).
  // The jobs below read them through these references: a thread_local named
  // in a task would be the worker's own.
  thread_local std::vector<Task> task_scratch;
  std::vector<Task>& tasks = task_scratch;
  tasks.clear();
  constexpr int64_t kRowsPerTask = 8;  // the packed kernel's row tile
  int64_t macs = 0;
  for (const LowRankGroupSegment& seg : segments) {
    STRATA_CHECK(seg.a->type() == ElementType::kF32 && Cols(*seg.a) == k &&
                 Rows(*seg.a) % parts == 0);
    const int64_t rank = Rows(*seg.a) / parts;
    int64_t width = 0;
    for (int64_t p = 0; p < parts; ++p) {
      STRATA_CHECK(
          seg.b[p] != nullptr && seg.b[p]->type() == ElementType::kF32 &&
          Cols(*seg.b[p]) == rank && Rows(*seg.b[p]) == Cols(*outs[p]));
      width += Rows(*seg.b[p]);
    }
    STRATA_CHECK(seg.first_row >= 0 && seg.first_row + seg.num_rows <= Rows(x));
    macs += int64_t{seg.num_rows} * rank * (parts * k + width);
    const auto* packed =
        dynamic_cast<const PackedWeightStorage*>(seg.a->storage());
    const float* one_panel_a =
        packed != nullptr && packed->adds() && Rows(*seg.a) <= cpu::kPanelWidth
            ? static_cast<const float*>(packed->packed())
            : nullptr;
    for (int64_t r = 0; r < seg.num_rows; r += kRowsPerTask) {
      tasks.push_back({&seg, seg.first_row + r,
                       std::min(kRowsPerTask, seg.num_rows - r), one_panel_a});
    }
  }
  // Jobs of one task, or two consecutive tasks whose A-products run in one
  // register tile (cpu::PackedMatMulPair): a step whose rows sit at two
  // loops has two segments of a few rows each, and the A-product of a
  // one-panel A (a stacked rank of at most 16: o, gate and up, down) is
  // one accumulator chain per row over k, which for a few rows waits on
  // the multiply-add's latency; two segments' chains together cost what one
  // segment's do. The same bits as one task at a time.
  struct Job {
    int64_t first_task, num_tasks;
  };
  thread_local std::vector<Job> job_scratch;
  std::vector<Job>& jobs = job_scratch;
  jobs.clear();
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (i + 1 < tasks.size() &&
        tasks[i].num_rows + tasks[i + 1].num_rows <= kRowsPerTask &&
        tasks[i].one_panel_a != nullptr &&
        tasks[i + 1].one_panel_a != nullptr) {
      jobs.push_back({static_cast<int64_t>(i), 2});
      ++i;
    } else {
      jobs.push_back({static_cast<int64_t>(i), 1});
    }
  }
  const cpu::KernelContext inline_ctx{context_.isa, nullptr};
  // Per part p of task t (its stacked A-product in `low`): part p's columns
  // of it, as its own A gave them, times B_p, added to outs[p].
  auto add_parts = [&](const Task& t, const float* low) {
    const int64_t stacked = Rows(*t.segment->a);
    const int64_t rank = stacked / parts;
    thread_local std::vector<float> part_low, scratch;
    part_low.resize(static_cast<size_t>(t.num_rows * rank));
    for (int64_t p = 0; p < parts; ++p) {
      const float* in = low;
      if (parts > 1) {
        for (int64_t r = 0; r < t.num_rows; ++r) {
          std::memcpy(part_low.data() + r * rank, low + r * stacked + p * rank,
                      static_cast<size_t>(rank) * sizeof(float));
        }
        in = part_low.data();
      }
      const Tensor& b = *t.segment->b[p];
      MultiplyAddInline(inline_ctx, b, in, t.num_rows, rank,
                        F32(*outs[p]) + t.first_row * Rows(b), scratch);
    }
  };
  // A rank-r update of a decode step's few rows is a few thousand
  // multiply-adds a row: on the pool its hand-off would cost more than the
  // work (a depth-wise step runs one per projection group and loop).
  context_.ForMacs(macs).ParallelFor(
      static_cast<int64_t>(jobs.size()), [&](int64_t j) {
        const Job& job = jobs[j];
        thread_local std::vector<float> low[2];
        for (int64_t i = 0; i < job.num_tasks; ++i) {
          const Task& t = tasks[job.first_task + i];
          low[i].resize(static_cast<size_t>(t.num_rows * Rows(*t.segment->a)));
        }
        const Task& t0 = tasks[job.first_task];
        if (job.num_tasks == 2) {
          const Task& t1 = tasks[job.first_task + 1];
          cpu::PackedMatMulPair(context_.isa, F32(x) + t0.first_row * k,
                                t0.num_rows, t0.one_panel_a,
                                F32(x) + t1.first_row * k, t1.num_rows,
                                t1.one_panel_a, Rows(*t0.segment->a), k,
                                low[0].data(), low[1].data());
        } else {
          MultiplyInline(inline_ctx, *t0.segment->a, F32(x) + t0.first_row * k,
                         t0.num_rows, k, low[0].data());
        }
        for (int64_t i = 0; i < job.num_tasks; ++i) {
          add_parts(tasks[job.first_task + i], low[i].data());
        }
      });
  return true;
}

void CpuBackend::StartHostTask(absl::AnyInvocable<void()> task) {
  pool_->StartSideTask(std::move(task));
}

void CpuBackend::WaitHostTask() { pool_->WaitSideTask(); }

void CpuBackend::AddBias(const Tensor& bias, Tensor* x) {
  STRATA_CHECK(bias.num_elements() == Cols(*x));
  cpu::AddBias(context_, F32(bias), Rows(*x), Cols(*x), F32(*x));
}

void CpuBackend::Add(const Tensor& y, Tensor* x) {
  STRATA_CHECK(y.num_elements() == x->num_elements());
  cpu::Add(context_, F32(y), x->num_elements(), F32(*x));
}

void CpuBackend::RmsNorm(const Tensor& x, const Tensor& weight, float eps,
                         Tensor* out) {
  STRATA_CHECK(weight.num_elements() == Cols(x));
  STRATA_CHECK(out->num_elements() == x.num_elements());
  cpu::RmsNorm(context_, F32(x), F32(weight), Rows(x), Cols(x), eps, F32(*out));
}

void CpuBackend::SiluMul(const Tensor& gate, const Tensor& up, Tensor* out) {
  STRATA_CHECK(gate.num_elements() == up.num_elements());
  STRATA_CHECK(gate.num_elements() == out->num_elements());
  cpu::SiluMul(context_, F32(gate), F32(up), gate.num_elements(), F32(*out));
}

void CpuBackend::Rope(const Tensor& rope_table,
                      std::span<const int32_t> positions, int32_t head_dim,
                      Tensor* x) {
  STRATA_CHECK(Cols(rope_table) == head_dim);
  STRATA_CHECK(Rows(*x) == static_cast<int64_t>(positions.size()));
  STRATA_CHECK(Cols(*x) % head_dim == 0);
  cpu::ApplyRope(context_, F32(rope_table), positions, Cols(*x) / head_dim,
                 head_dim, F32(*x));
}

void CpuBackend::WriteKv(const Tensor& k, const Tensor& v,
                         std::span<const int32_t> slots,
                         const AttentionShape& shape, Tensor* k_cache,
                         Tensor* v_cache) {
  STRATA_CHECK(Rows(k) == static_cast<int64_t>(slots.size()));
  STRATA_CHECK(Cols(k) ==
               static_cast<int64_t>(shape.num_kv_heads) * shape.head_dim);
  STRATA_CHECK(k.num_elements() == v.num_elements());
  cpu::WriteKvCache(context_, Geometry(shape), F32(k), F32(v), slots,
                    F32(*k_cache), F32(*v_cache));
}

void CpuBackend::CopyKvBlocks(std::span<const BlockCopy> copies,
                              std::span<Tensor* const> caches) {
  // A few blocks per step (one per forked sequence): plain memcpy, in order.
  for (Tensor* cache : caches) {
    STRATA_CHECK(cache->rank() >= 1);
    const int64_t num_blocks = cache->dim(0);
    const size_t block_bytes =
        num_blocks == 0 ? 0 : cache->size_bytes() / num_blocks;
    char* base = static_cast<char*>(cache->data());
    for (const BlockCopy& copy : copies) {
      STRATA_CHECK(copy.src >= 0 && copy.src < num_blocks);
      STRATA_CHECK(copy.dst >= 0 && copy.dst < num_blocks);
      STRATA_CHECK(copy.src != copy.dst);
      std::memcpy(base + static_cast<size_t>(copy.dst) * block_bytes,
                  base + static_cast<size_t>(copy.src) * block_bytes,
                  block_bytes);
    }
  }
}

void CpuBackend::PagedAttention(const Tensor& q, const Tensor& k_cache,
                                const Tensor& v_cache,
                                const AttentionShape& shape,
                                std::span<const SequenceSlice> sequences,
                                Tensor* out) {
  STRATA_CHECK(Cols(q) ==
               static_cast<int64_t>(shape.num_heads) * shape.head_dim);
  STRATA_CHECK(out->num_elements() == q.num_elements());
  thread_local std::vector<cpu::AttentionSequence> seqs;  // reused per call
  seqs.clear();
  for (const SequenceSlice& s : sequences) {
    STRATA_CHECK(static_cast<int64_t>(s.first_row) + s.num_tokens <= Rows(q));
    seqs.push_back(
        {s.first_row, s.num_tokens, s.start_position, s.block_table});
  }
  cpu::PagedAttention(context_, Geometry(shape), F32(q), F32(k_cache),
                      F32(v_cache), seqs, F32(*out));
}

absl::Status CpuBackend::ExitConfidences(const Tensor& logits,
                                         std::span<const ExitConfidence> kinds,
                                         std::span<float> out) {
  if (absl::Status s = CheckExitConfidenceArgs(logits, kinds, out); !s.ok()) {
    return s;
  }
  const int64_t rows = Rows(logits), vocab = Cols(logits);
  context_.ParallelFor(rows, [&](int64_t i) {
    const std::span<const float> row(F32(logits) + i * vocab,
                                     static_cast<size_t>(vocab));
    out[i] = ComputeExitConfidence(row, kinds[i], RowSoftmaxStats(row));
  });
  return absl::OkStatus();
}

SoftmaxStats CpuBackend::RowSoftmaxStats(std::span<const float> row) const {
  // The vectorised kernel: every sampled token and every exit check pays a
  // pass over the vocabulary, and libm's expf per element was a visible part
  // of the engine thread's profile.
  const cpu::SoftmaxStats stats = cpu::ComputeSoftmaxStats(
      context_.isa, row.data(), static_cast<int64_t>(row.size()));
  return {stats.max, stats.sum_exp};
}

absl::Status CpuBackend::HiddenExitConfidences(
    const Tensor& state, std::span<const int32_t> rows, const Tensor& prev,
    const Tensor& classifier, std::span<const int32_t> loops,
    std::span<const ExitConfidence> kinds, float eps, std::span<float> out) {
  if (absl::Status s = CheckHiddenExitConfidenceArgs(
          state, rows, prev, classifier, loops, kinds, out);
      !s.ok()) {
    return s;
  }
  // O(hidden) per row: serial (a thread hand-off costs more than the work).
  ComputeHiddenExitConfidences(F32(state), Cols(state), rows, F32(prev),
                               F32(classifier), loops, kinds, eps, out);
  return absl::OkStatus();
}

void CpuBackend::GatherRows(const Tensor& x, std::span<const int32_t> rows,
                            Tensor* out) {
  const int64_t width = Cols(x);
  STRATA_CHECK(Rows(*out) == static_cast<int64_t>(rows.size()));
  STRATA_CHECK(Cols(*out) == width);
  for (size_t i = 0; i < rows.size(); ++i) {
    STRATA_CHECK(rows[i] >= 0 && rows[i] < Rows(x));
    std::memcpy(F32(*out) + static_cast<int64_t>(i) * width,
                F32(x) + static_cast<int64_t>(rows[i]) * width,
                static_cast<size_t>(width) * sizeof(float));
  }
}

}  // namespace strata
