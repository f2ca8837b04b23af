// Per-(loop, layer) LoRA of relaxed recursive models
// (docs/recursive-models.md) as stored: projection names, tensor names,
// shapes and the host container the loader fills. The device side
// (LayerLoraTensors, LoopSegment) is engine/lora.h.
#ifndef STRATA_ENGINE_LOADER_LORA_WEIGHTS_H_
#define STRATA_ENGINE_LOADER_LORA_WEIGHTS_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/loader/model_config.h"

namespace strata {

enum class LoraProj : int32_t { kQ, kK, kV, kO, kGate, kUp, kDown };
inline constexpr int32_t kNumLoraProjs = 7;
inline constexpr std::array<LoraProj, kNumLoraProjs> kAllLoraProjs = {
    LoraProj::kQ,    LoraProj::kK,  LoraProj::kV,   LoraProj::kO,
    LoraProj::kGate, LoraProj::kUp, LoraProj::kDown};

// "self_attn.q_proj", ..., "mlp.down_proj".
std::string_view LoraProjName(LoraProj proj);
// model.loops.{loop}.layers.{layer}.{LoraProjName}.lora_{A|B}
std::string LoraTensorName(int32_t loop, int32_t layer, LoraProj proj,
                           bool is_b);
// {out_features, in_features} of a projection under `config`.
std::array<int64_t, 2> LoraProjDims(const ModelConfig& config, LoraProj proj);

// Host f32 LoRA of one (loop, layer), as stored (B not yet scaled).
struct LayerLoraWeights {
  std::array<std::vector<float>, kNumLoraProjs> a;  // [r, in_features]
  std::array<std::vector<float>, kNumLoraProjs> b;  // [out_features, r]
};

}  // namespace strata

#endif  // STRATA_ENGINE_LOADER_LORA_WEIGHTS_H_
