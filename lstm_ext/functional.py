"""lstm(): a multi-layer, optionally bidirectional LSTM over the fused ops, with nn.LSTM's semantics.

Layers and directions are composed here; each (layer, direction) is one fused op call, differentiable
through LSTMFunction when a gradient is needed and the lighter inference op otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F
from torch import Tensor

from . import _ops, composite
from ._ops import ForwardArgs, ForwardResults
from .autograd import LSTMFunction


def onnx_export():
    """lstm_ext._onnx while torch.onnx.export records the model, else None. Both exporters record through
    torch.export or a TorchScript trace: testing those first keeps eager calls fast, and _onnx (which
    imports the exporters' flags, ~50 ms) is imported only then."""
    if not torch.compiler.is_exporting() and torch._C._get_tracing_state() is None:
        return None
    from . import _onnx

    return _onnx if _onnx.exporting() else None


class VariantMasks(NamedTuple):
    """The random masks of one forward of the variants, as ``lstm()`` takes them (see there)."""

    recurrent_dropout_masks: list[Tensor] | None
    zoneout_masks: list[tuple[Tensor | None, Tensor | None]] | None


def _zoneout_rates(zoneout) -> tuple[float, float]:
    if isinstance(zoneout, (tuple, list)):
        return float(zoneout[0]), float(zoneout[1])
    return float(zoneout), float(zoneout)


def sample_masks(input: Tensor, num_layers: int, bidirectional: bool, batch_first: bool, hidden_size: int,
                 proj_size: int = 0, recurrent_dropout: float = 0.0, zoneout=0.0,
                 batch_sizes: Tensor | None = None, *, batch: int | None = None) -> VariantMasks:
    """Draws one forward's masks from torch's default generator (``lstm_ext.bernoulli_mask``), in order: per
    layer and direction the recurrent dropout mask ``[B, P]`` (values 0 or 1/(1-p)), then the zoneout masks
    of c and of h (each laid out like the layer's per-step rows with H features: ``[T, B, H]``, ``[B, T, H]``
    when batch_first, ``[N, H]`` packed; values 0/1, 1 keeping the previous value), each only where its
    rate is above 0."""
    zoneout_cell, zoneout_hidden = _zoneout_rates(zoneout)
    if batch is None:  # packed: a caller that knows the batch (sorted_indices' length) saves reading batch_sizes
        batch = int(batch_sizes[0]) if batch_sizes is not None else input.size(0 if batch_first else 1)
    rows_shape = (input.size(0),) if batch_sizes is not None else (input.size(0), input.size(1))
    width = proj_size if proj_size > 0 else hidden_size
    options = {"dtype": input.dtype, "device": input.device}
    recurrent, zoneout_pairs = [], []
    for _ in range(num_layers * (2 if bidirectional else 1)):
        if recurrent_dropout > 0:
            keep = 1.0 - recurrent_dropout
            recurrent.append(_ops.bernoulli_mask((batch, width), keep, **options).div_(keep))
        cell = _ops.bernoulli_mask((*rows_shape, hidden_size), zoneout_cell, **options) if zoneout_cell > 0 else None
        hidden = (_ops.bernoulli_mask((*rows_shape, hidden_size), zoneout_hidden, **options)
                  if zoneout_hidden > 0 else None)
        zoneout_pairs.append((cell, hidden))
    return VariantMasks(recurrent if recurrent_dropout > 0 else None,
                        zoneout_pairs if zoneout_cell > 0 or zoneout_hidden > 0 else None)


_TRAINING = ForwardArgs._fields.index("training")
_CELLS = ForwardResults._fields.index("cells")


def _layer(args: ForwardArgs, keep_cells: bool = False):
    """One (layer, direction): ``(output, h_n, c_n, cells)``. Eager calls keep the activations for a backward
    whenever a gradient may be asked for; a recorded program (torch.export, torch.jit.trace) keeps them when
    ``args.training`` (the module's mode) is set, so an eval() model records the inference op whatever the
    grad mode, as nn.LSTM's does. ``keep_cells``: the cell states are wanted (cells is None otherwise).
    Without variants the op is given only nn.LSTM's arguments (_ops.without_variants)."""
    eager = not torch.compiler.is_compiling()
    if not eager:
        # torch.compile cannot trace an autograd.Function given one tensor in two places (hx = (zeros, zeros)):
        # each gets a view of its own, which costs nothing in a graph (telling them apart by id would make
        # dynamo guard on every tensor object, and recompile for every new input).
        args = ForwardArgs(*[t.view_as(t) if isinstance(t, Tensor) else t for t in args])
    elif torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0:
        output, h_n, c_n, cells = composite.layer(*args)  # torch.func and forward-mode AD see every op
        return output, h_n, c_n, cells if keep_cells else None
    given = _ops.without_variants(args)
    needs_grad = torch.is_grad_enabled() and any([isinstance(t, Tensor) and t.requires_grad for t in given])
    jit_tracing = eager and torch._C._get_tracing_state() is not None
    if jit_tracing or torch.compiler.is_exporting():
        needs_grad = args.training
    keep = needs_grad or keep_cells
    if keep != args.training:
        given = (*given[:_TRAINING], keep, *given[_TRAINING + 1:])
    if torch._C._is_any_autocast_enabled() or jit_tracing:
        # Through the op's own autograd kernel, below its autocast kernel (which casts the inputs first), and
        # as one op in a TorchScript trace.
        results = _ops.lstm_layer_forward(*given)
    elif needs_grad:
        results = LSTMFunction.apply(*given)
    else:
        results = _ops.lstm_layer_forward(*given)
    return results[0], results[1], results[2], results[_CELLS] if keep_cells else None


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
    *,
    peephole: bool = False,
    layer_norm: bool = False,
    recurrent_dropout: float = 0.0,
    recurrent_dropout_masks: Sequence[Tensor] | None = None,
    zoneout: float | tuple[float, float] = 0.0,
    zoneout_masks: Sequence[tuple[Tensor | None, Tensor | None]] | None = None,
    return_cell_states: bool = False,
):
    """The functional LSTM, in the argument order of ``torch._VF.lstm``, with the variants as keywords.

    input: ``[T, B, I]`` (``[B, T, I]`` when batch_first), or with ``batch_sizes`` the rows ``[N, I]``
    of a PackedSequence (sorted by length; batch_first does not apply); hx: ``(h0, c0)``, each
    ``[num_layers * num_directions, B, H]`` (h0 ``[..., proj_size]`` with projections); flat_weights: per
    layer, per direction, ``weight_ih, weight_hh[, bias_ih, bias_hh][, weight_hr][, weight_peephole]
    [, layer_norm_weight_ih, layer_norm_weight_hh, layer_norm_weight_c, layer_norm_bias_c]`` (``nn.LSTM``'s
    order, then the variants' parameters where ``peephole`` / ``layer_norm``; a ``weight_hr`` per direction
    means proj_size > 0). Dropout is applied to the output of every layer but the last when training.

    The variants (README, "Variants"): ``recurrent_dropout_masks`` one ``[B, P]`` mask per layer and
    direction, used as given (already scaled: 0 or 1/(1-p)); ``zoneout_masks`` one pair (cell mask, hidden
    mask) per layer and direction, each None or laid out like the input's steps with H features (``[T, B,
    H]``, ``[B, T, H]`` when batch_first, ``[N, H]`` packed), 1 keeping the previous value; a missing
    zoneout mask uses the rate (``zoneout``: a float, or the (cell, hidden) pair) as its value, which is
    eval's expectation. When training, masks that are not given are drawn (``sample_masks``) for the rates
    above 0: pass them explicitly to keep them fixed (truncated BPTT over chunks).

    Returns ``(output, (h_n, c_n))``, output in the layout of input, h_n and c_n each sequence's last
    state; with ``return_cell_states`` also ``cell_states``, the last layer's c_t of every step and
    direction, laid out like output.
    """
    variants = (peephole or layer_norm or recurrent_dropout > 0 or recurrent_dropout_masks is not None
                or zoneout != 0.0 or zoneout_masks is not None or return_cell_states)
    onnx = onnx_export()
    if onnx is not None:  # ONNX's own LSTM operator, not the fused op
        extra = {} if not variants else dict(
            peephole=peephole, layer_norm=layer_norm, recurrent_dropout=recurrent_dropout,
            recurrent_dropout_masks=recurrent_dropout_masks, zoneout=zoneout, zoneout_masks=zoneout_masks,
            return_cell_states=return_cell_states)
        return onnx.lstm(input, hx, flat_weights, has_biases, num_layers, dropout, training, bidirectional,
                         batch_first, batch_sizes, **extra)
    expected_dim = 3 if batch_sizes is None else 2
    if input.dim() != expected_dim:
        layout = "[N, I] (packed)" if batch_sizes is not None else ("[B, T, I]" if batch_first else "[T, B, I]")
        raise ValueError(f"lstm: input must be {expected_dim}-D {layout}, got {input.dim()}-D with shape "
                         f"{tuple(input.shape)}")
    if batch_sizes is None and input.size(1 if batch_first else 0) == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")  # nn.LSTM's words
    num_directions = 2 if bidirectional else 1
    base = 4 if has_biases else 2
    expected = base + (1 if peephole else 0) + (4 if layer_norm else 0)
    per_direction = len(flat_weights) // (num_layers * num_directions)
    if per_direction not in (expected, expected + 1) or len(flat_weights) != per_direction * num_layers * num_directions:
        raise ValueError(f"lstm: flat_weights must hold {expected} (or {expected + 1} with weight_hr) tensors per "
                         f"layer and direction for num_layers={num_layers}, bidirectional={bidirectional}, "
                         f"has_biases={has_biases}, peephole={peephole}, layer_norm={layer_norm}, got "
                         f"{len(flat_weights)}")
    projected = per_direction == expected + 1
    h0, c0 = hx
    for name, state in (("h0", h0), ("c0", c0)):
        if state.dim() != 3 or state.size(0) != num_layers * num_directions:
            raise ValueError(f"lstm: {name} must have shape [num_layers * num_directions = "
                             f"{num_layers * num_directions}, batch, hidden_size], got {tuple(state.shape)}")
    if variants:
        layers = num_layers * num_directions
        for name, masks in (("recurrent_dropout_masks", recurrent_dropout_masks), ("zoneout_masks", zoneout_masks)):
            if masks is not None and len(masks) != layers:
                raise ValueError(f"lstm: {name} must hold one entry per layer and direction ({layers}), got "
                                 f"{len(masks)}")
        zoneout_cell, zoneout_hidden = _zoneout_rates(zoneout)
        draw_recurrent = training and recurrent_dropout > 0 and recurrent_dropout_masks is None
        draw_zoneout = training and (zoneout_cell > 0 or zoneout_hidden > 0) and zoneout_masks is None
        if draw_recurrent or draw_zoneout:
            drawn = sample_masks(input, num_layers, bidirectional, batch_first, c0.size(-1),
                                 h0.size(-1) if projected else 0, recurrent_dropout if draw_recurrent else 0.0,
                                 zoneout if draw_zoneout else 0.0, batch_sizes)
            recurrent_dropout_masks = drawn.recurrent_dropout_masks if draw_recurrent else recurrent_dropout_masks
            zoneout_masks = drawn.zoneout_masks if draw_zoneout else zoneout_masks

    to_time_major = batch_first and batch_sizes is None

    def as_time_major(mask):
        return mask.transpose(0, 1) if mask is not None and to_time_major else mask

    layer_input = input.transpose(0, 1) if to_time_major else input
    h_n, c_n, cell_states = [], [], []
    for layer in range(num_layers):
        direction_outputs = []
        for direction in range(num_directions):
            index = layer * num_directions + direction
            w = flat_weights[index * per_direction:(index + 1) * per_direction]
            bias_ih, bias_hh = (w[2], w[3]) if has_biases else (None, None)
            weight_hr = w[base] if projected else None
            if not variants:
                args = ForwardArgs(layer_input, batch_sizes, w[0], w[1], bias_ih, bias_hh, weight_hr, h0[index],
                                   c0[index], direction == 1, training)
            else:
                rest = list(w[base + (1 if projected else 0):])
                weight_peephole = rest.pop(0) if peephole else None
                layer_norm_weights = rest if layer_norm else [None] * 4
                cell_mask, hidden_mask = zoneout_masks[index] if zoneout_masks is not None else (None, None)
                args = ForwardArgs(layer_input, batch_sizes, w[0], w[1], bias_ih, bias_hh, weight_hr, h0[index],
                                   c0[index], direction == 1, training, weight_peephole, *layer_norm_weights,
                                   recurrent_dropout_masks[index] if recurrent_dropout_masks is not None else None,
                                   as_time_major(cell_mask), as_time_major(hidden_mask),
                                   zoneout_cell if cell_mask is None else 0.0,
                                   zoneout_hidden if hidden_mask is None else 0.0)
            keep_cells = return_cell_states and layer == num_layers - 1
            output, h, c, cells = _layer(args, keep_cells)
            direction_outputs.append(output)
            h_n.append(h)
            c_n.append(c)
            if keep_cells:
                cell_states.append(cells)
        layer_output = direction_outputs[0] if num_directions == 1 else torch.cat(direction_outputs, dim=-1)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_output = F.dropout(layer_output, p=dropout, training=True)
        layer_input = layer_output
    output = layer_input.transpose(0, 1) if to_time_major else layer_input
    if len(h_n) == 1:  # one layer, one direction: a view, not a copy (torch.stack of one tensor copies)
        states = (h_n[0].unsqueeze(0), c_n[0].unsqueeze(0))
    else:
        states = (torch.stack(h_n), torch.stack(c_n))
    if not return_cell_states:
        return output, states
    cells = cell_states[0] if num_directions == 1 else torch.cat(cell_states, dim=-1)
    return output, states, (cells.transpose(0, 1) if to_time_major else cells)


def lstm_cell(
    input: Tensor,
    hx: tuple[Tensor, Tensor],
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    *,
    training: bool = True,
    weight_peephole: Tensor | None = None,
    layer_norm_weights: Sequence[Tensor] | None = None,
    recurrent_mask: Tensor | None = None,
    zoneout: float | tuple[float, float] = 0.0,
    zoneout_masks: tuple[Tensor | None, Tensor | None] | None = None,
) -> tuple[Tensor, Tensor]:
    """One LSTM step, in the argument order of ``torch._VF.lstm_cell``: input ``[B, I]``, hx ``(h, c)``
    each ``[B, H]``; returns ``(h', c')``. It is the layer op over a sequence of one step, so it runs
    the same fused pointwise pass as the LSTM. ``training`` False (an eval() module) lets torch.export
    record the inference op. The variants as in ``lstm()``, for one step: ``weight_peephole`` ``[3H]``,
    ``layer_norm_weights`` (w_ih ``[4H]``, w_hh ``[4H]``, w_c ``[H]``, b_c ``[H]``), ``recurrent_mask``
    ``[B, H]`` on h, ``zoneout_masks`` (cell ``[B, H]`` or None, hidden ``[B, H]`` or None), else the
    ``zoneout`` rates."""
    zoneout_cell, zoneout_hidden = _zoneout_rates(zoneout)
    cell_mask, hidden_mask = zoneout_masks if zoneout_masks is not None else (None, None)
    args = ForwardArgs(input.unsqueeze(0), None, weight_ih, weight_hh, bias_ih, bias_hh, None, hx[0], hx[1], False,
                       training, weight_peephole, *(layer_norm_weights or (None,) * 4), recurrent_mask,
                       None if cell_mask is None else cell_mask.unsqueeze(0),
                       None if hidden_mask is None else hidden_mask.unsqueeze(0),
                       zoneout_cell if cell_mask is None else 0.0, zoneout_hidden if hidden_mask is None else 0.0)
    _, h, c, _ = _layer(args)
    return h, c
