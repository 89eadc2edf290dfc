// ops.cpp -- the lstm_ext operator library: schemas and the CPU and CUDA implementations.
// Fake (meta) kernels and autograd are registered from Python (lstm_ext/_ops.py).
#include <torch/library.h>

#include "layer_ops.h"

#ifdef LSTM_EXT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#endif

namespace lstm_ext {
namespace {

constexpr const char* kForwardOp = "lstm_ext.lstm_layer_forward";
constexpr const char* kBackwardOp = "lstm_ext.lstm_layer_backward";

LayerForwardTuple layer_forward_cpu(const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
                                    const at::Tensor& weight_ih,
                                    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
                                    const std::optional<at::Tensor>& bias_hh, const at::Tensor& h0,
                                    const at::Tensor& c0, bool reverse, bool training) {
  return run_layer_forward(kForwardOp, cpu_pointwise_steps(), input, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, h0,
                           c0, reverse, training);
}

LayerBackwardTuple layer_backward_cpu(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                                      const at::Tensor& grad_c_n, const at::Tensor& input,
                                      const std::optional<at::Tensor>& batch_sizes, const at::Tensor& weight_ih,
                                      const at::Tensor& weight_hh,
                                      const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& output,
                                      const at::Tensor& gates, const at::Tensor& cells, bool reverse,
                                      bool has_bias) {
  return run_layer_backward(kBackwardOp, cpu_pointwise_steps(), grad_output, grad_h_n, grad_c_n, input,
                            batch_sizes, weight_ih, weight_hh, h0, c0, output, gates, cells, reverse, has_bias);
}

#ifdef LSTM_EXT_WITH_CUDA
LayerForwardTuple layer_forward_cuda(const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
                                     const at::Tensor& weight_ih,
                                     const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
                                     const std::optional<at::Tensor>& bias_hh, const at::Tensor& h0,
                                     const at::Tensor& c0, bool reverse, bool training) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  return run_layer_forward(kForwardOp, cuda_pointwise_steps(), input, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh,
                           h0, c0, reverse, training);
}

LayerBackwardTuple layer_backward_cuda(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                                       const at::Tensor& grad_c_n, const at::Tensor& input,
                                       const std::optional<at::Tensor>& batch_sizes, const at::Tensor& weight_ih,
                                       const at::Tensor& weight_hh,
                                       const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& output,
                                       const at::Tensor& gates, const at::Tensor& cells, bool reverse,
                                       bool has_bias) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  return run_layer_backward(kBackwardOp, cuda_pointwise_steps(), grad_output, grad_h_n, grad_c_n, input,
                            batch_sizes, weight_ih, weight_hh, h0, c0, output, gates, cells, reverse, has_bias);
}
#endif

}  // namespace

TORCH_LIBRARY(lstm_ext, m) {
  m.def("lstm_layer_forward(" LSTM_EXT_LAYER_FORWARD_ARGS ") -> " LSTM_EXT_LAYER_FORWARD_RETURNS);
  m.def("lstm_layer_backward(" LSTM_EXT_LAYER_BACKWARD_ARGS ") -> " LSTM_EXT_LAYER_BACKWARD_RETURNS);
}

TORCH_LIBRARY_IMPL(lstm_ext, CPU, m) {
  m.impl("lstm_layer_forward", &layer_forward_cpu);
  m.impl("lstm_layer_backward", &layer_backward_cpu);
}

#ifdef LSTM_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(lstm_ext, CUDA, m) {
  m.impl("lstm_layer_forward", &layer_forward_cuda);
  m.impl("lstm_layer_backward", &layer_backward_cuda);
}
#endif

}  // namespace lstm_ext
