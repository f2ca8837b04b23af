#include "engine/rope_table.h"

#include <cmath>
#include <cstdint>
#include <span>

namespace strata {

void BuildRopeTable(std::span<const float> inv_freq, int64_t max_positions,
                    float* table) {
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  for (int64_t p = 0; p < max_positions; ++p) {
    float* row = table + p * 2 * half;
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(p) * inv_freq[i];
      row[i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      row[half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
}

}  // namespace strata
