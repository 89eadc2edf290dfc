// pointwise_emulated.cpp -- the CUDA pointwise kernels run on the CPU through cuda_emulation.h, driven
// by the same recurrence and launch code as on a GPU. Registered as test-only ops in the
// lstm_ext_testing library, with the launch geometry as arguments so tests can force partial blocks and
// a grid-stride loop that wraps.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../layer_ops.h"
#include "cuda_emulation.h"  // after the torch headers, before the kernels
#include "../cuda/pointwise_kernels.cuh"
#include "../cuda/pointwise_launch.h"

namespace lstm_ext {
namespace {

constexpr const char* kForwardOp = "lstm_ext_testing.emulated_cuda_layer_forward";
constexpr const char* kBackwardOp = "lstm_ext_testing.emulated_cuda_layer_backward";

struct EmulatedLauncher {
  emulated::LaunchOrder order;

  template <typename... KernelArgs, typename... Args>
  void operator()(void (*kernel)(KernelArgs...), cuda::PointwiseLaunchConfig config, Args... args) const {
    emulated::launch(kernel, config.blocks, config.threads, order, args...);
  }
};

class EmulatedCudaStepKernels final : public StepKernels {
 public:
  EmulatedCudaStepKernels(cuda::LaunchPolicy policy, emulated::LaunchOrder order)
      : policy_(policy), launcher_{order} {}

  void forward_pointwise(const ForwardStepArgs& args) const override {
    AT_DISPATCH_FLOATING_TYPES(args.dtype, "lstm_ext_emulated_forward_step",
                               [&] { cuda::launch_forward_step<scalar_t>(args, policy_, launcher_); });
  }
  void backward_pointwise(const BackwardStepArgs& args) const override {
    AT_DISPATCH_FLOATING_TYPES(args.dtype, "lstm_ext_emulated_backward_step",
                               [&] { cuda::launch_backward_step<scalar_t>(args, policy_, launcher_); });
  }

 private:
  cuda::LaunchPolicy policy_;
  EmulatedLauncher launcher_;
};

EmulatedCudaStepKernels make_steps(const char* op, int64_t threads_per_block, int64_t max_blocks,
                                      bool force_64bit_index, bool reverse_launch_order) {
  TORCH_CHECK(threads_per_block >= 1 && threads_per_block <= 1024, op,
              ": threads_per_block must be in [1, 1024], got ", threads_per_block);
  TORCH_CHECK(max_blocks >= 1, op, ": max_blocks must be at least 1, got ", max_blocks);
  return EmulatedCudaStepKernels(
      {static_cast<int>(threads_per_block), max_blocks, force_64bit_index},
      reverse_launch_order ? emulated::LaunchOrder::kReverse : emulated::LaunchOrder::kForward);
}

LayerForwardTuple emulated_forward(const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
                                   const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                   const std::optional<at::Tensor>& bias_ih, const std::optional<at::Tensor>& bias_hh,
                                   const std::optional<at::Tensor>& weight_hr, const at::Tensor& h0,
                                   const at::Tensor& c0, bool reverse, bool training,
                                   int64_t threads_per_block, int64_t max_blocks, bool force_64bit_index,
                                   bool reverse_launch_order) {
  const auto steps = make_steps(kForwardOp, threads_per_block, max_blocks, force_64bit_index, reverse_launch_order);
  return run_layer_forward(kForwardOp, steps, input, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                           h0, c0, reverse, training);
}

LayerBackwardTuple emulated_backward(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                                     const at::Tensor& grad_c_n, const at::Tensor& input,
                                     const std::optional<at::Tensor>& batch_sizes, const at::Tensor& weight_ih,
                                     const at::Tensor& weight_hh, const std::optional<at::Tensor>& weight_hr,
                                     const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& output,
                                     const at::Tensor& gates, const at::Tensor& cells, const at::Tensor& unprojected,
                                     bool reverse, bool has_bias, bool need_grad_input, int64_t threads_per_block,
                                     int64_t max_blocks, bool force_64bit_index, bool reverse_launch_order) {
  const auto steps =
      make_steps(kBackwardOp, threads_per_block, max_blocks, force_64bit_index, reverse_launch_order);
  return run_layer_backward(kBackwardOp, steps, grad_output, grad_h_n, grad_c_n, input, batch_sizes, weight_ih,
                            weight_hh, weight_hr, h0, c0, output, gates, cells, unprojected, reverse, has_bias,
                            need_grad_input);
}

}  // namespace

#define LSTM_EXT_EMULATED_LAUNCH_ARGS \
  ", int threads_per_block, int max_blocks, bool force_64bit_index, bool reverse_launch_order"

TORCH_LIBRARY(lstm_ext_testing, m) {
  m.def("emulated_cuda_layer_forward(" LSTM_EXT_LAYER_FORWARD_ARGS LSTM_EXT_EMULATED_LAUNCH_ARGS
        ") -> " LSTM_EXT_LAYER_FORWARD_RETURNS);
  m.def("emulated_cuda_layer_backward(" LSTM_EXT_LAYER_BACKWARD_ARGS LSTM_EXT_EMULATED_LAUNCH_ARGS
        ") -> " LSTM_EXT_LAYER_BACKWARD_RETURNS);
}

TORCH_LIBRARY_IMPL(lstm_ext_testing, CPU, m) {
  m.impl("emulated_cuda_layer_forward", &emulated_forward);
  m.impl("emulated_cuda_layer_backward", &emulated_backward);
}

}  // namespace lstm_ext
