// Paged attention on the GPU against the CPU backend, through the Backend
// interface both implement: decode rows (the grouped, split-KV kernel of
// kernels/cuda/decode_attention.h for f16/bf16 caches with head_dim 64, 128
// or 256; the per-head kernel otherwise) and prefill chunks. Shapes cover GQA
// ratios 1, 2, 3, 4, 8 and 16, head dims 32, 64, 80, 128 and 256, block
// sizes 4 to 32, contexts from 1 to 32k, batches that do and do not split
// the KV range, and block tables in shuffled order.
// The plan (split choice) is host code and is tested without a GPU.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "engine/backends/backend.h"
#include "engine/backends/cpu/cpu_backend.h"
#include "engine/backends/cuda/cuda_backend.h"
#include "gtest/gtest.h"
#include "kernels/cuda/decode_attention.h"
#include "tests/cuda/cuda_test_util.h"

namespace strata {
namespace {

using testing_cuda::MakeCpu;
using testing_cuda::RandomVector;
using testing_cuda::RelativeMaxError;
using testing_cuda::ToHost;

cuda::AttentionGeometry Geometry(int32_t heads, int32_t kv_heads,
                                 int32_t head_dim, int32_t block_size,
                                 cuda::DType type = cuda::DType::kBF16) {
  cuda::AttentionGeometry g;
  g.num_heads = heads;
  g.num_kv_heads = kv_heads;
  g.head_dim = head_dim;
  g.block_size = block_size;
  g.cache_type = type;
  return g;
}

// Runs without a GPU.
TEST(DecodePlanTest, SupportsOnlyVectorizableGeometries) {
  EXPECT_TRUE(
      cuda::PlanDecode(Geometry(32, 8, 128, 16), 8, 4096, 132).supported);
  EXPECT_TRUE(
      cuda::PlanDecode(Geometry(8, 8, 64, 32, cuda::DType::kF16), 1, 1, 132)
          .supported);
  // f32 cache, head dims that are not 64/128/256, blocks not a power of two.
  EXPECT_FALSE(
      cuda::PlanDecode(Geometry(8, 8, 64, 16, cuda::DType::kF32), 1, 9, 132)
          .supported);
  EXPECT_FALSE(cuda::PlanDecode(Geometry(16, 2, 80, 16), 1, 9, 132).supported);
  EXPECT_FALSE(cuda::PlanDecode(Geometry(4, 4, 32, 16), 1, 9, 132).supported);
  EXPECT_FALSE(cuda::PlanDecode(Geometry(8, 2, 64, 24), 1, 9, 132).supported);
}

// Runs without a GPU: the GQA group is served by one CTA of 1, 4 or 8 heads,
// or by several CTAs of 8 for larger groups.
TEST(DecodePlanTest, GroupsHeadsPerCta) {
  const std::pair<int32_t, std::pair<int32_t, int32_t>> want[] = {
      {1, {1, 1}}, {2, {4, 1}},  {3, {4, 1}}, {4, {4, 1}},
      {8, {8, 1}}, {16, {8, 2}}, {12, {8, 2}}};
  for (const auto& [group, expect] : want) {
    const cuda::DecodePlan plan =
        cuda::PlanDecode(Geometry(2 * group, 2, 128, 16), 1, 100, 132);
    EXPECT_EQ(plan.heads_per_cta, expect.first) << "group " << group;
    EXPECT_EQ(plan.head_chunks, expect.second) << "group " << group;
  }
}

// Runs without a GPU: every key of every row is in exactly one split, splits
// are whole quanta and never finer than kMinKeysPerSplit, a batch with enough
// CTAs is not split, and a short batch with a long context is split until
// there are about four CTAs per SM.
TEST(DecodePlanTest, SplitsCoverTheContextAndFillTheGpu) {
  for (int sms : {1, 108, 132}) {
    for (int64_t rows : {1, 3, 8, 64, 256}) {
      for (int64_t context : {1, 2, 127, 128, 129, 500, 4097, 32768, 131072}) {
        const cuda::AttentionGeometry g = Geometry(32, 8, 128, 16);
        const cuda::DecodePlan p = cuda::PlanDecode(g, rows, context, sms);
        SCOPED_TRACE(testing::Message() << "sms " << sms << " rows " << rows
                                        << " context " << context);
        ASSERT_TRUE(p.supported);
        ASSERT_GT(p.keys_per_split, 0);
        EXPECT_EQ(p.keys_per_split % cuda::kDecodeSplitQuantum, 0);
        EXPECT_GE(static_cast<int64_t>(p.max_splits) * p.keys_per_split,
                  context);
        EXPECT_LT(static_cast<int64_t>(p.max_splits - 1) * p.keys_per_split,
                  context);
        if (p.max_splits > 1) {
          EXPECT_GE(p.keys_per_split, cuda::kMinKeysPerSplit);
        }
        const int64_t ctas = rows * g.num_kv_heads * p.head_chunks;
        if (ctas >= 4 * sms) {
          EXPECT_EQ(p.max_splits, 1);
        }
        if (context >= 4 * sms * int64_t{cuda::kMinKeysPerSplit}) {
          EXPECT_GE(ctas * p.max_splits, 4 * sms);
        }
        const size_t ws = cuda::GroupedDecodeWorkspaceBytes(g, p, rows);
        EXPECT_EQ(ws, p.max_splits > 1
                          ? static_cast<size_t>(rows) * g.num_heads *
                                p.max_splits * (g.head_dim + 2) * 4
                          : 0u);
      }
    }
  }
  // The benchmark's shape on an H200: 8 rows x 8 kv heads = 64 CTAs, split.
  const cuda::DecodePlan p =
      cuda::PlanDecode(Geometry(32, 8, 128, 16), 8, 32768, 132);
  EXPECT_GE(p.max_splits, 8);
}

// The cache as the GPU stores it, so the CPU (f32 cache) gets exactly the
// values the GPU reads and only the attention arithmetic is compared.
std::vector<float> RoundTo(ElementType type, std::vector<float> v) {
  for (float& x : v) {
    if (type == ElementType::kF16) {
      // Nearest half (11 significant bits), values in the normal range.
      int e = 0;
      const float m = std::frexp(x, &e);
      x = std::ldexp(std::nearbyint(m * 2048.0f) / 2048.0f, e);
    } else {
      // Nearest bfloat16, ties to even (what __float2bfloat16_rn does).
      uint32_t u = 0;
      std::memcpy(&u, &x, 4);
      u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
      std::memcpy(&x, &u, 4);
    }
  }
  return v;
}

struct AttentionCase {
  ElementType cache;
  int32_t num_heads, num_kv_heads, head_dim, block_size;
  // (cached prefix length, new tokens) per sequence
  std::vector<std::pair<int32_t, int32_t>> sequences;
};

class CudaAttentionTest : public testing::TestWithParam<AttentionCase> {};

// Writes random K/V for every position of every sequence through WriteKv
// (prefix and new tokens) into shuffled physical blocks, then compares
// attention of the new tokens.
TEST_P(CudaAttentionTest, MatchesCpu) {
  const AttentionCase c = GetParam();
  CudaBackend::Options options;
  options.dtype = c.cache;
  STRATA_REQUIRE_CUDA(gpu, options);
  auto cpu = MakeCpu();
  AttentionShape shape{c.num_heads, c.num_kv_heads, c.head_dim, c.block_size,
                       1.0f / std::sqrt(static_cast<float>(c.head_dim))};
  const int64_t kv_dim = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  const int64_t q_dim = static_cast<int64_t>(c.num_heads) * c.head_dim;

  // Block tables: shuffled physical blocks (out of order within and across
  // sequences), plus a few unused ones.
  int32_t total_blocks = 0;
  for (auto [prefix, fresh] : c.sequences) {
    total_blocks += (prefix + fresh + c.block_size - 1) / c.block_size;
  }
  std::vector<int32_t> physical(total_blocks + 3);
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), std::mt19937(9));
  std::vector<std::vector<int32_t>> tables;
  int32_t next = 0;
  for (auto [prefix, fresh] : c.sequences) {
    const int32_t blocks = (prefix + fresh + c.block_size - 1) / c.block_size;
    tables.emplace_back(physical.begin() + next,
                        physical.begin() + next + blocks);
    next += blocks;
  }
  const std::vector<int64_t> cache_shape = {
      static_cast<int64_t>(physical.size()), c.num_kv_heads, c.block_size,
      c.head_dim};
  Tensor kc = *cpu->Allocate(ElementType::kF32, cache_shape);
  Tensor vc = *cpu->Allocate(ElementType::kF32, cache_shape);
  Tensor kg = *gpu->Allocate(c.cache, cache_shape);
  Tensor vg = *gpu->Allocate(c.cache, cache_shape);

  // All positions' K/V, written in one WriteKv each.
  std::vector<int32_t> slots;
  for (size_t s = 0; s < c.sequences.size(); ++s) {
    const int32_t len = c.sequences[s].first + c.sequences[s].second;
    for (int32_t p = 0; p < len; ++p) {
      slots.push_back(tables[s][p / c.block_size] * c.block_size +
                      p % c.block_size);
    }
  }
  const int64_t total = static_cast<int64_t>(slots.size());
  const std::vector<float> k =
      RoundTo(c.cache, RandomVector(total * kv_dim, 10));
  const std::vector<float> v =
      RoundTo(c.cache, RandomVector(total * kv_dim, 11));
  {
    Tensor kt = *cpu->Upload(k, {total, kv_dim});
    Tensor vt = *cpu->Upload(v, {total, kv_dim});
    cpu->WriteKv(kt, vt, slots, shape, &kc, &vc);
  }
  {
    Tensor kt = *gpu->Upload(k, {total, kv_dim});
    Tensor vt = *gpu->Upload(v, {total, kv_dim});
    gpu->WriteKv(kt, vt, slots, shape, &kg, &vg);
  }

  // Queries for the new tokens only.
  std::vector<SequenceSlice> slices;
  int32_t rows = 0;
  for (size_t s = 0; s < c.sequences.size(); ++s) {
    slices.push_back({rows, c.sequences[s].second, c.sequences[s].first,
                      std::span<const int32_t>(tables[s])});
    rows += c.sequences[s].second;
  }
  const std::vector<float> q = RandomVector(rows * q_dim, 12);
  Tensor qc = *cpu->Upload(q, {rows, q_dim});
  Tensor qg = *gpu->Upload(q, {rows, q_dim});
  Tensor oc = *cpu->Allocate(ElementType::kF32, {rows, q_dim});
  Tensor og = *gpu->Allocate(ElementType::kF32, {rows, q_dim});
  cpu->PagedAttention(qc, kc, vc, shape, slices, &oc);
  gpu->PagedAttention(qg, kg, vg, shape, slices, &og);
  const std::vector<float> got = ToHost(*gpu, og), want = ToHost(*cpu, oc);
  EXPECT_LT(RelativeMaxError(got, want), 2e-4);
  // Every row and head compared on its own scale as well, so a head the
  // kernel skipped (zeros) cannot hide behind a larger one.
  for (int32_t r = 0; r < rows; ++r) {
    for (int32_t h = 0; h < c.num_heads; ++h) {
      const auto at = [&](const std::vector<float>& x) {
        const auto first =
            x.begin() + (int64_t{r} * c.num_heads + h) * c.head_dim;
        return std::vector<float>(first, first + c.head_dim);
      };
      ASSERT_LT(RelativeMaxError(at(got), at(want)), 1e-3)
          << "row " << r << " head " << h;
    }
  }
}

std::vector<std::pair<int32_t, int32_t>> DecodeRows(
    std::initializer_list<int32_t> contexts) {
  std::vector<std::pair<int32_t, int32_t>> rows;
  for (int32_t c : contexts) rows.push_back({c - 1, 1});  // context c keys
  return rows;
}

// Decode rows of contexts first, first + 1, ... (count rows).
std::vector<std::pair<int32_t, int32_t>> DecodeRange(int32_t first,
                                                     int32_t count) {
  std::vector<std::pair<int32_t, int32_t>> rows;
  for (int32_t i = 0; i < count; ++i) rows.push_back({first + i - 1, 1});
  return rows;
}

std::vector<AttentionCase> Cases() {
  std::vector<AttentionCase> cases;
  for (ElementType t : {ElementType::kF16, ElementType::kBF16}) {
    // Grouped decode: GQA 1, 4, 8; head dims 64, 128; blocks 16, 32;
    // contexts 1 .. 4k in one batch (short ones one split, long ones several).
    cases.push_back({t, 8, 8, 64, 16, DecodeRows({1, 17, 4001})});
    cases.push_back({t, 32, 8, 128, 32, DecodeRows({1000, 31, 32, 33})});
    cases.push_back({t, 16, 2, 64, 32, DecodeRows({2048, 5, 700})});
    cases.push_back({t, 24, 3, 128, 16, DecodeRows({129, 1, 64})});
    // GQA 2 and 3 (a CTA of 4 heads, partly masked), 16 (two CTAs of 8),
    // head dim 256.
    cases.push_back({t, 4, 2, 64, 32, DecodeRows({1, 2})});
    cases.push_back({t, 6, 2, 128, 16, DecodeRows({77, 1})});
    cases.push_back({t, 16, 1, 64, 16, DecodeRows({300})});
    cases.push_back({t, 8, 2, 256, 16, DecodeRows({513, 3})});
    // Many rows: enough CTAs (300 rows x 2 kv heads >= 4 per SM on an
    // H100/H200) that no row is split.
    cases.push_back({t, 8, 2, 64, 16, DecodeRange(100, 300)});
    // Prefill chunks next to decode rows (the prefill kernel for the chunks).
    cases.push_back({t, 8, 2, 128, 16, {{0, 37}, {300, 1}, {20, 5}}});
  }
  // The per-head kernel: head dims 80 and 32, a block size of 8 and 4, long
  // contexts over several of its 512-key splits (f16 cache).
  const ElementType f16 = ElementType::kF16;
  cases.push_back({f16, 4, 4, 64, 16, {{0, 1}, {6, 1}, {33, 1}}});
  cases.push_back({f16, 8, 2, 128, 16, {{100, 1}, {15, 1}}});
  cases.push_back({f16, 16, 2, 80, 8, {{57, 1}, {1500, 1}}});
  cases.push_back({f16, 4, 1, 64, 16, {{1500, 1}, {511, 1}, {512, 1}}});
  cases.push_back({f16, 8, 2, 64, 16, {{0, 37}, {20, 5}, {300, 1}}});
  cases.push_back({f16, 4, 4, 32, 4, {{13, 19}, {0, 2}, {700, 1}}});
  // Last (case26, case27), so a slow tool such as compute-sanitizer can skip
  // them by name: 32k context, GQA 8, head dim 128, next to a short row.
  for (ElementType t : {ElementType::kF16, ElementType::kBF16}) {
    cases.push_back({t, 32, 4, 128, 16, DecodeRows({32768, 3})});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaAttentionTest, testing::ValuesIn(Cases()),
    // Index names: the parameters are structs with vectors.
    [](const auto& info) { return "case" + std::to_string(info.index); });

}  // namespace
}  // namespace strata
