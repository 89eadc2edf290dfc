// lstm_recurrence.cpp -- see lstm_recurrence.h. The algorithm is cuDNN's and Haste's layer-level
// shape (Appleyard et al. 2016): hoist the input GEMM over all steps, then per step one GEMM into the
// step's slice and one fused pointwise pass; the backward mirrors it and leaves the weight gradients to
// three large GEMMs after the loop. No atomics anywhere, so gradients are bitwise repeatable.
#include "lstm_recurrence.h"

#include <ATen/ATen.h>

namespace lstm_ext {

LayerForwardResult lstm_layer_forward(const PointwiseSteps& steps, const at::Tensor& input,
                                      const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                      const at::Tensor& bias_ih, const at::Tensor& bias_hh,
                                      const at::Tensor& h0, const at::Tensor& c0, bool reverse,
                                      bool training) {
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2);
  const int64_t H = weight_hh.size(1);
  const auto options = input.options();

  // 1. The input projection of every step in one GEMM, both biases folded in.
  at::Tensor gates = at::empty({T, B, 4 * H}, options);
  at::Tensor gates_2d = gates.view({T * B, 4 * H});
  const at::Tensor input_2d = input.view({T * B, I});
  if (bias_ih.defined()) {
    at::addmm_out(gates_2d, bias_ih + bias_hh, input_2d, weight_ih.t());
  } else {
    at::mm_out(gates_2d, input_2d, weight_ih.t());
  }

  // 2. Per step: the recurrent GEMM accumulated into the step's own slice, then the fused pass. In
  // training the pass leaves the activated gates in place and c_t in `cells`; in inference c is
  // updated in place in one [B, H] buffer.
  at::Tensor output = at::empty({T, B, H}, options);
  at::Tensor cells = training ? at::empty({T, B, H}, options) : at::empty({0}, options);
  at::Tensor c_state = training ? at::Tensor() : c0.clone(at::MemoryFormat::Contiguous);
  const at::Tensor weight_hh_t = weight_hh.t();
  at::Tensor h_prev = h0;
  at::Tensor c_prev = training ? c0 : c_state;
  for (int64_t step = 0; step < T; ++step) {
    const int64_t t = reverse ? T - 1 - step : step;
    at::Tensor gates_t = gates.select(0, t);
    gates_t.addmm_(h_prev, weight_hh_t);
    at::Tensor h_t = output.select(0, t);
    at::Tensor c_t = training ? cells.select(0, t) : c_state;
    steps.forward(ForwardStepArgs{gates_t, c_prev, h_t, c_t, training});
    h_prev = h_t;
    c_prev = c_t;
  }

  LayerForwardResult result;
  result.output = output;
  result.h_n = h_prev.clone(at::MemoryFormat::Contiguous);
  result.c_n = training ? c_prev.clone(at::MemoryFormat::Contiguous) : c_state;
  result.gates = training ? gates : at::empty({0}, options);
  result.cells = cells;
  return result;
}

LayerBackwardResult lstm_layer_backward(const PointwiseSteps& steps, const at::Tensor& grad_output,
                                        const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
                                        const at::Tensor& input, const at::Tensor& weight_ih,
                                        const at::Tensor& weight_hh, const at::Tensor& h0,
                                        const at::Tensor& c0, const at::Tensor& output,
                                        const at::Tensor& gates, const at::Tensor& cells, bool reverse,
                                        bool has_bias) {
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2);
  const int64_t H = weight_hh.size(1);
  const auto options = input.options();

  // 1. Walk the steps last to first (in the direction's own order): the fused pass turns the kept
  // gates and the incoming dh, dc into dG[t] and dc_{t-1}; one GEMM carries dh to step t-1.
  at::Tensor grad_gates = at::empty({T, B, 4 * H}, options);
  at::Tensor grad_h = grad_h_n.clone(at::MemoryFormat::Contiguous);
  at::Tensor grad_c = grad_c_n.clone(at::MemoryFormat::Contiguous);
  for (int64_t step = 0; step < T; ++step) {
    const int64_t t = reverse ? step : T - 1 - step;
    const bool first_in_time = reverse ? t == T - 1 : t == 0;
    const at::Tensor c_prev = first_in_time ? c0 : cells.select(0, reverse ? t + 1 : t - 1);
    at::Tensor grad_gates_t = grad_gates.select(0, t);
    steps.backward(BackwardStepArgs{gates.select(0, t), cells.select(0, t), c_prev,
                                    grad_output.select(0, t), grad_h, grad_c, grad_gates_t});
    at::mm_out(grad_h, grad_gates_t, weight_hh);
  }

  // 2. Everything that does not feed the recurrence, as large GEMMs over all steps at once.
  LayerBackwardResult result;
  const at::Tensor grad_gates_2d = grad_gates.view({T * B, 4 * H});
  result.grad_input = at::mm(grad_gates_2d, weight_ih).view({T, B, I});
  result.grad_weight_ih = at::mm(grad_gates_2d.t(), input.view({T * B, I}));
  // dW_hh = sum_t dG[t]^T h_{t-1}: the first step (in time order) pairs with h0, the others with the
  // neighbouring output rows, which are one contiguous block.
  result.grad_weight_hh = at::zeros({4 * H, H}, options);
  if (T > 0) {
    const int64_t first_t = reverse ? T - 1 : 0;
    at::mm_out(result.grad_weight_hh, grad_gates.select(0, first_t).t(), h0);
    if (T > 1) {
      const at::Tensor grad_gates_rest = grad_gates.narrow(0, reverse ? 0 : 1, T - 1);
      const at::Tensor h_prev_rest = output.narrow(0, reverse ? 1 : 0, T - 1);
      result.grad_weight_hh.addmm_(grad_gates_rest.reshape({(T - 1) * B, 4 * H}).t(),
                                   h_prev_rest.reshape({(T - 1) * B, H}));
    }
  }
  result.grad_bias = has_bias ? grad_gates_2d.sum(0) : at::empty({0}, options);
  result.grad_h0 = grad_h;
  result.grad_c0 = grad_c;
  return result;
}

}  // namespace lstm_ext
