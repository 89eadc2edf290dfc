// lstm_math.h -- the LSTM gate math, the one copy used by every backend: the CPU loop (scalar and
// at::vec::Vectorized), the CUDA kernels and their emulated launch on the CPU.
//
// Gate order is nn.LSTM's: i, f, g, o. Everything is a template over the compute type T so that a
// backend can run it on a SIMD vector type; it only needs T(1), + - * / and a specialization of
// `Transcendentals<T>` (exp and tanh) for its type. No torch headers here.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LSTM_HOST_DEVICE __host__ __device__ __forceinline__
#define LSTM_HOST_DEVICE_MEMBER __host__ __device__ __forceinline__
#else
// static: each translation unit keeps its own copy, so the CPU builds for different instruction sets
// (cpu/cpu_backend*.cpp) never share one through the linker.
#define LSTM_HOST_DEVICE static inline
#define LSTM_HOST_DEVICE_MEMBER inline
#endif

namespace lstm_ext {
namespace math {

// exp and tanh for a compute type. float/double use the C math library, which nvcc maps to the device
// functions in device code; a vector backend specializes this for its vector type.
template <typename T>
struct Transcendentals;

template <>
struct Transcendentals<float> {
  static LSTM_HOST_DEVICE_MEMBER float exp(float x) { return ::expf(x); }
  static LSTM_HOST_DEVICE_MEMBER float tanh(float x) { return ::tanhf(x); }
  static LSTM_HOST_DEVICE_MEMBER float sqrt(float x) { return ::sqrtf(x); }
};

template <>
struct Transcendentals<double> {
  static LSTM_HOST_DEVICE_MEMBER double exp(double x) { return ::exp(x); }
  static LSTM_HOST_DEVICE_MEMBER double tanh(double x) { return ::tanh(x); }
  static LSTM_HOST_DEVICE_MEMBER double sqrt(double x) { return ::sqrt(x); }
};

template <typename T>
LSTM_HOST_DEVICE T sigmoid(T x) {
  return T(1) / (T(1) + Transcendentals<T>::exp(-x));
}

template <typename T>
LSTM_HOST_DEVICE T tanh(T x) {
  return Transcendentals<T>::tanh(x);
}

// The four gates of one (row, unit): pre-activations going in, activations coming out.
template <typename T>
struct Gates {
  T i, f, g, o;
};

template <typename T>
struct CellForward {
  Gates<T> act;  // activated gates, kept for the backward pass when training
  T c;           // c_t
  T h;           // h_t
};

// One step of one (row, unit): pre-activation gates and c_{t-1} -> activations, c_t, h_t.
template <typename T>
LSTM_HOST_DEVICE CellForward<T> cell_forward(const Gates<T>& pre, T c_prev) {
  CellForward<T> out;
  out.act.i = sigmoid(pre.i);
  out.act.f = sigmoid(pre.f);
  out.act.g = math::tanh(pre.g);
  out.act.o = sigmoid(pre.o);
  out.c = out.act.f * c_prev + out.act.i * out.act.g;
  out.h = out.act.o * math::tanh(out.c);
  return out;
}

template <typename T>
struct CellBackward {
  Gates<T> grad_pre;  // dL/d(pre-activation gates)
  T grad_c_prev;      // dL/dc_{t-1}
};

// Backward of one step of one (row, unit). `act` are the kept activated gates, `c` is c_t, `grad_h` is
// the whole dL/dh_t (output plus recurrence), `grad_c` is dL/dc_t arriving from step t+1.
// tanh(c_t) is recomputed rather than stored: one tanh is cheaper than a [T, B, H] buffer.
template <typename T>
LSTM_HOST_DEVICE CellBackward<T> cell_backward(const Gates<T>& act, T c, T c_prev, T grad_h, T grad_c) {
  const T one = T(1);
  const T tanh_c = math::tanh(c);
  const T grad_c_total = grad_c + grad_h * act.o * (one - tanh_c * tanh_c);
  const T grad_i = grad_c_total * act.g;
  const T grad_f = grad_c_total * c_prev;
  const T grad_g = grad_c_total * act.i;
  const T grad_o = grad_h * tanh_c;
  CellBackward<T> out;
  out.grad_pre.i = grad_i * act.i * (one - act.i);
  out.grad_pre.f = grad_f * act.f * (one - act.f);
  out.grad_pre.g = grad_g * (one - act.g * act.g);
  out.grad_pre.o = grad_o * act.o * (one - act.o);
  out.grad_c_prev = grad_c_total * act.f;
  return out;
}


// ---- The variants (lstm_cell.h): per unit; the row algorithm that calls these is lstm_cell_rows.h's. ----

// zoneout: d * previous + (1 - d) * fresh; d = 0 keeps the fresh value.
template <typename T>
LSTM_HOST_DEVICE T zoneout_mix(T d, T previous, T fresh) {
  return d * previous + (T(1) - d) * fresh;
}

template <typename T>
struct CellUpdate {
  Gates<T> act;  // activated gates
  T c_new;       // c~_t, the plain update f * c_{t-1} + i * g
};

// The gates and the new cell of one unit; the peepholes p_i, p_f see c_{t-1}, p_o the new cell (all zero:
// no peepholes).
template <typename T>
LSTM_HOST_DEVICE CellUpdate<T> cell_update(const Gates<T>& pre, T c_prev, T p_i, T p_f, T p_o) {
  CellUpdate<T> out;
  out.act.i = sigmoid(pre.i + p_i * c_prev);
  out.act.f = sigmoid(pre.f + p_f * c_prev);
  out.act.g = math::tanh(pre.g);
  out.c_new = out.act.f * c_prev + out.act.i * out.act.g;
  out.act.o = sigmoid(pre.o + p_o * out.c_new);
  return out;
}

// Backward of the hidden output of one unit, h~ = o * tanh(y) (y: c~, or LN(c~) * w + b).
template <typename T>
struct HiddenBackward {
  T grad_y;      // dL/dy
  T grad_pre_o;  // dL/d(pre-activation of o)
};

template <typename T>
LSTM_HOST_DEVICE HiddenBackward<T> hidden_backward(T o, T y, T grad_h_fresh) {
  const T tanh_y = math::tanh(y);
  HiddenBackward<T> out;
  out.grad_y = grad_h_fresh * o * (T(1) - tanh_y * tanh_y);
  const T grad_o = grad_h_fresh * tanh_y;
  out.grad_pre_o = grad_o * o * (T(1) - o);
  return out;
}

// Backward through the new cell of one unit, given dL/dc~ (all of it: through h~, o's peephole and the
// zoneout-kept part of c_t): the pre-activation gradients of i, f, g and dL/dc_{t-1} from c~ and the peepholes.
template <typename T>
struct CellUpdateBackward {
  T grad_pre_i, grad_pre_f, grad_pre_g;
  T grad_c_prev;
};

template <typename T>
LSTM_HOST_DEVICE CellUpdateBackward<T> cell_update_backward(const Gates<T>& act, T c_prev, T grad_c_new, T p_i,
                                                            T p_f) {
  const T one = T(1);
  CellUpdateBackward<T> out;
  out.grad_pre_i = grad_c_new * act.g * act.i * (one - act.i);
  out.grad_pre_f = grad_c_new * c_prev * act.f * (one - act.f);
  out.grad_pre_g = grad_c_new * act.i * (one - act.g * act.g);
  out.grad_c_prev = grad_c_new * act.f + out.grad_pre_i * p_i + out.grad_pre_f * p_f;
  return out;
}

// Layer norm as nn.LayerNorm: biased variance, this epsilon.
constexpr double kLayerNormEps = 1e-5;

template <typename T>
LSTM_HOST_DEVICE T layer_norm_rstd(T variance) {
  return T(1) / Transcendentals<T>::sqrt(variance + T(kLayerNormEps));
}

// dL/dx of one value of a normalized row x^ = (x - mean) * rstd, from dL/dx^ and the row's means of dL/dx^
// and of dL/dx^ * x^.
template <typename T>
LSTM_HOST_DEVICE T layer_norm_backward(T grad_normalized, T normalized, T rstd, T mean_grad, T mean_grad_normalized) {
  return rstd * (grad_normalized - mean_grad - normalized * mean_grad_normalized);
}

}  // namespace math
}  // namespace lstm_ext
