// sequence_layout.cpp -- see sequence_layout.h.
#include "sequence_layout.h"

#include <c10/util/Exception.h>

namespace lstm_ext {

bool SequenceLayout::uniform() const {
  for (int64_t b : batch_sizes) {
    if (b != batch) {
      return false;
    }
  }
  return true;
}

SequenceLayout padded_layout(int64_t seq_len, int64_t batch) {
  SequenceLayout layout;
  layout.batch = batch;
  layout.rows = seq_len * batch;
  layout.batch_sizes.assign(seq_len, batch);
  layout.offsets.resize(seq_len);
  for (int64_t t = 0; t < seq_len; ++t) {
    layout.offsets[t] = t * batch;
  }
  return layout;
}

SequenceLayout packed_layout(const char* op, const at::Tensor& batch_sizes, int64_t rows) {
  TORCH_CHECK(batch_sizes.dim() == 1 && batch_sizes.scalar_type() == at::kLong && batch_sizes.device().is_cpu(), op,
              ": batch_sizes must be a 1-D int64 CPU tensor (a PackedSequence's), got a ", batch_sizes.dim(), "-D ",
              batch_sizes.scalar_type(), " tensor on ", batch_sizes.device());
  const at::Tensor sizes = batch_sizes.contiguous();
  const int64_t* data = sizes.const_data_ptr<int64_t>();
  SequenceLayout layout;
  layout.batch_sizes.assign(data, data + sizes.numel());
  layout.offsets.resize(layout.batch_sizes.size());
  TORCH_CHECK(!layout.batch_sizes.empty(), op, ": batch_sizes must not be empty");
  layout.batch = layout.batch_sizes[0];
  int64_t offset = 0;
  for (size_t t = 0; t < layout.batch_sizes.size(); ++t) {
    const int64_t b = layout.batch_sizes[t];
    TORCH_CHECK(b > 0 && (t == 0 || b <= layout.batch_sizes[t - 1]), op,
                ": batch_sizes must be positive and non-increasing (sequences sorted by length), got ", b,
                " at step ", t, t == 0 ? "" : " after " + std::to_string(layout.batch_sizes[t - 1]));
    layout.offsets[t] = offset;
    offset += b;
  }
  TORCH_CHECK(offset == rows, op, ": batch_sizes must sum to the rows of input (", rows, "), got ", offset);
  layout.rows = rows;
  return layout;
}

}  // namespace lstm_ext
