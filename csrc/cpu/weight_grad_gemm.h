// weight_grad_gemm.h -- out[m, n] (+)= a[k, m]^T @ b[k, n] in float: the weight gradients after the
// backward's loop (dW = dG^T @ [x | h_prev], k = every row of the sequence). MKL's sgemm runs its AVX2
// code on AMD CPUs: 136-192 GFLOP/s on the Zen 4's two cores at these shapes. Here panel_gemm's blocks,
// a k block at a time: b's rows packed into panels (kept in cache while the row blocks of out pass), a
// read as A^T (a block's broadcasts at one step of k are adjacent floats of a row of a), in place or,
// where m is a large power of two, through a copy with a stride that spreads its rows over L1's sets.
//
// The threads split out's rows. Each output element is one running sum over k in increasing order
// (between k blocks through out, as the float32 it is), whatever the number of threads. Part of
// cpu_backend.h's variants: include only from there, after panel_gemm.h.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "buffer_cache.h"

namespace lstm_ext {
namespace LSTM_EXT_CPU_VARIANT {
namespace weight_grad_gemm {

using panel_gemm::kMainPanels;
using panel_gemm::kMaxRows;
using panel_gemm::kPanelWidth;

constexpr int64_t kDepthBlock = 256;  // k per packed block: b's [n / 32][256][32] floats (256 KiB at n = 256)
constexpr int64_t kRowBlock = 96;     // out's rows per pass over b's panels
// a's k block for kRowBlock rows of out, copied: [256][104] floats, 104 KiB (a stride of 416 bytes).
constexpr int64_t kCopyStride = kRowBlock + 8;
// a copied per k block pays from this many columns of out; below, reading it in place is faster.
constexpr int64_t kMinColumnsToCopyA = 128;
// b read in place rather than packed per k block up to this width: each thread would pack all of b for
// few rows of out (measurements: benchmarks/README.md's profile notes).
constexpr int64_t kMaxColumnsInPlace = 128;

// Rows [kb, kb + depth) of b [*, n] as panels [panel_count(n)][depth][kPanelWidth], zero past column n.
inline void pack_b(const float* b, int64_t n, int64_t depth, float* packed) {
  const int64_t panels = panel_gemm::panel_count(n);
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t col0 = p * kPanelWidth, cols = std::min(kPanelWidth, n - col0);
    float* panel = packed + p * depth * kPanelWidth;
    for (int64_t kk = 0; kk < depth; ++kk) {
      panel_gemm::copy_floats(b + kk * n + col0, cols, panel + kk * kPanelWidth);
      std::fill(panel + kk * kPanelWidth + cols, panel + (kk + 1) * kPanelWidth, 0.f);
    }
  }
}

// Columns [col0, col0 + rows) of `depth` rows of a [*, m] into [depth][ld].
inline void copy_a(const float* a, int64_t m, int64_t col0, int64_t rows, int64_t depth, float* copy, int64_t ld) {
  for (int64_t kk = 0; kk < depth; ++kk) {
    panel_gemm::copy_floats(a + kk * m + col0, rows, copy + kk * ld);
  }
}

// Rows [m0, m1) of out, with this thread's buffers.
inline void rows_of_product(const float* a, const float* b, int64_t k, int64_t m, int64_t n, float* out,
                            bool accumulate, int64_t m0, int64_t m1) {
  const int64_t panels = panel_gemm::panel_count(n), full_panels = n / kPanelWidth, tail = n % kPanelWidth;
  // b [k, n] with whole panels is panels already (row stride n); read in place where its rows are close
  // enough not to crowd a few of L1's sets (see kMaxColumnsInPlace).
  const bool b_in_place = tail == 0 && n <= kMaxColumnsInPlace;
  // Buffers from the cached allocator: from glibc, blocks this size come back unmapped every call.
  const auto buffer = [](int64_t floats) { return cpu::empty_huge_page_backed({floats}, at::kFloat); };
  const at::Tensor b_buffer = buffer(b_in_place ? 0 : panels * std::min(k, kDepthBlock) * kPanelWidth);
  // Read in place, a block's steps of k are m floats apart (at m = 1024, 4 KiB: all in one set of L1);
  // copied, kCopyStride apart. The copy pays where each element meets enough columns of b.
  const bool copy_a_rows = n >= kMinColumnsToCopyA;
  const at::Tensor a_buffer = buffer(copy_a_rows ? kCopyStride * std::min(k, kDepthBlock) : 0);
  float* const b_packed = b_buffer.mutable_data_ptr<float>();
  float* const a_copy = a_buffer.mutable_data_ptr<float>();
  // At least one k block, so that k = 0 still writes the zeros.
  for (int64_t kb = 0; kb == 0 || kb < k; kb += kDepthBlock) {
    const int64_t depth = std::min(kDepthBlock, k - kb);
    const panel_gemm::Start acc{accumulate || kb > 0, nullptr};
    if (!b_in_place) {
      pack_b(b + kb * n, n, depth, b_packed);
    }
    const panel_gemm::Panels b_panels = b_in_place ? panel_gemm::Panels{b + kb * n, kPanelWidth, n}
                                                   : panel_gemm::Panels{b_packed, depth * kPanelWidth, kPanelWidth};
    for (int64_t r0 = m0; r0 < m1; r0 += kRowBlock) {
      const int64_t rows = std::min(kRowBlock, m1 - r0);
      if (copy_a_rows) {
        copy_a(a + kb * m, m, r0, rows, depth, a_copy, kCopyStride);
      }
      const float* a_rows = copy_a_rows ? a_copy : a + kb * m + r0;  // out's rows r0.. are a's columns
      const int64_t lda = copy_a_rows ? kCopyStride : m;
      float* out_rows = out + r0 * n;
      panel_gemm::even_row_blocks<kMainPanels, true>(rows, a_rows, lda, b_panels, 0, full_panels, depth, out_rows, n,
                                                     acc);
      if (tail != 0) {
        float staged[kRowBlock * kPanelWidth];
        const panel_gemm::Panels last_panel{b_packed + full_panels * b_panels.panel_stride, 0, kPanelWidth};
        panel_gemm::through_staged_tile(
            rows, tail, out_rows + full_panels * kPanelWidth, n, full_panels * kPanelWidth, acc, staged,
            [&](panel_gemm::Start staged_start) {
              panel_gemm::even_row_blocks<1, true>(rows, a_rows, lda, last_panel, 0, 1, depth, staged, kPanelWidth,
                                                   staged_start);
            });
      }
    }
  }
}

// sums[r] = sum over kk of a[kk][r] for r in [m0, m1), a [k, m]: in blocks of kDepthBlock rows, each
// block's sums added to the total (fewer roundings in a row than one running sum over all of k).
inline void column_sums(const float* a, int64_t k, int64_t m, float* sums, int64_t m0, int64_t m1) {
  std::fill(sums + m0, sums + m1, 0.f);
  std::vector<float> block_sums(m1 - m0);
  for (int64_t kb = 0; kb < k; kb += kDepthBlock) {
    std::fill(block_sums.begin(), block_sums.end(), 0.f);
    for (int64_t kk = kb; kk < std::min(k, kb + kDepthBlock); ++kk) {
      const float* row = a + kk * m + m0;
      for (int64_t r = 0; r < m1 - m0; ++r) {
        block_sums[r] += row[r];
      }
    }
    for (int64_t r = 0; r < m1 - m0; ++r) {
      sums[m0 + r] += block_sums[r];
    }
  }
}

// out (+)= a^T @ b, all contiguous row-major float (a [k, m], b [k, n], out [m, n]).
struct Product {
  const float* a;
  const float* b;
  int64_t k;
  int64_t n;
  float* out;
  bool accumulate;
};

// The products in order, every out [m, *], and where sums is not null, sums = summed's column sums
// (summed [k_summed, m]), in one parallel region: the threads take ranges of the m rows (a multiple of
// kMaxRows each), where there is enough work to pay for waking them.
inline void weight_gradients(const std::vector<Product>& products, int64_t m, float* sums, const float* summed,
                             int64_t k_summed) {
  constexpr int64_t kMinMacsPerThread = int64_t{1} << 18;
  int64_t macs_per_row = sums != nullptr ? k_summed : 0;
  for (const Product& product : products) {
    macs_per_row += product.k * product.n;
  }
  const int64_t row_blocks = (m + kMaxRows - 1) / kMaxRows;
  const int64_t macs_per_block = std::max<int64_t>(kMaxRows * macs_per_row, 1);
  const int64_t grain = (kMinMacsPerThread + macs_per_block - 1) / macs_per_block;
  at::parallel_for(0, row_blocks, grain, [&](int64_t first, int64_t last) {
    const int64_t m0 = first * kMaxRows, m1 = std::min(m, last * kMaxRows);
    for (const Product& product : products) {
      rows_of_product(product.a, product.b, product.k, m, product.n, product.out, product.accumulate, m0, m1);
    }
    if (sums != nullptr) {
      column_sums(summed, k_summed, m, sums, m0, m1);
    }
  });
}

}  // namespace weight_grad_gemm
}  // namespace LSTM_EXT_CPU_VARIANT
}  // namespace lstm_ext
