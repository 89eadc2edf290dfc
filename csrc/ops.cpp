// ops.cpp -- the lstm_ext operator library: schemas and the CPU and CUDA implementations.
// Fake (meta) kernels and autograd are registered from Python (lstm_ext/_ops.py, lstm_ext/autograd.py).
// The kernels are boxed: they read the arguments from the dispatcher's stack into the structs of
// layer_op_args.h, so the argument lists exist once.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "layer_ops.h"

#ifdef LSTM_EXT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#endif

namespace lstm_ext {
namespace {

constexpr const char* kForwardOp = "lstm_ext.lstm_layer_forward";
constexpr const char* kBackwardOp = "lstm_ext.lstm_layer_backward";

struct CpuBackend {
  static const StepKernels& steps() { return cpu_step_kernels(); }
  struct Guard {
    explicit Guard(const at::Tensor&) {}
  };
};

#ifdef LSTM_EXT_WITH_CUDA
struct CudaBackend {
  static const StepKernels& steps() { return cuda_step_kernels(); }
  // Kernels and cuBLAS calls go to the current stream of the input's device.
  struct Guard {
    explicit Guard(const at::Tensor& input) : device_guard(input.device()) {}
    c10::cuda::CUDAGuard device_guard;
  };
};
#endif

// Replaces the stack's `count` arguments with the results.
template <typename Results>
void replace_arguments(torch::jit::Stack* stack, size_t count, Results&& results) {
  torch::jit::drop(*stack, count);
  std::move(results).push_to(*stack);
}

// The op implementations for one backend: its step kernels, under its device guard.
template <typename Backend>
struct LayerOps {
  static void forward(const c10::OperatorHandle&, c10::DispatchKeySet, torch::jit::Stack* stack) {
    const auto args = LayerForwardArgs::from(torch::jit::last(*stack, LayerForwardArgs::count).data());
    const typename Backend::Guard guard(args.input);
    replace_arguments(stack, LayerForwardArgs::count, run_layer_forward(kForwardOp, Backend::steps(), args));
  }
  static void backward(const c10::OperatorHandle&, c10::DispatchKeySet, torch::jit::Stack* stack) {
    const auto args = LayerBackwardArgs::from(torch::jit::last(*stack, LayerBackwardArgs::count).data());
    const typename Backend::Guard guard(args.forward.input);
    replace_arguments(stack, LayerBackwardArgs::count, run_layer_backward(kBackwardOp, Backend::steps(), args));
  }
};

// Under autocast, the floating-point tensor arguments are cast to the device's autocast dtype (float64 and
// integer tensors are left alone, as ATen's autocast does), then the op runs below autocast. Autograd sees
// the casts, so the gradients reach float32 parameters in float32.
template <c10::DeviceType device_type>
void forward_autocast(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(device_type);
  // float16 has no CPU kernels: there the op runs in the inputs' own dtypes (nn.LSTMCell runs in float32).
  const bool cast_inputs = !(device_type == c10::DeviceType::CPU && dtype == at::kHalf);
  if (cast_inputs) {
    for (size_t i = stack->size() - LayerForwardArgs::count; i < stack->size(); ++i) {
      c10::IValue& arg = (*stack)[i];
      if (arg.isTensor()) {
        arg = at::autocast::cached_cast(dtype, arg.toTensor(), device_type);
      }
    }
  }
  const c10::DispatchKey autocast_key = at::autocast::get_autocast_dispatch_key_from_device_type(device_type);
  // Excluded for everything the op calls as well (its autograd formula calls it again).
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  op.redispatchBoxed(keys.remove(autocast_key) & c10::DispatchKeySet(c10::DispatchKeySet::FULL_AFTER, autocast_key),
                     stack);
}

template <void (*fn)(const c10::OperatorHandle&, c10::DispatchKeySet, torch::jit::Stack*)>
torch::CppFunction boxed() {
  return torch::CppFunction::makeFromBoxedFunction<fn>();
}

}  // namespace

TORCH_LIBRARY(lstm_ext, m) {
  m.def(layer_forward_schema("lstm_layer_forward").c_str());
  m.def(layer_backward_schema("lstm_layer_backward").c_str());
}

TORCH_LIBRARY_IMPL(lstm_ext, CPU, m) {
  m.impl("lstm_layer_forward", boxed<&LayerOps<CpuBackend>::forward>());
  m.impl("lstm_layer_backward", boxed<&LayerOps<CpuBackend>::backward>());
}

TORCH_LIBRARY_IMPL(lstm_ext, AutocastCPU, m) {
  m.impl("lstm_layer_forward", boxed<&forward_autocast<c10::DeviceType::CPU>>());
}

TORCH_LIBRARY_IMPL(lstm_ext, AutocastCUDA, m) {
  m.impl("lstm_layer_forward", boxed<&forward_autocast<c10::DeviceType::CUDA>>());
}

#ifdef LSTM_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(lstm_ext, CUDA, m) {
  m.impl("lstm_layer_forward", boxed<&LayerOps<CudaBackend>::forward>());
  m.impl("lstm_layer_backward", boxed<&LayerOps<CudaBackend>::backward>());
}
#endif

}  // namespace lstm_ext
