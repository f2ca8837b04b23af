// Logits processing and sampling on the GPU: one CTA per row, only the
// sampled token and its log-probability cross back to the host.
//
// Same semantics as engine/sampler.h (penalties, greedy below temperature
// 1e-5 or top_k == 1, temperature, top-k, top-p, min-p, seeded draw with the
// same counter-based RNG as Sampler::Uniform), with two documented
// differences in tie handling: (1) with ties at the top-p boundary
// probability every tied token is kept (the CPU keeps the lowest ids only
// until the mass is reached); (2) the draw walks kept tokens in id order (the
// CPU puts tokens tied at the k-th value last). Apart from ties and f32
// rounding of the exponentials the draw is the CPU's.
#ifndef STRATA_KERNELS_CUDA_SAMPLING_H_
#define STRATA_KERNELS_CUDA_SAMPLING_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace strata::cuda {

struct DeviceSamplingParams {
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
  uint64_t draw_index = 0;  // output_tokens.size()
  // This row's penalty entries: penalties[penalty_begin, penalty_end).
  int32_t penalty_begin = 0;
  int32_t penalty_end = 0;
};

// One distinct token of a row's prompt + output, for the penalties.
struct PenaltyEntry {
  int32_t token = 0;         // in [0, vocab)
  int32_t output_count = 0;  // occurrences in the output tokens
};

struct SampleOutput {
  int32_t token = 0;
  float logprob = 0.0f;  // log_softmax of the raw logits at token
};

// The counter-based uniform draw of engine/sampler.cc, callable from host
// code too (tests compare it with Sampler::Uniform).
double DeviceUniformOnHost(uint64_t seed, uint64_t index);

//   logits:    [num_rows, vocab] f32 (read only)
//   params:    [num_rows] device
//   penalties: flat device array indexed by params' ranges
//   scratch:   [num_rows, vocab] f32 device workspace
//   out:       [num_rows] device
cudaError_t LaunchSample(const float* logits, int64_t num_rows, int32_t vocab,
                         const DeviceSamplingParams* params,
                         const PenaltyEntry* penalties, float* scratch,
                         SampleOutput* out, cudaStream_t stream);

}  // namespace strata::cuda

#endif  // STRATA_KERNELS_CUDA_SAMPLING_H_
