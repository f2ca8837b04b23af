// Runtime instruction-set dispatch for the CPU kernels.
//
// The kernels library is compiled for the x86-64 baseline; each hot kernel
// also has AVX2+FMA and AVX-512F variants compiled with
// __attribute__((target(...))). The variant is chosen once per process (or
// per KernelContext, for tests) from what the CPU reports through
// __builtin_cpu_supports. Every variant keeps the batch-invariance rule (see
// docs/engine.md); different variants may round differently from each other.
#ifndef STRATA_KERNELS_CPU_ISA_H_
#define STRATA_KERNELS_CPU_ISA_H_

#include <string_view>
#include <vector>

namespace strata::cpu {

enum class Isa {
  kScalar,  // portable C++, any x86-64 (or other) CPU
  kAvx2,    // AVX2 + FMA (256-bit)
  kAvx512,  // AVX-512F (512-bit)
};

std::string_view IsaName(Isa isa);

// Whether this CPU (and OS) can run kernels of `isa`.
bool IsaSupported(Isa isa);

// Every supported ISA, scalar first.
std::vector<Isa> SupportedIsas();

// The ISA used by default: the widest supported one, unless the environment
// variable STRATA_CPU_ISA names another supported one ("scalar", "avx2",
// "avx512"). Computed once.
Isa DefaultIsa();

}  // namespace strata::cpu

#endif  // STRATA_KERNELS_CPU_ISA_H_
