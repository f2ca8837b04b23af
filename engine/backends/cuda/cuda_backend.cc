#include "engine/backends/cuda/cuda_backend.h"

// Compiled only in CUDA builds: strata_cuda_backend (cmake/cuda.cmake).

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dtype.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/exit_confidence.h"
#include "kernels/cuda/int8_gemv.h"
#include "kernels/cuda/int8_matmul.h"
#include "kernels/cuda/kv_block_copy.h"
#include "kernels/cuda/low_rank.h"
#include "kernels/cuda/lt_gemm.h"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/sampling.h"

namespace strata {
namespace {

using cuda::CudaStatus;

// Device memory owned by a tensor.
class DeviceStorage : public Tensor::Storage {
 public:
  explicit DeviceStorage(void* data) : data_(data) {}
  ~DeviceStorage() override { cudaFree(data_); }

 private:
  void* data_;
};

// A growable device buffer for per-op scratch. Growing frees the old buffer
// (cudaFree waits for the device, so queued ops that read it are done).
class Scratch {
 public:
  // *generation is bumped whenever the buffer moves (step graphs hold its
  // address).
  explicit Scratch(uint64_t* generation) : generation_(generation) {}
  ~Scratch() {
    if (data_ != nullptr) cudaFree(data_);
  }
  absl::StatusOr<void*> Get(size_t bytes) {
    if (bytes <= capacity_ && data_ != nullptr) return data_;
    if (data_ != nullptr) cudaFree(data_);
    data_ = nullptr;
    capacity_ = 0;
    ++*generation_;
    const size_t want = std::max(bytes, capacity_ * 3 / 2) + 256;
    STRATA_CUDA_RETURN_IF_ERROR(cudaMalloc(&data_, want));
    capacity_ = want;
    return data_;
  }

 private:
  uint64_t* generation_;
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

enum class GraphMode { kOff, kCapture, kReplay };

cuda::DType ToDType(ElementType t) {
  switch (t) {
    case ElementType::kF16:
      return cuda::DType::kF16;
    case ElementType::kBF16:
      return cuda::DType::kBF16;
    default:
      return cuda::DType::kF32;
  }
}

cuda::GemmType ToGemmType(ElementType t) {
  switch (t) {
    case ElementType::kF16:
      return cuda::GemmType::kF16;
    case ElementType::kBF16:
      return cuda::GemmType::kBF16;
    case ElementType::kI8:
      return cuda::GemmType::kI8;
    default:
      return cuda::GemmType::kF32;
  }
}

int64_t Rows(const Tensor& t) { return t.rank() == 0 ? 1 : t.dim(0); }
int64_t Cols(const Tensor& t) {
  const int64_t rows = Rows(t);
  return rows == 0 ? 0 : t.num_elements() / rows;
}
float* F32(const Tensor& t) { return static_cast<float*>(t.data()); }

int64_t Product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

struct CudaBackend::Impl {
  cudaStream_t stream = nullptr;
  std::unique_ptr<cuda::LtGemm> gemm;
  size_t total_memory = 0;
  // Bumped whenever a device address an op may use can have changed
  // (allocations, scratch and staging growth): step graphs recorded at an
  // older generation are stale.
  uint64_t generation = 0;

  // Host metadata staging: pinned host and device buffers of equal size,
  // filled front to back and recycled after each stream synchronisation.
  void* pinned = nullptr;
  void* staging = nullptr;
  size_t staging_bytes = 0;
  size_t staging_used = 0;

  Scratch input16{&generation};  // [n, k] GEMM input in the weights' type
  Scratch dequantized{
      &generation};             // [m, k] int8 weights dequantized for prefill
  Scratch act_i8{&generation};  // [n, k] int8 activations
  Scratch act_scales{&generation};   // [n] f32
  Scratch acc_i32{&generation};      // [n, m] int32
  Scratch outliers_x{&generation};   // [n, max_outliers] f16
  Scratch outliers_w{&generation};   // [m, max_outliers] f16
  Scratch outlier_out{&generation};  // [n, m] f32
  Scratch outlier_meta{
      &generation};  // flags [k] u8, cols [max_outliers] i32, count
  Scratch attention{&generation};  // decode split partials
  Scratch low_rank{&generation};
  Scratch exit_confidence{
      &generation};  // [rows] f32    // [n, r] f32 segmented LoRA intermediate
  Scratch sampling{&generation};    // [rows, vocab] f32
  Scratch sample_out{&generation};  // [rows] SampleOutput

  // Step graphs (CudaBackend::BeginStepGraph).
  struct StepGraph {
    cudaGraphExec_t exec = nullptr;
    uint64_t generation = 0;
  };
  bool step_graphs = false;
  GraphMode graph_mode = GraphMode::kOff;
  StepGraphKey graph_key;
  uint64_t graph_generation = 0;  // at BeginStepGraph
  std::map<StepGraphKey, StepGraph> graphs;
  std::map<StepGraphKey, uint64_t> warm;  // run eagerly at this generation
  std::set<StepGraphKey> refused;         // could not be captured
  GraphStats stats;

  ~Impl() {
    for (auto& [key, graph] : graphs) cudaGraphExecDestroy(graph.exec);
    gemm.reset();
    if (pinned != nullptr) cudaFreeHost(pinned);
    if (staging != nullptr) cudaFree(staging);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  absl::Status Sync() {
    STRATA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    staging_used = 0;
    return absl::OkStatus();
  }

  // Copies host bytes to device memory valid for ops queued before the next
  // Sync(). Returns the device address.
  absl::StatusOr<void*> Stage(const void* host, size_t bytes) {
    const size_t aligned = (bytes + 255) / 256 * 256;
    if (staging_used + aligned > staging_bytes) {
      if (graph_mode != GraphMode::kOff) {
        // Recording or replaying: no synchronisation, no new addresses.
        return absl::FailedPreconditionError(
            "staging buffer full inside a step graph");
      }
      if (absl::Status s = Sync(); !s.ok()) return s;
      if (aligned > staging_bytes) {
        if (pinned != nullptr) cudaFreeHost(pinned);
        if (staging != nullptr) cudaFree(staging);
        pinned = staging = nullptr;
        staging_bytes = 0;
        ++generation;
        const size_t want = std::max(aligned, size_t{8} << 20);
        STRATA_CUDA_RETURN_IF_ERROR(cudaMallocHost(&pinned, want));
        STRATA_CUDA_RETURN_IF_ERROR(cudaMalloc(&staging, want));
        staging_bytes = want;
      }
    }
    char* h = static_cast<char*>(pinned) + staging_used;
    char* d = static_cast<char*>(staging) + staging_used;
    if (bytes > 0) std::memcpy(h, host, bytes);
    // A replayed graph holds this copy already (same offset, same size).
    // Empty copies are skipped (no zero-size node in a capture).
    if (graph_mode != GraphMode::kReplay && bytes > 0) {
      STRATA_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, stream));
    }
    staging_used += aligned;
    return static_cast<void*>(d);
  }

  template <typename T>
  absl::StatusOr<T*> StageSpan(std::span<const T> values) {
    absl::StatusOr<void*> d = Stage(values.data(), values.size_bytes());
    if (!d.ok()) return d.status();
    return static_cast<T*>(*d);
  }
};

absl::StatusOr<CudaBackend::Options> CudaBackend::OptionsFrom(
    const BackendOptions& from) {
  if (from.int8_group_size != 0) {
    return absl::InvalidArgumentError(
        "--int8_group_size is not supported by the cuda backend (its int8 "
        "weights have one scale per output channel)");
  }
  Options options;
  options.dtype = from.dtype.value_or(ElementType::kBF16);
  options.quantization = from.quantization;
  options.llm_int8_threshold = from.llm_int8_threshold;
  options.device = from.device;
  options.step_graphs = from.step_graphs;
  options.gpu_memory_fraction = from.gpu_memory_fraction;
  return options;
}

absl::StatusOr<std::unique_ptr<Backend>> CudaBackend::FromOptions(
    const BackendOptions& from) {
  absl::StatusOr<Options> options = OptionsFrom(from);
  if (!options.ok()) return options.status();
  absl::StatusOr<std::unique_ptr<CudaBackend>> backend = Create(*options);
  if (!backend.ok()) return backend.status();
  return std::unique_ptr<Backend>(std::move(*backend));
}

absl::StatusOr<int64_t> CudaBackend::KvCacheBudgetBytes(
    const ModelConfig& config, int64_t requested) const {
  if (options_.gpu_memory_fraction <= 0.0) return requested;
  return KvBudgetBytes(options_.gpu_memory_fraction,
                       EstimateWeightBytes(config, options_));
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(
    const Options& options) {
  if (options.dtype != ElementType::kF16 &&
      options.dtype != ElementType::kBF16) {
    return absl::InvalidArgumentError("CUDA dtype must be f16 or bf16");
  }
  if (options.llm_int8_max_outliers <= 0 ||
      options.llm_int8_max_outliers % 8 != 0) {
    return absl::InvalidArgumentError(
        "llm_int8_max_outliers must be a positive multiple of 8");
  }
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no CUDA device: ",
        e != cudaSuccess ? std::string(cudaGetErrorString(e))
                         : std::string("cudaGetDeviceCount found none")));
  }
  if (options.device < 0 || options.device >= count) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no CUDA device ", options.device, " (", count, " visible)"));
  }
  STRATA_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  cudaDeviceProp prop;
  STRATA_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, options.device));
  if (prop.major < 8) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", prop.name, " is sm_", prop.major,
                     prop.minor, "; Strata's kernels need sm_80 or newer"));
  }
  auto impl = std::make_unique<Impl>();
  impl->total_memory = prop.totalGlobalMem;
  STRATA_CUDA_RETURN_IF_ERROR(
      cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking));
  absl::StatusOr<std::unique_ptr<cuda::LtGemm>> gemm =
      cuda::LtGemm::Create(options.gemm_workspace_bytes);
  if (!gemm.ok()) return gemm.status();
  impl->gemm = *std::move(gemm);
  impl->step_graphs = options.step_graphs;
  return std::unique_ptr<CudaBackend>(
      new CudaBackend(options, std::move(impl), prop.name));
}

CudaBackend::CudaBackend(const Options& options, std::unique_ptr<Impl> impl,
                         std::string device_name)
    : options_(options),
      impl_(std::move(impl)),
      device_name_(std::move(device_name)) {}

CudaBackend::~CudaBackend() {
  if (impl_ != nullptr && impl_->stream != nullptr) {
    cudaStreamSynchronize(impl_->stream);
  }
}

int64_t CudaBackend::EstimateWeightBytes(const ModelConfig& c,
                                         const Options& options) {
  const int64_t q_dim =
      static_cast<int64_t>(c.num_attention_heads) * c.head_dim;
  const int64_t kv_dim =
      static_cast<int64_t>(c.num_key_value_heads) * c.head_dim;
  const int64_t h = c.hidden_size;
  const int64_t linear_per_layer =
      h * q_dim * 2 + h * kv_dim * 2 +
      3 * h * static_cast<int64_t>(c.intermediate_size);
  const int64_t linear_bytes =
      options.quantization == Quantization::kNone ? 2 : 1;
  const int64_t tables =
      static_cast<int64_t>(c.vocab_size) * h * (c.tie_word_embeddings ? 1 : 2);
  const int64_t rope =
      static_cast<int64_t>(c.max_position_embeddings) * c.head_dim * 4;
  // Recursive models: a LoRA pair per (loop, layer, projection), kept f32
  // (WeightRole::kAdapter): r * (in + out) values each.
  const int64_t lora_per_layer =
      c.lora_rank > 0
          ? static_cast<int64_t>(c.lora_rank) *
                (2 * (h + q_dim) + 2 * (h + kv_dim) +
                 3 * (h + static_cast<int64_t>(c.intermediate_size)))
          : 0;
  const int64_t lora = static_cast<int64_t>(c.num_loops) * c.num_hidden_layers *
                       lora_per_layer * 4;
  return c.num_hidden_layers * linear_per_layer * linear_bytes + tables * 2 +
         rope + lora;
}

absl::StatusOr<int64_t> CudaBackend::KvBudgetBytes(double fraction,
                                                   int64_t weight_bytes) const {
  size_t free_bytes = 0, total_bytes = 0;
  STRATA_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
  const int64_t in_use = static_cast<int64_t>(total_bytes - free_bytes);
  // Activations, GEMM scratch and the cuBLASLt workspace.
  const int64_t reserve = std::max<int64_t>(
      int64_t{1} << 30, static_cast<int64_t>(total_bytes) / 50);
  const int64_t budget = static_cast<int64_t>(fraction * total_bytes) - in_use -
                         weight_bytes - reserve;
  if (budget <= 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("gpu_memory_fraction ", fraction, " of ", total_bytes,
                     " bytes leaves no room for the KV cache (in use ", in_use,
                     ", weights ~", weight_bytes, ", reserve ", reserve, ")"));
  }
  return budget;
}

std::string CudaBackend::Description() const {
  const char* q = options_.quantization == Quantization::kNone ? ""
                  : options_.quantization == Quantization::kWeightInt8
                      ? ", int8 weights"
                      : ", llm.int8";
  return absl::StrCat("cuda ", device_name_, ", ",
                      std::string(ElementTypeName(options_.dtype)), q);
}

bool CudaBackend::Record(absl::Status status) {
  if (!pending_.ok()) return false;
  pending_ = std::move(status);
  return pending_.ok();
}

absl::Status CudaBackend::Synchronize() {
  Record(impl_->Sync());
  absl::Status s = std::move(pending_);
  pending_ = absl::OkStatus();
  return s;
}

bool CudaBackend::Replaying() const {
  return impl_->graph_mode == GraphMode::kReplay;
}

void CudaBackend::set_step_graphs(bool on) { impl_->step_graphs = on; }

CudaBackend::GraphStats CudaBackend::graph_stats() const {
  GraphStats stats = impl_->stats;
  stats.graphs = static_cast<int64_t>(impl_->graphs.size());
  return stats;
}

bool CudaBackend::BeginStepGraph(const StepGraphKey& key) {
  Impl& g = *impl_;
  if (!g.step_graphs || g.graph_mode != GraphMode::kOff || !pending_.ok() ||
      key.num_rows < 1 || key.num_rows > options_.max_graph_rows ||
      key.table_stride < 1 || g.refused.count(key) > 0) {
    return false;
  }
  // Staged metadata must land at the offsets the capture used: start from
  // an idle stream and an empty staging buffer.
  if (!Record(g.Sync())) return false;
  if (auto it = g.graphs.find(key); it != g.graphs.end()) {
    if (it->second.generation == g.generation) {
      g.graph_mode = GraphMode::kReplay;
      g.graph_key = key;
      g.graph_generation = g.generation;
      return true;
    }
    cudaGraphExecDestroy(it->second.exec);  // stale addresses
    g.graphs.erase(it);
  }
  // The first step of a key (at this generation) runs eagerly, so that every
  // scratch buffer has grown to its size before a capture fixes addresses.
  auto [warm, first] = g.warm.try_emplace(key, g.generation);
  if (first || warm->second != g.generation) {
    warm->second = g.generation;
    return false;
  }
  if (static_cast<int64_t>(g.graphs.size()) >= options_.max_step_graphs) {
    return false;
  }
  if (cudaStreamBeginCapture(g.stream, cudaStreamCaptureModeThreadLocal) !=
      cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  g.graph_mode = GraphMode::kCapture;
  g.graph_key = key;
  g.graph_generation = g.generation;
  return true;
}

absl::Status CudaBackend::EndStepGraph(bool commit) {
  Impl& g = *impl_;
  const GraphMode mode = g.graph_mode;
  g.graph_mode = GraphMode::kOff;
  const StepGraphKey key = g.graph_key;
  // An address an op used may have moved since the capture or the Begin.
  const bool moved = g.generation != g.graph_generation;
  if (mode == GraphMode::kOff) return absl::OkStatus();
  if (mode == GraphMode::kReplay) {
    if (!commit) return absl::OkStatus();  // nothing was queued
    auto it = g.graphs.find(key);
    if (!pending_.ok() || moved || it == g.graphs.end()) {
      // Nothing was queued (replayed ops only stage): run the step eagerly.
      pending_ = absl::OkStatus();
      if (it != g.graphs.end()) {
        cudaGraphExecDestroy(it->second.exec);
        g.graphs.erase(it);
      }
      ++g.stats.aborted;
      return absl::AbortedError("step graph replay given up; run eagerly");
    }
    ++g.stats.replays;
    Record(CudaStatus(cudaGraphLaunch(it->second.exec, g.stream),
                      "cudaGraphLaunch"));
    return absl::OkStatus();
  }
  // Capture: nothing ran yet, the ops were recorded.
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(g.stream, &graph);
  cudaGraphExec_t exec = nullptr;
  bool ok = commit && end == cudaSuccess && graph != nullptr && pending_.ok() &&
            !moved;
  if (ok) ok = cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
  if (graph != nullptr) cudaGraphDestroy(graph);
  if (!ok) {
    (void)cudaGetLastError();  // the capture's error, not a sticky one
    const absl::Status why = pending_;
    pending_ = absl::OkStatus();
    if (!commit) return absl::OkStatus();
    ++g.stats.aborted;
    // An address that moved is worth another try later; anything else
    // (an op that cannot be captured) is not.
    if (!moved) g.refused.insert(key);
    return absl::AbortedError(absl::StrCat("step graph capture failed (",
                                           cudaGetErrorString(end), "; ",
                                           why.ToString(), "); run eagerly"));
  }
  g.graphs[key] = {exec, g.generation};
  ++g.stats.captures;
  Record(CudaStatus(cudaGraphLaunch(exec, g.stream), "cudaGraphLaunch"));
  return absl::OkStatus();
}

absl::StatusOr<Tensor> CudaBackend::Allocate(ElementType type,
                                             std::vector<int64_t> shape) {
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError("negative tensor dimension");
  }
  size_t bytes = static_cast<size_t>(Product(shape)) * ElementSize(type);
  if (type == ElementType::kI8) {
    bytes = Int8ScalesOffset(Product(shape)) +
            static_cast<size_t>(shape.empty() ? 1 : shape[0]) * sizeof(float);
  }
  void* data = nullptr;
  ++impl_->generation;  // a new address (step graphs hold old ones)
  STRATA_CUDA_RETURN_IF_ERROR(cudaMalloc(&data, bytes == 0 ? 256 : bytes));
  auto storage = std::make_unique<DeviceStorage>(data);
  STRATA_CUDA_RETURN_IF_ERROR(
      cudaMemsetAsync(data, 0, bytes == 0 ? 256 : bytes, impl_->stream));
  return Tensor(data, type, std::move(shape), std::move(storage));
}

absl::StatusOr<Tensor> CudaBackend::Upload(std::vector<float> host,
                                           std::vector<int64_t> shape) {
  if (static_cast<int64_t>(host.size()) != Product(shape)) {
    return absl::InvalidArgumentError(
        absl::StrCat("upload of ", host.size(), " floats into a tensor of ",
                     Product(shape), " elements"));
  }
  absl::StatusOr<Tensor> t = Allocate(ElementType::kF32, std::move(shape));
  if (!t.ok()) return t.status();
  STRATA_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(t->data(), host.data(), host.size() * sizeof(float),
                      cudaMemcpyHostToDevice, impl_->stream));
  STRATA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(impl_->stream));
  return t;
}

absl::StatusOr<Tensor> CudaBackend::UploadWeight(std::vector<float> host,
                                                 std::vector<int64_t> shape,
                                                 WeightRole role) {
  if (role == WeightRole::kVector || role == WeightRole::kAdapter) {
    return Upload(std::move(host), std::move(shape));
  }
  // Stage as f32 on the device, then convert or quantize there.
  absl::StatusOr<Tensor> f32 = Upload(std::move(host), shape);
  if (!f32.ok()) return f32.status();
  const int64_t count = f32->num_elements();
  const bool quantize = role == WeightRole::kLinear &&
                        options_.quantization != Quantization::kNone &&
                        shape.size() == 2;
  if (quantize) {
    absl::StatusOr<Tensor> q = Allocate(ElementType::kI8, shape);
    if (!q.ok()) return q.status();
    int8_t* qd = static_cast<int8_t*>(q->data());
    float* scales = reinterpret_cast<float*>(reinterpret_cast<char*>(qd) +
                                             Int8ScalesOffset(count));
    STRATA_CUDA_RETURN_IF_ERROR(cuda::LaunchQuantizeRows(
        F32(*f32), shape[0], shape[1], qd, scales, impl_->stream));
    STRATA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(impl_->stream));
    return q;
  }
  absl::StatusOr<Tensor> t = Allocate(options_.dtype, std::move(shape));
  if (!t.ok()) return t.status();
  STRATA_CUDA_RETURN_IF_ERROR(cuda::LaunchConvertF32(
      F32(*f32), count, ToDType(options_.dtype), t->data(), impl_->stream));
  STRATA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(impl_->stream));
  return t;
}

absl::Status CudaBackend::CopyToHost(const Tensor& src, std::span<float> host) {
  if (src.type() != ElementType::kF32 ||
      static_cast<int64_t>(host.size()) != src.num_elements()) {
    return absl::InternalError(absl::StrCat("CopyToHost of ", src.DebugString(),
                                            " into ", host.size(), " floats"));
  }
  if (impl_->graph_mode != GraphMode::kOff) {
    // A host read cannot be part of a graph; the caller's bracket is wrong.
    Record(absl::FailedPreconditionError("CopyToHost inside a step graph"));
    return pending_;
  }
  if (pending_.ok() && !host.empty()) {
    Record(CudaStatus(cudaMemcpyAsync(host.data(), src.data(), src.size_bytes(),
                                      cudaMemcpyDeviceToHost, impl_->stream),
                      "cudaMemcpyAsync to host"));
  }
  return Synchronize();
}

void CudaBackend::Embedding(const Tensor& table, std::span<const TokenId> ids,
                            Tensor* out) {
  STRATA_CHECK(Rows(*out) == static_cast<int64_t>(ids.size()));
  STRATA_CHECK(Cols(*out) == Cols(table));
  if (!pending_.ok()) return;
  absl::StatusOr<const int32_t*> d = impl_->StageSpan(ids);
  if (!Record(d.status()) || Replaying()) return;
  Record(CudaStatus(cuda::LaunchEmbeddingGather(
                        table.data(), ToDType(table.type()), *d, Rows(*out),
                        Cols(table), F32(*out), impl_->stream),
                    "EmbeddingGather"));
}

void CudaBackend::MatMul(const Tensor& x, const Tensor& w, Tensor* out) {
  const int64_t n = Rows(x), k = Cols(x), m = Rows(w);
  STRATA_CHECK(Cols(w) == k);
  STRATA_CHECK(Rows(*out) == n && Cols(*out) == m);
  STRATA_CHECK(x.type() == ElementType::kF32);
  if (!pending_.ok() || n == 0 || Replaying()) return;
  cudaStream_t stream = impl_->stream;
  auto gemm16 = [&](const void* w16, ElementType type) {
    absl::StatusOr<void*> xin =
        impl_->input16.Get(static_cast<size_t>(n * k) * 2);
    if (!Record(xin.status())) return;
    if (!Record(CudaStatus(
            cuda::LaunchConvertF32(F32(x), n * k, ToDType(type), *xin, stream),
            "ConvertF32"))) {
      return;
    }
    Record(impl_->gemm->MatMul(ToGemmType(type), *xin, w16, n, m, k,
                               out->data(), stream));
  };
  switch (w.type()) {
    case ElementType::kF32:
      Record(impl_->gemm->MatMul(cuda::GemmType::kF32, x.data(), w.data(), n, m,
                                 k, out->data(), stream));
      return;
    case ElementType::kF16:
    case ElementType::kBF16:
      gemm16(w.data(), w.type());
      return;
    case ElementType::kI8:
      break;
  }
  const int8_t* wq = static_cast<const int8_t*>(w.data());
  const float* w_scales = reinterpret_cast<const float*>(
      static_cast<const char*>(w.data()) + Int8ScalesOffset(m * k));
  const bool llm_int8 = options_.quantization == Quantization::kLlmInt8 &&
                        k % 4 == 0 && m % 4 == 0;
  if (!llm_int8) {
    // Weight-only int8: the GEMV for decode-sized batches, else dequantize
    // to 16-bit and use the tensor-core GEMM (prefill is compute-bound).
    if (n <= cuda::kMaxGemvRows) {
      Record(CudaStatus(cuda::LaunchInt8Gemv(F32(x), wq, w_scales, n, m, k,
                                             F32(*out), stream),
                        "Int8Gemv"));
      return;
    }
    absl::StatusOr<void*> deq =
        impl_->dequantized.Get(static_cast<size_t>(m * k) * 2);
    if (!Record(deq.status())) return;
    if (!Record(CudaStatus(
            cuda::LaunchDequantizeRows(wq, w_scales, m, k,
                                       ToDType(options_.dtype), *deq, stream),
            "DequantizeRows"))) {
      return;
    }
    gemm16(*deq, options_.dtype);
    return;
  }
  // LLM.int8(): see kernels/cuda/int8_matmul.h for the steps.
  const int32_t cap = options_.llm_int8_max_outliers;
  absl::StatusOr<void*> meta = impl_->outlier_meta.Get(
      static_cast<size_t>(k) + 256 + (static_cast<size_t>(cap) + 1) * 4);
  absl::StatusOr<void*> xq = impl_->act_i8.Get(static_cast<size_t>(n * k));
  absl::StatusOr<void*> xs = impl_->act_scales.Get(static_cast<size_t>(n) * 4);
  absl::StatusOr<void*> xo =
      impl_->outliers_x.Get(static_cast<size_t>(n) * cap * 2);
  absl::StatusOr<void*> wo =
      impl_->outliers_w.Get(static_cast<size_t>(m) * cap * 2);
  absl::StatusOr<void*> acc =
      impl_->acc_i32.Get(static_cast<size_t>(n * m) * 4);
  absl::StatusOr<void*> oo =
      impl_->outlier_out.Get(static_cast<size_t>(n * m) * 4);
  for (const auto* s : {&meta, &xq, &xs, &xo, &wo, &acc, &oo}) {
    if (!Record(s->status())) return;
  }
  uint8_t* flags = static_cast<uint8_t*>(*meta);
  int32_t* cols = reinterpret_cast<int32_t*>(
      static_cast<char*>(*meta) + (static_cast<size_t>(k) + 255) / 256 * 256);
  int32_t* count = cols + cap;
  if (!Record(CudaStatus(cuda::LaunchFindOutlierColumns(
                             F32(x), n, k, options_.llm_int8_threshold, cap,
                             flags, cols, count, stream),
                         "FindOutlierColumns")) ||
      !Record(CudaStatus(
          cuda::LaunchQuantizeActivations(
              F32(x), n, k, flags, cols, cap, static_cast<int8_t*>(*xq),
              static_cast<float*>(*xs), *xo, stream),
          "QuantizeActivations")) ||
      !Record(CudaStatus(cuda::LaunchGatherOutlierWeights(
                             wq, w_scales, m, k, cols, cap, *wo, stream),
                         "GatherOutlierWeights")) ||
      // Inliers: at decode batch sizes a GEMV that streams the weights once
      // (exact int32, so the same bits as the GEMM), else cuBLASLt int8.
      !Record(n <= cuda::kMaxGemvRows &&
                      cuda::Int8DotGemvSupports(static_cast<const int8_t*>(*xq),
                                                wq, n, k)
                  ? CudaStatus(cuda::LaunchInt8DotGemv(
                                   static_cast<const int8_t*>(*xq), wq, n, m, k,
                                   static_cast<int32_t*>(*acc), stream),
                               "Int8DotGemv")
                  : impl_->gemm->MatMul(cuda::GemmType::kI8, *xq, wq, n, m, k,
                                        *acc, stream)) ||
      !Record(impl_->gemm->MatMul(cuda::GemmType::kF16, *xo, *wo, n, m, cap,
                                  *oo, stream))) {
    return;
  }
  Record(CudaStatus(
      cuda::LaunchDequantizeInt8Product(
          static_cast<const int32_t*>(*acc), static_cast<const float*>(*xs),
          w_scales, static_cast<const float*>(*oo), n, m, F32(*out), stream),
      "DequantizeInt8Product"));
}

void CudaBackend::AddBias(const Tensor& bias, Tensor* x) {
  STRATA_CHECK(bias.num_elements() == Cols(*x));
  if (!pending_.ok() || Replaying()) return;
  Record(CudaStatus(cuda::LaunchAddBias(F32(bias), Rows(*x), Cols(*x), F32(*x),
                                        impl_->stream),
                    "AddBias"));
}

void CudaBackend::Add(const Tensor& y, Tensor* x) {
  STRATA_CHECK(y.num_elements() == x->num_elements());
  if (!pending_.ok() || Replaying()) return;
  Record(CudaStatus(
      cuda::LaunchAdd(F32(y), x->num_elements(), F32(*x), impl_->stream),
      "Add"));
}

bool CudaBackend::AddLowRank(const Tensor& x,
                             std::span<const LowRankSegment> segments,
                             Tensor* out) {
  if (segments.empty()) return true;
  const int64_t n = Rows(x), k = Cols(x), m = Cols(*out);
  STRATA_CHECK(Rows(*out) == n);
  STRATA_CHECK(x.type() == ElementType::kF32);
  const int64_t r = Rows(*segments[0].a);
  // Above the kernels' rank the caller's per-segment GEMMs take over.
  if (r < 1 || r > cuda::kMaxLowRank) return false;
  std::vector<int32_t> row_segment(static_cast<size_t>(n), -1);
  std::vector<cuda::LowRankPair> pairs;
  pairs.reserve(segments.size());
  for (const LowRankSegment& s : segments) {
    STRATA_CHECK(s.a->type() == ElementType::kF32 &&
                 s.b->type() == ElementType::kF32);
    STRATA_CHECK(Rows(*s.a) == r && Cols(*s.a) == k);
    STRATA_CHECK(Rows(*s.b) == m && Cols(*s.b) == r);
    STRATA_CHECK(s.first_row >= 0 && s.num_rows >= 0 &&
                 static_cast<int64_t>(s.first_row) + s.num_rows <= n);
    for (int32_t i = s.first_row; i < s.first_row + s.num_rows; ++i) {
      // Overlapping segments would add twice; the planner never makes them.
      STRATA_CHECK(row_segment[i] < 0);
      row_segment[i] = static_cast<int32_t>(pairs.size());
    }
    pairs.push_back({F32(*s.a), F32(*s.b)});
  }
  if (!pending_.ok() || n == 0) return true;
  absl::StatusOr<const int32_t*> d_rows =
      impl_->StageSpan(std::span<const int32_t>(row_segment));
  if (!Record(d_rows.status())) return true;
  absl::StatusOr<const cuda::LowRankPair*> d_pairs =
      impl_->StageSpan(std::span<const cuda::LowRankPair>(pairs));
  if (!Record(d_pairs.status()) || Replaying()) return true;
  absl::StatusOr<void*> t =
      impl_->low_rank.Get(static_cast<size_t>(n * r) * sizeof(float));
  if (!Record(t.status())) return true;
  Record(CudaStatus(
      cuda::LaunchSegmentedLowRank(F32(x), n, k, m, static_cast<int32_t>(r),
                                   *d_rows, *d_pairs, static_cast<float*>(*t),
                                   F32(*out), impl_->stream),
      "SegmentedLowRank"));
  return true;
}

void CudaBackend::RmsNorm(const Tensor& x, const Tensor& weight, float eps,
                          Tensor* out) {
  STRATA_CHECK(weight.num_elements() == Cols(x));
  STRATA_CHECK(out->num_elements() == x.num_elements());
  if (!pending_.ok() || Replaying()) return;
  Record(CudaStatus(cuda::LaunchRmsNorm(nullptr, F32(x), F32(weight), Rows(x),
                                        Cols(x), eps, F32(*out), impl_->stream),
                    "RmsNorm"));
}

void CudaBackend::AddRmsNorm(const Tensor& y, const Tensor& weight, float eps,
                             Tensor* x, Tensor* out) {
  STRATA_CHECK(y.num_elements() == x->num_elements());
  STRATA_CHECK(weight.num_elements() == Cols(*x));
  STRATA_CHECK(out->num_elements() == x->num_elements());
  if (!pending_.ok() || Replaying()) return;
  Record(
      CudaStatus(cuda::LaunchRmsNorm(F32(y), F32(*x), F32(weight), Rows(*x),
                                     Cols(*x), eps, F32(*out), impl_->stream),
                 "AddRmsNorm"));
}

void CudaBackend::SiluMul(const Tensor& gate, const Tensor& up, Tensor* out) {
  STRATA_CHECK(gate.num_elements() == up.num_elements());
  STRATA_CHECK(gate.num_elements() == out->num_elements());
  if (!pending_.ok() || Replaying()) return;
  Record(CudaStatus(cuda::LaunchSiluMul(F32(gate), F32(up), gate.num_elements(),
                                        F32(*out), impl_->stream),
                    "SiluMul"));
}

void CudaBackend::Rope(const Tensor& rope_table,
                       std::span<const int32_t> positions, int32_t head_dim,
                       Tensor* x) {
  STRATA_CHECK(Cols(rope_table) == head_dim);
  STRATA_CHECK(Rows(*x) == static_cast<int64_t>(positions.size()));
  STRATA_CHECK(Cols(*x) % head_dim == 0);
  if (!pending_.ok()) return;
  absl::StatusOr<const int32_t*> d = impl_->StageSpan(positions);
  if (!Record(d.status()) || Replaying()) return;
  Record(CudaStatus(
      cuda::LaunchRope(F32(rope_table), *d, Rows(*x), Cols(*x) / head_dim,
                       head_dim, F32(*x), impl_->stream),
      "Rope"));
}

namespace {
cuda::AttentionGeometry Geometry(const AttentionShape& s, ElementType cache) {
  cuda::AttentionGeometry g;
  g.num_heads = s.num_heads;
  g.num_kv_heads = s.num_kv_heads;
  g.head_dim = s.head_dim;
  g.block_size = s.block_size;
  g.scale = s.scale;
  g.cache_type = ToDType(cache);
  return g;
}
}  // namespace

void CudaBackend::WriteKv(const Tensor& k, const Tensor& v,
                          std::span<const int32_t> slots,
                          const AttentionShape& shape, Tensor* k_cache,
                          Tensor* v_cache) {
  STRATA_CHECK(Rows(k) == static_cast<int64_t>(slots.size()));
  STRATA_CHECK(Cols(k) ==
               static_cast<int64_t>(shape.num_kv_heads) * shape.head_dim);
  STRATA_CHECK(k.num_elements() == v.num_elements());
  STRATA_CHECK(k_cache->type() == v_cache->type());
  if (!pending_.ok()) return;
  absl::StatusOr<const int32_t*> d = impl_->StageSpan(slots);
  if (!Record(d.status()) || Replaying()) return;
  Record(
      CudaStatus(cuda::LaunchWriteKv(Geometry(shape, k_cache->type()), F32(k),
                                     F32(v), *d, Rows(k), k_cache->data(),
                                     v_cache->data(), impl_->stream),
                 "WriteKv"));
}

void CudaBackend::PagedAttention(const Tensor& q, const Tensor& k_cache,
                                 const Tensor& v_cache,
                                 const AttentionShape& shape,
                                 std::span<const SequenceSlice> sequences,
                                 Tensor* out) {
  STRATA_CHECK(Cols(q) ==
               static_cast<int64_t>(shape.num_heads) * shape.head_dim);
  STRATA_CHECK(out->num_elements() == q.num_elements());
  STRATA_CHECK(shape.head_dim <= cuda::kMaxHeadDim);
  if (!pending_.ok()) return;
  // Host metadata: all block tables in one array; single-token sequences go
  // to the decode kernel, chunks to the prefill kernel in tiles.
  // In a step graph every table is padded to the key's stride and the
  // decode grid sized for it, so the launch shape and the staged sizes
  // depend only on the key.
  const bool padded = impl_->graph_mode != GraphMode::kOff;
  const int32_t stride = impl_->graph_key.table_stride;
  std::vector<int32_t> tables;
  std::vector<cuda::DecodeRow> decode;
  std::vector<cuda::PrefillTile> tiles;
  int64_t max_context =
      padded ? static_cast<int64_t>(stride) * shape.block_size : 0;
  for (const SequenceSlice& s : sequences) {
    STRATA_CHECK(static_cast<int64_t>(s.first_row) + s.num_tokens <= Rows(q));
    const int32_t offset = static_cast<int32_t>(tables.size());
    tables.insert(tables.end(), s.block_table.begin(), s.block_table.end());
    if (padded) {
      if (static_cast<int64_t>(s.block_table.size()) > stride) {
        Record(absl::FailedPreconditionError(
            absl::StrCat("block table of ", s.block_table.size(),
                         " entries in a step graph of stride ", stride)));
        return;
      }
      tables.resize(static_cast<size_t>(offset) + stride, 0);
    }
    if (s.num_tokens == 1) {
      decode.push_back({s.first_row, s.start_position, offset});
      max_context = std::max<int64_t>(max_context, s.start_position + 1);
      continue;
    }
    for (int32_t t = 0; t < s.num_tokens; t += cuda::kPrefillTile) {
      tiles.push_back({s.first_row + t,
                       std::min(cuda::kPrefillTile, s.num_tokens - t),
                       s.start_position + t, offset});
    }
  }
  if (tables.empty()) tables.push_back(0);
  const cuda::AttentionGeometry g = Geometry(shape, k_cache.type());
  absl::StatusOr<const int32_t*> d_tables =
      impl_->StageSpan(std::span<const int32_t>(tables));
  if (!Record(d_tables.status())) return;
  if (!decode.empty()) {
    absl::StatusOr<const cuda::DecodeRow*> d_rows =
        impl_->StageSpan(std::span<const cuda::DecodeRow>(decode));
    if (!Record(d_rows.status())) return;
    const size_t ws_bytes = cuda::DecodeWorkspaceBytes(
        g, static_cast<int64_t>(decode.size()), max_context);
    void* ws = nullptr;
    if (ws_bytes > 0) {
      absl::StatusOr<void*> w = impl_->attention.Get(ws_bytes);
      if (!Record(w.status())) return;
      ws = *w;
    }
    if (Replaying()) {
      // Launched by the graph.
    } else if (!Record(CudaStatus(
                   cuda::LaunchPagedAttentionDecode(
                       g, F32(q), k_cache.data(), v_cache.data(), *d_tables,
                       *d_rows, static_cast<int64_t>(decode.size()),
                       max_context, ws, F32(*out), impl_->stream),
                   "PagedAttentionDecode"))) {
      return;
    }
  }
  if (!tiles.empty()) {
    absl::StatusOr<const cuda::PrefillTile*> d_tiles =
        impl_->StageSpan(std::span<const cuda::PrefillTile>(tiles));
    if (!Record(d_tiles.status()) || Replaying()) return;
    Record(CudaStatus(
        cuda::LaunchPagedAttentionPrefill(
            g, F32(q), k_cache.data(), v_cache.data(), *d_tables, *d_tiles,
            static_cast<int64_t>(tiles.size()), F32(*out), impl_->stream),
        "PagedAttentionPrefill"));
  }
}

void CudaBackend::CopyKvBlocks(std::span<const BlockCopy> copies,
                               std::span<Tensor* const> caches) {
  if (copies.empty() || caches.empty()) return;
  STRATA_CHECK(caches[0]->rank() >= 1 && caches[0]->dim(0) > 0);
  const int64_t block_bytes =
      static_cast<int64_t>(caches[0]->size_bytes()) / caches[0]->dim(0);
  std::vector<void*> pointers;
  pointers.reserve(caches.size());
  for (Tensor* cache : caches) {
    STRATA_CHECK(cache->rank() >= 1 && cache->dim(0) > 0);
    STRATA_CHECK(static_cast<int64_t>(cache->size_bytes()) / cache->dim(0) ==
                 block_bytes);
    for (const BlockCopy& copy : copies) {
      STRATA_CHECK(copy.src >= 0 && copy.src < cache->dim(0));
      STRATA_CHECK(copy.dst >= 0 && copy.dst < cache->dim(0));
      STRATA_CHECK(copy.src != copy.dst);
    }
    pointers.push_back(cache->data());
  }
  if (!pending_.ok()) return;
  absl::StatusOr<void**> d_caches =
      impl_->StageSpan(std::span<void* const>(pointers));
  if (!Record(d_caches.status())) return;
  // One launch per run of independent copies (the kernel runs a launch's
  // pairs concurrently); a copy that reads or writes a block an earlier copy
  // of the run wrote, or writes one it read, starts the next run, so the
  // stream keeps the in-order contract. Normally there is a single run.
  std::vector<cuda::BlockCopyPair> run;
  auto flush = [&]() {
    if (run.empty()) return true;
    absl::StatusOr<cuda::BlockCopyPair*> d_pairs =
        impl_->StageSpan(std::span<const cuda::BlockCopyPair>(run));
    if (!Record(d_pairs.status())) return false;
    if (Replaying()) {
      run.clear();
      return true;
    }
    const bool ok = Record(CudaStatus(
        cuda::LaunchCopyKvBlocks(
            *d_caches, static_cast<int64_t>(pointers.size()), *d_pairs,
            static_cast<int64_t>(run.size()), block_bytes, impl_->stream),
        "CopyKvBlocks"));
    run.clear();
    return ok;
  };
  for (const BlockCopy& copy : copies) {
    const bool depends = std::any_of(
        run.begin(), run.end(), [&](const cuda::BlockCopyPair& earlier) {
          return earlier.dst == copy.src || earlier.dst == copy.dst ||
                 earlier.src == copy.dst;
        });
    if (depends && !flush()) return;
    run.push_back({copy.src, copy.dst});
  }
  flush();
}

void CudaBackend::GatherRows(const Tensor& x, std::span<const int32_t> rows,
                             Tensor* out) {
  STRATA_CHECK(Rows(*out) == static_cast<int64_t>(rows.size()));
  STRATA_CHECK(Cols(*out) == Cols(x));
  for (int32_t r : rows) STRATA_CHECK(r >= 0 && r < Rows(x));
  if (!pending_.ok() || rows.empty()) return;
  absl::StatusOr<const int32_t*> d = impl_->StageSpan(rows);
  if (!Record(d.status()) || Replaying()) return;
  Record(CudaStatus(cuda::LaunchGatherRows(F32(x), *d, Rows(*out), Cols(x),
                                           F32(*out), impl_->stream),
                    "GatherRows"));
}

absl::Status CudaBackend::ExitConfidences(const Tensor& logits,
                                          std::span<const ExitConfidence> kinds,
                                          std::span<float> out) {
  if (absl::Status s = CheckExitConfidenceArgs(logits, kinds, out); !s.ok()) {
    return s;
  }
  const int64_t rows = Rows(logits), vocab = Cols(logits);
  if (impl_->graph_mode != GraphMode::kOff) {
    Record(
        absl::FailedPreconditionError("ExitConfidences inside a step graph"));
    return pending_;
  }
  if (rows == 0) return Synchronize();
  std::vector<uint8_t> kind_bytes(kinds.size());
  for (size_t i = 0; i < kinds.size(); ++i) {
    kind_bytes[i] = kinds[i] == ExitConfidence::kMargin ? 1 : 0;
  }
  if (pending_.ok()) {
    absl::StatusOr<const uint8_t*> d_kinds =
        impl_->StageSpan(std::span<const uint8_t>(kind_bytes));
    absl::StatusOr<void*> d_out =
        impl_->exit_confidence.Get(static_cast<size_t>(rows) * sizeof(float));
    if (Record(d_kinds.status()) && Record(d_out.status()) &&
        Record(CudaStatus(cuda::LaunchExitConfidence(
                              F32(logits), rows, vocab, *d_kinds,
                              static_cast<float*>(*d_out), impl_->stream),
                          "ExitConfidence"))) {
      Record(CudaStatus(cudaMemcpyAsync(out.data(), *d_out, out.size_bytes(),
                                        cudaMemcpyDeviceToHost, impl_->stream),
                        "cudaMemcpyAsync of exit confidences"));
    }
  }
  return Synchronize();
}

absl::StatusOr<std::vector<SampledToken>> CudaBackend::Sample(
    const Tensor& logits, std::span<const SampleRow> rows) {
  const int64_t r = static_cast<int64_t>(rows.size());
  STRATA_CHECK(Rows(logits) == r);
  const int32_t vocab = static_cast<int32_t>(Cols(logits));
  std::vector<cuda::DeviceSamplingParams> params(rows.size());
  std::vector<cuda::PenaltyEntry> penalties;
  for (size_t i = 0; i < rows.size(); ++i) {
    const SamplingParams& sp = *rows[i].params;
    cuda::DeviceSamplingParams& p = params[i];
    p.temperature = sp.temperature;
    p.top_k = sp.top_k;
    p.top_p = sp.top_p;
    p.min_p = sp.min_p;
    p.repetition_penalty = sp.repetition_penalty;
    p.presence_penalty = sp.presence_penalty;
    p.frequency_penalty = sp.frequency_penalty;
    p.seed = sp.seed;
    p.draw_index = rows[i].output_tokens.size();
    p.penalty_begin = static_cast<int32_t>(penalties.size());
    const bool repetition =
        sp.repetition_penalty != 1.0f && sp.repetition_penalty > 0.0f;
    const bool additive =
        sp.presence_penalty != 0.0f || sp.frequency_penalty != 0.0f;
    if (repetition || additive) {
      // Distinct in-vocabulary tokens with their output counts.
      std::vector<std::pair<int32_t, int32_t>> seen;  // (token, is_output)
      if (repetition) {
        for (TokenId t : rows[i].prompt_tokens) {
          if (t >= 0 && t < vocab) seen.emplace_back(t, 0);
        }
      }
      for (TokenId t : rows[i].output_tokens) {
        if (t >= 0 && t < vocab) seen.emplace_back(t, 1);
      }
      std::sort(seen.begin(), seen.end());
      for (size_t a = 0; a < seen.size();) {
        size_t b = a;
        int32_t out_count = 0;
        while (b < seen.size() && seen[b].first == seen[a].first) {
          out_count += seen[b].second;
          ++b;
        }
        penalties.push_back({seen[a].first, additive ? out_count : 0});
        a = b;
      }
    }
    p.penalty_end = static_cast<int32_t>(penalties.size());
  }
  if (penalties.empty()) penalties.push_back({0, 0});
  if (!pending_.ok()) return Synchronize();
  absl::StatusOr<const cuda::DeviceSamplingParams*> d_params =
      impl_->StageSpan(std::span<const cuda::DeviceSamplingParams>(params));
  if (!d_params.ok()) return d_params.status();
  absl::StatusOr<const cuda::PenaltyEntry*> d_pen =
      impl_->StageSpan(std::span<const cuda::PenaltyEntry>(penalties));
  if (!d_pen.ok()) return d_pen.status();
  absl::StatusOr<void*> scratch =
      impl_->sampling.Get(static_cast<size_t>(r) * vocab * sizeof(float));
  if (!scratch.ok()) return scratch.status();
  absl::StatusOr<void*> d_out = impl_->sample_out.Get(
      static_cast<size_t>(r) * sizeof(cuda::SampleOutput));
  if (!d_out.ok()) return d_out.status();
  Record(CudaStatus(cuda::LaunchSample(F32(logits), r, vocab, *d_params, *d_pen,
                                       static_cast<float*>(*scratch),
                                       static_cast<cuda::SampleOutput*>(*d_out),
                                       impl_->stream),
                    "Sample"));
  std::vector<cuda::SampleOutput> host(rows.size());
  if (pending_.ok()) {
    Record(CudaStatus(
        cudaMemcpyAsync(host.data(), *d_out, host.size() * sizeof(host[0]),
                        cudaMemcpyDeviceToHost, impl_->stream),
        "cudaMemcpyAsync of sampled tokens"));
  }
  if (absl::Status s = Synchronize(); !s.ok()) return s;
  std::vector<SampledToken> result(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    result[i].token = host[i].token;
    result[i].logprob = host[i].logprob;
  }
  return result;
}

}  // namespace strata
