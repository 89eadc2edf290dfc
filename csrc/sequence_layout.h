// sequence_layout.h -- where each time step's rows are in a time-major sequence buffer.
//
// Padded input [T, B, I] and packed input (PackedSequence: rows [N, I] with batch_sizes) are both seen
// as rows, step after step: step t holds batch_sizes[t] rows starting at offsets[t], and the batch
// sizes never grow, so the live sequences of a step are always its first rows (PackedSequence sorts
// them by length). A padded batch is the case where every step holds B rows.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace lstm_ext {

struct SequenceLayout {
  std::vector<int64_t> batch_sizes;  // rows live at each step, non-increasing
  std::vector<int64_t> offsets;      // first row of each step
  int64_t rows = 0;                  // all steps' rows
  int64_t batch = 0;                 // sequences: rows of the first step (or B of a padded batch)

  int64_t steps() const { return static_cast<int64_t>(batch_sizes.size()); }
  // Every step holds every sequence: the buffers are plain [T, B, *] blocks.
  bool uniform() const;
};

SequenceLayout padded_layout(int64_t seq_len, int64_t batch);

// Checks `batch_sizes` (1-D int64 on the CPU, positive, non-increasing, summing to `rows`) naming `op`.
SequenceLayout packed_layout(const char* op, const at::Tensor& batch_sizes, int64_t rows);

}  // namespace lstm_ext
