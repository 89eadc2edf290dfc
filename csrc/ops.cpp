// ops.cpp -- the lstm_ext operator library: schemas and the CPU and CUDA implementations.
// Fake (meta) kernels and autograd are registered from Python (lstm_ext/_ops.py, lstm_ext/autograd.py).
#include <ATen/autocast_mode.h>
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

// The op implementations for one backend: its pointwise steps, under its device guard.
template <typename Backend>
struct LayerOps {
  static LayerForwardTuple forward(const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
                                   const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                   const std::optional<at::Tensor>& bias_ih, const std::optional<at::Tensor>& bias_hh,
                                   const std::optional<at::Tensor>& weight_hr, const at::Tensor& h0,
                                   const at::Tensor& c0, bool reverse, bool training) {
    const typename Backend::Guard guard(input);
    return run_layer_forward(kForwardOp, Backend::steps(), input, batch_sizes, weight_ih, weight_hh, bias_ih,
                             bias_hh, weight_hr, h0, c0, reverse, training);
  }

  static LayerBackwardTuple backward(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                                     const at::Tensor& grad_c_n, const at::Tensor& input,
                                     const std::optional<at::Tensor>& batch_sizes, const at::Tensor& weight_ih,
                                     const at::Tensor& weight_hh, const std::optional<at::Tensor>& weight_hr,
                                     const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& output,
                                     const at::Tensor& gates, const at::Tensor& cells, const at::Tensor& unprojected,
                                     bool reverse, bool has_bias, bool need_grad_input) {
    const typename Backend::Guard guard(input);
    return run_layer_backward(kBackwardOp, Backend::steps(), grad_output, grad_h_n, grad_c_n, input, batch_sizes,
                              weight_ih, weight_hh, weight_hr, h0, c0, output, gates, cells, unprojected, reverse,
                              has_bias, need_grad_input);
  }
};

// Under autocast, the floating-point arguments are cast to the device's autocast dtype (float64 and
// integer tensors are left alone, as ATen's autocast does), then the op runs below autocast. Autograd sees
// the casts, so the gradients reach float32 parameters in float32.
template <c10::DeviceType device_type>
LayerForwardTuple forward_autocast(const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
                                   const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                   const std::optional<at::Tensor>& bias_ih, const std::optional<at::Tensor>& bias_hh,
                                   const std::optional<at::Tensor>& weight_hr, const at::Tensor& h0,
                                   const at::Tensor& c0, bool reverse, bool training) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(device_type));
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(device_type);
  // float16 has no CPU kernels: there the op runs in the inputs' own dtypes (nn.LSTMCell runs in float32).
  const bool cast_inputs = !(device_type == c10::DeviceType::CPU && dtype == at::kHalf);
  const auto cast = [dtype, cast_inputs](const auto& t) {
    return cast_inputs ? at::autocast::cached_cast(dtype, t, device_type) : t;
  };
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lstm_ext::lstm_layer_forward", "")
                             .typed<decltype(forward_autocast<device_type>)>();
  return op.call(cast(input), batch_sizes, cast(weight_ih), cast(weight_hh), cast(bias_ih), cast(bias_hh),
                 cast(weight_hr), cast(h0), cast(c0), reverse, training);
}

}  // namespace

TORCH_LIBRARY(lstm_ext, m) {
  m.def("lstm_layer_forward(" LSTM_EXT_LAYER_FORWARD_ARGS ") -> " LSTM_EXT_LAYER_FORWARD_RETURNS);
  m.def("lstm_layer_backward(" LSTM_EXT_LAYER_BACKWARD_ARGS ") -> " LSTM_EXT_LAYER_BACKWARD_RETURNS);
}

TORCH_LIBRARY_IMPL(lstm_ext, CPU, m) {
  m.impl("lstm_layer_forward", &LayerOps<CpuBackend>::forward);
  m.impl("lstm_layer_backward", &LayerOps<CpuBackend>::backward);
}

TORCH_LIBRARY_IMPL(lstm_ext, AutocastCPU, m) {
  m.impl("lstm_layer_forward", &forward_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(lstm_ext, AutocastCUDA, m) {
  m.impl("lstm_layer_forward", &forward_autocast<c10::DeviceType::CUDA>);
}

#ifdef LSTM_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(lstm_ext, CUDA, m) {
  m.impl("lstm_layer_forward", &LayerOps<CudaBackend>::forward);
  m.impl("lstm_layer_backward", &LayerOps<CudaBackend>::backward);
}
#endif

}  // namespace lstm_ext
