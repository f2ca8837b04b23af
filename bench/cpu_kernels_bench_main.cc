// strata-cpu-kernels-bench: the CPU matrix-product kernels side by side in one
// run -- the dot-product MatMul (weights as uploaded), PackedMatMul (Linear
// weights repacked into column panels, f32 and bfloat16), Bf16MatMul
// (vdpbf16ps, bfloat16 x and weights; scalar where the CPU lacks AVX-512
// BF16) and Int8MatMul (int8 panels, --quantization=int8) -- on the shapes of a
// 53M Llama's projections, at batch sizes from a single decode token to a
// prefill chunk. Prints GFLOP/s of each and the ratios packed/dot, bf16dot/bf16
// and int8/bf16; then the LoRA A-products of a step whose rows sit at two
// loops, two PackedMatMul calls against one PackedMatMulPair. On a shared
// machine read the ratios, not the absolute figures (docs/benchmarks.md).
//
// Usage: build/bin/strata-cpu-kernels-bench [--threads=2] [--seconds=0.3]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "kernels/cpu/bf16_matmul.h"
#include "kernels/cpu/int8_matmul.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernel_context.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/packed_matmul.h"
#include "kernels/cpu/thread_pool.h"

ABSL_FLAG(int32_t, threads, 0, "Kernel threads; 0 = one per core.");
ABSL_FLAG(double, seconds, 0.3, "Time per measurement (each of A and B).");

namespace strata::cpu {
namespace {

// Seconds per call of `fn`, run repeatedly for about `budget` seconds.
template <typename Fn>
double TimePerCall(Fn&& fn, double budget) {
  fn();  // warm caches and the pool
  using Clock = std::chrono::steady_clock;
  int64_t calls = 0;
  const auto start = Clock::now();
  double elapsed = 0;
  while (elapsed < budget) {
    fn();
    ++calls;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  }
  return elapsed / static_cast<double>(calls);
}

int Run() {
  ThreadPool pool(absl::GetFlag(FLAGS_threads));
  const KernelContext ctx{DefaultIsa(), &pool};
  const double budget = absl::GetFlag(FLAGS_seconds);
  std::printf("isa %s (int8: %s), %d threads\n",
              std::string(IsaName(ctx.isa)).c_str(),
              std::string(Int8IsaName(Int8IsaFor(ctx.isa))).c_str(),
              pool.num_threads());
  std::printf("%-22s %5s %12s %9s %9s %9s %9s %7s %9s %9s\n", "shape (m x k)",
              "rows", "dot GFLOP/s", "packed", "bf16", "bf16dot", "int8",
              "pk/dot", "dot/bf16", "int8/bf16");
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  struct Shape {
    const char* name;
    int64_t m, k;
  };
  for (const Shape& s :
       {Shape{"gate/up 2048x768", 2048, 768}, Shape{"down 768x2048", 768, 2048},
        Shape{"q/o 768x768", 768, 768}}) {
    std::vector<float> w(static_cast<size_t>(s.m * s.k));
    for (float& v : w) v = dist(rng);
    std::vector<float> packed(PackedWeightSize(s.m, s.k));
    PackWeight(w.data(), s.m, s.k, packed.data());
    std::vector<uint16_t> packed16(PackedWeightSize(s.m, s.k));
    PackWeightBf16(w.data(), s.m, s.k, packed16.data());  // truncates
    std::vector<uint8_t> q(Int8PackedBytes(s.m, s.k));
    std::vector<float> scales(Int8PaddedRows(s.m));
    QuantizeWeightInt8(w.data(), s.m, s.k, q.data(), scales.data());
    const Int8Panels panels{q.data(), scales.data()};
    std::vector<uint16_t> pairs(Bf16PairPackedSize(s.m, s.k));
    PackWeightBf16Pairs(w.data(), s.m, s.k, pairs.data());
    const bool bf16_dot = Bf16DotSupported();
    for (int64_t n : {1, 4, 16, 64, 256}) {
      std::vector<float> x(static_cast<size_t>(n * s.k));
      for (float& v : x) v = dist(rng);
      std::vector<float> out(static_cast<size_t>(n * s.m));
      const double dot = TimePerCall(
          [&] { MatMul(ctx, x.data(), w.data(), n, s.m, s.k, out.data()); },
          budget);
      const double pan = TimePerCall(
          [&] {
            PackedMatMul(ctx, x.data(), packed.data(), n, s.m, s.k, out.data());
          },
          budget);
      const double bf16 = TimePerCall(
          [&] {
            PackedMatMul(ctx, x.data(), packed16.data(), n, s.m, s.k,
                         out.data());
          },
          budget);
      const double int8 = TimePerCall(
          [&] {
            Int8MatMul(ctx, x.data(), panels, n, s.m, s.k, out.data());
          },
          budget);
      const double bdot = TimePerCall(
          [&] {
            Bf16MatMul(ctx, bf16_dot, x.data(), pairs.data(), n, s.m, s.k,
                       out.data());
          },
          budget);
      const double flops = 2.0 * n * s.m * s.k;
      std::printf(
          "%-22s %5lld %12.1f %9.1f %9.1f %9.1f %9.1f %6.2fx %8.2fx %8.2fx\n",
          s.name, static_cast<long long>(n), flops / dot / 1e9,
          flops / pan / 1e9, flops / bf16 / 1e9, flops / bdot / 1e9,
          flops / int8 / 1e9, dot / pan, bf16 / bdot, bf16 / int8);
    }
  }
  // LoRA A-products of a decode step whose rows sit at two loops: two
  // segments' rows against their own one-panel A (rank 8, or 16 stacked),
  // as two PackedMatMul calls on the calling thread and as one
  // PackedMatMulPair. The same bits; read the ratio.
  std::printf("\n%-22s %5s %10s %10s %7s\n", "LoRA A (m x k)", "rows", "two us",
              "pair us", "two/pair");
  for (const Shape& s :
       {Shape{"o, down rank 8", 8, 256}, Shape{"gate+up 2 x 8", 16, 256},
        Shape{"down rank 8", 8, 640}}) {
    std::vector<float> packed[2];
    for (std::vector<float>& p : packed) {
      std::vector<float> w(static_cast<size_t>(s.m * s.k));
      for (float& v : w) v = dist(rng);
      p.resize(PackedWeightSize(s.m, s.k));
      PackWeight(w.data(), s.m, s.k, p.data());
    }
    std::vector<float> x(static_cast<size_t>(8 * s.k));
    for (float& v : x) v = dist(rng);
    std::vector<float> out(static_cast<size_t>(8 * s.m));
    const KernelContext alone{ctx.isa, nullptr};
    for (auto [n0, n1] :
         {std::pair<int64_t, int64_t>{1, 1}, {2, 1}, {3, 3}, {5, 3}, {4, 4}}) {
      const float* x1 = x.data() + n0 * s.k;
      float* out1 = out.data() + n0 * s.m;
      const double two = TimePerCall(
          [&] {
            PackedMatMul(alone, x.data(), packed[0].data(), n0, s.m, s.k,
                         out.data());
            PackedMatMul(alone, x1, packed[1].data(), n1, s.m, s.k, out1);
          },
          budget);
      const double pair = TimePerCall(
          [&] {
            PackedMatMulPair(ctx.isa, x.data(), n0, packed[0].data(), x1, n1,
                             packed[1].data(), s.m, s.k, out.data(), out1);
          },
          budget);
      std::printf("%-22s %2lld+%-2lld %10.3f %10.3f %6.2fx\n", s.name,
                  static_cast<long long>(n0), static_cast<long long>(n1),
                  two * 1e6, pair * 1e6, two / pair);
    }
  }
  return 0;
}

}  // namespace
}  // namespace strata::cpu

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return strata::cpu::Run();
}
