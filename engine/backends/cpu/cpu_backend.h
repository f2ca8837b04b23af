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
  struct Options {
    // Threads running kernels, counting the calling thread; 0 = hardware
    // concurrency.
    int32_t num_threads = 0;
    // Kernel variant; unset = cpu::DefaultIsa(). An ISA this CPU lacks is
    // FAILED_PRECONDITION.
    std::optional<cpu::Isa> isa;
  };

  static absl::StatusOr<std::unique_ptr<CpuBackend>> Create(
      const Options& options);
  // The registry's entry (backend_registry.h): num_threads from `options`;
  // what the CPU cannot honour (a dtype, quantization, a device ordinal,
  // step graphs, a GPU memory fraction) is INVALID_ARGUMENT naming the flag.
  static absl::StatusOr<std::unique_ptr<Backend>> FromOptions(
      const BackendOptions& options);

  std::string_view name() const override { return "cpu"; }
  std::string Description() const override;
  cpu::Isa isa() const { return context_.isa; }

  absl::StatusOr<Tensor> Allocate(ElementType type,
                                  std::vector<int64_t> shape) override;
  absl::StatusOr<Tensor> Upload(std::vector<float> host,
                                std::vector<int64_t> shape) override;
  absl::Status CopyToHost(const Tensor& src, std::span<float> host) override;

  void Embedding(const Tensor& table, std::span<const TokenId> ids,
                 Tensor* out) override;
  // Linear weights (WeightRole::kLinear, [m, k]) are repacked into column
  // panels for PackedMatMul, and so are LoRA factors (kAdapter); tables
  // (kTable: embeddings, LM head) keep their
  // rows for the embedding gather plus a packed copy for MatMul; vectors
  // stay as uploaded. A packed weight is never viewed with Tensor::Rows.
  absl::StatusOr<Tensor> UploadWeight(std::vector<float> host,
                                      std::vector<int64_t> shape,
                                      WeightRole role) override;
  // Packed weights go through cpu::PackedMatMul, others through cpu::MatMul;
  // both are batch invariant (kernels/cpu/).
  void MatMul(const Tensor& x, const Tensor& w, Tensor* out) override;
  void AddBias(const Tensor& bias, Tensor* x) override;
  void Add(const Tensor& y, Tensor* x) override;
  // One thread-pool job for all segments (tasks of up to 8 rows of one
  // segment): MatMul, MatMul and Add per task on the worker (packed or plain
  // f32 factors, like MatMul), which are row-wise, so the bits equal those of
  // the per-segment calls. Never declines.
  bool AddLowRank(const Tensor& x, std::span<const LowRankSegment> segments,
                  Tensor* out) override;
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
  void GatherRows(const Tensor& x, std::span<const int32_t> rows,
                  Tensor* out) override;

 private:
  CpuBackend(std::unique_ptr<cpu::ThreadPool> pool, cpu::Isa isa);

  std::unique_ptr<cpu::ThreadPool> pool_;
  cpu::KernelContext context_;
};

}  // namespace strata

#endif  // STRATA_ENGINE_BACKENDS_CPU_CPU_BACKEND_H_
