// strata-read-bandwidth: a STREAM-style probe of the machine's memory read
// bandwidth, the roofline of a batch-1 CPU decode step (which streams every
// weight once per token). Each thread sums its share of a buffer much larger
// than the caches with 8 independent vector accumulators; the figure is
// bytes read per second over a pass, best and median of --passes.
//
// Run it beside every CPU throughput figure, in the same session: on a
// shared VM the figure moves by 1.5x from minute to minute
// (docs/benchmarks.md, docs/engine.md).
//
// Usage: build/bin/strata-read-bandwidth [--threads=0] [--mb=1024]
//            [--passes=10]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "kernels/cpu/thread_pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

ABSL_FLAG(int32_t, threads, 0, "Reading threads; 0 = one per core.");
ABSL_FLAG(int32_t, mb, 1024, "Buffer size in MiB (well above the L3).");
ABSL_FLAG(int32_t, passes, 10, "Timed passes over the buffer.");

namespace strata {
namespace {

constexpr int64_t kChunk = 1 << 20;  // bytes per pool task

// Sums [p, p + bytes) as floats (bytes a multiple of 512): the result only
// keeps the loads from being optimised away.
#if defined(__x86_64__)
__attribute__((target("avx512f"))) float SumAvx512(const float* p,
                                                   int64_t count) {
  __m512 acc[8];
  for (__m512& a : acc) a = _mm512_setzero_ps();
  for (int64_t i = 0; i < count; i += 128) {
    for (int j = 0; j < 8; ++j) {
      acc[j] = _mm512_add_ps(acc[j], _mm512_load_ps(p + i + 16 * j));
    }
  }
  for (int j = 1; j < 8; ++j) acc[0] = _mm512_add_ps(acc[0], acc[j]);
  float lanes[16];
  _mm512_storeu_ps(lanes, acc[0]);
  return lanes[0];
}
#endif

float SumPortable(const float* p, int64_t count) {
  float acc[8] = {};
  for (int64_t i = 0; i < count; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += p[i + j];
  }
  return acc[0] + acc[7];
}

int Run() {
  cpu::ThreadPool pool(absl::GetFlag(FLAGS_threads));
  const int64_t bytes = int64_t{absl::GetFlag(FLAGS_mb)} << 20;
  const int passes = std::max(1, absl::GetFlag(FLAGS_passes));
  auto* buffer = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (buffer == nullptr) {
    std::fprintf(stderr, "cannot allocate %lld bytes\n",
                 static_cast<long long>(bytes));
    return 1;
  }
  const int64_t num_chunks = bytes / kChunk;
  // Touch every page (from the pool, so pages land near their readers).
  pool.ParallelFor(num_chunks, [&](int64_t c) {
    std::memset(reinterpret_cast<char*>(buffer) + c * kChunk, 1, kChunk);
  });
#if defined(__x86_64__)
  const bool avx512 = __builtin_cpu_supports("avx512f");
#else
  const bool avx512 = false;
#endif
  std::vector<float> sink(static_cast<size_t>(num_chunks));
  std::vector<double> gbps;
  for (int pass = 0; pass <= passes; ++pass) {  // pass 0 warms up
    const auto start = std::chrono::steady_clock::now();
    pool.ParallelFor(num_chunks, [&](int64_t c) {
      const float* p = buffer + c * (kChunk / 4);
#if defined(__x86_64__)
      sink[c] = avx512 ? SumAvx512(p, kChunk / 4) : SumPortable(p, kChunk / 4);
#else
      sink[c] = SumPortable(p, kChunk / 4);
#endif
    });
    const double s = std::chrono::duration<double>(
                         std::chrono::steady_clock::now() - start)
                         .count();
    if (pass > 0) gbps.push_back(static_cast<double>(bytes) / s / 1e9);
  }
  std::sort(gbps.begin(), gbps.end());
  // Keeps the sums (and so the loads) alive.
  volatile float check = 0;
  for (float v : sink) check = check + v;
  std::printf(
      "read bandwidth: best %.1f GB/s, median %.1f GB/s, worst %.1f GB/s "
      "(%d threads, %lld MiB, %d passes)\n",
      gbps.back(), gbps[gbps.size() / 2], gbps.front(), pool.num_threads(),
      static_cast<long long>(bytes >> 20), passes);
  std::free(buffer);
  return 0;
}

}  // namespace
}  // namespace strata

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return strata::Run();
}
