// What every CPU kernel needs besides its operands: which ISA variant to run
// and which thread pool to split work over.
#ifndef STRATA_KERNELS_CPU_KERNEL_CONTEXT_H_
#define STRATA_KERNELS_CPU_KERNEL_CONTEXT_H_

#include <cstdint>

#include "absl/functional/function_ref.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"

namespace strata::cpu {

struct KernelContext {
  Isa isa = Isa::kScalar;
  ThreadPool* pool = nullptr;  // nullptr = run on the calling thread

  int num_threads() const { return pool == nullptr ? 1 : pool->num_threads(); }

  // This context for work of `macs` multiply-adds, or the calling thread
  // alone below kMinParallelMacs: handing so little to a worker costs more
  // than it saves (the result is the same either way).
  static constexpr int64_t kMinParallelMacs = 1 << 18;
  KernelContext ForMacs(int64_t macs) const {
    return macs < kMinParallelMacs ? KernelContext{isa, nullptr} : *this;
  }

  // Runs task(i) for i in [0, num_tasks), on the pool when there is one.
  void ParallelFor(int64_t num_tasks,
                   absl::FunctionRef<void(int64_t)> task) const {
    if (pool == nullptr) {
      for (int64_t i = 0; i < num_tasks; ++i) task(i);
    } else {
      pool->ParallelFor(num_tasks, task);
    }
  }
};

}  // namespace strata::cpu

#endif  // STRATA_KERNELS_CPU_KERNEL_CONTEXT_H_
