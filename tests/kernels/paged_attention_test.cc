// Paged attention against dense float64 attention: shuffled block tables,
// partial last blocks, prefill / chunk / decode sequences in one batch, GQA
// ratios 1, 2 and 4, every ISA variant; and batch invariance.
#include "kernels/cpu/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernel_context.h"
#include "kernels/cpu/thread_pool.h"

namespace strata::cpu {
namespace {

// One sequence's data in dense form.
struct DenseSequence {
  int32_t start_position;
  int32_t num_tokens;
  std::vector<float> k, v;  // [start + num_tokens, kv_heads, head_dim]
  std::vector<float> q;     // [num_tokens, heads, head_dim]
  std::vector<int32_t> block_table;
};

struct CacheSetup {
  AttentionGeometry geometry;
  int32_t num_blocks;
  std::vector<DenseSequence> sequences;
  std::vector<float> k_cache, v_cache;  // [num_blocks, kv_heads, bs, hd]
};

// Builds sequences with random data and writes all their keys and values
// into a cache through shuffled block tables.
CacheSetup MakeSetup(int32_t heads, int32_t kv_heads, int32_t head_dim,
                     int32_t block_size,
                     const std::vector<std::pair<int, int>>& seqs,
                     uint32_t seed) {
  CacheSetup s;
  s.geometry = {heads, kv_heads, head_dim, block_size,
                1.0f / std::sqrt(static_cast<float>(head_dim))};
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1, 1);
  int32_t blocks_needed = 0;
  for (auto [start, count] : seqs) {
    blocks_needed += (start + count + block_size - 1) / block_size;
  }
  s.num_blocks = blocks_needed + 3;  // a few blocks nobody uses
  std::vector<int32_t> free_blocks(s.num_blocks);
  std::iota(free_blocks.begin(), free_blocks.end(), 0);
  // Its own generator, so the data depend on the seed alone, not on the
  // block size.
  std::mt19937 shuffle_rng(seed + 7919);
  std::shuffle(free_blocks.begin(), free_blocks.end(), shuffle_rng);
  const int64_t kv_width = int64_t{kv_heads} * head_dim;
  const size_t cache_size = size_t(s.num_blocks) * kv_width * block_size;
  s.k_cache.assign(cache_size, std::nanf(""));  // unused slots are poison
  s.v_cache.assign(cache_size, std::nanf(""));
  for (auto [start, count] : seqs) {
    DenseSequence d;
    d.start_position = start;
    d.num_tokens = count;
    const int32_t total = start + count;
    d.k.resize(total * kv_width);
    d.v.resize(total * kv_width);
    d.q.resize(int64_t{count} * heads * head_dim);
    for (float& x : d.k) x = dist(rng);
    for (float& x : d.v) x = dist(rng);
    for (float& x : d.q) x = dist(rng) * 3.0f;
    for (int32_t b = 0; b < (total + block_size - 1) / block_size; ++b) {
      d.block_table.push_back(free_blocks.back());
      free_blocks.pop_back();
    }
    std::vector<int32_t> slots;
    for (int32_t p = 0; p < total; ++p) {
      slots.push_back(d.block_table[p / block_size] * block_size +
                      p % block_size);
    }
    WriteKvCache(KernelContext{}, s.geometry, d.k.data(), d.v.data(), slots,
                 s.k_cache.data(), s.v_cache.data());
    s.sequences.push_back(std::move(d));
  }
  return s;
}

// Dense causal attention in float64. out: [num_tokens, heads, head_dim]
std::vector<double> DenseAttention(const AttentionGeometry& g,
                                   const DenseSequence& d) {
  const int64_t hd = g.head_dim, group = g.num_heads / g.num_kv_heads;
  std::vector<double> out(int64_t{d.num_tokens} * g.num_heads * hd, 0.0);
  for (int32_t t = 0; t < d.num_tokens; ++t) {
    const int32_t keys = d.start_position + t + 1;
    for (int32_t h = 0; h < g.num_heads; ++h) {
      const int64_t kvh = h / group;
      const float* q = d.q.data() + (int64_t{t} * g.num_heads + h) * hd;
      std::vector<double> scores(keys);
      for (int32_t j = 0; j < keys; ++j) {
        const float* k = d.k.data() + (int64_t{j} * g.num_kv_heads + kvh) * hd;
        double dot = 0;
        for (int64_t i = 0; i < hd; ++i) dot += double{q[i]} * k[i];
        scores[j] = dot * g.scale;
      }
      const double max = *std::max_element(scores.begin(), scores.end());
      double sum = 0;
      for (double& x : scores) sum += (x = std::exp(x - max));
      double* o = out.data() + (int64_t{t} * g.num_heads + h) * hd;
      for (int32_t j = 0; j < keys; ++j) {
        const float* v = d.v.data() + (int64_t{j} * g.num_kv_heads + kvh) * hd;
        for (int64_t i = 0; i < hd; ++i) o[i] += scores[j] / sum * v[i];
      }
    }
  }
  return out;
}

// Runs paged attention for `which` sequences batched in that order.
std::vector<float> RunPaged(const KernelContext& ctx, const CacheSetup& s,
                            const std::vector<int>& which) {
  const int64_t width = int64_t{s.geometry.num_heads} * s.geometry.head_dim;
  std::vector<float> q;
  std::vector<AttentionSequence> seqs;
  int32_t row = 0;
  for (int i : which) {
    const DenseSequence& d = s.sequences[i];
    q.insert(q.end(), d.q.begin(), d.q.end());
    seqs.push_back({row, d.num_tokens, d.start_position, d.block_table});
    row += d.num_tokens;
  }
  std::vector<float> out(row * width, std::nanf(""));
  PagedAttention(ctx, s.geometry, q.data(), s.k_cache.data(), s.v_cache.data(),
                 seqs, out.data());
  return out;
}

// (isa, kv heads for 4 query heads, head_dim, block_size)
using Param = std::tuple<Isa, int, int, int>;

class PagedAttentionTest : public testing::TestWithParam<Param> {};

TEST_P(PagedAttentionTest, MatchesDenseAttentionAndIsBatchInvariant) {
  const auto [isa, kv_heads, head_dim, block_size] = GetParam();
  // Prefill from 0, a chunk from the middle of a block, a decode token, and
  // a prefill ending on a block boundary.
  const CacheSetup s = MakeSetup(4, kv_heads, head_dim, block_size,
                                 {{0, 7}, {5, 6}, {10, 1}, {0, 2 * block_size}},
                                 1000 + kv_heads * 31 + head_dim + block_size);
  ThreadPool pool(2);
  const KernelContext ctx{isa, &pool};
  const std::vector<float> batched = RunPaged(ctx, s, {0, 1, 2, 3});
  const std::vector<float> scalar =
      RunPaged(KernelContext{Isa::kScalar, &pool}, s, {0, 1, 2, 3});
  ASSERT_EQ(batched.size(), scalar.size());
  for (size_t e = 0; e < batched.size(); ++e) {
    ASSERT_NEAR(batched[e], scalar[e], 2e-6) << "vs scalar, element " << e;
  }
  const int64_t width = int64_t{4} * head_dim;
  int64_t row = 0;
  for (int i = 0; i < 4; ++i) {
    const DenseSequence& d = s.sequences[i];
    const std::vector<double> expected = DenseAttention(s.geometry, d);
    for (int64_t e = 0; e < d.num_tokens * width; ++e) {
      ASSERT_NEAR(batched[row * width + e], expected[e], 2e-6)
          << "sequence " << i << " element " << e;
    }
    // The same sequence alone (single-threaded too): bit-identical.
    const std::vector<float> alone =
        RunPaged(KernelContext{isa, nullptr}, s, {i});
    ASSERT_EQ(0, std::memcmp(alone.data(), batched.data() + row * width,
                             alone.size() * sizeof(float)))
        << "sequence " << i;
    row += d.num_tokens;
  }
}

std::vector<Param> Params() {
  std::vector<Param> params;
  for (Isa isa : SupportedIsas()) {
    for (int kv_heads : {4, 2, 1}) {
      for (int head_dim : {16, 20, 64}) {
        for (int block_size : {1, 3, 16, 32}) {
          params.emplace_back(isa, kv_heads, head_dim, block_size);
        }
      }
    }
  }
  return params;
}

std::string ParamName(const testing::TestParamInfo<Param>& info) {
  const auto [isa, kv_heads, head_dim, block_size] = info.param;
  return std::string(IsaName(isa)) + "_gqa" + std::to_string(4 / kv_heads) +
         "_hd" + std::to_string(head_dim) + "_bs" + std::to_string(block_size);
}

INSTANTIATE_TEST_SUITE_P(All, PagedAttentionTest, testing::ValuesIn(Params()),
                         ParamName);

// The AVX-512 variant has a wide body (16 keys' scores reduced together,
// output heads in registers) for block sizes that are multiples of 16 and
// head dims that are whole vectors, and the generic one otherwise. Both must
// give the same bits, so the same data in caches of block size 3 (generic)
// and 16 or 32 (wide) give identical outputs.
TEST(PagedAttentionAvx512Test, WideBodyGivesTheGenericBodysBits) {
  if (!IsaSupported(Isa::kAvx512)) GTEST_SKIP() << "no AVX-512 on this CPU";
  const KernelContext ctx{Isa::kAvx512, nullptr};
  for (int head_dim : {16, 32, 64, 96, 128}) {
    for (int kv_heads : {12, 4, 2, 1}) {  // GQA groups of 1, 3, 6 and 12
      const std::vector<std::pair<int, int>> seqs = {
          {0, 19}, {21, 1}, {40, 3}, {0, 1}};
      const uint32_t seed = 77 + head_dim + kv_heads;
      const CacheSetup generic =
          MakeSetup(12, kv_heads, head_dim, 3, seqs, seed);
      const std::vector<float> expected = RunPaged(ctx, generic, {0, 1, 2, 3});
      for (int block_size : {16, 32}) {
        const CacheSetup wide =
            MakeSetup(12, kv_heads, head_dim, block_size, seqs, seed);
        const std::vector<float> got = RunPaged(ctx, wide, {0, 1, 2, 3});
        ASSERT_EQ(0, std::memcmp(got.data(), expected.data(),
                                 got.size() * sizeof(float)))
            << "head_dim " << head_dim << " kv_heads " << kv_heads
            << " block_size " << block_size;
      }
    }
  }
}

TEST(WriteKvCacheTest, StoresEachHeadAtItsSlot) {
  const AttentionGeometry g{4, 2, 3, 2, 1.0f};
  const std::vector<float> k = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  const std::vector<float> v = {-1, -2, -3, -4,  -5,  -6,
                                -7, -8, -9, -10, -11, -12};
  const std::vector<int32_t> slots = {5,
                                      0};  // block 2 offset 1, block 0 offset 0
  std::vector<float> k_cache(3 * 2 * 2 * 3, 0), v_cache(3 * 2 * 2 * 3, 0);
  WriteKvCache(KernelContext{}, g, k.data(), v.data(), slots, k_cache.data(),
               v_cache.data());
  // [block][kv_head][offset][dim]
  auto at = [](int block, int head, int offset) {
    return ((block * 2 + head) * 2 + offset) * 3;
  };
  EXPECT_EQ(k_cache[at(2, 0, 1)], 1);
  EXPECT_EQ(k_cache[at(2, 1, 1) + 2], 6);
  EXPECT_EQ(k_cache[at(0, 0, 0)], 7);
  EXPECT_EQ(v_cache[at(0, 1, 0) + 1], -11);
  EXPECT_EQ(k_cache[at(1, 0, 0)], 0);
}

}  // namespace
}  // namespace strata::cpu
