// lstm_cell_rows.h -- one step of the LSTM cell's variants (lstm_cell.h) over one row, forward and
// backward, written once for every device over an executor that runs the row's units:
//   ex.units(n, f)  calls f(lanes, j) for groups of units j in [0, n) (a backend's vector lanes, or a
//                   thread's strided units), lanes.load(p) / lanes.store(p, v) and lanes' value type;
//   ex.sum(n, f)    the row's sum of f(lanes, j), the same value on every unit's thread, in a fixed order;
//   ex.sync()       makes what every unit wrote visible to every other (a GPU block's barrier);
//   ex.single(f)    runs f once for the row.
// The per-unit math is lstm_math.h's. The plain cell does not come here: its backends run their own
// plain passes (one load and store per value, nothing else), which stay bit for bit nn.LSTM's.
// No torch headers: compiled by the host compiler and nvcc.
#pragma once

#include <cstdint>
#include <type_traits>

#include "lstm_math.h"

// Device functions under nvcc (the executor's barriers are device code); on the host, as lstm_math.h's.
#if defined(__CUDACC__)
#define LSTM_CELL_ROW_FN __device__ __forceinline__
#else
#define LSTM_CELL_ROW_FN static inline
#endif

namespace lstm_ext {
namespace cell_rows {

// A row's buffers and parameters for the forward; null where a variant is off. S: storage, A: math scalar.
template <typename S, typename A>
struct ForwardRow {
  int64_t H;
  S* gates;            // [4H] in: pre-activations (the input part and biases; without layer norm the recurrent
                       // product too); out: activated, always where layer_norm_c reads o back, else when keep_gates
  S* recurrent;        // layer norm: [4H] in: the raw recurrent product; out: normalized
  S* stats;            // layer norm: [4] out: [1] rstd of the recurrent product, [2] mean and [3] rstd of c~
  const S* c_prev;     // [H]
  S* c;                // [H] out: c_t; may alias c_prev (each value is read before it is written)
  S* h;                // [H] out: h_t (before the projection); c~ is parked here until LN(c~)'s statistics exist
  const S* h_prev;     // zoneout of h: [H] h_{t-1}
  const S* peephole;   // [3H] (i, f, o)
  const S* layer_norm_weight_hh;  // [4H] (with `recurrent`)
  const S* layer_norm_weight_c;   // [H] (with layer_norm_bias_c)
  const S* layer_norm_bias_c;
  const S* zoneout_cell_mask;     // [H], else the rate
  const S* zoneout_hidden_mask;
  A zoneout_cell, zoneout_hidden;
  bool zoneout_cell_on, zoneout_hidden_on;
  bool keep_gates;
};

template <typename L, typename S>
LSTM_CELL_ROW_FN typename L::type load_or(const L& lanes, const S* p, int64_t j, typename L::type fallback) {
  return p != nullptr ? lanes.load(p + j) : fallback;
}

template <typename S, typename A, typename Exec>
LSTM_CELL_ROW_FN void forward_row(const Exec& ex, const ForwardRow<S, A>& r) {
  const int64_t H = r.H;
  A rstd_recurrent = A(0);
  if (r.recurrent != nullptr) {
    const A n = A(4 * H);
    const A mean = ex.sum(4 * H, [&](const auto& l, int64_t j) { return l.load(r.recurrent + j); }) / n;
    const A variance = ex.sum(4 * H, [&](const auto& l, int64_t j) {
      using V = typename std::decay_t<decltype(l)>::type;
      const V d = l.load(r.recurrent + j) - V(mean);
      return d * d;
    }) / n;
    rstd_recurrent = math::layer_norm_rstd(variance);
    ex.units(4 * H, [&](const auto& l, int64_t j) {
      using V = typename std::decay_t<decltype(l)>::type;
      l.store(r.recurrent + j, (l.load(r.recurrent + j) - V(mean)) * V(rstd_recurrent));
    });
    ex.sync();  // a unit's four gates were normalized by other units' threads
  }
  const bool layer_norm_c = r.layer_norm_weight_c != nullptr;
  ex.units(H, [&](const auto& l, int64_t j) {
    using V = typename std::decay_t<decltype(l)>::type;
    S* g = r.gates;
    math::Gates<V> pre{l.load(g + j), l.load(g + H + j), l.load(g + 2 * H + j), l.load(g + 3 * H + j)};
    if (r.recurrent != nullptr) {
      const S* n = r.recurrent;
      const S* w = r.layer_norm_weight_hh;
      pre.i = pre.i + l.load(n + j) * l.load(w + j);
      pre.f = pre.f + l.load(n + H + j) * l.load(w + H + j);
      pre.g = pre.g + l.load(n + 2 * H + j) * l.load(w + 2 * H + j);
      pre.o = pre.o + l.load(n + 3 * H + j) * l.load(w + 3 * H + j);
    }
    const V zero(A(0));
    const V c_prev = l.load(r.c_prev + j);
    const auto u = math::cell_update(pre, c_prev, load_or(l, r.peephole, j, zero),
                                     load_or(l, r.peephole == nullptr ? nullptr : r.peephole + H, j, zero),
                                     load_or(l, r.peephole == nullptr ? nullptr : r.peephole + 2 * H, j, zero));
    l.store(r.c + j, r.zoneout_cell_on
                         ? math::zoneout_mix(load_or(l, r.zoneout_cell_mask, j, V(r.zoneout_cell)), c_prev, u.c_new)
                         : u.c_new);
    if (r.keep_gates) {
      l.store(g + j, u.act.i);
      l.store(g + H + j, u.act.f);
      l.store(g + 2 * H + j, u.act.g);
    }
    if (r.keep_gates || layer_norm_c) {
      l.store(g + 3 * H + j, u.act.o);
    }
    if (layer_norm_c) {
      l.store(r.h + j, u.c_new);
    } else {
      const V h = u.act.o * math::tanh(u.c_new);
      l.store(r.h + j, r.zoneout_hidden_on ? math::zoneout_mix(load_or(l, r.zoneout_hidden_mask, j,
                                                                       V(r.zoneout_hidden)),
                                                               l.load(r.h_prev + j), h)
                                           : h);
    }
  });
  if (!layer_norm_c) {
    if (r.recurrent != nullptr) {
      ex.single([&] { r.stats[1] = static_cast<S>(rstd_recurrent); });
    }
    return;
  }
  const A n = A(H);
  const A mean = ex.sum(H, [&](const auto& l, int64_t j) { return l.load(r.h + j); }) / n;
  const A variance = ex.sum(H, [&](const auto& l, int64_t j) {
    using V = typename std::decay_t<decltype(l)>::type;
    const V d = l.load(r.h + j) - V(mean);
    return d * d;
  }) / n;
  const A rstd = math::layer_norm_rstd(variance);
  ex.units(H, [&](const auto& l, int64_t j) {
    using V = typename std::decay_t<decltype(l)>::type;
    const V y = (l.load(r.h + j) - V(mean)) * V(rstd) * l.load(r.layer_norm_weight_c + j) +
                l.load(r.layer_norm_bias_c + j);
    const V h = l.load(r.gates + 3 * H + j) * math::tanh(y);
    l.store(r.h + j, r.zoneout_hidden_on ? math::zoneout_mix(load_or(l, r.zoneout_hidden_mask, j, V(r.zoneout_hidden)),
                                                             l.load(r.h_prev + j), h)
                                         : h);
  });
  ex.single([&] {
    if (r.recurrent != nullptr) {
      r.stats[1] = static_cast<S>(rstd_recurrent);
    }
    r.stats[2] = static_cast<S>(mean);
    r.stats[3] = static_cast<S>(rstd);
  });
}

// A row's buffers and parameters for the backward; null where a variant is off.
template <typename S, typename A>
struct BackwardRow {
  int64_t H;
  const S* gates;        // [4H] activated, kept by the forward
  const S* c;            // [H] c_t
  const S* c_prev;       // [H]
  const S* grad_h_out;   // [H] dL/dh_t from the layer's output
  const S* grad_h_next;  // [H] dL/dh_t through the next step's recurrent product (before the recurrent mask)
  const S* recurrent_mask;  // [H]
  S* carry;              // [H] in: dL/dh_t that skips the recurrent product (zoneout's kept h, grad_h_n); out: the
                         // same for h_{t-1}
  S* grad_c;             // [H] in: dL/dc_t from step t+1; out: dL/dc_{t-1}
  const S* grad_cells;   // [H] dL/dc_t from the cell states
  S* grad_gates;         // [4H] out: dL/d(pre-activations)
  S* grad_recurrent;     // layer norm: [4H] out: dL/d(raw recurrent product)
  S* grad_params;        // out: this row's terms of the parameter gradients: peephole [3H] at
                         // peephole_terms, LN(c)'s weight and bias [2H] at layer_norm_c_terms
  int64_t peephole_terms, layer_norm_c_terms;
  int64_t grad_params_width;  // grad_params' columns
  const S* normalized_recurrent;  // layer norm: [4H]
  const S* stats;        // layer norm: [4]
  const S* peephole;
  const S* layer_norm_weight_hh;
  const S* layer_norm_weight_c;
  const S* layer_norm_bias_c;
  const S* zoneout_cell_mask;
  const S* zoneout_hidden_mask;
  A zoneout_cell, zoneout_hidden;
  bool zoneout_cell_on, zoneout_hidden_on;
};

template <typename S, typename A, typename Exec>
LSTM_CELL_ROW_FN void backward_row(const Exec& ex, const BackwardRow<S, A>& r) {
  const int64_t H = r.H;
  const bool layer_norm_c = r.layer_norm_weight_c != nullptr;
  const A mean_c = layer_norm_c ? static_cast<A>(r.stats[2]) : A(0);
  const A rstd_c = layer_norm_c ? static_cast<A>(r.stats[3]) : A(0);
  // The unit's activated gates, c_{t-1} and c~ (recomputed where zoneout made c_t differ from it).
  const auto unit_state = [&](const auto& l, int64_t j, auto& act, auto& c_prev, auto& c_new) {
    const S* g = r.gates;
    act = {l.load(g + j), l.load(g + H + j), l.load(g + 2 * H + j), l.load(g + 3 * H + j)};
    c_prev = l.load(r.c_prev + j);
    c_new = r.zoneout_cell_on ? act.f * c_prev + act.i * act.g : l.load(r.c + j);
  };
  // Everything after dL/dc~'s part through h~ is known: the gates' gradients and dL/dc_{t-1}.
  const auto finish_unit = [&](const auto& l, int64_t j, const auto& act, const auto& c_prev, const auto& c_new,
                               const auto& grad_c_new_from_h, const auto& grad_pre_o) {
    using V = std::decay_t<decltype(c_prev)>;
    const V zero(A(0));
    const V grad_c_t = l.load(r.grad_c + j) + load_or(l, r.grad_cells, j, zero);
    const V d_c = r.zoneout_cell_on ? load_or(l, r.zoneout_cell_mask, j, V(r.zoneout_cell)) : zero;
    const V p_o = load_or(l, r.peephole == nullptr ? nullptr : r.peephole + 2 * H, j, zero);
    const V grad_c_new = grad_c_new_from_h + grad_pre_o * p_o + (V(A(1)) - d_c) * grad_c_t;
    const auto b = math::cell_update_backward(act, c_prev, grad_c_new, load_or(l, r.peephole, j, zero),
                                              load_or(l, r.peephole == nullptr ? nullptr : r.peephole + H, j, zero));
    S* dg = r.grad_gates;
    l.store(dg + j, b.grad_pre_i);
    l.store(dg + H + j, b.grad_pre_f);
    l.store(dg + 2 * H + j, b.grad_pre_g);
    l.store(dg + 3 * H + j, grad_pre_o);
    l.store(r.grad_c + j, r.zoneout_cell_on ? d_c * grad_c_t + b.grad_c_prev : b.grad_c_prev);
    if (r.peephole != nullptr) {
      S* terms = r.grad_params + r.peephole_terms;
      l.store(terms + j, b.grad_pre_i * c_prev);
      l.store(terms + H + j, b.grad_pre_f * c_prev);
      l.store(terms + 2 * H + j, grad_pre_o * c_new);
    }
  };
  ex.units(H, [&](const auto& l, int64_t j) {
    using V = typename std::decay_t<decltype(l)>::type;
    const V zero(A(0));
    math::Gates<V> act;
    V c_prev, c_new;
    unit_state(l, j, act, c_prev, c_new);
    V normalized_c = zero;
    V y = c_new;
    if (layer_norm_c) {
      normalized_c = (c_new - V(mean_c)) * V(rstd_c);
      y = normalized_c * l.load(r.layer_norm_weight_c + j) + l.load(r.layer_norm_bias_c + j);
    }
    const V through_recurrence = l.load(r.grad_h_next + j);
    const V grad_h = l.load(r.grad_h_out + j) +
                     (r.recurrent_mask != nullptr ? l.load(r.recurrent_mask + j) * through_recurrence
                                                  : through_recurrence) +
                     load_or(l, r.carry, j, zero);
    V grad_h_fresh = grad_h;
    if (r.zoneout_hidden_on) {
      const V d_h = load_or(l, r.zoneout_hidden_mask, j, V(r.zoneout_hidden));
      grad_h_fresh = (V(A(1)) - d_h) * grad_h;
      l.store(r.carry + j, d_h * grad_h);
    } else if (r.carry != nullptr) {
      l.store(r.carry + j, zero);
    }
    const auto hb = math::hidden_backward(act.o, y, grad_h_fresh);
    if (!layer_norm_c) {
      finish_unit(l, j, act, c_prev, c_new, hb.grad_y, hb.grad_pre_o);
      return;
    }
    // Parked until the row's means are known: dL/d(pre o) in its gate gradient, dL/dy in LN's bias term.
    S* terms = r.grad_params + r.layer_norm_c_terms;
    l.store(terms + j, hb.grad_y * normalized_c);
    l.store(terms + H + j, hb.grad_y);
    l.store(r.grad_gates + 3 * H + j, hb.grad_pre_o);
  });
  if (layer_norm_c) {
    const S* grad_y = r.grad_params + r.layer_norm_c_terms + H;
    const A n = A(H);
    // dL/d(normalized c~) = dL/dy * w_c; its row means, and of it times normalized c~ (= dL/dw_c's term * w_c).
    const A mean_grad = ex.sum(H, [&](const auto& l, int64_t j) {
      return l.load(grad_y + j) * l.load(r.layer_norm_weight_c + j);
    }) / n;
    const A mean_grad_normalized = ex.sum(H, [&](const auto& l, int64_t j) {
      return l.load(r.grad_params + r.layer_norm_c_terms + j) * l.load(r.layer_norm_weight_c + j);
    }) / n;
    ex.units(H, [&](const auto& l, int64_t j) {
      using V = typename std::decay_t<decltype(l)>::type;
      math::Gates<V> act;
      V c_prev, c_new;
      unit_state(l, j, act, c_prev, c_new);
      const V normalized_c = (c_new - V(mean_c)) * V(rstd_c);
      const V grad_normalized = l.load(grad_y + j) * l.load(r.layer_norm_weight_c + j);
      const V grad_c_new_from_h = math::layer_norm_backward(grad_normalized, normalized_c, V(rstd_c), V(mean_grad),
                                                            V(mean_grad_normalized));
      finish_unit(l, j, act, c_prev, c_new, grad_c_new_from_h, l.load(r.grad_gates + 3 * H + j));
    });
  }
  if (r.grad_recurrent != nullptr) {
    ex.sync();  // the row's gate gradients, written by every unit's thread
    const A n = A(4 * H);
    const A rstd = static_cast<A>(r.stats[1]);
    const S* w = r.layer_norm_weight_hh;
    const A mean_grad = ex.sum(4 * H, [&](const auto& l, int64_t j) {
      return l.load(r.grad_gates + j) * l.load(w + j);
    }) / n;
    const A mean_grad_normalized = ex.sum(4 * H, [&](const auto& l, int64_t j) {
      return l.load(r.grad_gates + j) * l.load(w + j) * l.load(r.normalized_recurrent + j);
    }) / n;
    ex.units(4 * H, [&](const auto& l, int64_t j) {
      using V = typename std::decay_t<decltype(l)>::type;
      l.store(r.grad_recurrent + j,
              math::layer_norm_backward(l.load(r.grad_gates + j) * l.load(w + j), l.load(r.normalized_recurrent + j),
                                        V(rstd), V(mean_grad), V(mean_grad_normalized)));
    });
  }
}

// Layer norm of a row's input product, before the loop: in `gates` x W_ih^T; out: LN(x W_ih^T) * w_ih + b_ih +
// b_hh in `gates`, LN(x W_ih^T) in `normalized`, its rstd in stats[0].
template <typename S>
struct InputNormRow {
  int64_t width;      // 4H
  S* gates;           // [4H]
  S* normalized;      // [4H]
  S* stats;           // [4]
  const S* weight;    // layer_norm_weight_ih [4H]
  const S* bias_ih;   // [4H] or null (then bias_hh is null too)
  const S* bias_hh;
};

template <typename S, typename A, typename Exec>
LSTM_CELL_ROW_FN void input_norm_row(const Exec& ex, const InputNormRow<S>& r) {
  const int64_t n = r.width;
  const A mean = ex.sum(n, [&](const auto& l, int64_t j) { return l.load(r.gates + j); }) / A(n);
  const A variance = ex.sum(n, [&](const auto& l, int64_t j) {
    using V = typename std::decay_t<decltype(l)>::type;
    const V d = l.load(r.gates + j) - V(mean);
    return d * d;
  }) / A(n);
  const A rstd = math::layer_norm_rstd(variance);
  ex.units(n, [&](const auto& l, int64_t j) {
    using V = typename std::decay_t<decltype(l)>::type;
    const V x = (l.load(r.gates + j) - V(mean)) * V(rstd);
    l.store(r.normalized + j, x);
    const V scaled = x * l.load(r.weight + j);
    l.store(r.gates + j, r.bias_ih != nullptr ? scaled + (l.load(r.bias_ih + j) + l.load(r.bias_hh + j)) : scaled);
  });
  ex.single([&] { r.stats[0] = static_cast<S>(rstd); });
}

// Its backward, after the loop: dL/d(x W_ih^T) from dL/dG; and each column's terms of the layer norm weights'
// gradients, dL/dG * LN(x W_ih^T) and dL/dG * LN(h W_hh^T), added to the caller's partial sums (kept in the
// math type A: the executor's lanes load and store A as well as S).
template <typename S, typename A>
struct InputNormBackwardRow {
  int64_t width;                   // 4H
  const S* grad_gates;             // [4H] dL/dG
  const S* normalized;             // [4H] LN(x W_ih^T)
  const S* normalized_recurrent;   // [4H] LN(h W_hh^T)
  const S* stats;                  // [4]: [0] the input product's rstd
  const S* weight;                 // layer_norm_weight_ih [4H]
  S* grad_product;                 // [4H] out
  A* sum_weight_ih;                // [4H] in/out: += dL/dG * LN(x W_ih^T)
  A* sum_weight_hh;                // [4H] in/out: += dL/dG * LN(h W_hh^T)
};

template <typename S, typename A, typename Exec>
LSTM_CELL_ROW_FN void input_norm_backward_row(const Exec& ex, const InputNormBackwardRow<S, A>& r) {
  const int64_t n = r.width;
  const A rstd = static_cast<A>(r.stats[0]);
  const A mean_grad = ex.sum(n, [&](const auto& l, int64_t j) {
    return l.load(r.grad_gates + j) * l.load(r.weight + j);
  }) / A(n);
  const A mean_grad_normalized = ex.sum(n, [&](const auto& l, int64_t j) {
    return l.load(r.grad_gates + j) * l.load(r.weight + j) * l.load(r.normalized + j);
  }) / A(n);
  ex.units(n, [&](const auto& l, int64_t j) {
    using V = typename std::decay_t<decltype(l)>::type;
    const V grad = l.load(r.grad_gates + j), x = l.load(r.normalized + j);
    l.store(r.grad_product + j,
            math::layer_norm_backward(grad * l.load(r.weight + j), x, V(rstd), V(mean_grad), V(mean_grad_normalized)));
    l.store(r.sum_weight_ih + j, l.load(r.sum_weight_ih + j) + grad * x);
    l.store(r.sum_weight_hh + j, l.load(r.sum_weight_hh + j) + grad * l.load(r.normalized_recurrent + j));
  });
}

template <typename T>
LSTM_CELL_ROW_FN T* row_at(T* first, int64_t row, int64_t width) {
  return first == nullptr ? nullptr : first + row * width;
}

// Row `row` of a step whose row 0 is `first`: every per-row buffer is contiguous rows of its width.
template <typename S, typename A>
LSTM_CELL_ROW_FN ForwardRow<S, A> forward_row_at(const ForwardRow<S, A>& first, int64_t row) {
  const int64_t H = first.H;
  ForwardRow<S, A> r = first;
  r.gates = row_at(first.gates, row, 4 * H);
  r.recurrent = row_at(first.recurrent, row, 4 * H);
  r.stats = row_at(first.stats, row, 4);
  r.c_prev = row_at(first.c_prev, row, H);
  r.c = row_at(first.c, row, H);
  r.h = row_at(first.h, row, H);
  r.h_prev = row_at(first.h_prev, row, H);
  r.zoneout_cell_mask = row_at(first.zoneout_cell_mask, row, H);
  r.zoneout_hidden_mask = row_at(first.zoneout_hidden_mask, row, H);
  return r;
}

template <typename S, typename A>
LSTM_CELL_ROW_FN BackwardRow<S, A> backward_row_at(const BackwardRow<S, A>& first, int64_t row) {
  const int64_t H = first.H;
  BackwardRow<S, A> r = first;
  r.gates = row_at(first.gates, row, 4 * H);
  r.c = row_at(first.c, row, H);
  r.c_prev = row_at(first.c_prev, row, H);
  r.grad_h_out = row_at(first.grad_h_out, row, H);
  r.grad_h_next = row_at(first.grad_h_next, row, H);
  r.recurrent_mask = row_at(first.recurrent_mask, row, H);
  r.carry = row_at(first.carry, row, H);
  r.grad_c = row_at(first.grad_c, row, H);
  r.grad_cells = row_at(first.grad_cells, row, H);
  r.grad_gates = row_at(first.grad_gates, row, 4 * H);
  r.grad_recurrent = row_at(first.grad_recurrent, row, 4 * H);
  r.grad_params = row_at(first.grad_params, row, first.grad_params_width);
  r.normalized_recurrent = row_at(first.normalized_recurrent, row, 4 * H);
  r.stats = row_at(first.stats, row, 4);
  r.zoneout_cell_mask = row_at(first.zoneout_cell_mask, row, H);
  r.zoneout_hidden_mask = row_at(first.zoneout_hidden_mask, row, H);
  return r;
}

}  // namespace cell_rows
}  // namespace lstm_ext
