// CudaBackend: the Backend ops on one NVIDIA GPU (kernels/cuda/, cuBLASLt).
//
// Design: activations and the residual stream are f32 in device memory;
// weights are f16 or bf16 (Options::dtype) or int8 (Options::quantization);
// the KV cache is in the weights' 16-bit type. GEMMs convert their input to
// the weights' type and run through cuBLASLt with f32 accumulation and f32
// output. All work goes on one stream owned by the backend, in issue order;
// host metadata (token ids, positions, slots, block tables) is staged
// through a pinned buffer and copied on the same stream. No managed memory.
// Every CUDA / cuBLAS call is checked: ops are void (Backend contract), so
// the first failure is kept and returned by the next CopyToHost or Sample,
// and later ops are skipped until then.
//
// Not batch invariant bit for bit (cuBLASLt picks algorithms per shape); see
// docs/cuda.md for the tolerances the tests use.
//
// Threading: not thread-safe; one engine thread issues all ops.
// This header has no CUDA includes; the implementation is its own target
// (strata_cuda_backend), built only when nvcc is found, and only the backend
// registry (engine/backends/backend_registry.cc) names it.
#ifndef STRATA_ENGINE_BACKENDS_CUDA_CUDA_BACKEND_H_
#define STRATA_ENGINE_BACKENDS_CUDA_CUDA_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backends/backend.h"
#include "engine/backends/backend_options.h"
#include "engine/loader/model_config.h"

namespace strata {

class CudaBackend : public Backend {
 public:
  struct Options {
    int32_t device = 0;
    ElementType dtype = ElementType::kBF16;  // kF16 or kBF16
    Quantization quantization = Quantization::kNone;
    float llm_int8_threshold = 6.0f;
    // > 0: KvCacheBudgetBytes sizes the KV pool from this share of the card.
    double gpu_memory_fraction = 0.0;
    // Outlier columns handled in f16 per GEMM (more stay in int8); multiple
    // of 8.
    int32_t llm_int8_max_outliers = 128;
    // cuBLASLt workspace.
    size_t gemm_workspace_bytes = 32u << 20;
    // Decode steps recorded as CUDA graphs (Backend::BeginStepGraph), one
    // per StepGraphKey (batch size, logits rows, block-table stride), up to
    // max_step_graphs graphs of at most max_graph_rows rows.
    bool step_graphs = false;
    int32_t max_graph_rows = 256;
    int32_t max_step_graphs = 512;
  };

  // What the step graphs did so far.
  struct GraphStats {
    int64_t captures = 0;  // graphs recorded (and launched)
    int64_t replays = 0;   // steps run by replaying a graph
    int64_t aborted = 0;   // recordings or replays given up (step run eagerly)
    int64_t graphs = 0;    // graphs held now
  };

  // BackendOptions (parsed once at the daemon's edge) as Options: dtype
  // (default bf16), quantization, llm_int8_threshold, device, step_graphs,
  // gpu_memory_fraction (num_threads sizes nothing here).
  static absl::StatusOr<Options> OptionsFrom(const BackendOptions& options);
  // The registry's entry (backend_registry.h): Create(OptionsFrom(options)).
  static absl::StatusOr<std::unique_ptr<Backend>> FromOptions(
      const BackendOptions& options);

  // FAILED_PRECONDITION "no CUDA device: ..." when no GPU is visible.
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(
      const Options& options);

  // Device bytes the weights of `config` take with `options`.
  static int64_t EstimateWeightBytes(const ModelConfig& config,
                                     const Options& options);

  ~CudaBackend() override;

  const Options& options() const { return options_; }
  absl::StatusOr<int64_t> KvCacheBudgetBytes(const ModelConfig& config,
                                             int64_t requested) const override;
  // KV pool bytes for a GPU memory fraction: fraction * total - in use now
  // - weight_bytes still to load - an activation/workspace reserve.
  // RESOURCE_EXHAUSTED when nothing is left.
  absl::StatusOr<int64_t> KvBudgetBytes(double fraction,
                                        int64_t weight_bytes) const;
  // The card's name (cudaDeviceProp::name).
  const std::string& device_name() const { return device_name_; }
  // Waits for queued work; returns (and clears) the first pending error.
  absl::Status Synchronize();
  // Turns step graphs on or off (Options::step_graphs) between steps.
  void set_step_graphs(bool on);
  GraphStats graph_stats() const;

  std::string_view name() const override { return "cuda"; }
  std::string Description() const override;

  absl::StatusOr<Tensor> Allocate(ElementType type,
                                  std::vector<int64_t> shape) override;
  absl::StatusOr<Tensor> Upload(std::vector<float> host,
                                std::vector<int64_t> shape) override;
  absl::Status CopyToHost(const Tensor& src, std::span<float> host) override;
  absl::StatusOr<Tensor> UploadWeight(std::vector<float> host,
                                      std::vector<int64_t> shape,
                                      WeightRole role) override;
  ElementType kv_cache_type() const override { return options_.dtype; }
  bool SupportsSampling() const override { return true; }
  absl::StatusOr<std::vector<SampledToken>> Sample(
      const Tensor& logits, std::span<const SampleRow> rows) override;

  void Embedding(const Tensor& table, std::span<const TokenId> ids,
                 Tensor* out) override;
  void MatMul(const Tensor& x, const Tensor& w, Tensor* out) override;
  void AddBias(const Tensor& bias, Tensor* x) override;
  void Add(const Tensor& y, Tensor* x) override;
  bool AddLowRank(const Tensor& x, std::span<const LowRankSegment> segments,
                  Tensor* out) override;
  void RmsNorm(const Tensor& x, const Tensor& weight, float eps,
               Tensor* out) override;
  void AddRmsNorm(const Tensor& y, const Tensor& weight, float eps, Tensor* x,
                  Tensor* out) override;
  void SiluMul(const Tensor& gate, const Tensor& up, Tensor* out) override;
  void Rope(const Tensor& rope_table, std::span<const int32_t> positions,
            int32_t head_dim, Tensor* x) override;
  void WriteKv(const Tensor& k, const Tensor& v, std::span<const int32_t> slots,
               const AttentionShape& shape, Tensor* k_cache,
               Tensor* v_cache) override;
  void CopyKvBlocks(std::span<const BlockCopy> copies,
                    std::span<Tensor* const> caches) override;
  void PagedAttention(const Tensor& q, const Tensor& k_cache,
                      const Tensor& v_cache, const AttentionShape& shape,
                      std::span<const SequenceSlice> sequences,
                      Tensor* out) override;
  void GatherRows(const Tensor& x, std::span<const int32_t> rows,
                  Tensor* out) override;
  // On the device (kernels/cuda/exit_confidence.h): one float per row
  // comes back instead of the row's logits.
  absl::Status ExitConfidences(const Tensor& logits,
                               std::span<const ExitConfidence> kinds,
                               std::span<float> out) override;

  // CUDA graphs: the first step of a key runs eagerly (every buffer grows
  // to its size), the second is captured and launched, later ones replay
  // it: the ops only stage their metadata into the pinned buffer, at the
  // offsets the capture used, and the graph is launched once. A graph is
  // dropped when any device address may have changed since its capture
  // (an allocation or a scratch buffer's growth).
  bool BeginStepGraph(const StepGraphKey& key) override;
  absl::Status EndStepGraph(bool commit) override;

 private:
  struct Impl;  // CUDA state (stream, cuBLASLt, staging, scratch)
  CudaBackend(const Options& options, std::unique_ptr<Impl> impl,
              std::string device_name);

  // Keeps the first error; true if `status` is OK and nothing failed before.
  bool Record(absl::Status status);
  // Replaying a step graph: ops stage their metadata but launch nothing.
  bool Replaying() const;

  Options options_;
  std::unique_ptr<Impl> impl_;
  std::string device_name_;
  absl::Status pending_;  // first error since the last sync point
};

}  // namespace strata

#endif  // STRATA_ENGINE_BACKENDS_CUDA_CUDA_BACKEND_H_
