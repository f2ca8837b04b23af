// Early-exit confidences on the GPU (engine/exit_policy.h defines them): one
// float per row of exit logits, so that an exit check copies `rows` floats
// to the host instead of `rows x vocab`.
#ifndef STRATA_KERNELS_CUDA_EXIT_CONFIDENCE_H_
#define STRATA_KERNELS_CUDA_EXIT_CONFIDENCE_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace strata::cuda {

// For each row i of logits ([rows, vocab] f32), with p = softmax(row):
//   kinds[i] == 0 (max_prob): out[i] = p_top1
//   kinds[i] == 1 (margin):   out[i] = p_top1 - p_top2 (p_top2 = p_top1
//                              when the maximum occurs twice; 0 for vocab 1)
// kinds, out: [rows] device. Exponentials and sums in f32.
cudaError_t LaunchExitConfidence(const float* logits, int64_t rows,
                                 int64_t vocab, const uint8_t* kinds,
                                 float* out, cudaStream_t stream);

}  // namespace strata::cuda

#endif  // STRATA_KERNELS_CUDA_EXIT_CONFIDENCE_H_
