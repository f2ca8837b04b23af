// Per-(loop, layer) LoRA of relaxed recursive models
// (docs/recursive-models.md): names, shapes and the host/device containers.
//
// At (loop l, layer k) every projection P in {q, k, v, o, gate, up, down}
// uses W_eff = W(k, P) + (alpha / r) * B(l, k, P) @ A(l, k, P). The engine
// never forms W_eff: it runs the shared W once over a batch whose rows sit at
// different loops and adds, per run of rows at one loop (a LoopSegment),
// y_seg += (x_seg A^T) (s B)^T, with s = alpha / r folded into B at load.
#ifndef STRATA_ENGINE_LORA_H_
#define STRATA_ENGINE_LORA_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/backend.h"
#include "engine/model_config.h"

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

// Device LoRA of one (loop, layer); kept f32 on every backend (tiny).
struct LayerLoraTensors {
  std::array<Tensor, kNumLoraProjs> a;         // [r, in_features]
  std::array<Tensor, kNumLoraProjs> scaled_b;  // [out_features, r], * alpha/r
};

// A run of consecutive rows of a batch that are all at one loop.
struct LoopSegment {
  int32_t loop = 0;
  int32_t first_row = 0;
  int32_t num_rows = 0;
};

}  // namespace strata

#endif  // STRATA_ENGINE_LORA_H_
