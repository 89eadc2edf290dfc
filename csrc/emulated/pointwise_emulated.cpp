// pointwise_emulated.cpp -- the CUDA pointwise kernels run on the CPU through cuda_emulation.h, driven
// by the same recurrence and launch code as on a GPU. Registered as test-only ops in the
// lstm_ext_testing library, with the launch geometry as arguments so tests can force partial blocks and
// a grid-stride loop that wraps.
#include <ATen/Dispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
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
  void normalize_input(const RowBlock& gates, const RowBlock& normalized, const RowBlock& stats,
                       const at::Tensor& weight, const at::Tensor& bias_ih, const at::Tensor& bias_hh,
                       const at::TensorOptions& options) const override {
    AT_DISPATCH_FLOATING_TYPES(options.dtype().toScalarType(), "lstm_ext_emulated_normalize_input", [&] {
      cuda::launch_input_norm<scalar_t>(gates, normalized, stats, weight, bias_ih, bias_hh, policy_, launcher_);
    });
  }
  InputNormGrads normalize_input_backward(const at::Tensor& grad_gates, const at::Tensor& normalized,
                                          const at::Tensor& row_stats, const at::Tensor& weight) const override {
    return AT_DISPATCH_FLOATING_TYPES(grad_gates.scalar_type(), "lstm_ext_emulated_normalize_input_backward", [&] {
      return cuda::launch_input_norm_backward<scalar_t>(grad_gates, normalized, row_stats, weight, policy_,
                                                        launcher_);
    });
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

// The launch geometry, after the layer op's own arguments (keyword-only in the schema).
constexpr size_t kLaunchArgs = 4;
constexpr const char* kLaunchArgsSchema =
    ", *, int threads_per_block, int max_blocks, bool force_64bit_index, bool reverse_launch_order";

EmulatedCudaStepKernels steps_from(const char* op, const c10::IValue* launch) {
  return make_steps(op, launch[0].toInt(), launch[1].toInt(), launch[2].toBool(), launch[3].toBool());
}

void emulated_forward(const c10::OperatorHandle&, c10::DispatchKeySet, torch::jit::Stack* stack) {
  const c10::IValue* args = torch::jit::last(*stack, LayerForwardArgs::count + kLaunchArgs).data();
  const auto steps = steps_from(kForwardOp, args + LayerForwardArgs::count);
  auto results = run_layer_forward(kForwardOp, steps, LayerForwardArgs::from(args));
  torch::jit::drop(*stack, LayerForwardArgs::count + kLaunchArgs);
  std::move(results).push_to(*stack);
}

void emulated_backward(const c10::OperatorHandle&, c10::DispatchKeySet, torch::jit::Stack* stack) {
  const c10::IValue* args = torch::jit::last(*stack, LayerBackwardArgs::count + kLaunchArgs).data();
  const auto steps = steps_from(kBackwardOp, args + LayerBackwardArgs::count);
  auto results = run_layer_backward(kBackwardOp, steps, LayerBackwardArgs::from(args));
  torch::jit::drop(*stack, LayerBackwardArgs::count + kLaunchArgs);
  std::move(results).push_to(*stack);
}

}  // namespace

TORCH_LIBRARY(lstm_ext_testing, m) {
  m.def(layer_forward_schema("emulated_cuda_layer_forward", kLaunchArgsSchema).c_str());
  m.def(layer_backward_schema("emulated_cuda_layer_backward", kLaunchArgsSchema).c_str());
}

TORCH_LIBRARY_IMPL(lstm_ext_testing, CPU, m) {
  m.impl("emulated_cuda_layer_forward", torch::CppFunction::makeFromBoxedFunction<&emulated_forward>());
  m.impl("emulated_cuda_layer_backward", torch::CppFunction::makeFromBoxedFunction<&emulated_backward>());
}

}  // namespace lstm_ext
