// Shared helpers of the CUDA tests: a CUDA backend or a visible skip, random
// data, and a CPU backend to compare with.
#ifndef STRATA_TESTS_CUDA_CUDA_TEST_UTIL_H_
#define STRATA_TESTS_CUDA_CUDA_TEST_UTIL_H_

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/backends/cpu/cpu_backend.h"
#include "engine/backends/cuda/cuda_backend.h"
#include "gtest/gtest.h"

namespace strata::testing_cuda {

// The CUDA backend, or nullptr with the reason in *why (no device here).
inline std::unique_ptr<CudaBackend> MakeCuda(
    std::string* why, CudaBackend::Options options = {}) {
  absl::StatusOr<std::unique_ptr<CudaBackend>> b = CudaBackend::Create(options);
  if (!b.ok()) {
    *why = std::string(b.status().message());
    return nullptr;
  }
  return *std::move(b);
}

#define STRATA_REQUIRE_CUDA(backend, ...)                            \
  std::string strata_why_;                                           \
  std::unique_ptr<CudaBackend> backend =                             \
      ::strata::testing_cuda::MakeCuda(&strata_why_, ##__VA_ARGS__); \
  if (backend == nullptr) {                                          \
    GTEST_SKIP() << "no CUDA device: " << strata_why_;               \
  }

// A bundled model's folder: under $STRATA_MODELS_DIR when set (a bundle made
// by scripts/gpu-bundle.sh runs on a host without the source tree), else the
// source tree's models/.
inline std::string ModelDir(const std::string& name = "strata-tiny") {
  const char* dir = std::getenv("STRATA_MODELS_DIR");
  const std::string root = dir != nullptr && dir[0] != '\0'
                               ? std::string(dir)
                               : std::string(STRATA_SOURCE_DIR) + "/models";
  return root + "/" + name;
}

inline std::unique_ptr<CpuBackend> MakeCpu(
    Quantization quantization = Quantization::kNone) {
  CpuBackend::Options options;
  options.num_threads = 2;
  options.quantization = quantization;
  return *CpuBackend::Create(options);
}

inline std::vector<float> RandomVector(size_t n, uint32_t seed,
                                       float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

inline std::vector<float> ToHost(Backend& b, const Tensor& t) {
  std::vector<float> host(t.num_elements());
  absl::Status s = b.CopyToHost(t, std::span<float>(host));
  EXPECT_TRUE(s.ok()) << s;
  return host;
}

// max |a - b| / (max |b| + tiny): one scale-free number per comparison.
inline double RelativeMaxError(const std::vector<float>& a,
                               const std::vector<float>& b) {
  double diff = 0.0, ref = 0.0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    ref = std::max(ref, std::abs(static_cast<double>(b[i])));
  }
  return diff / (ref + 1e-30);
}

}  // namespace strata::testing_cuda

#endif  // STRATA_TESTS_CUDA_CUDA_TEST_UTIL_H_
