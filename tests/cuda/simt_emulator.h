// Runs CUDA kernel source on the CPU, one CTA at a time, so kernels written
// on a machine without a GPU execute in tests anyway. Include this header,
// then a kernel header (kernels/cuda/*_kernel.cuh), in a test file compiled
// by the host compiler; launch with EmulateLaunch.
//
// Model: every CUDA thread of a CTA is a fiber (ucontext) on one OS thread.
// A fiber runs until it reaches a barrier: __shfl_xor_sync() waits for the
// live lanes of its warp (so warps may run different numbers of loop trips
// and shuffles, as on a GPU), __syncthreads() for every live thread of the
// CTA. A warp whose lanes wait at different barriers (a shuffle in divergent
// code, undefined on a GPU too) stops the run with a test failure instead of
// hanging. __shared__ variables become function statics, shared by the
// fibers of the running CTA. Memory is host memory; __ldg / __ldcs are plain
// loads.
//
// What this checks: index arithmetic, the data flow through shuffles and
// shared memory, the math, bounds (with AddressSanitizer builds). What it
// cannot: timing, races between warps that only a real scheduler exposes,
// and anything about performance.
#ifndef STRATA_TESTS_CUDA_SIMT_EMULATOR_H_
#define STRATA_TESTS_CUDA_SIMT_EMULATOR_H_

#if defined(__CUDACC__)
#error "simt_emulator.h is for host-compiled tests only"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <ucontext.h>
#include <vector_types.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#include "gtest/gtest.h"

// The CUDA qualifiers, as host code.
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#ifndef __align__
#define __align__(n) alignas(n)
#endif

namespace strata::testing_simt {

// One CTA's fibers and the barrier between them.
class CtaEmulator {
 public:
  static CtaEmulator& Get() {
    static CtaEmulator emulator;
    return emulator;
  }

  // Runs body() as `threads` fibers with threadIdx.x = 0..threads-1. False
  // when the fibers deadlocked (lanes of a warp at different barriers).
  bool Run(unsigned threads, const std::function<void()>& body);

  // __syncthreads(): yields until every live fiber of the CTA is here.
  void Barrier() { Wait(State::kCtaWait); }
  // A shuffle's barrier: yields until every live lane of the warp is here.
  void WarpBarrier() { Wait(State::kWarpWait); }

  unsigned current() const { return current_; }
  uint64_t& slot(unsigned thread) { return slots_[thread]; }

 private:
  enum class State { kReady, kWarpWait, kCtaWait, kDone };
  struct Fiber {
    ucontext_t context;
    std::vector<char> stack;
    State state = State::kReady;
  };
  static void Trampoline();
  void Wait(State state) {
    fibers_[current_].state = state;
    swapcontext(&fibers_[current_].context, &scheduler_);
  }
  // Moves waiting fibers whose barrier is complete to kReady; false when
  // none could move although some are live (a deadlock).
  bool Release();

  ucontext_t scheduler_;
  std::vector<Fiber> fibers_;
  std::vector<uint64_t> slots_;
  const std::function<void()>* body_ = nullptr;
  unsigned current_ = 0;
};

}  // namespace strata::testing_simt

// The built-in variables (plain globals: one CTA runs at a time, and the
// scheduler sets threadIdx before resuming each fiber).
inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

inline void __syncthreads() {
  strata::testing_simt::CtaEmulator::Get().Barrier();
}

// Exchanges through a per-thread slot between two barriers.
template <typename T>
inline T __shfl_xor_sync(unsigned /*mask*/, T value, int lane_mask) {
  static_assert(sizeof(T) <= sizeof(uint64_t) &&
                std::is_trivially_copyable_v<T>);
  auto& emulator = strata::testing_simt::CtaEmulator::Get();
  const unsigned me = emulator.current();
  std::memcpy(&emulator.slot(me), &value, sizeof(T));
  emulator.WarpBarrier();
  T partner;
  std::memcpy(&partner, &emulator.slot(me ^ static_cast<unsigned>(lane_mask)),
              sizeof(T));
  emulator.WarpBarrier();  // before any lane overwrites its slot again
  return partner;
}

// Lane i gets lane i - delta's value (its own below delta).
template <typename T>
inline T __shfl_up_sync(unsigned /*mask*/, T value, unsigned delta) {
  static_assert(sizeof(T) <= sizeof(uint64_t) &&
                std::is_trivially_copyable_v<T>);
  auto& emulator = strata::testing_simt::CtaEmulator::Get();
  const unsigned me = emulator.current();
  std::memcpy(&emulator.slot(me), &value, sizeof(T));
  emulator.WarpBarrier();
  T got = value;
  if (me % 32 >= delta)
    std::memcpy(&got, &emulator.slot(me - delta), sizeof(T));
  emulator.WarpBarrier();
  return got;
}

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
template <typename T>
inline T __ldcs(const T* p) {
  return *p;
}

inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i) {
    c += static_cast<int8_t>(a >> (8 * i)) * static_cast<int8_t>(b >> (8 * i));
  }
  return c;
}

inline int min(int a, int b) { return a < b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }

namespace strata::testing_simt {

inline void CtaEmulator::Trampoline() {
  CtaEmulator& e = Get();
  (*e.body_)();
  e.fibers_[e.current_].state = State::kDone;
  // uc_link returns to the scheduler.
}

inline bool CtaEmulator::Release() {
  bool live = false, moved = false;
  const unsigned n = static_cast<unsigned>(fibers_.size());
  // Warps whose live lanes all wait at a shuffle.
  for (unsigned w0 = 0; w0 < n; w0 += 32) {
    bool all = true, any = false;
    for (unsigned t = w0; t < n && t < w0 + 32; ++t) {
      if (fibers_[t].state == State::kDone) continue;
      any = true;
      all = all && fibers_[t].state == State::kWarpWait;
    }
    live = live || any;
    if (any && all) {
      for (unsigned t = w0; t < n && t < w0 + 32; ++t) {
        if (fibers_[t].state == State::kWarpWait) {
          fibers_[t].state = State::kReady;
        }
      }
      moved = true;
    }
  }
  if (moved || !live) return true;
  // No warp can move: the CTA barrier, if every live fiber is at it.
  for (const Fiber& f : fibers_) {
    if (f.state != State::kDone && f.state != State::kCtaWait) return false;
  }
  for (Fiber& f : fibers_) {
    if (f.state == State::kCtaWait) f.state = State::kReady;
  }
  return true;
}

inline bool CtaEmulator::Run(unsigned threads,
                             const std::function<void()>& body) {
  constexpr size_t kStack = 256 * 1024;
  body_ = &body;
  fibers_.resize(threads);
  slots_.assign(threads, 0);
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = fibers_[t];
    f.state = State::kReady;
    f.stack.resize(kStack);
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.data();
    f.context.uc_stack.ss_size = f.stack.size();
    f.context.uc_link = &scheduler_;
    makecontext(&f.context, &CtaEmulator::Trampoline, 0);
  }
  for (;;) {
    bool ran = false;
    for (unsigned t = 0; t < threads; ++t) {
      if (fibers_[t].state != State::kReady) continue;
      current_ = t;
      threadIdx = {t, 0, 0};
      swapcontext(&scheduler_, &fibers_[t].context);
      ran = true;
    }
    bool live = false;
    for (const Fiber& f : fibers_) live = live || f.state != State::kDone;
    if (!live) return true;
    if (!ran && !Release()) return false;
    if (ran) Release();
  }
}

// Runs kernel() once per CTA of `grid`, with blockDim.x = threads.
inline void EmulateLaunch(dim3 grid, unsigned threads,
                          const std::function<void()>& kernel) {
  gridDim = grid;
  blockDim = dim3(threads, 1, 1);
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = {x, y, z};
        if (!CtaEmulator::Get().Run(threads, kernel)) {
          ADD_FAILURE() << "emulated CTA (" << x << ", " << y << ", " << z
                        << ") deadlocked: lanes of a warp at different "
                           "barriers (a shuffle in divergent code?)";
          return;
        }
      }
    }
  }
}

}  // namespace strata::testing_simt

#endif  // STRATA_TESTS_CUDA_SIMT_EMULATOR_H_
