// Sampling kernel. Why written this way: a 128k-entry row is far too small to
// split across CTAs usefully but too large to sort, so each row gets one
// 1024-thread CTA and every selection is a threshold found by bisection over
// the order-preserving integer image of f32 values (count or mass above a
// threshold is one block reduction; 32 rounds pin an exact f32 value). The
// final draw is an ordered block scan in id order, so the result is
// deterministic for a seed. Napkin: ~40 passes over a 512 KiB row per
// sampled token, ~10 us, small next to a decode step.
#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/sampling.h"

namespace strata::cuda {
namespace {

constexpr int kThreads = 1024;

__host__ __device__ uint64_t Mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__host__ __device__ double Uniform(uint64_t seed, uint64_t index) {
  const uint64_t bits = Mix64(Mix64(seed) ^ (index * 0xd1b54a32d192ed03ull));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

// Monotone map of f32 to uint32 (a < b <=> Key(a) < Key(b), NaN excluded).
__device__ __forceinline__ uint32_t Key(float x) {
  const uint32_t b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float Unkey(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__device__ __forceinline__ float Sanitize(float x) {
  return isnan(x) ? -INFINITY : x;
}

// ---- kernels ----

// z (scratch row) holds the working logits; after the candidate selection a
// token is kept iff z[i] is finite and >= the thresholds (non-kept entries are
// set to -inf).
__global__ void __launch_bounds__(kThreads)
    SampleKernel(const float* __restrict__ logits, int32_t vocab,
                 const DeviceSamplingParams* __restrict__ all_params,
                 const PenaltyEntry* __restrict__ penalties,
                 float* __restrict__ scratch, SampleOutput* __restrict__ out) {
  __shared__ float f_scratch[32];
  __shared__ double d_scratch[32];
  __shared__ int i_scratch[32];
  __shared__ int s_best;
  const int64_t row = blockIdx.x;
  const DeviceSamplingParams p = all_params[row];
  const float* x = logits + row * vocab;
  float* z = scratch + row * vocab;

  // log_softmax normaliser of the raw logits.
  float local_max = -INFINITY;
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const float v = Sanitize(x[i]);
    z[i] = v;
    local_max = fmaxf(local_max, v);
  }
  const float raw_max = BlockMax(local_max, f_scratch);
  double local_sum = 0.0;
  if (isfinite(raw_max)) {
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      local_sum += expf(z[i] - raw_max);
    }
  }
  const double sum = BlockSumD(local_sum, d_scratch);
  const double log_z =
      isfinite(raw_max) ? static_cast<double>(raw_max) + log(sum) : 0.0;

  // Penalties: entries are distinct tokens, so no two threads write one z.
  __syncthreads();
  const bool repetition =
      p.repetition_penalty != 1.0f && p.repetition_penalty > 0.0f;
  for (int e = p.penalty_begin + threadIdx.x; e < p.penalty_end;
       e += kThreads) {
    const PenaltyEntry pe = penalties[e];
    float v = z[pe.token];
    if (repetition) {
      v = v > 0.0f ? v / p.repetition_penalty : v * p.repetition_penalty;
    }
    if (pe.output_count > 0) {
      v -= p.frequency_penalty * static_cast<float>(pe.output_count) +
           p.presence_penalty;
    }
    z[pe.token] = v;
  }
  __syncthreads();

  auto finish = [&](int32_t token) {
    if (threadIdx.x == 0) {
      out[row].token = token;
      out[row].logprob =
          static_cast<float>(static_cast<double>(Sanitize(x[token])) - log_z);
    }
  };
  // Argmax over z with the lowest id on ties (packed as value key, ~id).
  auto argmax = [&]() -> int32_t {
    unsigned long long best = 0;
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      const unsigned long long k =
          (static_cast<unsigned long long>(Key(z[i])) << 32) |
          (0xffffffffu - static_cast<uint32_t>(i));
      best = k > best ? k : best;
    }
    for (int o = 16; o > 0; o >>= 1) {
      const unsigned long long other = __shfl_xor_sync(0xffffffffu, best, o);
      best = other > best ? other : best;
    }
    __shared__ unsigned long long warp_best[32];
    __syncthreads();
    if ((threadIdx.x & 31) == 0) warp_best[threadIdx.x >> 5] = best;
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned long long b = 0;
      for (int w = 0; w < kThreads / 32; ++w)
        b = warp_best[w] > b ? warp_best[w] : b;
      s_best = static_cast<int>(0xffffffffu - static_cast<uint32_t>(b));
    }
    __syncthreads();
    return s_best;
  };

  if (p.temperature < 1e-5f || p.top_k == 1) {
    finish(argmax());
    return;
  }
  const float inv_t = 1.0f / p.temperature;
  for (int i = threadIdx.x; i < vocab; i += kThreads) z[i] *= inv_t;
  __syncthreads();
  const int32_t top = argmax();
  const float max_z = z[top];
  if (!isfinite(max_z)) {
    finish(top);
    return;
  }

  // top-k: the largest threshold t with count(z >= t) >= k.
  if (p.top_k > 0 && p.top_k < vocab) {
    uint32_t lo = 0, hi = Key(max_z);  // count(>= Unkey(hi)) >= 1
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo + 1) / 2;
      int c = 0;
      for (int i = threadIdx.x; i < vocab; i += kThreads) {
        c += Key(z[i]) >= mid ? 1 : 0;
      }
      const float total = BlockSum(static_cast<float>(c), f_scratch);
      if (total >= static_cast<float>(p.top_k)) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    // Keep z > kth, then ties at kth in id order until k are kept.
    int greater = 0;
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      greater += Key(z[i]) > lo ? 1 : 0;
    }
    const int need = p.top_k - static_cast<int>(BlockSum(
                                   static_cast<float>(greater), f_scratch));
    int taken = 0;
    for (int base = 0; base < vocab; base += kThreads) {
      const int i = base + threadIdx.x;
      const bool tie = i < vocab && Key(z[i]) == lo;
      int chunk_total = 0;
      const int rank =
          taken + BlockExclusiveScan(tie ? 1 : 0, i_scratch, &chunk_total);
      if (i < vocab && Key(z[i]) < lo) z[i] = -INFINITY;
      if (tie && rank >= need) z[i] = -INFINITY;
      taken += chunk_total;
    }
    __syncthreads();
  }

  // Probabilities relative to the best (exp(z - max_z)); kept mass.
  auto kept_mass_above = [&](float threshold) -> double {
    double m = 0.0;
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      const float pi = expf(z[i] - max_z);
      if (z[i] != -INFINITY && pi >= threshold) m += pi;
    }
    return BlockSumD(m, d_scratch);
  };
  const double total = kept_mass_above(0.0f);

  if (p.top_p < 1.0f) {
    // The largest probability threshold whose kept mass reaches the target.
    const double target = static_cast<double>(p.top_p) * total;
    uint32_t lo = Key(0.0f), hi = Key(1.0f);
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo + 1) / 2;
      if (kept_mass_above(Unkey(mid)) >= target) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    const float cut = Unkey(lo);
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      if (expf(z[i] - max_z) < cut) z[i] = -INFINITY;
    }
    __syncthreads();
  }
  if (p.min_p > 0.0f) {
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      if (expf(z[i] - max_z) < p.min_p) z[i] = -INFINITY;
    }
    __syncthreads();
  }

  // Draw: first kept id (in id order) where the cumulative mass passes u.
  const double kept_total = kept_mass_above(0.0f);
  const double u = Uniform(p.seed, p.draw_index) * kept_total;
  double carry = 0.0;
  int32_t chosen = -1;
  int32_t my_last = -1;  // this thread's last kept id (rounding fallback)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int base = 0; base < vocab; base += kThreads) {
    const int i = base + threadIdx.x;
    const double pi =
        (i < vocab && z[i] != -INFINITY) ? expf(z[i] - max_z) : 0.0;
    if (pi > 0.0) my_last = i;
    // Inclusive scan of the chunk in id order (warp shuffles, then warps).
    double inc = pi;
    for (int o = 1; o < 32; o <<= 1) {
      const double n = __shfl_up_sync(0xffffffffu, inc, o);
      if (lane >= o) inc += n;
    }
    __syncthreads();
    if (lane == 31) d_scratch[warp] = inc;
    __syncthreads();
    double warp_offset = 0.0, chunk_total = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) {
      if (w < warp) warp_offset += d_scratch[w];
      chunk_total += d_scratch[w];
    }
    // The CPU's rule: the first kept token whose inclusive cumulative mass
    // exceeds u.
    const bool hit = pi > 0.0 && u < carry + warp_offset + inc;
    int hits = 0;
    const int rank = BlockExclusiveScan(hit ? 1 : 0, i_scratch, &hits);
    if (hit && rank == 0) s_best = i;
    __syncthreads();
    if (hits > 0) {  // block-uniform
      chosen = s_best;
      break;
    }
    carry += chunk_total;
  }
  int32_t last_kept = top;
  if (chosen < 0) {
    const float m = BlockMax(static_cast<float>(my_last), f_scratch);
    if (m >= 0.0f) last_kept = static_cast<int32_t>(m);
  }
  finish(chosen >= 0 ? chosen : last_kept);
}

}  // namespace

double DeviceUniformOnHost(uint64_t seed, uint64_t index) {
  return Uniform(seed, index);
}

// ---- launchers ----

cudaError_t LaunchSample(const float* logits, int64_t num_rows, int32_t vocab,
                         const DeviceSamplingParams* params,
                         const PenaltyEntry* penalties, float* scratch,
                         SampleOutput* out, cudaStream_t stream) {
  if (num_rows == 0 || vocab == 0) return cudaSuccess;
  SampleKernel<<<static_cast<unsigned>(num_rows), kThreads, 0, stream>>>(
      logits, vocab, params, penalties, scratch, out);
  return cudaGetLastError();
}

}  // namespace strata::cuda
