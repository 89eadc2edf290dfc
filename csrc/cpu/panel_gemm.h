// panel_gemm.h -- the CPU's per-step product out[m, n] (+)= a[m, k] @ op(W) in float, for the few rows
// a time step has. MKL's GEMM repacks W on every call and, at 4-8 rows, reaches a third of a core's
// peak on the machines measured (benchmarks/README.md); here W is packed once per pass into panels of
// kPanelWidth columns ([k][kPanelWidth] each, zero-padded at the end: two vectors wide, 16 floats with
// AVX2, 32 with AVX-512), and each block of up to kMaxRows rows by one or two panels (or, for the last
// few rows, a few more) is summed over k in registers.
//
// Every output element is one running sum over k in increasing order, whatever m is, so results do not
// depend on how the batch is split into chunks. Part of cpu_backend.h's variants: include only
// from there.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "buffer_cache.h"

namespace lstm_ext {
namespace LSTM_EXT_CPU_VARIANT {
namespace panel_gemm {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kPanelWidth = 2 * Vec::size();
// The main block: kMaxRows rows by kMainPanels panels. With AVX-512, 6 rows by 2 panels loads fewer panel
// vectors and broadcasts per FMA than 12 rows by one, and ran faster (profile note 18).
#ifdef CPU_CAPABILITY_AVX512
constexpr int kRegisters = 32;   // zmm0-31
constexpr int kMaxRows = 6;      // 6 x 4 accumulators, 6 broadcasts and a panel vector: 31 of 32
constexpr int kMainPanels = 2;
#else
constexpr int kRegisters = 16;   // ymm0-15
constexpr int kMaxRows = 6;      // 6 x 2 accumulators, 2 panel vectors and a broadcast: 15 of 16
constexpr int kMainPanels = 1;
#endif

// Vector registers a block of kRows rows by kPanels panels holds at once (see block): its accumulators,
// then two panel vectors and a broadcast (one panel) or one panel vector and a broadcast per row.
constexpr int block_registers(int rows, int panels) {
  return rows * 2 * panels + (panels == 1 ? 3 : rows + 1);
}

// Panels per block for the last rows of a product (fewer than kMaxRows): enough that the block has at
// least 12 independent FMA chains, where the registers allow it.
constexpr int tail_panels(int rows) {
  int panels = 1;
  while (rows * 2 * panels < 12 && block_registers(rows, panels + 1) <= kRegisters) {
    ++panels;
  }
  return panels;
}

// k per pass over the panels (see panel_rows): a panel's block of k stays in L1 next to the rows
// (profile note 10).
constexpr int64_t kDepthBlock = 512;

// dst[0, count) = src[0, count), whole vectors first: std::copy_n calls memmove, whose call cost showed
// in small steps at these sizes (a panel's row is 16 or 32 floats). The empty
// asm keeps GCC from turning the loop back into a memmove call.
inline void copy_floats(const float* src, int64_t count, float* dst) {
  int64_t i = 0;
  for (; i + Vec::size() <= count; i += Vec::size()) {
    Vec::loadu(src + i).store(dst + i);
    asm volatile("" ::: "memory");
  }
  for (; i < count; ++i) {
    dst[i] = src[i];
  }
}

inline int64_t panel_count(int64_t n) {
  return (n + kPanelWidth - 1) / kPanelWidth;
}

// dst[j][i] = src[i][j] for an 8 x 8 tile. With AVX2 (both vector builds) in eight registers: ATen's
// transpose_mxn does the same in its AVX2 build, but in its AVX-512 build an 8 x 8 tile goes through a
// masked 16 x 16 function call per tile, which was a tenth of a T=16, B=8, H=256 inference forward.
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// The same in registers: column j of the tile in cols[j].
inline void transpose_8x8_in_registers(const float* src, int64_t ld_src, __m256 (&cols)[8]) {
  __m256 r[8], t[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm256_loadu_ps(src + i * ld_src);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 8; i += 2) {  // pairs of rows interleaved
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
#pragma GCC unroll 2
  for (int i = 0; i < 8; i += 4) {  // quads of rows: columns 4q..4q+3 of each 128-bit half
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {  // the low halves make columns 0-3, the high halves 4-7
    cols[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
    cols[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
  }
}
#endif

inline void transpose_8x8(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  __m256 cols[8];
  transpose_8x8_in_registers(src, ld_src, cols);
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    _mm256_storeu_ps(dst + i * ld_dst, cols[i]);
  }
#else
  at::vec::transpose_mxn<float, 8, 8>(src, ld_src, dst, ld_dst);
#endif
}

// op(W) as [k, n] (op(W) = W^T when transpose) in panels: [panel_count(n), k, kPanelWidth], the columns
// past n zero. W is contiguous float. Panels are packed in parallel; a loop per case, since ATen's
// general strided copy of the transposed weight takes twice as long.
inline at::Tensor pack(const at::Tensor& weight, bool transpose) {
  const int64_t k = transpose ? weight.size(1) : weight.size(0), n = transpose ? weight.size(0) : weight.size(1);
  const int64_t panels = panel_count(n);
  at::Tensor packed = cpu::empty_huge_page_backed({panels, k, kPanelWidth}, weight.options());
  const float* w = weight.const_data_ptr<float>();
  float* out = packed.mutable_data_ptr<float>();
  if (!transpose) {
    // Row kk of W holds row kk of every panel: W is read once, row after row, in tasks of ~16 KiB.
    const int64_t row_grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(n, 1));
    at::parallel_for(0, k, row_grain, [&](int64_t first, int64_t last) {
      for (int64_t kk = first; kk < last; ++kk) {
        const float* w_row = w + kk * n;
        for (int64_t p = 0; p < panels; ++p) {
          const int64_t col0 = p * kPanelWidth, cols = std::min(kPanelWidth, n - col0);
          float* panel_row = out + p * k * kPanelWidth + kk * kPanelWidth;
          copy_floats(w_row + col0, cols, panel_row);
          std::fill(panel_row + cols, panel_row + kPanelWidth, 0.f);
        }
      }
    });
    return packed;
  }
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(k, 1));  // 16 KiB of floats per task
  at::parallel_for(0, panels, grain, [&](int64_t first, int64_t last) {
    for (int64_t p = first; p < last; ++p) {
      float* panel = out + p * k * kPanelWidth;
      const int64_t col0 = p * kPanelWidth, cols = std::min(kPanelWidth, n - col0);
      if (cols < kPanelWidth) {
        std::fill_n(panel, k * kPanelWidth, 0.f);
      }
      if (cols == kPanelWidth) {
        // op(W)[kk][col] = W[col][kk] by 8 x 8 register transposes of the panel's rows of W (a scalar
        // scatter was a fifth of a small layer's forward), the last k % 8 one at a time.
        constexpr int64_t kTile = 8;
        const float* w_rows = w + col0 * k;
        int64_t kk = 0;
        for (; kk + kTile <= k; kk += kTile) {
          for (int64_t j = 0; j < kPanelWidth; j += kTile) {
            transpose_8x8(w_rows + j * k + kk, k, panel + kk * kPanelWidth + j, kPanelWidth);
          }
        }
        for (; kk < k; ++kk) {
          for (int64_t j = 0; j < kPanelWidth; ++j) {
            panel[kk * kPanelWidth + j] = w_rows[j * k + kk];
          }
        }
      } else {  // a partial panel: each of its rows of W along kk
        for (int64_t j = 0; j < cols; ++j) {
          const float* w_row = w + (col0 + j) * k;
          for (int64_t kk = 0; kk < k; ++kk) {
            panel[kk * kPanelWidth + j] = w_row[kk];
          }
        }
      }
    }
  });
  return packed;
}

// Where a product's sums start: from out (accumulate), else from `bias` (a row of n, at column 0 of the
// product, the same for every row; plus `bias2` where given, one rounded float addition, as the summed
// bias tensor would hold), else from zero. The bias first, then the k terms: the sums that adding the
// bias beforehand and accumulating would give.
struct Start {
  bool accumulate = false;
  const float* bias = nullptr;
  const float* bias2 = nullptr;

  // The start of the sums of columns [j, j + Vec::size()) (bias) or of out at `out` (accumulate).
  Vec vector_at(const float* out, int64_t j) const {
    if (accumulate) {
      return Vec::loadu(out);
    }
    if (bias == nullptr) {
      return Vec(0.f);
    }
    return bias2 != nullptr ? Vec::loadu(bias + j) + Vec::loadu(bias2 + j) : Vec::loadu(bias + j);
  }
  float scalar_at(const float* out, int64_t j) const {
    if (accumulate) {
      return *out;
    }
    if (bias == nullptr) {
      return 0.f;
    }
    return bias2 != nullptr ? bias[j] + bias2[j] : bias[j];
  }
};

// Where the panels are: row kk of panel p at data + p * panel_stride + kk * row_stride. Packed by pack():
// panel_stride = k * kPanelWidth, row_stride = kPanelWidth. A row-major op(W) = W [k, n] with n a multiple
// of kPanelWidth is already panels, read in place: panel_stride = kPanelWidth, row_stride = n.
struct Panels {
  const float* data;
  int64_t panel_stride;
  int64_t row_stride;
};

// kRows rows of out (row stride ldc) by kPanels adjacent panels (kPanels * kPanelWidth columns). A
// block's accumulators are its only independent FMA chains: few rows (a step of a small batch) take
// several panels at once, so that the chains hide the FMA latency instead of waiting on it.
//
// `a` is A row-major (element [r][kk] at a[r * lda + kk]) or, with kTransposedA, A^T row-major
// (a[kk * lda + r]: a block's broadcasts at one kk are adjacent), the weight gradients' dG^T.
template <int kRows, int kPanels, bool kTransposedA = false>
inline void block(const float* a, int64_t lda, const Panels& w, int64_t panel, int64_t k, float* out, int64_t ldc,
                  Start start) {
  static_assert(block_registers(kRows, kPanels) <= kRegisters, "more registers than the CPU has");
  Vec acc[kRows][2 * kPanels];
  const float* panels[kPanels];
#pragma GCC unroll 16
  for (int q = 0; q < kPanels; ++q) {
    panels[q] = w.data + (panel + q) * w.panel_stride;
  }
#pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 16
    for (int v = 0; v < 2 * kPanels; ++v) {
      acc[r][v] = start.vector_at(out + r * ldc + v * Vec::size(), panel * kPanelWidth + v * Vec::size());
    }
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    // Registers: the accumulators, then one panel vector and a broadcast per row (several panels), or two
    // panel vectors and one broadcast (one panel): block_registers.
    const auto a_at = [&](int r) { return kTransposedA ? a[kk * lda + r] : a[r * lda + kk]; };
    if constexpr (kPanels == 1) {
      const Vec w0 = Vec::loadu(panels[0] + kk * w.row_stride);
      const Vec w1 = Vec::loadu(panels[0] + kk * w.row_stride + Vec::size());
#pragma GCC unroll 16
      for (int r = 0; r < kRows; ++r) {
        const Vec ar(a_at(r));
        acc[r][0] = at::vec::fmadd(ar, w0, acc[r][0]);
        acc[r][1] = at::vec::fmadd(ar, w1, acc[r][1]);
      }
    } else {
      Vec ar[kRows];
#pragma GCC unroll 16
      for (int r = 0; r < kRows; ++r) {
        ar[r] = Vec(a_at(r));
      }
#pragma GCC unroll 16
      for (int v = 0; v < 2 * kPanels; ++v) {
        const Vec wv = Vec::loadu(panels[v / 2] + kk * w.row_stride + (v % 2) * Vec::size());
#pragma GCC unroll 16
        for (int r = 0; r < kRows; ++r) {
          acc[r][v] = at::vec::fmadd(ar[r], wv, acc[r][v]);
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 16
    for (int v = 0; v < 2 * kPanels; ++v) {
      acc[r][v].store(out + r * ldc + v * Vec::size());
    }
  }
}

// kRows rows by panels [first, last): kPanels at a time, the rest in one narrower block.
template <int kRows, int kPanels>
inline void rows_by_panels(const float* a, int64_t lda, const Panels& w, int64_t first, int64_t last, int64_t k,
                           float* out, int64_t ldc, Start start) {
  int64_t p = first;
  for (; p + kPanels <= last; p += kPanels) {
    block<kRows, kPanels>(a, lda, w, p, k, out + p * kPanelWidth, ldc, start);
  }
  if constexpr (kPanels > 1) {
    rows_by_panels<kRows, kPanels - 1>(a, lda, w, p, last, k, out, ldc, start);
  }
}

// One block of `rows` (1..kRows) rows by kPanels panels.
template <int kPanels, bool kTransposedA = false, int kRows = kMaxRows>
inline void block_of_rows(int64_t rows, const float* a, int64_t lda, const Panels& w, int64_t panel, int64_t k,
                          float* out, int64_t ldc, Start start) {
  if constexpr (kRows > 1) {
    if (rows < kRows) {
      block_of_rows<kPanels, kTransposedA, kRows - 1>(rows, a, lda, w, panel, k, out, ldc, start);
      return;
    }
  }
  block<kRows, kPanels, kTransposedA>(a, lda, w, panel, k, out, ldc, start);
}

// Where row block b of `rows` rows starts: the rows are cut into `blocks` blocks whose heights differ by
// at most one.
inline int64_t row_block_begin(int64_t rows, int64_t blocks, int64_t b) {
  return b * (rows / blocks) + std::min(b, rows % blocks);
}

// Rows [0, rows) by panels [first, last): kPanels panels at a time, each group by all row blocks, so
// that its panels stay in cache while the blocks pass; the rest in narrower groups. The rows are cut
// into the fewest blocks of at most kMaxRows (row_block_begin). `a` as in block.
template <int kPanels, bool kTransposedA = false>
inline void even_row_blocks(int64_t rows, const float* a, int64_t lda, const Panels& w, int64_t first, int64_t last,
                            int64_t k, float* out, int64_t ldc, Start start) {
  const int64_t blocks = (rows + kMaxRows - 1) / kMaxRows;
  int64_t p = first;
  for (; p + kPanels <= last; p += kPanels) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r = row_block_begin(rows, blocks, b), height = row_block_begin(rows, blocks, b + 1) - r;
      const float* a_rows = kTransposedA ? a + r : a + r * lda;
      block_of_rows<kPanels, kTransposedA>(height, a_rows, lda, w, p, k, out + r * ldc + p * kPanelWidth, ldc, start);
    }
  }
  if constexpr (kPanels > 1) {
    even_row_blocks<kPanels - 1, kTransposedA>(rows, a, lda, w, p, last, k, out, ldc, start);
  }
}

// The last `rows` (fewer than kMaxRows) rows by panels [first, last), tail_panels(rows) panels per block.
template <int kRows>
inline void tail_rows(int64_t rows, const float* a, int64_t lda, const Panels& w, int64_t first, int64_t last,
                      int64_t k, float* out, int64_t ldc, Start start) {
  if constexpr (kRows > 0) {
    if (rows == kRows) {
      rows_by_panels<kRows, tail_panels(kRows)>(a, lda, w, first, last, k, out, ldc, start);
    } else {
      tail_rows<kRows - 1>(rows, a, lda, w, first, last, k, out, ldc, start);
    }
  }
}

// Rows [0, rows) by panels [first, last); out points at column 0 of row 0: blocks of up to kMaxRows rows
// by kMainPanels panels (even_row_blocks), and rows fewer than kMaxRows by several panels per block
// (tail_rows). Each output element is the same running sum over k in increasing order in every block
// shape.
inline void panel_rows(const float* a, int64_t lda, const Panels& w, int64_t first, int64_t last, int64_t k,
                       float* out, int64_t ldc, int64_t rows, Start start) {
  // k in blocks of kDepthBlock: a block's slice of its panels stays in cache with the rows of a
  // while the row blocks pass, where a whole deep panel would not. Between blocks the sums go through
  // out as the float32 they are, so each is still one running sum over k in increasing order. At least
  // one block, so that k = 0 still writes the zeros.
  for (int64_t kb = 0; kb == 0 || kb < k; kb += kDepthBlock) {
    const int64_t depth = std::min(kDepthBlock, k - kb);
    const Panels wk{w.data + kb * w.row_stride, w.panel_stride, w.row_stride};
    const float* ak = a + kb;
    const Start acc = kb > 0 ? Start{true, nullptr} : start;  // later k blocks add to the sums in out
    // With several panels per block (AVX-512) all rows go into blocks of even height: a remainder's narrow
    // block would stream every panel for a few rows (a 2-row tail at 32 rows made the H=512 forward
    // slower). With one (AVX2) the full blocks come first and the remainder takes several panels.
    const int64_t even_rows = kMainPanels > 1 && rows >= kMaxRows ? rows : rows / kMaxRows * kMaxRows;
    if (even_rows > 0) {
      even_row_blocks<kMainPanels>(even_rows, ak, lda, wk, first, last, depth, out, ldc, acc);
    }
    const float* a_rest = ak + even_rows * lda;
    float* out_rest = out + even_rows * ldc;
    tail_rows<kMaxRows - 1>(rows - even_rows, a_rest, lda, wk, first, last, depth, out_rest, ldc, acc);
  }
}

// The `tail` real columns (fewer than kPanelWidth) of a partial last panel, rows [0, rows) of out_cols
// (row stride ldc; column first_column of the product), through `staged` [rows][kPanelWidth]: it starts
// as the sums would (out's columns, or the bias's, or zeros; the panel's zero padding keeps the extra
// columns so), compute(staged_start) sums the blocks into it, and only the real columns go back.
template <typename Compute>
inline void through_staged_tile(int64_t rows, int64_t tail, float* out_cols, int64_t ldc, int64_t first_column,
                                Start start, float* staged, const Compute& compute) {
  std::fill_n(staged, rows * kPanelWidth, 0.f);
  for (int64_t r = 0; r < rows && (start.accumulate || start.bias != nullptr); ++r) {
    for (int64_t j = 0; j < tail; ++j) {
      staged[r * kPanelWidth + j] = start.scalar_at(out_cols + r * ldc + j, first_column + j);
    }
  }
  compute(Start{start.accumulate || start.bias != nullptr, nullptr});
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(staged + r * kPanelWidth, tail, out_cols + r * ldc);
  }
}

// Columns [p * kPanelWidth, ...) of out[m, n] (+)= a[m, k] @ op(W) (or bias + a @ op(W): Start) for
// panels p in [first, last); a and out contiguous rows. A partial last panel only from pack(). Disjoint
// panel ranges may run on different threads.
inline void gemm_panels(const float* a, int64_t m, int64_t k, const Panels& w, float* out, int64_t n,
                        Start start, int64_t first, int64_t last) {
  const int64_t full_panels = std::min(last, n / kPanelWidth);
  if (first < full_panels) {
    panel_rows(a, k, w, first, full_panels, k, out, n, m, start);
  }
  const int64_t tail = n - full_panels * kPanelWidth;
  if (tail == 0 || last < panel_count(n)) {
    return;
  }
  float staged[kMaxRows * kPanelWidth];
  const Panels last_panel{w.data + full_panels * w.panel_stride, 0, w.row_stride};
  for (int64_t r0 = 0; r0 < m; r0 += kMaxRows) {
    const int64_t rows = std::min<int64_t>(kMaxRows, m - r0);
    through_staged_tile(rows, tail, out + r0 * n + full_panels * kPanelWidth, n, full_panels * kPanelWidth, start,
                        staged, [&](Start staged_start) {
                          panel_rows(a + r0 * k, k, last_panel, 0, 1, k, staged, kPanelWidth, rows, staged_start);
                        });
  }
}

// Products read straight from W [n, k] row-major, op(W) = W^T, for passes with so few rows that packing
// W^T (a copy of W, and a buffer) would cost more than their products: each 8 x 8 tile of W is
// transposed in registers as it is used. The sums are the panels': each element starts as Start says,
// then one fused multiply-add per k in increasing order.
constexpr int64_t kTransposedRows = 4;  // rows of `a` summed per pass over W

// kRows rows, out's columns [begin, end) (row stride ldc, out at column 0); a [kRows, k] contiguous.
template <int kRows>
inline void transposed_rows(const float* a, int64_t k, const float* w, float* out, int64_t ldc, Start start,
                            int64_t begin, int64_t end) {
  constexpr int64_t kTile = 8;
  int64_t j = begin;
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  for (; j + kTile <= end; j += kTile) {
    __m256 acc[kRows];
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const float* out_r = out + r * ldc + j;
      if (start.accumulate) {
        acc[r] = _mm256_loadu_ps(out_r);
      } else if (start.bias == nullptr) {
        acc[r] = _mm256_setzero_ps();
      } else {
        const __m256 bias = _mm256_loadu_ps(start.bias + j);
        acc[r] = start.bias2 != nullptr ? _mm256_add_ps(bias, _mm256_loadu_ps(start.bias2 + j)) : bias;
      }
    }
    const float* w_rows = w + j * k;  // rows j..j+7 of W: columns j..j+7 of op(W)
    int64_t kk = 0;
    for (; kk + kTile <= k; kk += kTile) {
      __m256 tile[kTile];  // tile[q] = W[j..j+7][kk + q]
      transpose_8x8_in_registers(w_rows + kk, k, tile);
#pragma GCC unroll 8
      for (int q = 0; q < kTile; ++q) {
#pragma GCC unroll 8
        for (int r = 0; r < kRows; ++r) {
          acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(a[r * k + kk + q]), tile[q], acc[r]);
        }
      }
    }
    for (; kk < k; ++kk) {
      alignas(32) float column[kTile];
      for (int i = 0; i < kTile; ++i) {
        column[i] = w_rows[i * k + kk];
      }
      const __m256 wv = _mm256_load_ps(column);
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(a[r * k + kk]), wv, acc[r]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      _mm256_storeu_ps(out + r * ldc + j, acc[r]);
    }
  }
#endif
  for (; j < end; ++j) {  // the last columns one at a time: the same fused multiply-adds, in scalars
    const float* w_row = w + j * k;
    for (int r = 0; r < kRows; ++r) {
      float sum = start.scalar_at(out + r * ldc + j, j);
      for (int64_t kk = 0; kk < k; ++kk) {
        sum = std::fma(a[r * k + kk], w_row[kk], sum);
      }
      out[r * ldc + j] = sum;
    }
  }
}

// out[m, columns [begin, end)] (+)= a[m, k] @ W^T (or bias + ...: Start), W [n, k] read in place; out
// contiguous rows of n, at column 0.
inline void gemm_transposed_in_place(const float* a, int64_t m, int64_t k, const float* w, float* out, int64_t n,
                                     Start start, int64_t begin, int64_t end) {
  int64_t r = 0;
  for (; r + kTransposedRows <= m; r += kTransposedRows) {
    transposed_rows<kTransposedRows>(a + r * k, k, w, out + r * n, n, start, begin, end);
  }
  switch (m - r) {
    case 3:
      transposed_rows<3>(a + r * k, k, w, out + r * n, n, start, begin, end);
      break;
    case 2:
      transposed_rows<2>(a + r * k, k, w, out + r * n, n, start, begin, end);
      break;
    case 1:
      transposed_rows<1>(a + r * k, k, w, out + r * n, n, start, begin, end);
      break;
    default:
      break;
  }
}

}  // namespace panel_gemm
}  // namespace LSTM_EXT_CPU_VARIANT
}  // namespace lstm_ext
