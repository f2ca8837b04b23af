// Shared helpers of the CUDA end-to-end tests: a ModelRunner on a bundled
// model for either backend, and greedy argmax.
#ifndef STRATA_TESTS_CUDA_CUDA_RUNNER_UTIL_H_
#define STRATA_TESTS_CUDA_CUDA_RUNNER_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/backends/backend_options.h"
#include "engine/exit_policy.h"
#include "engine/model_runner.h"
#include "gtest/gtest.h"
#include "tests/cuda/cuda_test_util.h"

namespace strata::testing_cuda {

// A runner on models/<model> (8 MiB of KV cache, blocks of 16). backend
// "cpu" takes no dtype (f32 compute over the checkpoint's panels) and two
// threads; nullptr after a test failure when it cannot be made.
inline std::unique_ptr<ModelRunner> MakeRunner(
    const std::string& backend, const std::string& dtype,
    const std::string& quantization, const std::string& model = "strata-tiny",
    bool cuda_graphs = false, KvFillPolicy kv_fill = KvFillPolicy::kPropagate) {
  ModelRunner::Options options;
  options.model_dir = ModelDir(model);
  absl::StatusOr<BackendOptions> parsed =
      ParseBackendOptions(backend, backend == "cpu" ? "" : dtype, quantization);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  if (!parsed.ok()) return nullptr;
  options.backend = *parsed;
  options.backend.step_graphs = cuda_graphs;
  options.backend.num_threads = backend == "cpu" ? 2 : 0;
  options.kv_cache_bytes = 8 << 20;
  options.block_size = 16;
  options.kv_fill = kv_fill;
  absl::StatusOr<std::unique_ptr<ModelRunner>> r = ModelRunner::Create(options);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *std::move(r) : nullptr;
}

inline int32_t ArgMax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

}  // namespace strata::testing_cuda

#endif  // STRATA_TESTS_CUDA_CUDA_RUNNER_UTIL_H_
