// pointwise_launch.h -- from a step's tensors to a kernel launch: launch configuration, index width and
// pointers, written once for the real CUDA launch (pointwise_cuda.cu) and the emulated one
// (csrc/emulated/pointwise_emulated.cpp). `Launcher` is a callable
// launcher(kernel, PointwiseLaunchConfig, kernel arguments...) that runs the kernel.
// Include pointwise_kernels.cuh (or the emulation header and then it) before this file.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

#include "../step_kernels.h"
#include "pointwise_kernels.cuh"

namespace lstm_ext {
namespace cuda {

struct LaunchPolicy {
  int threads_per_block;
  int64_t max_blocks;
  bool force_64bit_index = false;  // tests run the 64-bit kernels on sizes that would not need them
};

// A GPU step is one launch over every unit of the batch: StepKernels::for_each_work_share does not split
// the units here, so a step that got part of them is a bug upstream.
inline void check_all_units(const IndexRange& units, int64_t hidden) {

  TORCH_INTERNAL_ASSERT(units.begin == 0 && units.end == hidden, "a CUDA step runs all units, got [", units.begin,
                        ", ", units.end, ") of ", hidden);
}

// Runs launch(index_t{}, config) for a pointwise pass over batch x hidden units (nothing for none):
// the geometry from the policy, index_t int32_t when the sizes allow it, else int64_t.
template <typename Launch>
void launch_pointwise(int64_t batch, int64_t hidden, const LaunchPolicy& policy, const Launch& launch) {
  if (batch * hidden == 0) {
    return;
  }
  const PointwiseLaunchConfig config =
      pointwise_launch_config(batch * hidden, policy.threads_per_block, policy.max_blocks);
  if (!policy.force_64bit_index && fits_32bit_indexing(batch, hidden, config)) {
    launch(int32_t{}, config);
  } else {
    launch(int64_t{}, config);
  }
}

template <typename S>
S* data_or_null(const RowBlock& block) {
  return block.data == nullptr ? nullptr : block.ptr<S>();
}

template <typename S>
const S* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<S>() : nullptr;
}

// A row per block: the policy's block size (at most one thread per unit of the widest pass, 4H, in whole
// warps), as many blocks as rows up to its grid.
inline PointwiseLaunchConfig row_launch_config(int64_t rows, int64_t hidden, const LaunchPolicy& policy) {
  const int64_t widest = ((4 * hidden + 31) / 32) * 32;
  const int64_t threads = std::min<int64_t>({policy.threads_per_block, widest, kMaxRowThreads});
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(rows, policy.max_blocks));
  return {static_cast<unsigned>(blocks), static_cast<unsigned>(std::max<int64_t>(threads, 1))};
}

template <typename scalar_t, typename Launcher>
void launch_variant_forward_step(const ForwardStepArgs& args, const LaunchPolicy& policy, const Launcher& launcher) {
  using acc_t = at::opmath_type<scalar_t>;
  const CellParams& cell = *args.cell;
  const int64_t rows = args.c.rows, hidden = args.c.cols;
  if (rows == 0) {
    return;
  }
  cell_rows::ForwardRow<scalar_t, acc_t> first{};
  first.H = hidden;
  first.gates = data_or_null<scalar_t>(args.gates);
  first.recurrent = data_or_null<scalar_t>(args.recurrent);
  first.stats = data_or_null<scalar_t>(args.stats);
  first.c_prev = data_or_null<scalar_t>(args.c_prev);
  first.c = data_or_null<scalar_t>(args.c);
  first.h = data_or_null<scalar_t>(args.h);
  first.h_prev = data_or_null<scalar_t>(args.h_prev);
  first.peephole = data_or_null<scalar_t>(cell.weight_peephole);
  first.layer_norm_weight_hh = data_or_null<scalar_t>(cell.layer_norm_weight_hh);
  first.layer_norm_weight_c = data_or_null<scalar_t>(cell.layer_norm_weight_c);
  first.layer_norm_bias_c = data_or_null<scalar_t>(cell.layer_norm_bias_c);
  first.zoneout_cell_mask = data_or_null<scalar_t>(args.zoneout_cell_mask);
  first.zoneout_hidden_mask = data_or_null<scalar_t>(args.zoneout_hidden_mask);
  first.zoneout_cell = static_cast<acc_t>(cell.zoneout_cell);
  first.zoneout_hidden = static_cast<acc_t>(cell.zoneout_hidden);
  first.zoneout_cell_on = cell.zoneout_cell_mask.defined() || cell.zoneout_cell != 0;
  first.zoneout_hidden_on = cell.zoneout_hidden_active();
  first.keep_gates = args.keep_gates;
  launcher(lstm_variant_forward_kernel<scalar_t, acc_t>, row_launch_config(rows, hidden, policy), first, rows);
}

template <typename scalar_t, typename Launcher>
void launch_variant_backward_step(const BackwardStepArgs& args, const LaunchPolicy& policy, const Launcher& launcher) {
  using acc_t = at::opmath_type<scalar_t>;
  const CellParams& cell = *args.cell;
  const int64_t rows = args.c.rows, hidden = args.c.cols;
  if (rows == 0) {
    return;
  }
  cell_rows::BackwardRow<scalar_t, acc_t> first{};
  first.H = hidden;
  first.gates = data_or_null<scalar_t>(args.gates);
  first.c = data_or_null<scalar_t>(args.c);
  first.c_prev = data_or_null<scalar_t>(args.c_prev);
  first.grad_h_out = data_or_null<scalar_t>(args.grad_h_out);
  first.grad_h_next = data_or_null<scalar_t>(args.grad_h_next);
  first.recurrent_mask = data_or_null<scalar_t>(args.recurrent_mask);
  first.carry = data_or_null<scalar_t>(args.carry);
  first.grad_c = data_or_null<scalar_t>(args.grad_c);
  first.grad_cells = data_or_null<scalar_t>(args.grad_cells);
  first.grad_gates = data_or_null<scalar_t>(args.grad_gates);
  first.grad_recurrent = data_or_null<scalar_t>(args.grad_recurrent);
  first.grad_params = data_or_null<scalar_t>(args.grad_params);
  first.peephole_terms = args.peephole_terms;
  first.layer_norm_c_terms = args.layer_norm_c_terms;
  first.normalized_recurrent = data_or_null<scalar_t>(args.normalized_recurrent);
  first.stats = data_or_null<scalar_t>(args.stats);
  first.peephole = data_or_null<scalar_t>(cell.weight_peephole);
  first.layer_norm_weight_hh = data_or_null<scalar_t>(cell.layer_norm_weight_hh);
  first.layer_norm_weight_c = data_or_null<scalar_t>(cell.layer_norm_weight_c);
  first.layer_norm_bias_c = data_or_null<scalar_t>(cell.layer_norm_bias_c);
  first.zoneout_cell_mask = data_or_null<scalar_t>(args.zoneout_cell_mask);
  first.zoneout_hidden_mask = data_or_null<scalar_t>(args.zoneout_hidden_mask);
  first.zoneout_cell = static_cast<acc_t>(cell.zoneout_cell);
  first.zoneout_hidden = static_cast<acc_t>(cell.zoneout_hidden);
  first.zoneout_cell_on = cell.zoneout_cell_mask.defined() || cell.zoneout_cell != 0;
  first.zoneout_hidden_on = cell.zoneout_hidden_active();
  launcher(lstm_variant_backward_kernel<scalar_t, acc_t>, row_launch_config(rows, hidden, policy), first, rows,
           args.grad_params.cols);
}

template <typename scalar_t, typename Launcher>
void launch_forward_step(const ForwardStepArgs& args, const LaunchPolicy& policy, const Launcher& launcher) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = args.c.rows, hidden = args.c.cols;
  check_all_units(args.units, hidden);
  if (args.cell != nullptr) {
    launch_variant_forward_step<scalar_t>(args, policy, launcher);
    return;
  }
  launch_pointwise(batch, hidden, policy, [&](auto index_zero, PointwiseLaunchConfig config) {
    using index_t = decltype(index_zero);
    launcher(lstm_forward_pointwise_kernel<scalar_t, acc_t, index_t>, config, args.gates.ptr<scalar_t>(),
             static_cast<const scalar_t*>(args.c_prev.ptr<scalar_t>()), args.h.ptr<scalar_t>(),
             args.c.ptr<scalar_t>(), static_cast<index_t>(batch), static_cast<index_t>(hidden), args.keep_gates);
  });
}

template <typename scalar_t, typename Launcher>
void launch_backward_step(const BackwardStepArgs& args, const LaunchPolicy& policy, const Launcher& launcher) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = args.c.rows, hidden = args.c.cols;
  check_all_units(args.units, hidden);
  if (args.cell != nullptr) {
    launch_variant_backward_step<scalar_t>(args, policy, launcher);
    return;
  }
  launch_pointwise(batch, hidden, policy, [&](auto index_zero, PointwiseLaunchConfig config) {
    using index_t = decltype(index_zero);
    launcher(lstm_backward_pointwise_kernel<scalar_t, acc_t, index_t>, config,
             static_cast<const scalar_t*>(args.gates.ptr<scalar_t>()),
             static_cast<const scalar_t*>(args.c.ptr<scalar_t>()),
             static_cast<const scalar_t*>(args.c_prev.ptr<scalar_t>()),
             static_cast<const scalar_t*>(args.grad_h_out.ptr<scalar_t>()),
             static_cast<const scalar_t*>(args.grad_h_next.ptr<scalar_t>()), args.grad_c.ptr<scalar_t>(),
             args.grad_gates.ptr<scalar_t>(), static_cast<index_t>(batch), static_cast<index_t>(hidden));
  });
}

}  // namespace cuda
}  // namespace lstm_ext
