#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <vector>

namespace strata {
namespace {

// splitmix64 finaliser: a bijective 64-bit mix with good avalanche.
uint64_t Mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Orders candidate ids by value, highest first, lowest id on ties, so every
// selection below is deterministic.
struct ByValueDesc {
  const float* values;
  bool operator()(int32_t a, int32_t b) const {
    if (values[a] != values[b]) return values[a] > values[b];
    return a < b;
  }
};

// NaN logits (a broken model) are treated as impossible tokens rather than
// poisoning every comparison.
float Sanitize(float x) {
  return std::isnan(x) ? -std::numeric_limits<float>::infinity() : x;
}

void ApplyPenalties(const SamplingParams& params,
                    std::span<const TokenId> prompt_tokens,
                    std::span<const TokenId> output_tokens,
                    std::vector<float>& z) {  // [vocab]
  const int64_t vocab = static_cast<int64_t>(z.size());
  auto in_vocab = [vocab](TokenId t) { return t >= 0 && t < vocab; };
  if (params.repetition_penalty != 1.0f && params.repetition_penalty > 0.0f) {
    // Each distinct token is penalised once, however often it appears.
    std::vector<TokenId> seen;
    seen.reserve(prompt_tokens.size() + output_tokens.size());
    for (TokenId t : prompt_tokens) {
      if (in_vocab(t)) seen.push_back(t);
    }
    for (TokenId t : output_tokens) {
      if (in_vocab(t)) seen.push_back(t);
    }
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    const float r = params.repetition_penalty;
    for (TokenId t : seen) z[t] = z[t] > 0.0f ? z[t] / r : z[t] * r;
  }
  if (params.presence_penalty != 0.0f || params.frequency_penalty != 0.0f) {
    std::vector<TokenId> out;
    out.reserve(output_tokens.size());
    for (TokenId t : output_tokens) {
      if (in_vocab(t)) out.push_back(t);
    }
    std::sort(out.begin(), out.end());
    for (size_t i = 0; i < out.size();) {
      size_t j = i;
      while (j < out.size() && out[j] == out[i]) ++j;
      const float count = static_cast<float>(j - i);
      z[out[i]] -= params.frequency_penalty * count + params.presence_penalty;
      i = j;
    }
  }
}

// Per-thread working memory, reused across calls: allocating and
// page-faulting fresh [vocab] buffers each call costs more than the sampling
// itself at a 128k vocabulary.
struct Scratch {
  std::vector<float> z;          // [vocab] penalised, then scaled logits
  std::vector<int32_t> ids;      // [num_candidates] candidate token ids
  std::vector<float> p;          // [num_candidates] exp(z - max_z)
  std::vector<uint16_t> bucket;  // [num_candidates] top-p bucket
  std::vector<uint8_t> keep;     // [num_candidates] top-p survivors
  std::vector<int32_t> boundary;
};

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

// Keeps the smallest set of candidates, most probable first (lowest id on
// ties), whose mass reaches top_p * total. Rather than sorting up to 128k
// candidates, bucket them by -log p = max_z - z (a monotone key, so buckets
// are ordered like the sort would be), find the bucket where the cumulative
// mass crosses the target, and sort only that bucket. Compacts ids/p in
// place, preserving their order.
void TopPCut(float top_p, double total, float max_z, Scratch& scratch) {
  const std::vector<float>& z = scratch.z;
  std::vector<int32_t>& ids = scratch.ids;
  std::vector<float>& p = scratch.p;
  constexpr int kBuckets = 2048;
  constexpr float kRange = 40.0f;  // p below e^-40 shares the last bucket
  const size_t n = ids.size();
  std::vector<uint16_t>& bucket = scratch.bucket;
  bucket.resize(n);
  std::vector<double> mass(kBuckets, 0.0);  // 16 KB
  for (size_t i = 0; i < n; ++i) {
    const float key = max_z - z[ids[i]];
    const int b = key < kRange
                      ? std::min(kBuckets - 1,
                                 static_cast<int>(key * (kBuckets / kRange)))
                      : kBuckets - 1;
    bucket[i] = static_cast<uint16_t>(b);
    mass[b] += p[i];
  }
  const double target = static_cast<double>(top_p) * total;
  double cumulative = 0.0;
  int cut = 0;
  for (; cut < kBuckets; ++cut) {
    if (cumulative + mass[cut] >= target) break;
    cumulative += mass[cut];
  }
  if (cut == kBuckets) return;  // rounding kept the target out of reach
  std::vector<int32_t>& boundary = scratch.boundary;  // indices into ids/p
  boundary.clear();                                   // in bucket `cut`
  for (size_t i = 0; i < n; ++i) {
    if (bucket[i] == cut) boundary.push_back(static_cast<int32_t>(i));
  }
  std::sort(boundary.begin(), boundary.end(), [&](int32_t a, int32_t b) {
    if (p[a] != p[b]) return p[a] > p[b];
    return ids[a] < ids[b];
  });
  // Always keep at least one candidate (the most probable one).
  size_t take = 0;
  while (take < boundary.size()) {
    cumulative += p[boundary[take]];
    ++take;
    if (cumulative >= target) break;
  }
  // Kept: every bucket before the cut, plus the boundary tokens taken.
  std::vector<uint8_t>& keep = scratch.keep;
  keep.resize(n);
  for (size_t i = 0; i < n; ++i) keep[i] = bucket[i] < cut;
  for (size_t k = 0; k < take; ++k) keep[boundary[k]] = 1;
  size_t kept = 0;
  for (size_t i = 0; i < n; ++i) {
    if (keep[i]) {
      ids[kept] = ids[i];
      p[kept] = p[i];
      ++kept;
    }
  }
  ids.resize(kept);
  p.resize(kept);
}

// The first index holding `max`, the largest value of z (z holds no NaN, so
// the first occurrence of its maximum is the lowest id among the best).
TokenId FirstIndexOf(const std::vector<float>& z, float max) {
  return static_cast<TokenId>(std::find(z.begin(), z.end(), max) - z.begin());
}

TokenId ArgMax(const std::vector<float>& z) {
  return FirstIndexOf(z, *std::max_element(z.begin(), z.end()));
}

// ArgMax(z) given the maximum a backend computed; a value z does not hold
// (which no backend should report) falls back to the scan.
TokenId ArgMax(const std::vector<float>& z, float max) {
  const TokenId first = FirstIndexOf(z, max);
  return first < static_cast<TokenId>(z.size()) ? first : ArgMax(z);
}

}  // namespace

double Sampler::Uniform(uint64_t seed, uint64_t index) {
  const uint64_t bits = Mix64(Mix64(seed) ^ (index * 0xd1b54a32d192ed03ull));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

SampledToken Sampler::Sample(const Backend& backend,
                             std::span<const float> logits,
                             const SamplingParams& params,
                             std::span<const TokenId> prompt_tokens,
                             std::span<const TokenId> output_tokens) {
  SampledToken result;
  const int32_t vocab = static_cast<int32_t>(logits.size());
  if (vocab == 0) return result;

  Scratch& scratch = ThreadScratch();
  // Working copy with penalties applied. [vocab]
  std::vector<float>& z = scratch.z;
  z.resize(logits.size());
  for (int32_t i = 0; i < vocab; ++i) z[i] = Sanitize(logits[i]);
  // log_softmax normaliser of the raw logits (before penalties), by the
  // backend (vectorised on the CPU). Its max is z's (z holds no NaN); the
  // sum is used only when that max is finite.
  const SoftmaxStats stats = backend.RowSoftmaxStats(z);
  const float raw_max = stats.max;
  const double sum = std::isfinite(raw_max) ? stats.sum_exp : 0.0;
  const double log_z = std::isfinite(raw_max)
                           ? static_cast<double>(raw_max) + std::log(sum)
                           : 0.0;
  auto raw_logprob = [&](int32_t id) {  // valid until z is modified
    return static_cast<float>(static_cast<double>(z[id]) - log_z);
  };
  if (params.num_top_logprobs > 0) {
    const int32_t k = std::min(params.num_top_logprobs, vocab);
    std::vector<int32_t>& ids = scratch.ids;
    ids.resize(vocab);
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                      ByValueDesc{z.data()});
    result.top_logprobs.reserve(k);
    for (int32_t i = 0; i < k; ++i) {
      result.top_logprobs.emplace_back(ids[i], raw_logprob(ids[i]));
    }
  }
  const bool penalised = params.repetition_penalty != 1.0f ||
                         params.presence_penalty != 0.0f ||
                         params.frequency_penalty != 0.0f;
  if (penalised) ApplyPenalties(params, prompt_tokens, output_tokens, z);
  // z is modified from here on; the reported logprob reads the input.
  auto finish = [&](TokenId token) {
    result.token = token;
    result.logprob = static_cast<float>(
        static_cast<double>(Sanitize(logits[token])) - log_z);
    return result;
  };

  // Temperatures this small are greedy in effect, and dividing by them could
  // overflow the scaled logits.
  constexpr float kMinTemperature = 1e-5f;
  if (params.temperature < kMinTemperature || params.top_k == 1) {
    // Unpenalised, z's maximum is the backend's (vectorised) raw_max, and
    // only the scan to its first occurrence remains: a comparison loop over
    // the vocabulary was most of a greedy token's sampling time.
    return finish(penalised ? ArgMax(z) : ArgMax(z, raw_max));
  }

  // Candidate ids and their scaled logits; a top-k cut keeps the k best.
  const float inv_t = 1.0f / params.temperature;
  for (float& x : z) x *= inv_t;
  std::vector<int32_t>& ids = scratch.ids;
  if (params.top_k > 0 && params.top_k < vocab) {
    // The k-th largest value by selection over plain floats (much faster
    // than selecting indices through a comparator), then every token above
    // it plus the lowest ids among those equal to it.
    std::vector<float>& values = scratch.p;
    values.assign(z.begin(), z.end());
    std::nth_element(values.begin(), values.begin() + (params.top_k - 1),
                     values.end(), std::greater<float>());
    const float kth = values[params.top_k - 1];
    ids.clear();
    for (int32_t i = 0; i < vocab; ++i) {
      if (z[i] > kth) ids.push_back(i);
    }
    for (int32_t i = 0;
         i < vocab && static_cast<int32_t>(ids.size()) < params.top_k; ++i) {
      if (z[i] == kth) ids.push_back(i);
    }
  } else {
    ids.resize(vocab);
    std::iota(ids.begin(), ids.end(), 0);
  }
  const int32_t top =
      *std::min_element(ids.begin(), ids.end(), ByValueDesc{z.data()});
  const float max_z = z[top];
  if (!std::isfinite(max_z)) return finish(top);  // all -inf (or +inf)

  // Unnormalised probabilities relative to the best token (which has 1).
  // [num_candidates]
  std::vector<float>& p = scratch.p;
  p.resize(ids.size());
  double total = 0.0;
  for (size_t i = 0; i < ids.size(); ++i) {
    p[i] = std::exp(z[ids[i]] - max_z);
    total += p[i];
  }

  if (params.top_p < 1.0f) {
    TopPCut(params.top_p, total, max_z, scratch);
  }

  if (params.min_p > 0.0f) {
    // The best token has p == 1 and always survives.
    size_t n = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (p[i] >= params.min_p) {
        ids[n] = ids[i];
        p[n] = p[i];
        ++n;
      }
    }
    ids.resize(n);
    p.resize(n);
  }

  // Renormalise implicitly: draw against the kept mass.
  double kept_total = 0.0;
  for (float x : p) kept_total += x;
  const double u = Uniform(params.seed, output_tokens.size()) * kept_total;
  double cumulative = 0.0;
  for (size_t i = 0; i < ids.size(); ++i) {
    cumulative += p[i];
    if (u < cumulative) return finish(ids[i]);
  }
  // Rounding left u at the very top: take the last token with mass.
  for (size_t i = ids.size(); i-- > 0;) {
    if (p[i] > 0.0f) return finish(ids[i]);
  }
  return finish(top);
}

}  // namespace strata
