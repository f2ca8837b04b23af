// CpuBackend: the Backend ops on host memory, run by the vectorised kernels
// of kernels/cpu/ on a private thread pool.
//
// Threading: one thread issues ops (the engine thread); each op splits its
// work over the pool and returns when done (ops are synchronous).
#ifndef STRATA_ENGINE_BACKENDS_CPU_CPU_BACKEND_H_
#define STRATA_ENGINE_BACKENDS_CPU_CPU_BACKEND_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backends/backend.h"
#include "engine/backends/backend_options.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernel_context.h"
#include "kernels/cpu/thread_pool.h"

namespace strata {

class CpuBackend : public Backend {
 public:
  // How the (unquantized) Linear weights and tables are multiplied.
  enum class Compute {
    // f32 panels, or bf16 panels for checkpoints whose every value is a
    // bfloat16, widened to f32 and multiplied with f32 FMAs
    // (cpu::PackedMatMul): the default.
    kF32,
    // Weights rounded to bf16 and x rounded to bf16 per call, vdpbf16ps with
    // f32 accumulation (cpu::Bf16MatMul; AVX-512 BF16): --dtype=bf16.
    kBf16,
  };

  struct Options {
    // Threads running kernels, counting the calling thread; 0 = hardware
    // concurrency.
    int32_t num_threads = 0;
    // Kernel variant; unset = cpu::DefaultIsa(). An ISA this CPU lacks is
    // FAILED_PRECONDITION.
    std::optional<cpu::Isa> isa;
    // kWeightInt8: int8 panels, x quantized to int8 per row, exact int32
    // sums (cpu::Int8MatMul); kLlmInt8: the same plus each row's outlier
    // columns in f32 (cpu::Int8MatMulWithOutliers). LoRA factors stay f32.
    Quantization quantization = Quantization::kNone;
    // LLM.int8(): |activation| at or above which a column stays f32, and at
    // most this many such columns per row (the CUDA backend's defaults).
    float llm_int8_threshold = 6.0f;
    int32_t llm_int8_max_outliers = 128;
    // int8 scales per group of this many inputs (a multiple of 4 up to
    // 1024), 0 = one per output channel (cpu::Int8Panels).
    int32_t int8_group_size = 0;
    // Whether tables' packed copies (the LM head, exit heads) follow
    // `quantization` (true) or keep f32/bf16 panels.
    bool quantize_tables = true;
    // FAILED_PRECONDITION for kBf16 on a CPU without AVX-512 BF16.
    Compute compute = Compute::kF32;
  };

  static absl::StatusOr<std::unique_ptr<CpuBackend>> Create(
      const Options& options);
  // The registry's entry (backend_registry.h): num_threads, quantization
  // (none, int8, llm.int8), its threshold and group size from `options`; dtype
  // bf16 is Compute::kBf16 (FAILED_PRECONDITION without AVX-512 BF16); what the
  // CPU cannot honour (dtype f16, a device ordinal, step graphs, a GPU memory
  // fraction) is INVALID_ARGUMENT naming the flag.
  static absl::StatusOr<std::unique_ptr<Backend>> FromOptions(
      const BackendOptions& options);

  std::string_view name() const override { return "cpu"; }
  std::string Description() const override;
  cpu::Isa isa() const { return context_.isa; }
  const Options& options() const { return options_; }

  absl::StatusOr<Tensor> Allocate(ElementType type,
                                  std::vector<int64_t> shape) override;
  absl::StatusOr<Tensor> Upload(std::vector<float> host,
                                std::vector<int64_t> shape) override;
  absl::Status CopyToHost(const Tensor& src, std::span<float> host) override;
  std::span<const float> HostView(const Tensor& t) const override;

  void Embedding(const Tensor& table, std::span<const TokenId> ids,
                 Tensor* out) override;
  // Linear weights (WeightRole::kLinear, [m, k]) are repacked into column
  // panels (f32, bf16, bf16 pairs or int8 per Options), and so are LoRA
  // factors (kAdapter, always f32); tables (kTable: embeddings, LM head)
  // keep their f32 rows for the embedding gather plus a packed copy for
  // MatMul; vectors stay as uploaded. A packed weight is never viewed with
  // Tensor::Rows.
  absl::StatusOr<Tensor> UploadWeight(std::vector<float> host,
                                      std::vector<int64_t> shape,
                                      WeightRole role) override;
  // Packed weights go through the kernel of their panels (cpu::PackedMatMul,
  // Bf16MatMul, Int8MatMul or Int8MatMulWithOutliers), others through
  // cpu::MatMul; all are batch invariant (kernels/cpu/).
  void MatMul(const Tensor& x, const Tensor& w, Tensor* out) override;
  // Packed weights slice at their 16-row panels (any format: f32, bf16,
  // bf16 pairs, int8 with or without groups and outliers).
  int64_t WeightRowAlignment() const override;
  absl::StatusOr<Tensor> WeightRows(const Tensor& w, int64_t begin,
                                    int64_t count) const override;
  void SplitColumns(const Tensor& x, std::span<Tensor* const> parts) override;
  void AddBias(const Tensor& bias, Tensor* x) override;
  void Add(const Tensor& y, Tensor* x) override;
  // AddLowRankGroup with one part.
  bool AddLowRank(const Tensor& x, std::span<const LowRankSegment> segments,
                  Tensor* out) override;
  // One thread-pool job for all segments (tasks of up to 8 rows of one
  // segment; on the calling thread below kMinParallelMacs): per task the
  // stacked A-product, then per part its B-product and Add (packed or plain
  // f32 factors, like MatMul), which are row-wise, so the bits equal those
  // of the per-segment calls. Two consecutive tasks of at most 8 rows
  // together with one-panel A factors share one A-product tile
  // (cpu::PackedMatMulPair, the same bits). Never declines.
  bool AddLowRankGroup(const Tensor& x,
                       std::span<const LowRankGroupSegment> segments,
                       std::span<Tensor* const> outs) override;
  void RmsNorm(const Tensor& x, const Tensor& weight, float eps,
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
  // In place (host memory, no copy), one row per pool task.
  SoftmaxStats RowSoftmaxStats(std::span<const float> row) const override;
  absl::Status ExitConfidences(const Tensor& logits,
                               std::span<const ExitConfidence> kinds,
                               std::span<float> out) override;
  // Computed in place on the rows (no copies).
  absl::Status HiddenExitConfidences(const Tensor& state,
                                     std::span<const int32_t> rows,
                                     const Tensor& prev,
                                     const Tensor& classifier,
                                     std::span<const int32_t> loops,
                                     std::span<const ExitConfidence> kinds,
                                     float eps, std::span<float> out) override;
  void GatherRows(const Tensor& x, std::span<const int32_t> rows,
                  Tensor* out) override;
  // On a pool worker (ThreadPool::StartSideTask), whose ops run on it alone;
  // the caller's ops go on over the pool's other threads and its own.
  void StartHostTask(absl::AnyInvocable<void()> task) override;
  void WaitHostTask() override;

 private:
  CpuBackend(std::unique_ptr<cpu::ThreadPool> pool, cpu::Isa isa,
             const Options& options);

  std::unique_ptr<cpu::ThreadPool> pool_;
  cpu::KernelContext context_;
  Options options_;
};

}  // namespace strata

#endif  // STRATA_ENGINE_BACKENDS_CPU_CPU_BACKEND_H_
