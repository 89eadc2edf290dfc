"""One LSTM layer in one direction written with ordinary torch ops: the route for the derivatives the
fused op does not provide (second order, forward mode, torch.func transforms, vmap).

It computes what the fused op computes (the same gate order and state update), but step by step in
differentiable PyTorch ops, so autograd, forward-mode AD and functorch see every operation. It is far
slower than the fused op and is only taken where the fused op cannot go.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _cell(x_gates: Tensor, h: Tensor, c: Tensor, weight_hh: Tensor, bias_hh: Tensor | None,
          weight_hr: Tensor | None) -> tuple[Tensor, Tensor]:
    gates = x_gates + h @ weight_hh.t()
    if bias_hh is not None:
        gates = gates + bias_hh
    i, f, g, o = gates.chunk(4, dim=-1)  # nn.LSTM's gate order
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return (h if weight_hr is None else h @ weight_hr.t()), c


def layer(input: Tensor, batch_sizes: Tensor | None, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None,
          bias_hh: Tensor | None, weight_hr: Tensor | None, h0: Tensor, c0: Tensor,
          reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(output, h_n, c_n)`` of ``lstm_layer_forward`` for the same arguments (see LSTMFunction)."""
    x_gates = input @ weight_ih.t()  # every step's input projection in one product
    if bias_ih is not None:
        x_gates = x_gates + bias_ih
    if batch_sizes is None:
        steps = range(input.size(0) - 1, -1, -1) if reverse else range(input.size(0))
        h, c = h0, c0
        outputs = [None] * input.size(0)
        for t in steps:
            h, c = _cell(x_gates[t], h, c, weight_hh, bias_hh, weight_hr)
            outputs[t] = h
        return torch.stack(outputs), h, c

    # Packed rows: step t holds the first batch_sizes[t] sequences (sorted by length). Each step updates
    # the states of the sequences it holds; the others keep theirs, so after the last step h and c hold
    # every sequence's own final state, in either direction.
    sizes = batch_sizes.tolist()
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    h, c = h0, c0
    outputs = [None] * len(sizes)
    for t in (range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))):
        size = sizes[t]
        h_t, c_t = _cell(x_gates[offsets[t]:offsets[t + 1]], h[:size], c[:size], weight_hh, bias_hh, weight_hr)
        outputs[t] = h_t
        h, c = torch.cat([h_t, h[size:]]), torch.cat([c_t, c[size:]])
    return torch.cat(outputs), h, c
