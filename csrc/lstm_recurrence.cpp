// lstm_recurrence.cpp -- see lstm_recurrence.h. The algorithm is cuDNN's and Haste's layer-level
// shape (Appleyard et al. 2016): hoist the input GEMM over all steps, then per step one GEMM into the
// step's slice and one fused pointwise pass; the backward mirrors it and leaves the weight gradients to
// large GEMMs after the loop. No atomics anywhere, so gradients are bitwise repeatable.
#include "lstm_recurrence.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "lstm_math.h"

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

// The rows of a [N, *] per-row tensor, or an empty block for an undefined one.
RowBlock rows_of(const at::Tensor& t) {
  return t.defined() ? row_block(t) : RowBlock{};
}

// Rows [first, first + count) of a block, empty for an empty block.
RowBlock sub_or_empty(const RowBlock& block, int64_t first, int64_t count) {
  return block.data == nullptr ? RowBlock{} : block.sub(first, count);
}

// Whether the cell runs the backends' variant passes: any variant, or (backward) a gradient of the cell states.
bool variant_cell(const CellParams& cell, const at::Tensor& grad_cells = at::Tensor()) {
  return !cell.plain() || grad_cells.defined();
}

// Appends to `products` those whose sum is grad (sum over steps of dG[t]^T h_{t-1}, h_{t-1} times the
// recurrent mask where there is one), in order.
void append_recurrent_weight_grad(const SequenceLayout& layout, const at::Tensor& grad_gates,
                                  const at::Tensor& output, const at::Tensor& h0, const at::Tensor& recurrent_mask,
                                  bool reverse, const at::Tensor& grad, std::vector<TransposedProduct>& products) {
  const int64_t T = layout.steps(), B = layout.batch, P = h0.size(1);  // P: the width of h
  if (T == 0) {
    grad.zero_();
    return;
  }
  if (layout.uniform() && !recurrent_mask.defined()) {
    // A padded batch: the first step pairs with h0, the others with one contiguous block of output rows.
    const int64_t first_t = reverse ? T - 1 : 0;
    products.push_back({grad, grad_gates.narrow(0, first_t * B, B), h0, false});
    if (T > 1) {
      products.push_back({grad, grad_gates.narrow(0, reverse ? 0 : B, (T - 1) * B),
                          output.narrow(0, reverse ? B : 0, (T - 1) * B), true});
    }
    return;
  }
  // Packed or masked: gather every row's h_{t-1} next to its dG row, then one GEMM.
  at::Tensor h_prev = at::empty({layout.rows, P}, output.options());
  const RowBlock output_rows = row_block(output), h0_rows = row_block(h0);
  for (int64_t t = 0; t < T; ++t) {
    const StepRows s = step_rows(layout, t, reverse, BatchChunk{0, B});
    for_each_state_source(s, [&](int64_t first, int64_t count, bool from_prev) {
      at::Tensor rows = h_prev.narrow(0, s.offset + first, count);
      rows.copy_(as_tensor(previous_rows(s, output_rows, h0_rows, first, count, from_prev), output.options()));
      if (recurrent_mask.defined()) {
        rows.mul_(recurrent_mask.narrow(0, s.sequence + first, count));
      }
    });
  }
  products.push_back({grad, grad_gates, h_prev, false});
}

// The input projection of rows with layer norm: gates = LN(input W_ih^T) * w_ih + b_ih + b_hh, keeping the
// normalized product in `normalized` and each row's rstd in column 0 of `stats`.
void project_layer_norm(const StepKernels& steps, const RowBlock& gates, const RowBlock& input, const StepWeight& weight_ih,
                        const LayerForwardProblem& p, const RowBlock& normalized, const RowBlock& stats) {
  if (gates.rows == 0) {
    return;
  }
  steps.matmul(gates, input, weight_ih, /*accumulate=*/false);
  steps.normalize_input(gates, normalized, stats, p.cell.layer_norm_weight_ih, p.weights.bias_ih, p.weights.bias_hh,
                        p.input.options());
}

// What a forward step reads and writes besides its gates: the sequence's buffers as rows, set up once.
struct ForwardBuffers {
  RowBlock all_h, h0, c0, all_c, c_state, unprojected;
  RowBlock recurrent, stats;  // layer norm: per row of the sequence (training) or of the batch (inference)
  RowBlock masked_h;          // recurrent dropout: [B, P], h_{t-1} * mask
  RowBlock recurrent_mask, zoneout_cell_mask, zoneout_hidden_mask;
};

// One step of one share: the recurrent product into the step's gates (with layer norm, into its own
// buffer), the fused pointwise pass, the projection.
void forward_step(const StepKernels& steps, const LayerForwardProblem& p, const ForwardBuffers& b,
                  const StepWeight& weight_hh, const StepWeight& weight_hr, const WorkShare& share, const StepRows& s,
                  const RowBlock& gates_t, const c10::function_ref<void(IndexRange)>& project_step_input) {
  const int64_t H = p.c0.size(1);
  const bool training = p.training, projected = p.weights.weight_hr.defined();
  const bool layer_norm = p.cell.layer_norm(), variant = variant_cell(p.cell);
  const auto options = p.input.options();
  // Rows of per-row buffers: of the sequence in training, of the batch's sequences in inference.
  const int64_t row = training ? s.offset : s.sequence;
  const RowBlock recurrent_t = layer_norm ? b.recurrent.sub(row, s.rows) : RowBlock{};
  for_each_gate_columns(share.units, H, [&](IndexRange columns) {
    project_step_input(columns);
    for_each_state_source(s, [&](int64_t first, int64_t count, bool from_prev) {
      RowBlock h_prev = previous_rows(s, b.all_h, b.h0, first, count, from_prev);
      if (b.recurrent_mask.data != nullptr) {
        const RowBlock masked = b.masked_h.sub(s.sequence + first, count);
        steps.multiply_rows(masked, h_prev, b.recurrent_mask.sub(s.sequence + first, count), options);
        h_prev = masked;
      }
      if (layer_norm) {
        steps.matmul(recurrent_t.sub(first, count), h_prev, weight_hh, /*accumulate=*/false, columns);
      } else {
        steps.matmul(gates_t.sub(first, count), h_prev, weight_hh, /*accumulate=*/true, columns);
      }
    });
  });
  const RowBlock h_t = b.all_h.sub(s.offset, s.rows);
  const RowBlock cell_h_t = !projected ? h_t : b.unprojected.sub(row, s.rows);
  const auto args_for = [&](int64_t first, int64_t count, bool from_prev) {
    const RowBlock c_prev = training ? previous_rows(s, b.all_c, b.c0, first, count, from_prev)
                                     : b.c_state.sub(s.sequence + first, count);
    const RowBlock c = training ? b.all_c.sub(s.offset + first, count) : c_prev;
    ForwardStepArgs args{p.input.scalar_type(), gates_t.sub(first, count), c_prev, cell_h_t.sub(first, count), c,
                         training, share.units};
    if (variant) {
      args.cell = &p.cell;
      args.recurrent = sub_or_empty(recurrent_t, first, count);
      args.stats = sub_or_empty(b.stats, row + first, count);
      args.h_prev = p.cell.zoneout_hidden_active() ? previous_rows(s, b.all_h, b.h0, first, count, from_prev)
                                                   : RowBlock{};
      args.zoneout_cell_mask = sub_or_empty(b.zoneout_cell_mask, s.offset + first, count);
      args.zoneout_hidden_mask = sub_or_empty(b.zoneout_hidden_mask, s.offset + first, count);
    }
    return args;
  };
  if (!training && !variant) {  // c is updated in place: one pass over all the step's rows
    steps.forward_pointwise(args_for(0, s.rows, true));
  } else {
    for_each_state_source(s, [&](int64_t first, int64_t count, bool from_prev) {
      steps.forward_pointwise(args_for(first, count, from_prev));
    });
  }
  if (projected) {
    steps.matmul(h_t, cell_h_t, weight_hr, /*accumulate=*/false);
  }
  share.sync();  // the next step's product reads every unit of h_t
}

// Each sequence's last state: in reverse all of them end at step 0; forward, the rows that leave the batch
// after step t end there. With T = 0 they are h0 and c0. `all_c` empty: c is already in c_n (inference).
void copy_final_states(const StepKernels& steps, const LayerForwardProblem& p, const RowBlock& all_h,
                       const RowBlock& all_c, LayerForwardResult& result) {
  const SequenceLayout& layout = *p.layout;
  const int64_t T = layout.steps();
  const auto options = p.input.options();
  const RowBlock h_n_rows = row_block(result.h_n), c_n_rows = row_block(result.c_n);
  const bool copy_c = all_c.data != nullptr || T == 0;
  if (T == 0) {
    steps.copy_rows(h_n_rows, row_block(p.h0), options);
    if (p.training) {
      steps.copy_rows(c_n_rows, row_block(p.c0), options);
    }
    return;
  }
  for (int64_t t = 0; t < T; ++t) {
    const int64_t still_live = p.reverse ? 0 : (t + 1 < T ? layout.batch_sizes[t + 1] : 0);
    const int64_t ending = p.reverse ? (t == 0 ? layout.batch_sizes[0] : 0) : layout.batch_sizes[t] - still_live;
    if (ending > 0) {
      const int64_t row = layout.offsets[t] + still_live;
      steps.copy_rows(h_n_rows.sub(still_live, ending), all_h.sub(row, ending), options);
      if (copy_c) {
        steps.copy_rows(c_n_rows.sub(still_live, ending), all_c.sub(row, ending), options);
      }
    }
  }
}

ForwardBuffers forward_buffers(const LayerForwardProblem& p, const at::Tensor& output, const at::Tensor& cells,
                               const at::Tensor& c_state, const at::Tensor& unprojected, const at::Tensor& recurrent,
                               const at::Tensor& stats, const at::Tensor& masked_h) {
  ForwardBuffers b;
  b.all_h = row_block(output);
  b.h0 = row_block(p.h0);
  b.c0 = row_block(p.c0);
  b.all_c = rows_of(cells);
  b.c_state = rows_of(c_state);
  b.unprojected = rows_of(unprojected);
  b.recurrent = rows_of(recurrent);
  b.stats = rows_of(stats);
  b.masked_h = rows_of(masked_h);
  b.recurrent_mask = rows_of(p.cell.recurrent_mask);
  b.zoneout_cell_mask = rows_of(p.cell.zoneout_cell_mask);
  b.zoneout_hidden_mask = rows_of(p.cell.zoneout_hidden_mask);
  return b;
}

// The training forward: all steps' input projection in one GEMM into the gates it keeps, then the steps,
// each share of the work (a batch chunk, or some units of a batch too small to chunk) all of them.
// Every way of projecting gives each gate the same sum in the same order: the bias, then x_t W_ih^T, then
// h_{t-1} W_hh^T.
LayerForwardResult forward_training(const StepKernels& steps, const LayerForwardProblem& p) {
  const SequenceLayout& layout = *p.layout;
  const int64_t N = layout.rows, T = layout.steps(), B = layout.batch;
  const int64_t H = p.c0.size(1), P = p.h0.size(1);
  const bool projected = p.weights.weight_hr.defined(), layer_norm = p.cell.layer_norm();
  const auto options = p.input.options();
  // Every buffer, the empty [0] placeholders too, is the backend's (steps.empty): a small call's cost is
  // mostly its allocations, and the CPU's skip ATen's dispatch.
  LayerForwardResult result;
  result.gates = steps.empty({N, 4 * H}, options);
  result.output = steps.empty({N, P}, options);
  result.cells = steps.empty({N, H}, options);
  result.unprojected = projected ? steps.empty({N, H}, options) : steps.empty({0}, options);
  result.normalized = layer_norm ? steps.empty({2, N, 4 * H}, options) : steps.empty({0}, options);
  result.row_stats = layer_norm ? steps.empty({N, 4}, options) : steps.empty({0}, options);
  const at::Tensor masked_h = p.cell.recurrent_mask.defined() ? steps.empty({B, P}, options) : at::Tensor();
  const ForwardBuffers b =
      forward_buffers(p, result.output, result.cells, at::Tensor(), projected ? result.unprojected : at::Tensor(),
                      layer_norm ? result.normalized.select(0, 1) : at::Tensor(),
                      layer_norm ? result.row_stats : at::Tensor(), masked_h);
  const RowBlock gates_rows = row_block(result.gates);
  {
    // The prepared W_ih is freed before W_hh is prepared: one prepared copy at a time.
    const StepWeight weight_ih = steps.prepare_weight(p.weights.weight_ih, /*transpose=*/true, WeightUse{N, 1});
    if (layer_norm) {
      project_layer_norm(steps, gates_rows, row_block(p.input), weight_ih, p, row_block(result.normalized.select(0, 0)),
                         b.stats);
    } else {
      steps.project(gates_rows, row_block(p.input), weight_ih, steps.prepare_bias(p.weights.bias_ih, p.weights.bias_hh),
                    IndexRange{0, 4 * H});
    }
  }
  if (!steps.forward_loop(ForwardLoopArgs{&p, 0, T, gates_rows, 0, b.all_h, b.all_c, RowBlock{}})) {
    const StepWeight weight_hh = steps.prepare_weight(p.weights.weight_hh, /*transpose=*/true, WeightUse{B, T});
    const StepWeight weight_hr =
        projected ? steps.prepare_weight(p.weights.weight_hr, /*transpose=*/true, WeightUse{B, T}) : StepWeight{};
    const bool may_split_units = !projected && !variant_cell(p.cell);
    steps.for_each_work_share(B, H, may_split_units, [&](const WorkShare& share) {
      for (int64_t step = 0; step < T; ++step) {
        const int64_t t = p.reverse ? T - 1 - step : step;
        const StepRows s = step_rows(layout, t, p.reverse, share.chunk);
        if (s.rows > 0) {
          forward_step(steps, p, b, weight_hh, weight_hr, share, s, gates_rows.sub(s.offset, s.rows),
                       [](IndexRange) {});
        }
      }
    });
  }
  result.h_n = steps.empty({B, P}, options);
  result.c_n = steps.empty({B, H}, options);
  copy_final_states(steps, p, b.all_h, b.all_c, result);
  return result;
}

// The inference forward keeps nothing: c is updated in place in one [B, H] buffer, whose rows hold c0 until
// their sequence starts and the last c after, and the input is projected as the backend plans it
// (StepKernels::plan_inference_projection): a block of steps at a time into one buffer used block after
// block, or each chunk's rows of a step right before the step, into one [B, 4H] buffer.
LayerForwardResult forward_inference(const StepKernels& steps, const LayerForwardProblem& p) {
  const SequenceLayout& layout = *p.layout;
  const int64_t N = layout.rows, T = layout.steps(), B = layout.batch;
  const int64_t H = p.c0.size(1), P = p.h0.size(1);
  const bool projected = p.weights.weight_hr.defined(), layer_norm = p.cell.layer_norm();
  const auto options = p.input.options();
  InferenceProjection plan =
      steps.plan_inference_projection(B, T, p.input.size(1), 4 * H, p.input.element_size());
  plan.in_chunks = plan.in_chunks && !variant_cell(p.cell);  // the variants project a block at a time
  const int64_t block_steps = plan.in_chunks ? T : std::clamp<int64_t>(plan.block_steps, 1, std::max<int64_t>(T, 1));
  const int64_t gate_rows = plan.in_chunks ? B : std::min(N, block_steps * B);
  const at::Tensor gates = steps.empty({gate_rows, 4 * H}, options);
  LayerForwardResult result;
  result.output = steps.empty({N, P}, options);
  result.c_n = steps.empty({B, H}, options);
  const at::Tensor unprojected = projected ? steps.empty({B, H}, options) : at::Tensor();
  const at::Tensor recurrent = layer_norm ? steps.empty({B, 4 * H}, options) : at::Tensor();
  const at::Tensor stats = layer_norm ? steps.empty({std::max(B, gate_rows), 4}, options) : at::Tensor();
  const at::Tensor normalized_input = layer_norm ? steps.empty({gate_rows, 4 * H}, options) : at::Tensor();
  const at::Tensor masked_h = p.cell.recurrent_mask.defined() ? steps.empty({B, P}, options) : at::Tensor();
  const ForwardBuffers b =
      forward_buffers(p, result.output, at::Tensor(), result.c_n, unprojected, recurrent, stats, masked_h);
  steps.copy_rows(b.c_state, b.c0, options);
  const RowBlock gates_rows = row_block(gates), input_rows = row_block(p.input);
  const StepBias bias = steps.prepare_bias(p.weights.bias_ih, p.weights.bias_hh);
  StepWeight weight_ih = steps.prepare_weight(p.weights.weight_ih, /*transpose=*/true, WeightUse{N, 1});
  StepWeight weight_hh;  // prepared after the first block's projection
  const StepWeight weight_hr =
      projected ? steps.prepare_weight(p.weights.weight_hr, /*transpose=*/true, WeightUse{B, T}) : StepWeight{};
  for (int64_t block_first = 0; block_first < T; block_first += block_steps) {
    // The block's steps [block_first, block_last) in the direction's order are steps [t_begin, t_end) in
    // time, and rows [row_begin, row_end) of the sequence, rows [0, row_end - row_begin) of `gates`.
    const int64_t block_last = std::min(T, block_first + block_steps);
    const int64_t t_begin = p.reverse ? T - block_last : block_first, t_end = p.reverse ? T - block_first : block_last;
    const int64_t row_begin = layout.offsets[t_begin];
    const int64_t block_rows = layout.offsets[t_end - 1] + layout.batch_sizes[t_end - 1] - row_begin;
    if (layer_norm) {
      // Each row's input statistics only feed its own step: the block's rows of `stats` are scratch
      // here, and the steps' recurrent statistics go to the batch's rows after them.
      project_layer_norm(steps, gates_rows.sub(0, block_rows), input_rows.sub(row_begin, block_rows), weight_ih, p,
                         row_block(normalized_input).sub(0, block_rows), row_block(stats).sub(0, block_rows));
    } else if (!plan.in_chunks) {
      steps.project(gates_rows.sub(0, block_rows), input_rows.sub(row_begin, block_rows), weight_ih, bias,
                    IndexRange{0, 4 * H});
    }
    if (block_last == T && !plan.in_chunks) {
      weight_ih = StepWeight{};  // a backend's prepared copy is freed as soon as it is done with
    }
    if (block_first == 0) {
      weight_hh = steps.prepare_weight(p.weights.weight_hh, /*transpose=*/true, WeightUse{B, T});
    }
    const ForwardLoopArgs loop{&p, block_first, block_last, gates_rows.sub(0, block_rows), row_begin, b.all_h,
                               RowBlock{}, b.c_state};
    if (plan.in_chunks || !steps.forward_loop(loop)) {  // chunks: each step's input is projected in its chunk
      const bool may_split_units = !projected && !variant_cell(p.cell);
      steps.for_each_work_share(B, H, may_split_units, [&](const WorkShare& share) {
        for (int64_t step = block_first; step < block_last; ++step) {
          const int64_t t = p.reverse ? T - 1 - step : step;
          const StepRows s = step_rows(layout, t, p.reverse, share.chunk);
          if (s.rows == 0) {
            continue;
          }
          const RowBlock gates_t = gates_rows.sub(plan.in_chunks ? s.sequence : s.offset - row_begin, s.rows);
          forward_step(steps, p, b, weight_hh, weight_hr, share, s, gates_t, [&](IndexRange columns) {
            if (plan.in_chunks) {
              steps.project(gates_t, input_rows.sub(s.offset, s.rows), weight_ih, bias, columns);
            }
          });
        }
      });
    }
  }
  result.h_n = steps.empty({B, P}, options);
  copy_final_states(steps, p, b.all_h, RowBlock{}, result);
  result.gates = steps.empty({0}, options);
  result.cells = steps.empty({0}, options);
  result.unprojected = steps.empty({0}, options);
  result.normalized = steps.empty({0}, options);
  result.row_stats = steps.empty({0}, options);
  return result;
}

// The columns of each cell parameter's per-row gradient terms (cell_rows::BackwardRow::grad_params).
struct ParamTerms {
  int64_t peephole = -1, layer_norm_c = -1, width = 0;
};

ParamTerms param_terms(const CellParams& cell, int64_t H) {
  ParamTerms terms;
  if (cell.weight_peephole.defined()) {
    terms.peephole = terms.width;
    terms.width += 3 * H;
  }
  if (cell.layer_norm()) {
    terms.layer_norm_c = terms.width;
    terms.width += 2 * H;
  }
  return terms;
}

LayerBackwardResult backward_generic(const StepKernels& steps, const LayerBackwardProblem& bp) {
  const LayerForwardProblem& p = bp.forward;
  const LayerForwardResult& saved = bp.saved;
  const SequenceLayout& layout = *p.layout;
  const int64_t N = layout.rows, T = layout.steps(), B = layout.batch;
  const int64_t H = p.c0.size(1), P = p.h0.size(1);
  const bool projected = p.weights.weight_hr.defined(), layer_norm = p.cell.layer_norm();
  const bool variant = variant_cell(p.cell, bp.grad_cells);
  const auto options = p.input.options();
  const at::Tensor& mask = p.cell.recurrent_mask;

  // 1. Walk the steps last to first (in the direction's own order). grad_h [B, P] and grad_c [B, H]: a
  // row holds the sequence's grad_h_n/grad_c_n until its last step is reached, then the gradient
  // flowing back through the recurrence, and, once the sequence's first step is done, dh0/dc0.
  // With a recurrent mask or zoneout of h, part of dL/dh does not go through the recurrent product: it is
  // carried in `carry` (grad_h_n at first), and grad_h holds the product's part alone.
  // With a projection, dL/dh_t (output plus recurrence) is kept per row for dW_hr and carried back
  // through W_hr to the unprojected h, which is all the pointwise pass needs.
  const bool carrying = mask.defined() || p.cell.zoneout_hidden_active();
  at::Tensor grad_gates = steps.empty({N, 4 * H}, options);
  at::Tensor grad_recurrent = layer_norm ? steps.empty({N, 4 * H}, options) : grad_gates;
  const ParamTerms terms = param_terms(p.cell, H);
  at::Tensor grad_params = terms.width > 0 ? steps.empty({N, terms.width}, options) : at::Tensor();
  at::Tensor carry = carrying ? bp.grad_h_n.clone(at::MemoryFormat::Contiguous) : at::Tensor();
  at::Tensor grad_h = carrying ? at::zeros({B, P}, options) : bp.grad_h_n.clone(at::MemoryFormat::Contiguous);
  at::Tensor grad_c = bp.grad_c_n.clone(at::MemoryFormat::Contiguous);
  at::Tensor grad_h_total = projected ? steps.empty({N, P}, options) : at::Tensor();
  at::Tensor grad_unprojected = projected ? at::empty({B, H}, options) : at::Tensor();
  at::Tensor no_grad_h = projected ? at::zeros({B, H}, options) : at::Tensor();
  const at::ScalarType dtype = p.input.scalar_type();
  const RowBlock all_grad_gates = row_block(grad_gates), all_grad_recurrent = row_block(grad_recurrent);
  const RowBlock all_grad_output = row_block(bp.grad_output);
  const RowBlock grad_h_rows = row_block(grad_h), grad_c_rows = row_block(grad_c), carry_rows = rows_of(carry);
  const RowBlock all_grad_h_total = rows_of(grad_h_total), grad_unprojected_rows = rows_of(grad_unprojected);
  const RowBlock no_grad_h_rows = rows_of(no_grad_h), c0_rows = row_block(p.c0);
  const RowBlock all_gates = row_block(saved.gates), all_c = row_block(saved.cells);
  const RowBlock grad_cells_rows = rows_of(bp.grad_cells), grad_params_rows = rows_of(grad_params);
  const RowBlock normalized_recurrent = layer_norm ? row_block(saved.normalized.select(0, 1)) : RowBlock{};
  const RowBlock stats_rows = layer_norm ? row_block(saved.row_stats) : RowBlock{};
  const RowBlock mask_rows = rows_of(mask), zoneout_cell_rows = rows_of(p.cell.zoneout_cell_mask);
  const RowBlock zoneout_hidden_rows = rows_of(p.cell.zoneout_hidden_mask);
  StepWeight weight_hh;
  if (!steps.backward_loop(BackwardLoopArgs{&bp, all_grad_gates, grad_h_rows, grad_c_rows})) {
    weight_hh = steps.prepare_weight(p.weights.weight_hh, /*transpose=*/false, WeightUse{B, T});
    const StepWeight weight_hr =
        projected ? steps.prepare_weight(p.weights.weight_hr, /*transpose=*/false, WeightUse{B, T}) : StepWeight{};
    steps.for_each_work_share(B, H, /*may_split_units=*/!projected && !variant, [&](const WorkShare& share) {
      // dL/dh_{t-1}'s columns this share computes: its units (P = H where units are split).
      const IndexRange grad_h_columns = projected ? IndexRange{0, P} : share.units;
      for (int64_t step = 0; step < T; ++step) {
        const int64_t t = p.reverse ? step : T - 1 - step;
        const StepRows s = step_rows(layout, t, p.reverse, share.chunk);
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
          const at::Tensor through_recurrence = as_tensor(grad_h_live, options);
          if (carrying) {
            at::Tensor carried = as_tensor(carry_rows.sub(s.sequence, s.rows), options);
            at::add_out(grad_h_t_tensor, as_tensor(grad_h_out, options),
                        mask.defined() ? through_recurrence * mask.narrow(0, s.sequence, s.rows) : through_recurrence);
            grad_h_t_tensor.add_(carried);
            carried.zero_();  // a projected h has no zoneout: the carry is grad_h_n alone
          } else {
            at::add_out(grad_h_t_tensor, as_tensor(grad_h_out, options), through_recurrence);
          }
          grad_h_out = grad_unprojected_rows.sub(s.sequence, s.rows);
          steps.matmul(grad_h_out, grad_h_t, weight_hr, /*accumulate=*/false);
          grad_h_next = no_grad_h_rows.sub(s.sequence, s.rows);
        }
        for_each_state_source(s, [&](int64_t first, int64_t count, bool from_prev) {
          const int64_t row = s.offset + first;
          BackwardStepArgs args{dtype, all_gates.sub(row, count), all_c.sub(row, count),
                                previous_rows(s, all_c, c0_rows, first, count, from_prev), grad_h_out.sub(first, count),
                                grad_h_next.sub(first, count), grad_c_rows.sub(s.sequence + first, count),
                                all_grad_gates.sub(row, count), share.units};
          if (variant) {
            args.cell = &p.cell;
            args.recurrent_mask = projected ? RowBlock{} : sub_or_empty(mask_rows, s.sequence + first, count);
            args.carry = projected ? RowBlock{} : sub_or_empty(carry_rows, s.sequence + first, count);
            args.grad_cells = sub_or_empty(grad_cells_rows, row, count);
            args.grad_recurrent = layer_norm ? all_grad_recurrent.sub(row, count) : RowBlock{};
            args.grad_params = sub_or_empty(grad_params_rows, row, count);
            args.normalized_recurrent = sub_or_empty(normalized_recurrent, row, count);
            args.stats = sub_or_empty(stats_rows, row, count);
            args.zoneout_cell_mask = sub_or_empty(zoneout_cell_rows, row, count);
            args.zoneout_hidden_mask = sub_or_empty(zoneout_hidden_rows, row, count);
            args.peephole_terms = terms.peephole;
            args.layer_norm_c_terms = terms.layer_norm_c;
          }
          steps.backward_pointwise(args);
        });
        share.sync();  // the product reads every unit's gate gradients of the step
        steps.matmul(grad_h_live, all_grad_recurrent.sub(s.offset, s.rows), weight_hh, /*accumulate=*/false,
                     grad_h_columns);
      }
    });
  }

  weight_hh = StepWeight{};  // freed before grad_input prepares W_ih: one prepared copy at a time

  // 2. Everything that does not feed the recurrence, as large GEMMs over all steps at once. With layer
  // norm the input product's gradient comes through LN first.
  LayerBackwardResult result;
  at::Tensor grad_input_product = grad_gates;
  if (layer_norm) {
    InputNormGrads norm =
        steps.normalize_input_backward(grad_gates, saved.normalized, saved.row_stats, p.cell.layer_norm_weight_ih);
    grad_input_product = std::move(norm.grad_product);
    result.grad_layer_norm_weight_ih = std::move(norm.grad_weight_ih);
    result.grad_layer_norm_weight_hh = std::move(norm.grad_weight_hh);
  }
  if (bp.need_grad_input) {
    result.grad_input = steps.empty({N, p.input.size(1)}, options);
    const StepWeight weight_ih = steps.prepare_weight(p.weights.weight_ih, /*transpose=*/false, WeightUse{N, 1});
    steps.matmul(row_block(result.grad_input), row_block(grad_input_product), weight_ih, /*accumulate=*/false);
  } else {
    result.grad_input = at::empty({0}, options);
  }
  const bool has_bias = p.weights.bias_ih.defined();
  result.grad_weight_ih = at::empty({4 * H, p.input.size(1)}, options);
  result.grad_weight_hh = at::empty({4 * H, P}, options);
  result.grad_bias = has_bias ? at::empty({4 * H}, options) : at::empty({0}, options);
  std::vector<TransposedProduct> products{{result.grad_weight_ih, grad_input_product, p.input, false}};
  append_recurrent_weight_grad(layout, grad_recurrent, saved.output, p.h0, mask, p.reverse, result.grad_weight_hh,
                               products);
  steps.weight_gradients(products, has_bias ? result.grad_bias : at::Tensor(), grad_gates);
  result.grad_weight_hr = projected ? at::mm(grad_h_total.t(), saved.unprojected) : at::empty({0}, options);
  if (carrying) {
    result.grad_h0 = (mask.defined() ? grad_h * mask : grad_h) + carry;
  } else {
    result.grad_h0 = grad_h;
  }
  result.grad_c0 = grad_c;
  const auto column_sum = [&](int64_t first, int64_t width) {
    return T == 0 ? at::zeros({width}, options) : grad_params.narrow(1, first, width).sum(0);
  };
  result.grad_weight_peephole = terms.peephole >= 0 ? column_sum(terms.peephole, 3 * H) : at::empty({0}, options);
  if (layer_norm) {
    result.grad_layer_norm_weight_c = column_sum(terms.layer_norm_c, H);
    result.grad_layer_norm_bias_c = column_sum(terms.layer_norm_c + H, H);
  } else {
    result.grad_layer_norm_weight_ih = at::empty({0}, options);
    result.grad_layer_norm_weight_hh = at::empty({0}, options);
    result.grad_layer_norm_weight_c = at::empty({0}, options);
    result.grad_layer_norm_bias_c = at::empty({0}, options);
  }
  return result;
}

}  // namespace

LayerForwardResult lstm_layer_forward(const StepKernels& steps, const LayerForwardProblem& problem) {
  return problem.training ? forward_training(steps, problem) : forward_inference(steps, problem);
}

LayerBackwardResult lstm_layer_backward(const StepKernels& steps, const LayerBackwardProblem& problem) {
  return backward_generic(steps, problem);
}

}  // namespace lstm_ext
