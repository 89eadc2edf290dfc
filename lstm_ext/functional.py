"""lstm(): a multi-layer, optionally bidirectional LSTM over the fused ops, with nn.LSTM's semantics.

Layers and directions are composed here; each (layer, direction) is one fused op call, differentiable
through LSTMFunction when a gradient is needed and the lighter inference op otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F
from torch import Tensor

from . import _ops, composite
from .autograd import LSTMFunction


def onnx_export():
    """lstm_ext._onnx while torch.onnx.export records the model, else None. Both exporters record through
    torch.export or a TorchScript trace: testing those first keeps eager calls fast, and _onnx (which
    imports the exporters' flags, ~50 ms) is imported only then."""
    if not torch.compiler.is_exporting() and torch._C._get_tracing_state() is None:
        return None
    from . import _onnx

    return _onnx if _onnx.exporting() else None


def _layer(input, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, h0, c0, reverse, training=True):
    """One (layer, direction). Eager calls keep the activations for a backward whenever a gradient may be
    asked for; a recorded program (torch.export, torch.jit.trace) keeps them when ``training`` (the module's
    mode) is set, so an eval() model records the inference op whatever the grad mode, as nn.LSTM's does."""
    tensors = (input, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, h0, c0)
    eager = not torch.compiler.is_compiling()
    if not eager:
        # torch.compile cannot trace an autograd.Function given one tensor in two places (hx = (zeros, zeros)):
        # each gets a view of its own, which costs nothing in a graph (telling them apart by id would make
        # dynamo guard on every tensor object, and recompile for every new input).
        tensors = tuple(t if t is None else t.view_as(t) for t in tensors)
    elif torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0:
        return composite.layer(*tensors, reverse)  # torch.func and forward-mode AD see every op
    needs_grad = torch.is_grad_enabled() and any([t is not None and t.requires_grad for t in tensors])
    jit_tracing = eager and torch._C._get_tracing_state() is not None
    if jit_tracing or torch.compiler.is_exporting():
        needs_grad = training
    if torch._C._is_any_autocast_enabled() or jit_tracing:
        # Through the op's own autograd kernel, below its autocast kernel (which casts the inputs first), and
        # as one op in a TorchScript trace.
        output, h_n, c_n, *_ = _ops.lstm_layer_forward(*tensors, reverse, needs_grad)
    elif needs_grad:
        output, h_n, c_n, *_ = LSTMFunction.apply(*tensors, reverse, True)
    else:
        output, h_n, c_n, *_ = _ops.lstm_layer_forward(*tensors, reverse, False)
    return output, h_n, c_n


def lstm(
    input: Tensor,
    hx: tuple[Tensor, Tensor],
    flat_weights: Sequence[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
    batch_first: bool,
    batch_sizes: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The functional LSTM, in the argument order of ``torch._VF.lstm``.

    input: ``[T, B, I]`` (``[B, T, I]`` when batch_first), or with ``batch_sizes`` the rows ``[N, I]``
    of a PackedSequence (sorted by length; batch_first does not apply); hx: ``(h0, c0)``, each
    ``[num_layers * num_directions, B, H]`` (h0 ``[..., proj_size]`` with projections); flat_weights: per
    layer, per direction, ``weight_ih, weight_hh[, bias_ih, bias_hh][, weight_hr]`` (``nn.LSTM``'s order;
    a ``weight_hr`` per direction means proj_size > 0). Dropout is applied to the output
    of every layer but the last when training. Returns ``(output, (h_n, c_n))``, output in the layout
    of input, h_n and c_n each sequence's last state.
    """
    onnx = onnx_export()
    if onnx is not None:  # ONNX's own LSTM operator, not the fused op
        return onnx.lstm(input, hx, flat_weights, has_biases, num_layers, dropout, training, bidirectional,
                         batch_first, batch_sizes)
    expected_dim = 3 if batch_sizes is None else 2
    if input.dim() != expected_dim:
        layout = "[N, I] (packed)" if batch_sizes is not None else ("[B, T, I]" if batch_first else "[T, B, I]")
        raise ValueError(f"lstm: input must be {expected_dim}-D {layout}, got {input.dim()}-D with shape "
                         f"{tuple(input.shape)}")
    if batch_sizes is None and input.size(1 if batch_first else 0) == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")  # nn.LSTM's words
    num_directions = 2 if bidirectional else 1
    base = 4 if has_biases else 2
    per_direction = len(flat_weights) // (num_layers * num_directions)
    if per_direction not in (base, base + 1) or len(flat_weights) != per_direction * num_layers * num_directions:
        raise ValueError(f"lstm: flat_weights must hold {base} (or {base + 1} with weight_hr) tensors per layer and "
                         f"direction for num_layers={num_layers}, bidirectional={bidirectional}, "
                         f"has_biases={has_biases}, got {len(flat_weights)}")
    projected = per_direction == base + 1
    h0, c0 = hx
    for name, state in (("h0", h0), ("c0", c0)):
        if state.dim() != 3 or state.size(0) != num_layers * num_directions:
            raise ValueError(f"lstm: {name} must have shape [num_layers * num_directions = "
                             f"{num_layers * num_directions}, batch, hidden_size], got {tuple(state.shape)}")

    to_time_major = batch_first and batch_sizes is None
    layer_input = input.transpose(0, 1) if to_time_major else input
    h_n, c_n = [], []
    for layer in range(num_layers):
        direction_outputs = []
        for direction in range(num_directions):
            index = layer * num_directions + direction
            w = flat_weights[index * per_direction:(index + 1) * per_direction]
            bias_ih, bias_hh = (w[2], w[3]) if has_biases else (None, None)
            weight_hr = w[-1] if projected else None
            output, h, c = _layer(layer_input, batch_sizes, w[0], w[1], bias_ih, bias_hh, weight_hr, h0[index],
                                  c0[index], reverse=direction == 1, training=training)
            direction_outputs.append(output)
            h_n.append(h)
            c_n.append(c)
        layer_output = direction_outputs[0] if num_directions == 1 else torch.cat(direction_outputs, dim=-1)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_output = F.dropout(layer_output, p=dropout, training=True)
        layer_input = layer_output
    output = layer_input.transpose(0, 1) if to_time_major else layer_input
    if len(h_n) == 1:  # one layer, one direction: a view, not a copy (torch.stack of one tensor copies)
        return output, (h_n[0].unsqueeze(0), c_n[0].unsqueeze(0))
    return output, (torch.stack(h_n), torch.stack(c_n))


def lstm_cell(
    input: Tensor,
    hx: tuple[Tensor, Tensor],
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    *,
    training: bool = True,
) -> tuple[Tensor, Tensor]:
    """One LSTM step, in the argument order of ``torch._VF.lstm_cell``: input ``[B, I]``, hx ``(h, c)``
    each ``[B, H]``; returns ``(h', c')``. It is the layer op over a sequence of one step, so it runs
    the same fused pointwise pass as the LSTM. ``training`` False (an eval() module) lets torch.export
    record the inference op."""
    _, h, c = _layer(input.unsqueeze(0), None, weight_ih, weight_hh, bias_ih, bias_hh, None, hx[0], hx[1],
                     reverse=False, training=training)
    return h, c
