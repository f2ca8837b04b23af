// Random inputs and a float64 reference for the matrix-product kernel tests
// (matmul_test.cc, packed_matmul_test.cc).
#ifndef STRATA_TESTS_KERNELS_MATMUL_REFERENCE_H_
#define STRATA_TESTS_KERNELS_MATMUL_REFERENCE_H_

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace strata::cpu::reference {

inline std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// out[i][j] = sum_p x[i][p] w[j][p] in double; also sum |x||w| for the
// error bound.
inline void Reference(const std::vector<float>& x, const std::vector<float>& w,
                      int64_t n, int64_t m, int64_t k, std::vector<double>* out,
                      std::vector<double>* magnitude) {
  out->assign(n * m, 0.0);
  magnitude->assign(n * m, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < m; ++j) {
      double s = 0, a = 0;
      for (int64_t p = 0; p < k; ++p) {
        s += static_cast<double>(x[i * k + p]) * w[j * k + p];
        a += std::fabs(static_cast<double>(x[i * k + p]) * w[j * k + p]);
      }
      (*out)[i * m + j] = s;
      (*magnitude)[i * m + j] = a;
    }
  }
}

struct Shape {
  int64_t n, m, k;
};

}  // namespace strata::cpu::reference

#endif  // STRATA_TESTS_KERNELS_MATMUL_REFERENCE_H_
