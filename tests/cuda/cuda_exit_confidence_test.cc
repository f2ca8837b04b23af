// The hidden-state exit measures (saturation, classifier) on the CUDA
// backend: Backend::HiddenExitConfidences from device tensors (the default
// path: hidden-sized rows to the host, never logits) equals the CPU
// backend's on the same rows. Skips without a device.
#include <cstdint>
#include <span>
#include <vector>

#include "engine/exit_policy.h"
#include "gtest/gtest.h"
#include "tests/cuda/cuda_test_util.h"

namespace strata {
namespace {

using testing_cuda::MakeCpu;
using testing_cuda::RandomVector;

TEST(CudaExitConfidenceTest, HiddenMeasuresMatchTheCpu) {
  STRATA_REQUIRE_CUDA(cuda);
  std::unique_ptr<CpuBackend> cpu = MakeCpu();
  const int64_t n = 9, hidden = 256, early = 2;
  const std::vector<float> state = RandomVector(n * hidden, 51);
  const std::vector<float> prev = RandomVector(4 * hidden, 52);
  const std::vector<float> table = RandomVector(early * (hidden + 1), 53);
  const std::vector<int32_t> rows = {8, 0, 3, 5};
  const std::vector<int32_t> loops = {0, 1, 0, 1};
  const std::vector<ExitConfidence> kinds = {
      ExitConfidence::kSaturation, ExitConfidence::kSaturation,
      ExitConfidence::kClassifier, ExitConfidence::kClassifier};
  std::vector<float> want(4), got(4);
  for (Backend* b : {static_cast<Backend*>(cpu.get()),
                     static_cast<Backend*>(cuda.get())}) {
    absl::StatusOr<Tensor> s = b->Upload(state, {n, hidden});
    absl::StatusOr<Tensor> p = b->Upload(prev, {4, hidden});
    absl::StatusOr<Tensor> c = b->Upload(table, {early, hidden + 1});
    ASSERT_TRUE(s.ok() && p.ok() && c.ok());
    std::vector<float>& out = b == cpu.get() ? want : got;
    absl::Status status = b->HiddenExitConfidences(*s, rows, *p, *c, loops,
                                                   kinds, 1e-5f, out);
    ASSERT_TRUE(status.ok()) << status;
  }
  for (size_t j = 0; j < rows.size(); ++j) EXPECT_EQ(got[j], want[j]) << j;
}

}  // namespace
}  // namespace strata
