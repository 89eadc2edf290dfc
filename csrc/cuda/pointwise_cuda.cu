// pointwise_cuda.cu -- the CUDA pointwise steps: the kernels of pointwise_kernels.cuh launched on the
// current stream, with a launch check after each; the time loops go to persistent_cuda.cu where it runs them.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "persistent_launch.h"
#include "pointwise_kernels.cuh"
#include "pointwise_launch.h"

namespace lstm_ext {
namespace cuda {
namespace {

constexpr int kThreadsPerBlock = 256;

// Enough blocks to fill every SM; the grid-stride loop takes the rest.
LaunchPolicy device_launch_policy() {
  const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
  const int64_t blocks_per_sm = props->maxThreadsPerMultiProcessor / kThreadsPerBlock;
  return {kThreadsPerBlock, static_cast<int64_t>(props->multiProcessorCount) * blocks_per_sm};
}

struct StreamLauncher {
  cudaStream_t stream;

  template <typename... KernelArgs, typename... Args>
  void operator()(void (*kernel)(KernelArgs...), PointwiseLaunchConfig config, Args... args) const {
    kernel<<<config.blocks, config.threads, 0, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

class CudaStepKernels final : public StepKernels {
 public:
  void forward_pointwise(const ForwardStepArgs& args) const override {
    const StreamLauncher launcher{at::cuda::getCurrentCUDAStream()};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.dtype,
                                    "lstm_ext_cuda_forward_step", [&] {
                                      launch_forward_step<scalar_t>(args, device_launch_policy(), launcher);
                                    });
  }
  void backward_pointwise(const BackwardStepArgs& args) const override {
    const StreamLauncher launcher{at::cuda::getCurrentCUDAStream()};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.dtype,
                                    "lstm_ext_cuda_backward_step", [&] {
                                      launch_backward_step<scalar_t>(args, device_launch_policy(), launcher);
                                    });
  }
  void normalize_input(const RowBlock& gates, const RowBlock& normalized, const RowBlock& stats,
                       const at::Tensor& weight, const at::Tensor& bias_ih, const at::Tensor& bias_hh,
                       const at::TensorOptions& options) const override {
    const StreamLauncher launcher{at::cuda::getCurrentCUDAStream()};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, options.dtype().toScalarType(),
                                    "lstm_ext_cuda_normalize_input", [&] {
                                      launch_input_norm<scalar_t>(gates, normalized, stats, weight, bias_ih, bias_hh,
                                                                  device_launch_policy(), launcher);
                                    });
  }
  InputNormGrads normalize_input_backward(const at::Tensor& grad_gates, const at::Tensor& normalized,
                                          const at::Tensor& row_stats, const at::Tensor& weight) const override {
    const StreamLauncher launcher{at::cuda::getCurrentCUDAStream()};
    return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_gates.scalar_type(),
                                           "lstm_ext_cuda_normalize_input_backward", [&] {
                                             return launch_input_norm_backward<scalar_t>(
                                                 grad_gates, normalized, row_stats, weight, device_launch_policy(),
                                                 launcher);
                                           });
  }
  // The persistent kernels where $LSTM_EXT_CUDA_RECURRENCE and the problem allow (persistent_cuda.cu).
  bool forward_loop(const ForwardLoopArgs& args) const override { return cuda_persistent_forward_loop(args); }
  bool backward_loop(const BackwardLoopArgs& args) const override { return cuda_persistent_backward_loop(args); }
};

}  // namespace
}  // namespace cuda

const StepKernels& cuda_step_kernels() {
  static const cuda::CudaStepKernels steps;
  return steps;
}

}  // namespace lstm_ext
