// HiddenStateStore recycles freed state tensors by row count, within a byte
// budget: prompts of many lengths must not grow the recycled pool without
// bound (a soak's RSS crept while only the count per size was bounded).
#include "engine/kv_cache/hidden_state_store.h"

#include <cstdint>
#include <memory>

#include "engine/backends/cpu/cpu_backend.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

constexpr int64_t kHidden = 64;
constexpr int64_t kRowBytes = kHidden * sizeof(float);

std::unique_ptr<Backend> MakeBackend() {
  CpuBackend::Options options;
  options.num_threads = 1;
  return *CpuBackend::Create(options);
}

TEST(HiddenStateStoreTest, ADecodeStateIsReusedNotReallocated) {
  auto backend = MakeBackend();
  HiddenStateStore store(backend.get(), kHidden);
  auto first = store.Put(/*request=*/1, /*start_position=*/10, 1);
  ASSERT_TRUE(first.ok());
  const void* data = (*first)->state.data();
  store.Erase(1, 10);
  EXPECT_EQ(store.free_bytes(), kRowBytes);
  auto second = store.Put(/*request=*/2, /*start_position=*/3, 1);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ((*second)->state.data(), data);
  EXPECT_EQ(store.free_bytes(), 0);
  EXPECT_EQ(store.bytes(), kRowBytes);
}

// An erased entry's map node serves the next Put (no allocation per decode
// token); the entry it becomes starts fresh, whatever the erased one held.
TEST(HiddenStateStoreTest, AReusedEntryStartsFresh) {
  auto backend = MakeBackend();
  HiddenStateStore store(backend.get(), kHidden);
  auto kept = store.Put(/*request=*/7, /*start_position=*/0, 2);
  ASSERT_TRUE(kept.ok());
  for (int32_t position = 0; position < 4; ++position) {
    auto entry = store.Put(/*request=*/1, position, 1);
    ASSERT_TRUE(entry.ok());
    EXPECT_EQ((*entry)->num_tokens, 1);
    EXPECT_EQ((*entry)->loops_done, 0) << position;
    EXPECT_FALSE((*entry)->exit_state) << position;
    EXPECT_NE((*entry)->state.data(), (*kept)->state.data());
    (*entry)->loops_done = 2;
    (*entry)->exit_state = true;
    if (position % 2 == 0) {
      store.Erase(1, position);
    } else {
      store.Release(1);
    }
    EXPECT_EQ(store.Find(1, position), nullptr);
  }
  EXPECT_EQ(store.size(), 1u);
  EXPECT_EQ(store.Find(7, 0), *kept);
  EXPECT_EQ(store.bytes(), 2 * kRowBytes);
}

TEST(HiddenStateStoreTest, RecycledTensorsStayWithinTheByteBudget) {
  auto backend = MakeBackend();
  const int64_t budget = 100 * kRowBytes;
  HiddenStateStore store(backend.get(), kHidden, budget);
  // Prompts of every length from 1 to 300 tokens, eight of each at once:
  // without the budget the pool would keep all of them.
  for (int32_t rows = 1; rows <= 300; ++rows) {
    for (RequestId request = 0; request < 8; ++request) {
      ASSERT_TRUE(store.Put(request, 0, rows).ok());
    }
    for (RequestId request = 0; request < 8; ++request) store.Release(request);
    EXPECT_LE(store.free_bytes(), budget) << rows;
    EXPECT_EQ(store.bytes(), 0);
  }
  EXPECT_GT(store.free_bytes(), budget / 2);  // it does keep some
}

}  // namespace
}  // namespace strata
