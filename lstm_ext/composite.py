"""One LSTM layer in one direction written with ordinary torch ops: the route for the derivatives the
fused op does not provide (second order, forward mode, torch.func transforms, vmap).

It computes what the fused op computes (the same gate order, state update and variants: peephole,
layer norm, recurrent dropout, zoneout), but step by step in differentiable PyTorch ops, so autograd,
forward-mode AD and functorch see every operation. It is far slower than the fused op and is only taken
where the fused op cannot go. Its arguments are the forward op's, in the op's order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's


def _normalized(x: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=_LAYER_NORM_EPS)


def _mix(d, previous: Tensor, new: Tensor) -> Tensor:
    """Zoneout: d * previous + (1 - d) * new, d a mask or a rate (0: new)."""
    if isinstance(d, Tensor):
        return d * previous + (1 - d) * new
    return new if d == 0 else d * previous + (1 - d) * new


def _cell(x_gates: Tensor, h: Tensor, c: Tensor, weight_hh: Tensor, bias_hh: Tensor | None, weight_hr: Tensor | None,
          v: dict, d_c, d_h) -> tuple[Tensor, Tensor]:
    h_in = h if v["recurrent_mask"] is None else h * v["recurrent_mask"][: h.size(0)]
    recurrent = h_in @ weight_hh.t()
    if v["layer_norm_weight_hh"] is not None:
        recurrent = _normalized(recurrent) * v["layer_norm_weight_hh"]
    gates = x_gates + recurrent
    if bias_hh is not None:
        gates = gates + bias_hh
    i, f, g, o = gates.chunk(4, dim=-1)  # nn.LSTM's gate order
    peephole = v["weight_peephole"]
    if peephole is not None:
        p_i, p_f, p_o = peephole.chunk(3)
        i, f = i + p_i * c, f + p_f * c
    new_c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    if peephole is not None:
        o = o + p_o * new_c
    shown_c = new_c
    if v["layer_norm_weight_c"] is not None:
        shown_c = _normalized(new_c) * v["layer_norm_weight_c"] + v["layer_norm_bias_c"]
    new_h = torch.sigmoid(o) * torch.tanh(shown_c)
    if weight_hr is not None:
        new_h = new_h @ weight_hr.t()
    return _mix(d_h, h, new_h), _mix(d_c, c, new_c)


def layer(input: Tensor, batch_sizes: Tensor | None, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None,
          bias_hh: Tensor | None, weight_hr: Tensor | None, h0: Tensor, c0: Tensor, reverse: bool,
          training: bool = True, weight_peephole: Tensor | None = None, layer_norm_weight_ih: Tensor | None = None,
          layer_norm_weight_hh: Tensor | None = None, layer_norm_weight_c: Tensor | None = None,
          layer_norm_bias_c: Tensor | None = None, recurrent_mask: Tensor | None = None,
          zoneout_cell_mask: Tensor | None = None, zoneout_hidden_mask: Tensor | None = None,
          zoneout_cell: float = 0.0, zoneout_hidden: float = 0.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(output, h_n, c_n, cells)`` of ``lstm_layer_forward`` for the same arguments (see LSTMFunction):
    cells are every step's c_t, laid out like output."""
    v = {"weight_peephole": weight_peephole, "layer_norm_weight_hh": layer_norm_weight_hh,
         "layer_norm_weight_c": layer_norm_weight_c, "layer_norm_bias_c": layer_norm_bias_c,
         "recurrent_mask": recurrent_mask}
    x_gates = input @ weight_ih.t()  # every step's input projection in one product
    if layer_norm_weight_ih is not None:
        x_gates = _normalized(x_gates) * layer_norm_weight_ih
    if bias_ih is not None:
        x_gates = x_gates + bias_ih

    def rates(t_rows: slice | int):
        d_c = zoneout_cell if zoneout_cell_mask is None else zoneout_cell_mask[t_rows]
        d_h = zoneout_hidden if zoneout_hidden_mask is None else zoneout_hidden_mask[t_rows]
        return d_c, d_h

    if batch_sizes is None:
        steps = range(input.size(0) - 1, -1, -1) if reverse else range(input.size(0))
        h, c = h0, c0
        outputs, cells = [None] * input.size(0), [None] * input.size(0)
        for t in steps:
            h, c = _cell(x_gates[t], h, c, weight_hh, bias_hh, weight_hr, v, *rates(t))
            outputs[t], cells[t] = h, c
        return torch.stack(outputs), h, c, torch.stack(cells)

    # Packed rows: step t holds the first batch_sizes[t] sequences (sorted by length). Each step updates
    # the states of the sequences it holds; the others keep theirs, so after the last step h and c hold
    # every sequence's own final state, in either direction.
    sizes = batch_sizes.tolist()
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    h, c = h0, c0
    outputs, cells = [None] * len(sizes), [None] * len(sizes)
    for t in (range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))):
        size = sizes[t]
        rows = slice(offsets[t], offsets[t + 1])
        h_t, c_t = _cell(x_gates[rows], h[:size], c[:size], weight_hh, bias_hh, weight_hr, v, *rates(rows))
        outputs[t], cells[t] = h_t, c_t
        h, c = torch.cat([h_t, h[size:]]), torch.cat([c_t, c[size:]])
    return torch.cat(outputs), h, c, torch.cat(cells)
