// lstm_recurrence.cpp -- see lstm_recurrence.h. The algorithm is cuDNN's and Haste's layer-level
// shape (Appleyard et al. 2016): hoist the input GEMM over all steps, then per step one GEMM into the
// step's slice and one fused pointwise pass; the backward mirrors it and leaves the weight gradients to
// large GEMMs after the loop. No atomics anywhere, so gradients are bitwise repeatable.
#include "lstm_recurrence.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace lstm_ext {
namespace {

// The live rows of step t within a batch chunk, and where their h_{t-1}, c_{t-1} come from: the first
// `continuing` rows from the step before in the direction's order (t-1, or t+1 in reverse), the rest
// from h0/c0 (every row at the first step; in reverse, the sequences that end at step t and so start
// there). Live sequences are always a step's first rows, so a chunk's live rows are its first ones.
struct StepRows {
  int64_t offset;       // first row of the chunk at step t
  int64_t rows;         // live rows of the chunk
  int64_t continuing;   // rows that continue from the previous step
  int64_t prev_offset;  // first row of the chunk at the previous step
  int64_t sequence;     // the chunk's first sequence: its row in h0/c0 and in per-sequence buffers
};

StepRows step_rows(const SequenceLayout& layout, int64_t t, bool reverse, const BatchChunk& chunk) {
  const int64_t prev_t = reverse ? t + 1 : t - 1;
  const bool has_prev = prev_t >= 0 && prev_t < layout.steps();
  const int64_t live = layout.batch_sizes[t];
  const int64_t continuing = has_prev ? std::min(live, layout.batch_sizes[prev_t]) : 0;
  const auto in_chunk = [&](int64_t n) { return std::clamp(n - chunk.begin, int64_t{0}, chunk.end - chunk.begin); };
  return {layout.offsets[t] + chunk.begin, in_chunk(live), in_chunk(continuing),
          has_prev ? layout.offsets[prev_t] + chunk.begin : 0, chunk.begin};
}

// Calls fn(first_row, row_count, from_previous_step) for the (at most two) groups of a step's rows that
// take their previous state from the same place.
template <typename Fn>
void for_each_state_source(const StepRows& s, const Fn& fn) {
  if (s.continuing > 0) {
    fn(int64_t{0}, s.continuing, true);
  }
  if (s.rows > s.continuing) {
    fn(s.continuing, s.rows - s.continuing, false);
  }
}

// Rows [first, first + count) of the previous state: of the previous step in `per_step`, or of `initial`.
RowBlock previous_rows(const StepRows& s, const RowBlock& per_step, const RowBlock& initial, int64_t first,
                       int64_t count, bool from_previous_step) {
  return from_previous_step ? per_step.sub(s.prev_offset + first, count) : initial.sub(s.sequence + first, count);
}

// Calls fn(columns) for the columns of a [*, 4H] gate matrix that units `units` own: one range for all
// units, else one per gate (i, f, g, o).
template <typename Fn>
void for_each_gate_columns(const IndexRange& units, int64_t H, const Fn& fn) {
  if (units.begin == 0 && units.end == H) {
    fn(IndexRange{0, 4 * H});
    return;
  }
  for (int64_t gate = 0; gate < 4; ++gate) {
    fn(IndexRange{gate * H + units.begin, gate * H + units.end});
  }
}

// Steps per block of the inference forward's input projection: a block's gates about kBlockBytes, at
// least one step, at most all of them.
int64_t inference_block_steps(int64_t batch, int64_t gate_row_bytes, int64_t steps) {
  constexpr int64_t kBlockBytes = int64_t{4} << 20;
  const int64_t step_bytes = std::max<int64_t>(batch * gate_row_bytes, 1);
  return std::clamp(kBlockBytes / step_bytes, int64_t{1}, std::max<int64_t>(steps, 1));
}

// Appends to `products` those whose sum is grad (sum over steps of dG[t]^T h_{t-1}), in order.
void append_recurrent_weight_grad(const SequenceLayout& layout, const at::Tensor& grad_gates,
                                  const at::Tensor& output, const at::Tensor& h0, bool reverse,
                                  const at::Tensor& grad, std::vector<TransposedProduct>& products) {
  const int64_t T = layout.steps(), B = layout.batch, P = h0.size(1);  // P: the width of h
  if (T == 0) {
    grad.zero_();
    return;
  }
  if (layout.uniform()) {
    // A padded batch: the first step pairs with h0, the others with one contiguous block of output rows.
    const int64_t first_t = reverse ? T - 1 : 0;
    products.push_back({grad, grad_gates.narrow(0, first_t * B, B), h0, false});
    if (T > 1) {
      products.push_back({grad, grad_gates.narrow(0, reverse ? 0 : B, (T - 1) * B),
                          output.narrow(0, reverse ? B : 0, (T - 1) * B), true});
    }
    return;
  }
  // Packed: gather every row's h_{t-1} next to its dG row, then one GEMM.
  at::Tensor h_prev = at::empty({layout.rows, P}, output.options());
  const RowBlock output_rows = row_block(output), h0_rows = row_block(h0);
  for (int64_t t = 0; t < T; ++t) {
    const StepRows s = step_rows(layout, t, reverse, BatchChunk{0, B});
    for_each_state_source(s, [&](int64_t first, int64_t count, bool from_prev) {
      h_prev.narrow(0, s.offset + first, count)
          .copy_(as_tensor(previous_rows(s, output_rows, h0_rows, first, count, from_prev), output.options()));
    });
  }
  products.push_back({grad, grad_gates, h_prev, false});
}

}  // namespace

LayerForwardResult lstm_layer_forward(const StepKernels& steps, const SequenceLayout& layout,
                                      const at::Tensor& input, const LayerWeights& weights, const at::Tensor& h0,
                                      const at::Tensor& c0, bool reverse, bool training) {
  const int64_t N = layout.rows, T = layout.steps(), B = layout.batch;
  const int64_t H = c0.size(1), P = h0.size(1);
  const bool projected = weights.weight_hr.defined();
  const auto options = input.options();

  // 1. The input projection of the steps, both biases folded in: in training all steps in one GEMM,
  // into the gates it keeps for the backward; in inference, which keeps none, a block of steps at a time
  // into one buffer used block after block, which stays in cache (a large fresh buffer also costs a
  // page fault per 4 KiB on every call), or, where the backend says so, each chunk's rows of a step
  // right before the step, into one [B, 4H] buffer. Every way gives each gate the same sum in the same
  // order: the bias, then x_t W_ih^T, then h_{t-1} W_hh^T.
  const StepBias bias = steps.prepare_bias(weights.bias_ih, weights.bias_hh);
  StepWeight weight_ih = steps.prepare_weight(weights.weight_ih, /*transpose=*/true, WeightUse{N, 1});
  const bool project_in_chunks = !training && steps.project_input_in_chunks(B, input.size(1), 4 * H);
  const int64_t block_steps =
      training || project_in_chunks ? T : inference_block_steps(B, 4 * H * input.element_size(), T);
  const int64_t gate_rows = training ? N : (project_in_chunks ? B : std::min(N, block_steps * B));
  at::Tensor gates = steps.empty({gate_rows, 4 * H}, options);

  // 2. Per step: the recurrent GEMM accumulated into the step's own rows, then the fused pass. In
  // training the pass leaves the activated gates in place and c_t in `cells`; in inference c is updated
  // in place in one [B, H] buffer, whose rows hold c0 until their sequence starts and the last c after.
  // With a projection the pass writes the unprojected h, and one more GEMM projects it into the output.
  // Each share of the work (a batch chunk, or some units of a batch too small to chunk) runs all the
  // steps of a block (step_kernels.h).
  // Every buffer, the empty [0] placeholders too, is the backend's (steps.empty): a small call's cost is
  // mostly its allocations, and the CPU's skip ATen's dispatch.
  at::Tensor output = steps.empty({N, P}, options);
  at::Tensor cells = training ? steps.empty({N, H}, options) : steps.empty({0}, options);
  at::Tensor c_state = training ? at::Tensor() : steps.empty({B, H}, options);
  at::Tensor unprojected = !projected ? steps.empty({0}, options) : steps.empty({training ? N : B, H}, options);
  const at::ScalarType dtype = input.scalar_type();
  const RowBlock gates_rows = row_block(gates), all_h = row_block(output), all_c = row_block(cells);
  const RowBlock h0_rows = row_block(h0), c0_rows = row_block(c0), c_rows = row_block(c_state);
  if (!training) {
    steps.copy_rows(c_rows, c0_rows, options);
  }
  const RowBlock unprojected_rows = row_block(unprojected), input_rows = row_block(input);
  const auto project_input = [&](const RowBlock& gates_block, const RowBlock& input_block, IndexRange columns) {
    steps.project(gates_block, input_block, weight_ih, bias, columns);
  };
  StepWeight weight_hh;  // prepared after the (in training, only) input projection, which frees W_ih's copy
  const StepWeight weight_hr =
      projected ? steps.prepare_weight(weights.weight_hr, /*transpose=*/true, WeightUse{B, T}) : StepWeight{};
  for (int64_t block_first = 0; block_first < T; block_first += block_steps) {
    // The block's steps [block_first, block_last) in the direction's order are steps [t_begin, t_end) in
    // time, and rows [row_begin, row_end) of the sequence, rows [0, row_end - row_begin) of `gates`.
    const int64_t block_last = std::min(T, block_first + block_steps);
    const int64_t t_begin = reverse ? T - block_last : block_first, t_end = reverse ? T - block_first : block_last;
    const int64_t row_begin = layout.offsets[t_begin];
    const int64_t row_end = layout.offsets[t_end - 1] + layout.batch_sizes[t_end - 1];
    const int64_t block_rows = row_end - row_begin;
    if (!project_in_chunks) {
      project_input(gates_rows.sub(0, block_rows), input_rows.sub(row_begin, block_rows), IndexRange{0, 4 * H});
      if (block_last == T) {
        weight_ih = StepWeight{};  // a backend's prepared copy is freed as soon as it is done with
      }
    }
    if (block_first == 0) {
      weight_hh = steps.prepare_weight(weights.weight_hh, /*transpose=*/true, WeightUse{B, T});
    }
    steps.for_each_work_share(B, H, /*may_split_units=*/!projected, [&](const WorkShare& share) {
      for (int64_t step = block_first; step < block_last; ++step) {
        const int64_t t = reverse ? T - 1 - step : step;
        const StepRows s = step_rows(layout, t, reverse, share.chunk);
        if (s.rows == 0) {
          continue;
        }
        const RowBlock gates_t = gates_rows.sub(project_in_chunks ? s.sequence : s.offset - row_begin, s.rows);
        for_each_gate_columns(share.units, H, [&](IndexRange columns) {
          if (project_in_chunks) {
            project_input(gates_t, input_rows.sub(s.offset, s.rows), columns);
          }
          for_each_state_source(s, [&](int64_t first, int64_t count, bool from_prev) {
            steps.matmul(gates_t.sub(first, count), previous_rows(s, all_h, h0_rows, first, count, from_prev),
                         weight_hh, /*accumulate=*/true, columns);
          });
        });
        const RowBlock h_t = all_h.sub(s.offset, s.rows);
        const RowBlock cell_h_t =
            !projected ? h_t : unprojected_rows.sub(training ? s.offset : s.sequence, s.rows);
        if (training) {
          for_each_state_source(s, [&](int64_t first, int64_t count, bool from_prev) {
            steps.forward_pointwise(ForwardStepArgs{dtype, gates_t.sub(first, count),
                                                    previous_rows(s, all_c, c0_rows, first, count, from_prev),
                                                    cell_h_t.sub(first, count), all_c.sub(s.offset + first, count),
                                                    true, share.units});
          });
        } else {
          const RowBlock c = c_rows.sub(s.sequence, s.rows);
          steps.forward_pointwise(ForwardStepArgs{dtype, gates_t, c, cell_h_t, c, false, share.units});
        }
        if (projected) {
          steps.matmul(h_t, cell_h_t, weight_hr, /*accumulate=*/false);
        }
        share.sync();  // the next step's product reads every unit of h_t
      }
    });
  }

  // 3. Each sequence's last state: in reverse all of them end at step 0; forward, the rows that leave
  // the batch after step t end there.
  // Every sequence has a step, so with T > 0 every row is written here; with T = 0 they are h0 and c0.
  LayerForwardResult result;
  result.h_n = steps.empty({B, P}, options);
  result.c_n = training ? steps.empty({B, H}, options) : c_state;
  const RowBlock h_n_rows = row_block(result.h_n), c_n_rows = row_block(result.c_n);
  if (T == 0) {
    steps.copy_rows(h_n_rows, h0_rows, options);
    if (training) {
      steps.copy_rows(c_n_rows, c0_rows, options);
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    const int64_t still_live = reverse ? 0 : (t + 1 < T ? layout.batch_sizes[t + 1] : 0);
    const int64_t ending = reverse ? (t == 0 ? layout.batch_sizes[0] : 0) : layout.batch_sizes[t] - still_live;
    if (ending > 0) {
      const int64_t row = layout.offsets[t] + still_live;
      steps.copy_rows(h_n_rows.sub(still_live, ending), all_h.sub(row, ending), options);
      if (training) {
        steps.copy_rows(c_n_rows.sub(still_live, ending), all_c.sub(row, ending), options);
      }
    }
  }
  result.output = output;
  result.gates = training ? gates : steps.empty({0}, options);
  result.cells = cells;
  // Without a projection `unprojected` is already an empty placeholder.
  result.unprojected = !projected || training ? unprojected : steps.empty({0}, options);
  return result;
}

LayerBackwardResult lstm_layer_backward(const StepKernels& steps, const SequenceLayout& layout,
                                        const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                                        const at::Tensor& grad_c_n, const at::Tensor& input,
                                        const LayerWeights& weights, const at::Tensor& h0, const at::Tensor& c0,
                                        const LayerSaved& saved, bool reverse, bool has_bias,
                                        bool need_grad_input) {
  const int64_t N = layout.rows, T = layout.steps(), B = layout.batch;
  const int64_t H = c0.size(1), P = h0.size(1);
  const bool projected = weights.weight_hr.defined();
  const auto options = input.options();

  // 1. Walk the steps last to first (in the direction's own order). grad_h [B, P] and grad_c [B, H]: a
  // row holds the sequence's grad_h_n/grad_c_n until its last step is reached, then the gradient
  // flowing back through the recurrence, and, once the sequence's first step is done, dh0/dc0.
  // With a projection, dL/dh_t (output plus recurrence) is kept per row for dW_hr and carried back
  // through W_hr to the unprojected h, which is all the pointwise pass needs.
  at::Tensor grad_gates = steps.empty({N, 4 * H}, options);
  at::Tensor grad_h = grad_h_n.clone(at::MemoryFormat::Contiguous);
  at::Tensor grad_c = grad_c_n.clone(at::MemoryFormat::Contiguous);
  at::Tensor grad_h_total = projected ? steps.empty({N, P}, options) : at::Tensor();
  at::Tensor grad_unprojected = projected ? at::empty({B, H}, options) : at::Tensor();
  at::Tensor no_grad_h = projected ? at::zeros({B, H}, options) : at::Tensor();
  const at::ScalarType dtype = input.scalar_type();
  const RowBlock all_grad_gates = row_block(grad_gates), all_grad_output = row_block(grad_output);
  const RowBlock grad_h_rows = row_block(grad_h), grad_c_rows = row_block(grad_c);
  const RowBlock all_grad_h_total = row_block(grad_h_total), grad_unprojected_rows = row_block(grad_unprojected);
  const RowBlock no_grad_h_rows = row_block(no_grad_h), c0_rows = row_block(c0);
  const RowBlock all_gates = row_block(saved.gates), all_c = row_block(saved.cells);
  StepWeight weight_hh = steps.prepare_weight(weights.weight_hh, /*transpose=*/false, WeightUse{B, T});
  const StepWeight weight_hr =
      projected ? steps.prepare_weight(weights.weight_hr, /*transpose=*/false, WeightUse{B, T}) : StepWeight{};
  steps.for_each_work_share(B, H, /*may_split_units=*/!projected, [&](const WorkShare& share) {
    // dL/dh_{t-1}'s columns this share computes: its units (P = H where units are split).
    const IndexRange grad_h_columns = projected ? IndexRange{0, P} : share.units;
    for (int64_t step = 0; step < T; ++step) {
      const int64_t t = reverse ? step : T - 1 - step;
      const StepRows s = step_rows(layout, t, reverse, share.chunk);
      if (s.rows == 0) {
        continue;
      }
      const RowBlock grad_h_live = grad_h_rows.sub(s.sequence, s.rows);
      // What the pointwise pass sees as dL/dh_t: two parts it adds itself, or, projected, one part.
      RowBlock grad_h_out = all_grad_output.sub(s.offset, s.rows);
      RowBlock grad_h_next = grad_h_live;
      if (projected) {
        const RowBlock grad_h_t = all_grad_h_total.sub(s.offset, s.rows);
        at::Tensor grad_h_t_tensor = as_tensor(grad_h_t, options);
        at::add_out(grad_h_t_tensor, as_tensor(grad_h_out, options), as_tensor(grad_h_live, options));
        grad_h_out = grad_unprojected_rows.sub(s.sequence, s.rows);
        steps.matmul(grad_h_out, grad_h_t, weight_hr, /*accumulate=*/false);
        grad_h_next = no_grad_h_rows.sub(s.sequence, s.rows);
      }
      for_each_state_source(s, [&](int64_t first, int64_t count, bool from_prev) {
        const int64_t row = s.offset + first;
        steps.backward_pointwise(BackwardStepArgs{
            dtype, all_gates.sub(row, count), all_c.sub(row, count),
            previous_rows(s, all_c, c0_rows, first, count, from_prev), grad_h_out.sub(first, count),
            grad_h_next.sub(first, count), grad_c_rows.sub(s.sequence + first, count),
            all_grad_gates.sub(row, count), share.units});
      });
      share.sync();  // the product reads every unit's gate gradients of the step
      steps.matmul(grad_h_live, all_grad_gates.sub(s.offset, s.rows), weight_hh, /*accumulate=*/false,
                   grad_h_columns);
    }
  });

  weight_hh = StepWeight{};  // freed before grad_input prepares W_ih: one prepared copy at a time

  // 2. Everything that does not feed the recurrence, as large GEMMs over all steps at once.
  LayerBackwardResult result;
  if (need_grad_input) {
    result.grad_input = steps.empty({N, input.size(1)}, options);
    const StepWeight weight_ih = steps.prepare_weight(weights.weight_ih, /*transpose=*/false, WeightUse{N, 1});
    steps.matmul(row_block(result.grad_input), all_grad_gates, weight_ih, /*accumulate=*/false);
  } else {
    result.grad_input = at::empty({0}, options);
  }
  result.grad_weight_ih = at::empty({4 * H, input.size(1)}, options);
  result.grad_weight_hh = at::empty({4 * H, P}, options);
  result.grad_bias = has_bias ? at::empty({4 * H}, options) : at::empty({0}, options);
  std::vector<TransposedProduct> products{{result.grad_weight_ih, grad_gates, input.contiguous(), false}};
  append_recurrent_weight_grad(layout, grad_gates, saved.output, h0, reverse, result.grad_weight_hh, products);
  steps.weight_gradients(products, has_bias ? result.grad_bias : at::Tensor(), grad_gates);
  result.grad_weight_hr = projected ? at::mm(grad_h_total.t(), saved.unprojected) : at::empty({0}, options);
  result.grad_h0 = grad_h;
  result.grad_c0 = grad_c;
  return result;
}

}  // namespace lstm_ext
