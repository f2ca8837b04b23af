// Backend: the op interface the forward pass (engine/llama_model.h) is
// written against, so each device (cpu/ today, cuda/ later) implements the
// same small set of ops and the model is written once.
//
// Tensors are opaque device buffers: a data pointer the backend understands,
// an element type and a shape, owning their memory through backend-defined
// storage (or, for views from Tensor::Rows, borrowing it). Host data crosses
// the boundary only through Upload, CopyToHost and the host-side metadata
// spans of the ops (token ids, positions, KV slots, block tables), which a
// device backend copies over itself.
//
// Ops are issued in order and may run asynchronously (a CUDA backend queues
// them on a stream); an error in an op surfaces at the next CopyToHost.
// Shape agreement between operands is the caller's invariant (CHECKed).
//
// Batch invariance contract: every op's result for a row (token) depends
// only on that row's inputs (and, for attention, on that sequence's cached
// keys), never on the other rows of the batch or on the threading, so a
// sequence gets bit-identical logits alone or in any batch.
#ifndef STRATA_ENGINE_BACKENDS_BACKEND_H_
#define STRATA_ENGINE_BACKENDS_BACKEND_H_

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/logging.h"
#include "engine/softmax_stats.h"
#include "engine/step.h"

namespace strata {

struct ModelConfig;

enum class ElementType {
  kF32,
  kF16,   // IEEE half (device backends: weights, KV cache)
  kBF16,  // bfloat16 (device backends: weights, KV cache)
  // int8 weight matrix [m, k] with per-row (output channel) f32 scales stored
  // in the same allocation after the m * k int8 values, at the byte offset
  // Int8ScalesOffset(m * k); w_f32 ~= w_i8 * scale[row]. Never viewed with
  // Tensor::Rows.
  kI8,
};

size_t ElementSize(ElementType type);
// Byte offset of the scales of a kI8 tensor of `count` elements (256-byte
// aligned so both parts suit vectorised loads).
inline size_t Int8ScalesOffset(int64_t count) {
  return (static_cast<size_t>(count) + 255) / 256 * 256;
}
std::string_view ElementTypeName(ElementType type);

class Tensor {
 public:
  // Backend-specific owner of a tensor's memory; released with the tensor.
  class Storage {
   public:
    virtual ~Storage() = default;
  };

  Tensor() = default;
  Tensor(void* data, ElementType type, absl::Span<const int64_t> shape,
         std::unique_ptr<Storage> storage);
  // A moved-from tensor is empty (no data, no shape), as a default one.
  Tensor(Tensor&& other) noexcept;
  Tensor& operator=(Tensor&& other) noexcept;
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;

  // Device pointer (a host pointer on the CPU backend).
  void* data() const { return data_; }
  ElementType type() const { return type_; }
  absl::Span<const int64_t> shape() const { return shape_; }
  int64_t dim(size_t i) const { return shape_[i]; }
  size_t rank() const { return shape_.size(); }
  int64_t num_elements() const;
  size_t size_bytes() const;
  bool empty() const { return num_elements() == 0; }
  // The owner of the memory (null for views), for a backend to recognise
  // tensors it stored in its own layout.
  const Storage* storage() const { return storage_.get(); }

  // A non-owning view of rows [begin, begin + count) (along dimension 0).
  // Valid while this tensor lives.
  Tensor Rows(int64_t begin, int64_t count) const;

  std::string DebugString() const;

 private:
  void* data_ = nullptr;
  ElementType type_ = ElementType::kF32;
  // Inline: a step makes a few hundred views (Rows), and a heap-allocated
  // shape each was a visible share of a small model's step.
  absl::InlinedVector<int64_t, 4> shape_;
  std::unique_ptr<Storage> storage_;  // null for views
};

// Shape of attention and of the paged KV cache.
struct AttentionShape {
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;  // divides num_heads; query head h reads kv head
                             // h / (num_heads / num_kv_heads)
  int32_t head_dim = 0;
  int32_t block_size = 0;  // tokens per KV block
  float scale = 1.0f;      // applied to q.k
};

// What a weight is for, so a device backend can choose its storage.
enum class WeightRole {
  kVector,   // norm weights and biases: kept f32
  kTable,    // embedding table and LM head: 16-bit on a GPU, never int8
  kLinear,   // a layer's projection [out, in]: 16-bit or int8 on a GPU
  kAdapter,  // a LoRA factor ([r, in] or [out, r]): f32 everywhere (small,
             // and its low-rank product is added to a full projection)
};

// One row of logits to sample on the device (Backend::Sample).
struct SampleRow {
  const SamplingParams* params = nullptr;
  std::span<const TokenId> prompt_tokens;
  std::span<const TokenId> output_tokens;
};

// A run of rows that share one low-rank (LoRA) pair: for a recursive model,
// the rows at one loop. Backend::AddLowRank.
struct LowRankSegment {
  int32_t first_row = 0;
  int32_t num_rows = 0;
  const Tensor* a = nullptr;  // [r, k], uploaded as WeightRole::kAdapter
  const Tensor* b = nullptr;  // [m, r] (already scaled), kAdapter
};

// A run of rows at one loop whose low-rank pairs of several projections of
// one input (q, k and v; gate and up) share one A: the parts' A stacked,
// rows [p r, (p + 1) r) part p's. Backend::AddLowRankGroup.
struct LowRankGroupSegment {
  int32_t first_row = 0;
  int32_t num_rows = 0;
  const Tensor* a = nullptr;            // [parts * r, k], kAdapter
  std::array<const Tensor*, 3> b = {};  // part p's [m_p, r] (scaled)
};

// One sequence's new tokens in the flattened batch, for attention.
struct SequenceSlice {
  int32_t first_row = 0;       // row of its first new token
  int32_t num_tokens = 0;      // its new tokens occupy rows [first_row,
                               // first_row + num_tokens)
  int32_t start_position = 0;  // position of its first new token
  // Physical KV block ids covering positions [0, start_position +
  // num_tokens); block i holds positions [i*block_size, (i+1)*block_size).
  std::span<const int32_t> block_table;
};

// What fixes the op sequence of a decode step (one token per sequence, all
// loops, no early exit): a backend that records a step's ops (CUDA graphs)
// replays them for the next step with an equal key. Block tables are padded
// to table_stride entries (a power of two), so attention's launch shape
// depends only on the key.
struct StepGraphKey {
  int32_t num_rows = 0;        // tokens = sequences
  int32_t num_logit_rows = 0;  // rows whose logits the step computes
  int32_t table_stride = 0;    // >= every sequence's block-table length
  bool sample_mode = false;    // LlamaModel::Step (vs ForwardToDevice)
  bool operator==(const StepGraphKey&) const = default;
  bool operator<(const StepGraphKey& o) const {
    return std::tie(num_rows, num_logit_rows, table_stride, sample_mode) <
           std::tie(o.num_rows, o.num_logit_rows, o.table_stride,
                    o.sample_mode);
  }
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view name() const = 0;
  // e.g. "cpu avx512, 2 threads".
  virtual std::string Description() const = 0;

  // ---- Memory ----

  // A zero-filled tensor. RESOURCE_EXHAUSTED when the device is out of
  // memory.
  virtual absl::StatusOr<Tensor> Allocate(ElementType type,
                                          std::vector<int64_t> shape) = 0;
  // A tensor holding `host` (f32). Takes the vector so that a host backend
  // can adopt it without a copy. host.size() must equal the shape's product.
  virtual absl::StatusOr<Tensor> Upload(std::vector<float> host,
                                        std::vector<int64_t> shape) = 0;
  // Copies a whole f32 tensor to host memory (waits for queued ops).
  // host: [src.num_elements()]
  virtual absl::Status CopyToHost(const Tensor& src, std::span<float> host) = 0;
  // An f32 tensor's values where the host can read them in place, valid
  // until the next op that writes the tensor: for a backend that keeps its
  // tensors in host memory and has run every op when it returns (the CPU).
  // Empty otherwise (a device backend): CopyToHost then. Host sampling
  // reads a step's logits this way instead of copying them.
  virtual std::span<const float> HostView(const Tensor& t) const { return {}; }

  // A weight of `shape` from f32 host data, stored as this backend prefers
  // for `role` (a GPU backend converts to f16/bf16 or quantizes to kI8). The
  // default is Upload (f32), which is what the CPU keeps.
  virtual absl::StatusOr<Tensor> UploadWeight(std::vector<float> host,
                                              std::vector<int64_t> shape,
                                              WeightRole role) {
    return Upload(std::move(host), std::move(shape));
  }
  // Element type of the KV cache tensors this backend wants.
  virtual ElementType kv_cache_type() const { return ElementType::kF32; }

  // Sampling next to the logits (engine/sampler.h semantics; see the
  // backend's notes for tie handling). logits: [rows.size(), vocab] f32.
  // Backends without it return false / UNIMPLEMENTED and the engine samples
  // on the host.
  virtual bool SupportsSampling() const { return false; }
  virtual absl::StatusOr<std::vector<SampledToken>> Sample(
      const Tensor& logits, std::span<const SampleRow> rows) {
    return absl::UnimplementedError("this backend does not sample");
  }

  // ---- Ops (f32). "n" is the number of rows (tokens). ----

  // out[i] = table[ids[i]]; ids are in range (validated by the caller).
  // table: [vocab, hidden], ids: [n], out: [n, hidden]
  virtual void Embedding(const Tensor& table, std::span<const TokenId> ids,
                         Tensor* out) = 0;
  // out = x * w^T. x: [n, k] f32, w: [m, k] (HF Linear layout; f32, or
  // what UploadWeight made of it), out: [n, m] f32
  virtual void MatMul(const Tensor& x, const Tensor& w, Tensor* out) = 0;
  // ---- Fused projections ----
  // Where a backend can slice a weight's rows (WeightRowAlignment() > 0),
  // the model uploads q, k and v (and gate and up) as one weight each,
  // multiplies it in one MatMul and splits the product with SplitColumns:
  // on the CPU one hand-off to the kernel threads and one pass over the
  // rows instead of two or three, with the same values.
  //
  // The row multiple WeightRows slices at; 0 (the default) = it cannot.
  virtual int64_t WeightRowAlignment() const { return 0; }
  // Rows [begin, begin + count) of w, a [m, k] weight from UploadWeight
  // (role kLinear), as a weight that shares w's memory (valid while w
  // lives): MatMul with it gives what MatMul with those rows uploaded alone
  // gives. begin is a multiple of WeightRowAlignment(), and so is count
  // unless the slice ends at m.
  virtual absl::StatusOr<Tensor> WeightRows(const Tensor& w, int64_t begin,
                                            int64_t count) const {
    return absl::UnimplementedError("this backend does not slice weights");
  }
  // Copies x's columns, left to right, into the parts. x: [n, sum of the
  // parts' widths], parts[i]: [n, width_i]. Required of a backend whose
  // WeightRowAlignment() > 0 (the default fails).
  virtual void SplitColumns(const Tensor& x, std::span<Tensor* const> parts);
  // x[i] += bias. bias: [m], x: [n, m]
  virtual void AddBias(const Tensor& bias, Tensor* x) = 0;
  // x += y (residual). x, y: same shape
  virtual void Add(const Tensor& y, Tensor* x) = 0;
  // For every segment, out[rows] += (x[rows] a^T) b^T, each segment with its
  // own pair, in one call (a gathered, segmented low-rank product). Returns
  // false, doing nothing, when the backend has no such op: the caller then
  // runs MatMul, MatMul, Add per segment, which must give the same result.
  // x: [n, k], out: [n, m], rank r.
  virtual bool AddLowRank(const Tensor& x,
                          std::span<const LowRankSegment> segments,
                          Tensor* out) {
    return false;
  }
  // AddLowRank for the parts of a group at once: for every segment and part
  // p, outs[p][rows] += (x[rows] a_p^T) b_p^T, with a_p part p's rows of the
  // stacked a: one A-product for all parts. Returns false, doing nothing,
  // where the backend lacks it; the caller then runs AddLowRank per part,
  // which must give the same result. outs.size() parts (at most 3).
  virtual bool AddLowRankGroup(const Tensor& x,
                               std::span<const LowRankGroupSegment> segments,
                               std::span<Tensor* const> outs) {
    return false;
  }
  // Llama RMSNorm. x, out: [n, h] (may be the same tensor), weight: [h]
  virtual void RmsNorm(const Tensor& x, const Tensor& weight, float eps,
                       Tensor* out) = 0;
  // x += y; out = RmsNorm(x) (the residual add fused with the next norm on
  // backends that can). The default runs Add then RmsNorm, so results equal
  // the two ops'. x, y, out: [n, h], weight: [h]
  virtual void AddRmsNorm(const Tensor& y, const Tensor& weight, float eps,
                          Tensor* x, Tensor* out) {
    Add(y, x);
    RmsNorm(*x, weight, eps, out);
  }
  // out = silu(gate) * up. gate, up, out: [n, intermediate]
  virtual void SiluMul(const Tensor& gate, const Tensor& up, Tensor* out) = 0;
  // Rotary embedding (HF rotate_half layout) in place, per row's position.
  // rope_table: [max_positions, head_dim] (cos of the head_dim/2 frequencies,
  // then sin), positions: [n] (< max_positions), x: [n, heads * head_dim]
  virtual void Rope(const Tensor& rope_table,
                    std::span<const int32_t> positions, int32_t head_dim,
                    Tensor* x) = 0;
  // Writes row i of k and v to cache slot slots[i] = block * block_size +
  // offset (in range).
  // k, v: [n, num_kv_heads * head_dim]
  // k_cache, v_cache: [num_blocks, num_kv_heads, block_size, head_dim]
  virtual void WriteKv(const Tensor& k, const Tensor& v,
                       std::span<const int32_t> slots,
                       const AttentionShape& shape, Tensor* k_cache,
                       Tensor* v_cache) = 0;
  // Copy-on-write of KV blocks: in every tensor of `caches`, copies block
  // (row along dimension 0) copies[i].src over block copies[i].dst, for each
  // i in order (a later copy sees the earlier ones' results). Any element
  // type; every cache has the same bytes per block. Ids are in range and
  // src != dst (the caller's invariant).
  // caches: each [num_blocks, ...], e.g. [num_blocks, num_kv_heads,
  // block_size, head_dim] as in WriteKv
  virtual void CopyKvBlocks(std::span<const BlockCopy> copies,
                            std::span<Tensor* const> caches) = 0;
  // Causal attention of every sequence's new tokens over its cached keys at
  // positions [0, own position] (K/V of the new tokens already written).
  // q, out: [n, num_heads * head_dim]; caches as in WriteKv
  virtual void PagedAttention(const Tensor& q, const Tensor& k_cache,
                              const Tensor& v_cache,
                              const AttentionShape& shape,
                              std::span<const SequenceSlice> sequences,
                              Tensor* out) = 0;
  // out[i] = x[rows[i]]. x: [n, h], rows: [r] (< n), out: [r, h]
  virtual void GatherRows(const Tensor& x, std::span<const int32_t> rows,
                          Tensor* out) = 0;

  // Bytes for the paged KV pool: `requested` (the kv_cache_bytes option)
  // unless the backend sizes the pool from its device's memory (CUDA with
  // gpu_memory_fraction > 0: that share of the card, less what is in use,
  // the weights of `config` still to load and a workspace reserve).
  // RESOURCE_EXHAUSTED when nothing is left.
  virtual absl::StatusOr<int64_t> KvCacheBudgetBytes(const ModelConfig& config,
                                                     int64_t requested) const {
    return requested;
  }

  // The max and softmax denominator of one row of host logits, for the
  // host-side sampler and exit measures (engine/sampler.h, exit_policy.h).
  // The default is a scalar loop in double; the CPU backend uses its
  // vectorised kernel (the same bits on every ISA). row: [vocab]
  virtual SoftmaxStats RowSoftmaxStats(std::span<const float> row) const;

  // Early-exit confidence of every row of exit logits (ComputeExitConfidence
  // of engine/exit_policy.h, row i of kind kinds[i]) into host memory; waits
  // for queued ops. The default copies the logits to the host; a device
  // backend computes next to them and copies one float per row.
  // logits: [rows, vocab] f32, kinds, out: [rows]
  virtual absl::Status ExitConfidences(const Tensor& logits,
                                       std::span<const ExitConfidence> kinds,
                                       std::span<float> out);
  // Early-exit confidence from the residual stream, O(hidden) per row and
  // no LM head (ComputeHiddenExitConfidence of engine/exit_policy.h), into
  // host memory; waits for queued ops. Row j: h = state[rows[j]] of kind
  // kinds[j] (kSaturation: against prev[j]; kClassifier: classifier row
  // loops[j]). The default copies the states to the host (hidden floats per
  // row, never logits); a device backend may compute next to them.
  // state: [n, hidden] f32; prev: [rows, hidden] f32 (rows of classifier
  // kinds unused; empty when there is no kSaturation row); classifier:
  // [early loops, hidden + 1] f32 (empty when there is no kClassifier row);
  // rows, loops, kinds, out: [rows]
  virtual absl::Status HiddenExitConfidences(
      const Tensor& state, std::span<const int32_t> rows, const Tensor& prev,
      const Tensor& classifier, std::span<const int32_t> loops,
      std::span<const ExitConfidence> kinds, float eps, std::span<float> out);

  // ---- Step graphs ----

  // Brackets the ops of one decode step so that a backend can record them
  // once and replay them as one launch for later steps with an equal key
  // (CUDA graphs: no per-op launch cost). Returns false when this step is
  // not bracketed (the ops then run as usual and EndStepGraph is not
  // called). Between the two calls the caller issues exactly the ops that
  // `key` determines (metadata values may differ; their sizes may not), and
  // nothing that reads results on the host.
  virtual bool BeginStepGraph(const StepGraphKey& key) { return false; }
  // Ends the bracket. commit: queue the step's work (OK), or, where the
  // backend could not record it, ABORTED with nothing done: the caller
  // issues the ops again without a bracket. !commit (the caller gave up
  // midway): drop whatever was recorded; returns OK.
  virtual absl::Status EndStepGraph(bool commit) { return absl::OkStatus(); }

  // Runs `task`, host code that issues this backend's ops, beside the
  // caller's own ops where the backend can, and returns; WaitHostTask()
  // returns once it has run. The CPU backend hands it to a pool worker, which
  // would otherwise spin while the caller runs serial work (a step's host
  // sampling); the default runs it now, in order with the caller's ops
  // (device ops only queue, so there is nothing to gain). One at a time (a
  // task still outstanding is waited for first), and until WaitHostTask()
  // returns the caller must leave alone what the task reads or writes, and
  // must not allocate from or resize its tensors.
  virtual void StartHostTask(absl::AnyInvocable<void()> task) { task(); }
  virtual void WaitHostTask() {}

 protected:
  // INTERNAL unless logits is f32 [rows, vocab] with `kinds` and `out` of
  // `rows` entries (ExitConfidences' contract, shared by the overrides).
  static absl::Status CheckExitConfidenceArgs(
      const Tensor& logits, std::span<const ExitConfidence> kinds,
      std::span<float> out);
  // INTERNAL unless HiddenExitConfidences' shapes and indices hold.
  static absl::Status CheckHiddenExitConfidenceArgs(
      const Tensor& state, std::span<const int32_t> rows, const Tensor& prev,
      const Tensor& classifier, std::span<const int32_t> loops,
      std::span<const ExitConfidence> kinds, std::span<float> out);
};

}  // namespace strata

#endif  // STRATA_ENGINE_BACKENDS_BACKEND_H_
