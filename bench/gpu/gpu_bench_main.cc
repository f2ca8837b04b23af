// strata_gpu_bench: GPU throughput of the CUDA backend on a random ~1.1B
// parameter Llama built in memory (no downloads, no files), plus kernel
// microbenchmarks, written as one JSON summary.
//
//   strata_gpu_bench --out FILE.json [--quick]
//
// Measured, per weight format (bf16, weight-only int8, LLM.int8()):
//   decode tokens/s at batch 1, 8 and 64 (512-token contexts), prefill
//   tokens/s (8 x 512 tokens in one step), and at batch 1 the achieved
//   memory bandwidth = weight bytes / step time, against the card's peak
//   (H100 SXM 3.35 TB/s, H200 4.8 TB/s; printed by name); the decode steps
//   again as replayed CUDA graphs (decode_graphs_batch_N, with the speedup
//   over launching op by op).
// Kernels: paged-attention decode bandwidth at a 32k context (grouped vs
// per-head kernel, bf16 and f16 caches, fraction of peak), the weight-only
// int8 GEMV at 1..16 rows against the bf16 GEMM (weight GB/s), and cuBLASLt
// int8 vs f16 GEMM throughput at large shapes.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "engine/backends/backend_options.h"
#include "engine/backends/cuda/cuda_backend.h"
#include "engine/llama_model.h"
#include "engine/loader/model_config.h"
#include "engine/loader/model_weights.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/int8_matmul.h"
#include "kernels/cuda/lt_gemm.h"
#include "kernels/cuda/paged_attention.h"
#include "nlohmann/json.hpp"

namespace strata {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

ModelConfig BenchConfig(bool quick) {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = 32000;
  c.hidden_size = 2048;
  c.intermediate_size = 8192;
  c.num_hidden_layers = quick ? 4 : 16;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 8;
  c.head_dim = 64;
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 500000.0f;
  return c;
}

// Uniform in [-scale, scale) from a xorshift stream (fast: ~1e9 values).
std::vector<float> Random(int64_t n, uint64_t seed, float scale) {
  std::vector<float> v(static_cast<size_t>(n));
  uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
  for (float& x : v) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    x = (static_cast<float>(s >> 40) * 0x1.0p-24f * 2.0f - 1.0f) * scale;
  }
  return v;
}

ModelWeights RandomWeights(const ModelConfig& c) {
  const int64_t h = c.hidden_size, q = c.num_attention_heads * c.head_dim,
                kv = c.num_key_value_heads * c.head_dim,
                inter = c.intermediate_size;
  ModelWeights w;
  w.embed_tokens = Random(c.vocab_size * h, 1, 1.0f);
  w.lm_head = Random(c.vocab_size * h, 2, 0.02f);
  w.final_norm.assign(h, 1.0f);
  uint64_t seed = 10;
  const float lin = 1.7f / std::sqrt(static_cast<float>(h));
  for (int32_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights& L = w.layers.emplace_back();
    L.input_norm.assign(h, 1.0f);
    L.post_attention_norm.assign(h, 1.0f);
    L.q_proj = Random(q * h, ++seed, lin);
    L.k_proj = Random(kv * h, ++seed, lin);
    L.v_proj = Random(kv * h, ++seed, lin);
    L.o_proj = Random(h * q, ++seed, lin);
    L.gate_proj = Random(inter * h, ++seed, lin);
    L.up_proj = Random(inter * h, ++seed, lin);
    L.down_proj = Random(h * inter, ++seed, lin / 2);
  }
  return w;
}

struct Run {
  std::string format;
  nlohmann::json result;
};

// Prefill then timed decode steps for `batch` sequences of `context` tokens.
nlohmann::json BenchModel(const ModelConfig& config, const ModelWeights& host,
                          const std::string& quantization, bool quick,
                          double peak_bytes_per_s, std::string* device) {
  absl::StatusOr<BackendOptions> parsed =
      ParseBackendOptions("cuda", "bf16", quantization);
  if (!parsed.ok()) return {{"error", std::string(parsed.status().message())}};
  absl::StatusOr<CudaBackend::Options> options =
      CudaBackend::OptionsFrom(*parsed);
  absl::StatusOr<std::unique_ptr<CudaBackend>> backend =
      CudaBackend::Create(*options);
  if (!backend.ok())
    return {{"error", std::string(backend.status().message())}};
  *device = (*backend)->device_name();
  const int32_t block_size = 16, context = 512;
  const int32_t max_batch = 64;
  const int32_t blocks_per_seq = (context + 64) / block_size + 1;
  LlamaModel::Options model_options;
  model_options.block_size = block_size;
  model_options.num_blocks = max_batch * blocks_per_seq;
  ModelWeights copy = host;
  absl::StatusOr<std::unique_ptr<LlamaModel>> model = LlamaModel::Create(
      config, std::move(copy), backend->get(), model_options);
  if (!model.ok()) return {{"error", std::string(model.status().message())}};
  const int64_t weight_bytes =
      CudaBackend::EstimateWeightBytes(config, (*backend)->options());

  std::vector<std::vector<int32_t>> tables(max_batch);
  for (int32_t s = 0; s < max_batch; ++s) {
    for (int32_t b = 0; b < blocks_per_seq; ++b) {
      tables[s].push_back(s * blocks_per_seq + b);
    }
  }
  std::vector<TokenId> prompt(context);
  for (int32_t i = 0; i < context; ++i) prompt[i] = (i * 7919) % 32000;
  nlohmann::json out;
  out["weight_bytes"] = weight_bytes;

  // Prefill: 8 sequences x 512 tokens in one step (and fills the caches).
  auto prefill = [&](int32_t first, int32_t count) -> double {
    std::vector<WorkItem> items(count);
    for (int32_t s = 0; s < count; ++s) {
      items[s].request_id = first + s;
      items[s].tokens = prompt;
      items[s].block_table = tables[first + s];
    }
    // Logits of the last token of the last sequence, as one served prompt
    // chunk needs them.
    items[count - 1].sample = true;
    const auto t0 = Clock::now();
    absl::StatusOr<LlamaModel::StepOutput> r = (*model)->Step(items);
    absl::Status sync = (*backend)->Synchronize();
    const auto t1 = Clock::now();
    if (!r.ok() || !sync.ok()) return -1.0;
    return Seconds(t0, t1);
  };
  prefill(0, 1);  // warm-up (plans, scratch)
  double prefill_s = 0.0;
  for (int32_t first = 0; first < max_batch; first += 8) {
    const double s = prefill(first, 8);
    if (first == 8) prefill_s = s;  // the second, warm, call
    if (quick && first >= 8) break;
  }
  out["prefill_tokens_per_s"] = prefill_s > 0 ? 8.0 * context / prefill_s : 0;

  // Decode: `steps` timed steps at each batch size, launching op by op, then
  // the same steps recorded once as a CUDA graph and replayed.
  const int steps = quick ? 4 : 16;
  const int32_t batches[] = {1, 8, 64};
  for (const bool graphs : {false, true}) {
    (*backend)->set_step_graphs(graphs);
    for (int32_t batch : batches) {
      if (quick && batch == 64) continue;
      std::vector<TokenId> token = {11};
      auto step = [&](int32_t pos) -> bool {
        std::vector<WorkItem> items(batch);
        for (int32_t s = 0; s < batch; ++s) {
          items[s].request_id = s;
          items[s].tokens = token;
          items[s].start_position = pos;
          items[s].block_table = tables[s];
          items[s].sample = true;  // every decode token's logits
        }
        absl::StatusOr<LlamaModel::StepOutput> r = (*model)->Step(items);
        return r.ok();
      };
      // Warm-up: graphs need an eager step at a stable generation (the
      // first may grow scratch buffers, which makes the next one run
      // eagerly too), then one captured.
      for (int i = 0; i < (graphs ? 4 : 1); ++i) step(context);
      if (!(*backend)->Synchronize().ok()) return {{"error", "decode failed"}};
      const auto t0 = Clock::now();
      for (int i = 0; i < steps; ++i) step(context + 1 + i);
      const absl::Status sync = (*backend)->Synchronize();
      const double s = Seconds(t0, Clock::now()) / steps;
      if (!sync.ok()) return {{"error", std::string(sync.message())}};
      nlohmann::json d;
      d["step_ms"] = s * 1e3;
      d["tokens_per_s"] = batch / s;
      if (batch == 1) {
        d["weight_bandwidth_bytes_per_s"] = weight_bytes / s;
        if (peak_bytes_per_s > 0) {
          d["fraction_of_peak"] = weight_bytes / s / peak_bytes_per_s;
        }
      }
      const std::string name = "decode_batch_" + std::to_string(batch);
      if (graphs) {
        const CudaBackend::GraphStats stats = (*backend)->graph_stats();
        d["graph_replays_so_far"] = stats.replays;
        d["graph_aborts_so_far"] = stats.aborted;
        if (out.contains(name)) {
          d["speedup_vs_eager"] =
              out[name]["step_ms"].get<double>() / (s * 1e3);
        }
        out["decode_graphs_batch_" + std::to_string(batch)] = d;
      } else {
        out[name] = d;
      }
    }
  }
  (*backend)->set_step_graphs(false);
  return out;
}

// Paged decode attention, 8 rows at a 32k context (8k with --quick), GQA
// 32/8, head dim 128, block 16, the blocks of each row in shuffled order:
// bytes of K and V read per call over the time, for the grouped kernel and
// the per-head kernel side by side, per cache type.
nlohmann::json BenchAttention(bool quick, double peak) {
  using cuda::AttentionGeometry;
  using cuda::DecodeKernelChoice;
  using cuda::DecodeRow;
  AttentionGeometry g;
  g.num_heads = 32;
  g.num_kv_heads = 8;
  g.head_dim = 128;
  g.block_size = 16;
  g.scale = 0.088f;
  const int32_t batch = 8, context = quick ? 8192 : 32768;
  const int64_t blocks = static_cast<int64_t>(batch) * context / g.block_size;
  const size_t cache_bytes =
      blocks * g.num_kv_heads * g.block_size * g.head_dim * 2;
  void *k = nullptr, *v = nullptr, *q = nullptr, *out = nullptr, *ws = nullptr,
       *tables = nullptr, *rows = nullptr;
  const size_t q_bytes =
      static_cast<size_t>(batch) * g.num_heads * g.head_dim * 4;
  const size_t ws_bytes = cuda::DecodeWorkspaceBytes(g, batch, context);
  if (cudaMalloc(&k, cache_bytes) != cudaSuccess ||
      cudaMalloc(&v, cache_bytes) != cudaSuccess ||
      cudaMalloc(&q, q_bytes) != cudaSuccess ||
      cudaMalloc(&out, q_bytes) != cudaSuccess ||
      cudaMalloc(&ws, ws_bytes + 256) != cudaSuccess ||
      cudaMalloc(&tables, blocks * 4) != cudaSuccess ||
      cudaMalloc(&rows, batch * sizeof(DecodeRow)) != cudaSuccess) {
    return {{"error", "cudaMalloc failed"}};
  }
  // Small values (bf16 and f16 alike): 0x2c00 is 2^-4 in f16, ~1.6e-12 in
  // bf16; either way finite scores.
  cudaMemset(k, 0x2c, cache_bytes);
  cudaMemset(v, 0x2c, cache_bytes);
  cudaMemset(q, 0, q_bytes);
  std::vector<int32_t> host_tables(blocks);
  std::iota(host_tables.begin(), host_tables.end(), 0);
  std::shuffle(host_tables.begin(), host_tables.end(), std::mt19937(1));
  std::vector<DecodeRow> host_rows(batch);
  for (int32_t s = 0; s < batch; ++s) {
    host_rows[s] = {s, context - 1, s * (context / g.block_size)};
  }
  cudaMemcpy(tables, host_tables.data(), blocks * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(rows, host_rows.data(), batch * sizeof(DecodeRow),
             cudaMemcpyHostToDevice);
  const double bytes = 2.0 * cache_bytes;
  const cuda::DecodePlan plan =
      cuda::PlanDecode(g, batch, context, cuda::CurrentDeviceSmCount());
  nlohmann::json result = {{"batch", batch},
                           {"context", context},
                           {"num_heads", g.num_heads},
                           {"num_kv_heads", g.num_kv_heads},
                           {"head_dim", g.head_dim},
                           {"block_size", g.block_size},
                           {"kv_bytes_read", bytes},
                           {"splits", plan.max_splits},
                           {"keys_per_split", plan.keys_per_split},
                           {"target_fraction_of_peak", 0.6}};
  for (auto [type_name, type] : {std::pair{"bf16", cuda::DType::kBF16},
                                 std::pair{"f16", cuda::DType::kF16}}) {
    g.cache_type = type;
    for (auto [kernel_name, choice] :
         {std::pair{"grouped", DecodeKernelChoice::kGrouped},
          std::pair{"per_head", DecodeKernelChoice::kPerHead}}) {
      auto launch = [&, choice = choice]() {
        return cuda::LaunchPagedAttentionDecode(
            g, static_cast<float*>(q), k, v, static_cast<int32_t*>(tables),
            static_cast<DecodeRow*>(rows), batch, context, ws,
            static_cast<float*>(out), nullptr, choice);
      };
      cudaError_t e = launch();
      if (e == cudaSuccess) e = cudaDeviceSynchronize();
      const int iters = choice == DecodeKernelChoice::kGrouped ? 50 : 10;
      const auto t0 = Clock::now();
      for (int i = 0; i < iters && e == cudaSuccess; ++i) e = launch();
      if (e == cudaSuccess) e = cudaDeviceSynchronize();
      const double sec = Seconds(t0, Clock::now()) / iters;
      nlohmann::json row;
      if (e != cudaSuccess) {
        row = {{"error", cudaGetErrorString(e)}};
      } else {
        row = {{"us", sec * 1e6}, {"bandwidth_bytes_per_s", bytes / sec}};
        if (peak > 0) row["fraction_of_peak"] = bytes / sec / peak;
        std::fprintf(stderr, "paged decode %s %s: %.1f us, %.0f GB/s\n",
                     type_name, kernel_name, sec * 1e6, bytes / sec / 1e9);
      }
      result[type_name][kernel_name] = row;
    }
    const nlohmann::json& r = result[type_name];
    if (r["grouped"].contains("us") && r["per_head"].contains("us")) {
      result[type_name]["speedup_grouped_vs_per_head"] =
          r["per_head"]["us"].get<double>() / r["grouped"]["us"].get<double>();
    }
  }
  for (void* p : {k, v, q, out, ws, tables, rows}) cudaFree(p);
  return result;
}

// Weight-only int8 GEMV (the decode path for 1..16 rows) against the bf16
// cuBLASLt GEMM on the same shapes: weight bytes read per call over the
// time, and the int8 time relative to its own 1-row time (the target
// for a batch-8 step is <= 1.2x the batch-1 step).
nlohmann::json BenchInt8Gemv(bool quick, double peak) {
  absl::StatusOr<std::unique_ptr<cuda::LtGemm>> gemm =
      cuda::LtGemm::Create(32u << 20);
  if (!gemm.ok()) return {{"error", std::string(gemm.status().message())}};
  nlohmann::json out = nlohmann::json::array();
  // The 1.1B model's MLP up (m 8192, k 2048) and down (m 2048, k 8192).
  const int64_t shapes[][2] = {{8192, 2048}, {2048, 8192}};
  for (const auto& shape : shapes) {
    const int64_t m = shape[0], k = shape[1];
    void *x = nullptr, *x16 = nullptr, *w8 = nullptr, *w16 = nullptr,
         *scales = nullptr, *o = nullptr;
    const int64_t max_n = 16;
    if (cudaMalloc(&x, max_n * k * 4) != cudaSuccess ||
        cudaMalloc(&x16, max_n * k * 2) != cudaSuccess ||
        cudaMalloc(&w8, m * k) != cudaSuccess ||
        cudaMalloc(&w16, m * k * 2) != cudaSuccess ||
        cudaMalloc(&scales, m * 4) != cudaSuccess ||
        cudaMalloc(&o, max_n * m * 4) != cudaSuccess) {
      return {{"error", "cudaMalloc failed"}};
    }
    cudaMemset(x, 0, max_n * k * 4);
    cudaMemset(x16, 0, max_n * k * 2);
    cudaMemset(w8, 1, m * k);
    cudaMemset(w16, 0, m * k * 2);
    cudaMemset(scales, 0, m * 4);
    nlohmann::json rows = {{"m", m}, {"k", k}};
    double int8_one_row_us = 0.0;
    for (int64_t n : {1, 2, 4, 8, 16}) {
      if (quick && (n == 2 || n == 4)) continue;
      const int iters = 50;
      auto time = [&](auto&& launch) -> double {
        launch();
        cudaDeviceSynchronize();
        const auto t0 = Clock::now();
        for (int i = 0; i < iters; ++i) launch();
        if (cudaDeviceSynchronize() != cudaSuccess) return -1.0;
        return Seconds(t0, Clock::now()) / iters;
      };
      cudaError_t e8 = cudaSuccess;
      const double s8 = time([&] {
        e8 = cuda::LaunchInt8Gemv(static_cast<float*>(x),
                                  static_cast<int8_t*>(w8),
                                  static_cast<float*>(scales), n, m, k,
                                  static_cast<float*>(o), nullptr);
      });
      absl::Status s16_status;
      const double s16 = time([&] {
        s16_status = (*gemm)->MatMul(cuda::GemmType::kBF16, x16, w16, n, m, k,
                                     o, nullptr);
      });
      nlohmann::json row = {{"n", n}};
      if (e8 != cudaSuccess || s8 <= 0) {
        row["int8"] = {{"error", cudaGetErrorString(e8)}};
      } else {
        if (n == 1) int8_one_row_us = s8 * 1e6;
        row["int8"] = {{"us", s8 * 1e6}, {"weight_bytes_per_s", m * k / s8}};
        if (peak > 0) row["int8"]["fraction_of_peak"] = m * k / s8 / peak;
        if (int8_one_row_us > 0) {
          row["int8"]["vs_one_row"] = s8 * 1e6 / int8_one_row_us;
        }
      }
      if (!s16_status.ok() || s16 <= 0) {
        row["bf16_gemm"] = {{"error", std::string(s16_status.message())}};
      } else {
        row["bf16_gemm"] = {{"us", s16 * 1e6},
                            {"weight_bytes_per_s", 2.0 * m * k / s16}};
        if (e8 == cudaSuccess && s8 > 0) row["int8_speedup"] = s16 / s8;
      }
      std::fprintf(stderr,
                   "int8 gemv m=%ld k=%ld n=%ld: %.1f us (bf16 gemm %.1f us)\n",
                   static_cast<long>(m), static_cast<long>(k),
                   static_cast<long>(n), s8 * 1e6, s16 * 1e6);
      rows["batches"].push_back(row);
    }
    out.push_back(rows);
    for (void* p : {x, x16, w8, w16, scales, o}) cudaFree(p);
  }
  return out;
}

nlohmann::json BenchGemm(bool quick) {
  absl::StatusOr<std::unique_ptr<cuda::LtGemm>> gemm =
      cuda::LtGemm::Create(32u << 20);
  if (!gemm.ok()) return {{"error", std::string(gemm.status().message())}};
  nlohmann::json out = nlohmann::json::array();
  const int64_t shapes[][3] = {
      {4096, 4096, 4096}, {8192, 8192, 8192}, {16, 8192, 8192}};
  for (const auto& shape : shapes) {
    const int64_t n = shape[0], m = shape[1], k = shape[2];
    if (quick && m > 4096) continue;
    void *x = nullptr, *w = nullptr, *o = nullptr;
    if (cudaMalloc(&x, n * k * 2) != cudaSuccess ||
        cudaMalloc(&w, m * k * 2) != cudaSuccess ||
        cudaMalloc(&o, n * m * 4) != cudaSuccess) {
      return {{"error", "cudaMalloc failed"}};
    }
    cudaMemset(x, 0, n * k * 2);
    cudaMemset(w, 0, m * k * 2);
    nlohmann::json row = {{"n", n}, {"m", m}, {"k", k}};
    for (auto [name, type] : {std::pair{"f16", cuda::GemmType::kF16},
                              std::pair{"int8", cuda::GemmType::kI8}}) {
      absl::Status s = (*gemm)->MatMul(type, x, w, n, m, k, o, nullptr);
      cudaDeviceSynchronize();
      if (!s.ok()) {
        row[name] = {{"error", std::string(s.message())}};
        continue;
      }
      const int iters = 10;
      const auto t0 = Clock::now();
      for (int i = 0; i < iters; ++i) {
        s.Update((*gemm)->MatMul(type, x, w, n, m, k, o, nullptr));
      }
      cudaDeviceSynchronize();
      const double sec = Seconds(t0, Clock::now()) / iters;
      row[name] = {{"ms", sec * 1e3}, {"tops", 2.0 * n * m * k / sec / 1e12}};
    }
    out.push_back(row);
    cudaFree(x);
    cudaFree(w);
    cudaFree(o);
  }
  return out;
}

int Main(int argc, char** argv) {
  std::string out_path = "gpu-bench.json";
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--out" && i + 1 < argc) {
      out_path = argv[++i];
    } else if (a == "--quick") {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: %s --out FILE.json [--quick]\n", argv[0]);
      return 2;
    }
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::fprintf(stderr, "strata_gpu_bench: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  const std::string name = prop.name;
  double peak = 0.0;
  if (name.find("H200") != std::string::npos) peak = 4.8e12;
  if (name.find("H100") != std::string::npos) peak = 3.35e12;

  nlohmann::json summary;
  summary["device"] = name;
  summary["peak_bytes_per_s"] = peak;
  // Written after every section, kernels first: a run cut short by the GPU
  // check's time budget still leaves every figure measured so far.
  auto save = [&] { std::ofstream(out_path) << summary.dump(2) << "\n"; };
  summary["paged_attention"] = BenchAttention(quick, peak);
  save();
  summary["int8_gemv"] = BenchInt8Gemv(quick, peak);
  save();
  const ModelConfig config = BenchConfig(quick);
  const auto t0 = Clock::now();
  const ModelWeights weights = RandomWeights(config);
  std::fprintf(stderr, "random weights in %.1f s\n", Seconds(t0, Clock::now()));
  std::string device;
  for (const char* q : {"none", "int8", "llm.int8"}) {
    const auto t = Clock::now();
    summary["model"][std::string(q) == "none" ? "bf16" : q] =
        BenchModel(config, weights, q, quick, peak, &device);
    save();
    std::fprintf(stderr, "model %s in %.1f s\n", q, Seconds(t, Clock::now()));
  }
  summary["gemm"] = BenchGemm(quick);
  save();
  std::printf("%s\n", summary.dump(2).c_str());
  return 0;
}

}  // namespace
}  // namespace strata

int main(int argc, char** argv) { return strata::Main(argc, argv); }
