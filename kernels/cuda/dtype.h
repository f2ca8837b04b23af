// Element types the CUDA kernels read and write, visible to host code (which
// passes untyped device pointers plus a DType; each launcher dispatches to the
// matching template instance). Kept to three types so every templated kernel
// has at most three instances per architecture (compile time on CI).
#ifndef STRATA_KERNELS_CUDA_DTYPE_H_
#define STRATA_KERNELS_CUDA_DTYPE_H_

#include <cstddef>

namespace strata::cuda {

enum class DType { kF32, kF16, kBF16 };

inline size_t DTypeSize(DType t) { return t == DType::kF32 ? 4 : 2; }

}  // namespace strata::cuda

#endif  // STRATA_KERNELS_CUDA_DTYPE_H_
