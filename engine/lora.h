// Per-(loop, layer) LoRA of relaxed recursive models
// (docs/recursive-models.md) on the device; names, shapes and the host
// weights are engine/loader/lora_weights.h.
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

#include "engine/backends/backend.h"
#include "engine/loader/lora_weights.h"
#include "engine/loader/model_config.h"

namespace strata {

// Device LoRA of one (loop, layer); kept f32 on every backend (tiny).
struct LayerLoraTensors {
  std::array<Tensor, kNumLoraProjs> a;         // [r, in_features]
  std::array<Tensor, kNumLoraProjs> scaled_b;  // [out_features, r], * alpha/r
  // Where the model fuses the projections (LlamaModel::LayerTensors::
  // qkv_proj, gate_up_proj): the A of q, k and v stacked, [3 r, hidden],
  // and of gate and up, [2 r, hidden], for one A-product per group
  // (Backend::AddLowRankGroup); with q, k and v fused, also the A of k and
  // v stacked, [2 r, hidden], for the K/V that LlamaModel::PropagateKv
  // writes for the loops an exit skipped. Empty otherwise.
  Tensor a_qkv, a_gate_up, a_kv;
};

// A run of consecutive rows of a batch that are all at one loop.
struct LoopSegment {
  int32_t loop = 0;
  int32_t first_row = 0;
  int32_t num_rows = 0;
};

}  // namespace strata

#endif  // STRATA_ENGINE_LORA_H_
