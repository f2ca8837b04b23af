// Token sampling from one row of logits.
//
// Design note: sampling is a pure function of (logits, params, prompt tokens,
// output tokens). The random draw for output position n uses a counter-based
// generator keyed by (params.seed, n = output_tokens.size()), so a request's
// tokens never depend on what else was in the batch or in which order rows
// were sampled: runs are reproducible under any load.
#ifndef STRATA_ENGINE_SAMPLER_H_
#define STRATA_ENGINE_SAMPLER_H_

#include <cstdint>
#include <span>

#include "engine/backends/backend.h"
#include "engine/step.h"

namespace strata {

// Picks the next token from one row of logits. Greedy is deterministic
// (argmax, lowest id on ties) and a seeded draw depends only on (seed,
// output_tokens.size()). Order: penalties (repetition over prompt+output
// tokens as in HF/vLLM: positive logits divided, negative multiplied;
// presence/frequency over output tokens, OpenAI semantics), then if
// temperature == 0 (below 1e-5): argmax; else logits/temperature, top_k, top_p
// (smallest set with cumulative prob >= top_p, always keep the top token),
// min_p (drop tokens with prob < min_p * max_prob), renormalise, draw with a
// counter-based RNG of (seed, index) -> uniform in [0,1).
// logprob and top_logprobs come from log_softmax of the RAW logits (before
// penalties). Token ids outside [0, vocab) in the token lists are ignored.
//
// Thread-safety: stateless; call from any thread.
class Sampler {
 public:
  // `backend` computes the log-softmax normaliser
  // (Backend::RowSoftmaxStats); the rest is scalar host code.
  static SampledToken Sample(const Backend& backend,
                             std::span<const float> logits,  // [vocab]
                             const SamplingParams& params,
                             std::span<const TokenId> prompt_tokens,
                             std::span<const TokenId> output_tokens);

  // The uniform draw in [0, 1) used for output position `index` of a request
  // with `seed` (exposed for tests).
  static double Uniform(uint64_t seed, uint64_t index);
};

}  // namespace strata

#endif  // STRATA_ENGINE_SAMPLER_H_
