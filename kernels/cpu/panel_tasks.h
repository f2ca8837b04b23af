// Internal (not a public header): how the panel GEMMs (packed_matmul.cc,
// int8_matmul.cc) split an [n, m] output into tasks for the thread pool.
// Which outputs run together never changes what any one output computes, so
// this split is free to depend on n and the thread count.
#ifndef STRATA_KERNELS_CPU_PANEL_TASKS_H_
#define STRATA_KERNELS_CPU_PANEL_TASKS_H_

#include <algorithm>
#include <cstdint>

#include "absl/functional/function_ref.h"
#include "kernels/cpu/kernel_context.h"

namespace strata::cpu::internal {

// A task's share of the output: rows [row_begin, row_end) by panels
// [panel_begin, panel_end).
struct PanelBlock {
  int64_t row_begin, row_end, panel_begin, panel_end;
};

// Runs block(b) over a cover of n rows by num_panels panels. `macs` (the
// product's multiply-adds) below KernelContext::kMinParallelMacs keeps it on
// the calling thread.
inline void ForEachPanelBlock(
    const KernelContext& ctx, int64_t n, int64_t num_panels, int64_t macs,
    absl::FunctionRef<void(const PanelBlock&)> block) {
  // Rows per task: bounds the slice of x a task keeps in cache.
  constexpr int64_t kRowBlock = 64;
  const int64_t row_block = std::min(n, kRowBlock);
  const int64_t num_row_blocks = (n + row_block - 1) / row_block;
  // Panels per task: a multiple of the AVX-512 tiles' 3, shrunk until there
  // are enough tasks for the dynamic scheduler to balance the threads.
  int64_t panel_block = 24;
  const int64_t min_tasks = 4 * static_cast<int64_t>(ctx.num_threads());
  while (panel_block > 3 &&
         num_row_blocks * ((num_panels + panel_block - 1) / panel_block) <
             min_tasks) {
    panel_block -= 3;
  }
  const int64_t num_panel_blocks = (num_panels + panel_block - 1) / panel_block;
  const KernelContext run_ctx = ctx.ForMacs(macs);
  run_ctx.ParallelFor(num_row_blocks * num_panel_blocks, [&](int64_t task) {
    const int64_t rb = task / num_panel_blocks;
    const int64_t pb = task % num_panel_blocks;
    block(PanelBlock{rb * row_block, std::min(n, (rb + 1) * row_block),
                     pb * panel_block,
                     std::min(num_panels, (pb + 1) * panel_block)});
  });
}

// Runs Tile<R, C>::Run(o, row, panel) for R = rows (1..8) of C = panels
// (1..3) panels: the dispatch of the 8 x 3 AVX-512 register tiles.
template <template <int, int> class Tile, int C, typename Operands>
void RunRowTile(const Operands& o, int64_t rows, int64_t row, int64_t panel) {
  switch (rows) {
    case 8:
      return Tile<8, C>::Run(o, row, panel);
    case 7:
      return Tile<7, C>::Run(o, row, panel);
    case 6:
      return Tile<6, C>::Run(o, row, panel);
    case 5:
      return Tile<5, C>::Run(o, row, panel);
    case 4:
      return Tile<4, C>::Run(o, row, panel);
    case 3:
      return Tile<3, C>::Run(o, row, panel);
    case 2:
      return Tile<2, C>::Run(o, row, panel);
    default:
      return Tile<1, C>::Run(o, row, panel);
  }
}

// Covers block b with tiles of up to 8 rows x 3 panels. Panels outermost:
// a panel group's weights stay in cache while every row tile passes over
// them.
template <template <int, int> class Tile, typename Operands>
void RunTiles8x3(const Operands& o, const PanelBlock& b) {
  for (int64_t pj = b.panel_begin; pj < b.panel_end; pj += 3) {
    const int64_t panels = std::min<int64_t>(3, b.panel_end - pj);
    for (int64_t i = b.row_begin; i < b.row_end; i += 8) {
      const int64_t rows = std::min<int64_t>(8, b.row_end - i);
      if (panels == 3) {
        RunRowTile<Tile, 3>(o, rows, i, pj);
      } else if (panels == 2) {
        RunRowTile<Tile, 2>(o, rows, i, pj);
      } else {
        RunRowTile<Tile, 1>(o, rows, i, pj);
      }
    }
  }
}

}  // namespace strata::cpu::internal

#endif  // STRATA_KERNELS_CPU_PANEL_TASKS_H_
