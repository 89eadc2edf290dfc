// pointwise_launch.h -- from a step's tensors to a kernel launch: launch configuration, index width and
// pointers, written once for the real CUDA launch (pointwise_cuda.cu) and the emulated one
// (csrc/emulated/pointwise_emulated.cpp). `Launcher` is a callable
// launcher(kernel, PointwiseLaunchConfig, kernel arguments...) that runs the kernel.
// Include pointwise_kernels.cuh (or the emulation header and then it) before this file.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstdint>

#include "../cell_step_rows.h"
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
  const auto first = first_forward_row<scalar_t>(args);
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
  const auto first = first_backward_row<scalar_t>(args);
  launcher(lstm_variant_backward_kernel<scalar_t, acc_t>, row_launch_config(rows, hidden, policy), first, rows);
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

// StepKernels::normalize_input: the layer norm of the input product, a row per block.
template <typename scalar_t, typename Launcher>
void launch_input_norm(const RowBlock& gates, const RowBlock& normalized, const RowBlock& stats,
                       const at::Tensor& weight, const at::Tensor& bias_ih, const at::Tensor& bias_hh,
                       const LaunchPolicy& policy, const Launcher& launcher) {
  using acc_t = at::opmath_type<scalar_t>;
  if (gates.rows == 0) {
    return;
  }
  const cell_rows::InputNormRow<scalar_t> first{gates.cols, gates.ptr<scalar_t>(), normalized.ptr<scalar_t>(),
                                                stats.ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                                data_or_null<scalar_t>(bias_ih), data_or_null<scalar_t>(bias_hh)};
  launcher(lstm_input_norm_kernel<scalar_t, acc_t>, row_launch_config(gates.rows, gates.cols / 4, policy), first,
           gates.rows);
}

// StepKernels::normalize_input_backward: a row per block, each block's weight terms summed in its own row of
// block sums (acc_t), then the block sums added up by ATen's reduction: the same sums on every run.
template <typename scalar_t, typename Launcher>
InputNormGrads launch_input_norm_backward(const at::Tensor& grad_gates, const at::Tensor& normalized,
                                          const at::Tensor& row_stats, const at::Tensor& weight,
                                          const LaunchPolicy& policy, const Launcher& launcher) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = grad_gates.size(0), width = grad_gates.size(1);
  const PointwiseLaunchConfig config = row_launch_config(rows, width / 4, policy);
  const at::Tensor block_sums =
      at::zeros({config.blocks, 2, width}, grad_gates.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  InputNormGrads grads;
  grads.grad_product = at::empty({rows, width}, grad_gates.options());
  if (rows > 0) {
    const cell_rows::InputNormBackwardRow<scalar_t, acc_t> first{
        width, grad_gates.const_data_ptr<scalar_t>(), normalized.const_data_ptr<scalar_t>(),
        normalized.const_data_ptr<scalar_t>() + rows * width, row_stats.const_data_ptr<scalar_t>(),
        weight.const_data_ptr<scalar_t>(), grads.grad_product.mutable_data_ptr<scalar_t>(), nullptr, nullptr};
    launcher(lstm_input_norm_backward_kernel<scalar_t, acc_t>, config, first, rows,
             block_sums.mutable_data_ptr<acc_t>());
  }
  grads.grad_weight_ih = block_sums.select(1, 0).sum(0).to(grad_gates.scalar_type());
  grads.grad_weight_hh = block_sums.select(1, 1).sum(0).to(grad_gates.scalar_type());
  return grads;
}

}  // namespace cuda
}  // namespace lstm_ext
