"""A plain-PyTorch reference of lstm_ext's LSTM variants: peephole, layer_norm, recurrent dropout, zoneout,
proj_size and the cell states, written as a per-step loop straight from the formulas of the variants' API and
differentiated by autograd. It shares no code with lstm_ext: it is what the fused kernels are checked against.

Nothing here draws a random number: the masks are arguments. Conventions follow the functional form
(``lstm_ext.lstm`` / ``torch._VF.lstm``): packed input is the PackedSequence's rows (sorted by length) with
their ``batch_sizes``, and the states and recurrent masks are rows of that sorted batch;
``module_forward`` adds the module's layer (PackedSequence, sorted/unsorted indices, batch_first).

Formulas, per layer and direction (gates i, f, g, o; H hidden, P = proj_size or H):
    G_t = x_t W_ih^T + b_ih + (m * h_{t-1}) W_hh^T + b_hh             (m the recurrent mask, else 1)
    layer_norm: G_t = LN(x_t W_ih^T) g_ih + LN((m * h_{t-1}) W_hh^T) g_hh + b_ih + b_hh
    i = s(G_i + p_i c_{t-1}), f = s(G_f + p_f c_{t-1}), g = tanh(G_g)   (peepholes p, else 0)
    c~ = f c_{t-1} + i g;  o = s(G_o + p_o c~);  h~ = o tanh(c~)  (layer_norm: o tanh(LN(c~) g_c + b_c))
    proj_size: h~ = h~ W_hr^T
    zoneout: c_t = d_c c_{t-1} + (1 - d_c) c~;  h_t = d_h h_{t-1} + (1 - d_h) h~  (d a 0/1 mask, or the rate)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

LN_EPS = 1e-5  # nn.LayerNorm's default


@dataclasses.dataclass
class LayerWeights:
    """The parameters of one layer and direction."""
    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None = None
    bias_hh: Tensor | None = None
    weight_hr: Tensor | None = None
    weight_peephole: Tensor | None = None  # [3H]: (i, f, o) blocks
    layer_norm: tuple[Tensor, Tensor, Tensor, Tensor] | None = None  # (gamma_ih [4H], gamma_hh [4H], gamma_c, beta_c)


@dataclasses.dataclass
class LayerMasks:
    """The masks of one layer and direction. recurrent: [B, P], already scaled (0 or 1/(1-p)), or None.
    zoneout_cell / zoneout_hidden: a 0/1 tensor laid out like the layer's input rows with H features
    ([T, B, H] padded time-major, [N, H] packed), or a number used as d at every step (the rate: eval's
    expectation; 0.0: no zoneout)."""
    recurrent: Tensor | None = None
    zoneout_cell: Tensor | float = 0.0
    zoneout_hidden: Tensor | float = 0.0


def split_flat_weights(flat_weights: Sequence[Tensor], num_layers: int, bidirectional: bool, has_biases: bool,
                       projected: bool, peephole: bool, layer_norm: bool) -> list[LayerWeights]:
    """The functional form's flat list (per layer and direction: weight_ih, weight_hh, [bias_ih, bias_hh],
    [weight_hr], [weight_peephole], [ln_weight_ih, ln_weight_hh, ln_weight_c, ln_bias_c]) as LayerWeights."""
    per_direction = 2 + 2 * has_biases + projected + peephole + 4 * layer_norm
    count = num_layers * (2 if bidirectional else 1)
    assert len(flat_weights) == per_direction * count, (len(flat_weights), per_direction, count)
    layers = []
    for index in range(count):
        w = list(flat_weights[index * per_direction:(index + 1) * per_direction])
        weights = LayerWeights(w.pop(0), w.pop(0))
        if has_biases:
            weights.bias_ih, weights.bias_hh = w.pop(0), w.pop(0)
        if projected:
            weights.weight_hr = w.pop(0)
        if peephole:
            weights.weight_peephole = w.pop(0)
        if layer_norm:
            weights.layer_norm = tuple(w[:4])
        layers.append(weights)
    return layers


def join_flat_weights(layers: Sequence[LayerWeights]) -> list[Tensor]:
    """The inverse of split_flat_weights."""
    flat = []
    for w in layers:
        flat += [w.weight_ih, w.weight_hh]
        flat += [] if w.bias_ih is None else [w.bias_ih, w.bias_hh]
        flat += [] if w.weight_hr is None else [w.weight_hr]
        flat += [] if w.weight_peephole is None else [w.weight_peephole]
        flat += [] if w.layer_norm is None else list(w.layer_norm)
    return flat


def _normalize(v: Tensor) -> Tensor:
    return F.layer_norm(v, v.shape[-1:], eps=LN_EPS)


def _zone(d, previous: Tensor, new: Tensor) -> Tensor:
    if isinstance(d, (int, float)) and d == 0:
        return new
    return d * previous + (1 - d) * new


def cell_step(x: Tensor, h_prev: Tensor, c_prev: Tensor, w: LayerWeights, recurrent_mask: Tensor | None = None,
              zoneout_cell: Tensor | float = 0.0, zoneout_hidden: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
    """One step for rows x [B, I], h_prev [B, P], c_prev [B, H]; returns (h_t, c_t). The zoneout arguments
    are this step's rows [B, H] or a number (see LayerMasks)."""
    recurrent_input = h_prev if recurrent_mask is None else recurrent_mask * h_prev
    from_input = x @ w.weight_ih.t()
    from_hidden = recurrent_input @ w.weight_hh.t()
    if w.layer_norm is not None:
        gamma_ih, gamma_hh, gamma_c, beta_c = w.layer_norm
        from_input = _normalize(from_input) * gamma_ih
        from_hidden = _normalize(from_hidden) * gamma_hh
    gates = from_input + from_hidden
    if w.bias_ih is not None:
        gates = gates + w.bias_ih + w.bias_hh
    gate_i, gate_f, gate_g, gate_o = gates.chunk(4, dim=-1)
    if w.weight_peephole is not None:
        peep_i, peep_f, peep_o = w.weight_peephole.chunk(3)
        gate_i = gate_i + peep_i * c_prev
        gate_f = gate_f + peep_f * c_prev
    i, f, g = torch.sigmoid(gate_i), torch.sigmoid(gate_f), torch.tanh(gate_g)
    c_new = f * c_prev + i * g
    if w.weight_peephole is not None:
        gate_o = gate_o + peep_o * c_new  # the plain update, before zoneout
    o = torch.sigmoid(gate_o)
    if w.layer_norm is not None:
        h_new = o * torch.tanh(_normalize(c_new) * gamma_c + beta_c)
    else:
        h_new = o * torch.tanh(c_new)
    if w.weight_hr is not None:
        h_new = h_new @ w.weight_hr.t()
    return _zone(zoneout_hidden, h_prev, h_new), _zone(zoneout_cell, c_prev, c_new)


def _step_rows(tensor, steps: list[tuple[int, int]], padded: bool):
    """The rows of each step: tensor[t] padded, the step's slice of packed rows; a number stays a number."""
    if not isinstance(tensor, Tensor):
        return [tensor] * len(steps)
    if padded:
        return [tensor[t] for t in range(len(steps))]
    return [tensor[start:start + size] for start, size in steps]


def layer(x: Tensor, batch_sizes: Tensor | None, w: LayerWeights, h0: Tensor, c0: Tensor, reverse: bool,
          masks: LayerMasks | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One layer and direction. x [T, B, I] (time-major) or packed rows [N, I] with batch_sizes; h0 [B, P],
    c0 [B, H]. Returns (output, h_n, c_n, cells): output and cells laid out like x (P and H features),
    h_n / c_n each sequence's last state. Reverse walks each sequence from its own end."""
    masks = masks or LayerMasks()
    padded = batch_sizes is None
    sizes = [x.shape[1]] * x.shape[0] if padded else [int(n) for n in batch_sizes]
    starts = [0] * len(sizes) if padded else [sum(sizes[:t]) for t in range(len(sizes))]
    steps = list(zip(starts, sizes))
    inputs = _step_rows(x, steps, padded)
    cell_masks = _step_rows(masks.zoneout_cell, steps, padded)
    hidden_masks = _step_rows(masks.zoneout_hidden, steps, padded)
    h, c = h0, c0
    outputs, cells = [None] * len(steps), [None] * len(steps)
    for t in (reversed(range(len(steps))) if reverse else range(len(steps))):
        live = sizes[t]  # rows 0..live-1 are in the batch at step t (sorted by length)
        recurrent = None if masks.recurrent is None else masks.recurrent[:live]
        h_t, c_t = cell_step(inputs[t], h[:live], c[:live], w, recurrent, cell_masks[t], hidden_masks[t])
        outputs[t], cells[t] = h_t, c_t
        # Rows past `live` keep their state: finished sequences (forward) or not yet started ones (reverse).
        h = torch.cat([h_t, h[live:]]) if live < h.shape[0] else h_t
        c = torch.cat([c_t, c[live:]]) if live < c.shape[0] else c_t
    join = torch.stack if padded else torch.cat
    return join(outputs), h, c, join(cells)


def lstm(input: Tensor, hx: tuple[Tensor, Tensor], layers: Sequence[LayerWeights], num_layers: int,
         bidirectional: bool, batch_first: bool = False, batch_sizes: Tensor | None = None,
         masks: Sequence[LayerMasks] | None = None, return_cell_states: bool = False):
    """The multi-layer, bidirectional composition, inter-layer dropout 0, in the functional form's terms:
    input [T, B, I] / [B, T, I] (batch_first) / packed rows with batch_sizes; hx ([L*D, B, P], [L*D, B, H]);
    layers and masks per layer and direction (index layer * D + direction); zoneout masks in the input's
    layout ([B, T, H] when batch_first). Returns (output, (h_n, c_n)) or (output, (h_n, c_n), cell_states),
    cell_states the last layer's c_t of every step and direction, laid out like output."""
    num_directions = 2 if bidirectional else 1
    assert len(layers) == num_layers * num_directions
    masks = list(masks) if masks is not None else [LayerMasks()] * len(layers)
    to_time_major = batch_first and batch_sizes is None

    def time_major(t):
        return t.transpose(0, 1) if to_time_major and isinstance(t, Tensor) else t

    layer_input = time_major(input)
    h_n, c_n = [], []
    for k in range(num_layers):
        outputs, cells = [], []
        for direction in range(num_directions):
            index = k * num_directions + direction
            m = masks[index]
            m = LayerMasks(m.recurrent, time_major(m.zoneout_cell), time_major(m.zoneout_hidden))
            output, h, c, cell = layer(layer_input, batch_sizes, layers[index], hx[0][index], hx[1][index],
                                       reverse=direction == 1, masks=m)
            outputs.append(output)
            cells.append(cell)
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outputs, dim=-1)
        cell_states = torch.cat(cells, dim=-1)
    result = (time_major(layer_input), (torch.stack(h_n), torch.stack(c_n)))
    return (*result, time_major(cell_states)) if return_cell_states else result


# --- Module level ---------------------------------------------------------------------------------

def module_layers(params: dict[str, Tensor], num_layers: int, bidirectional: bool) -> list[LayerWeights]:
    """LayerWeights by the parameter names of the variants' API (nn.LSTM's names, weight_peephole_l{k},
    layer_norm_weight_ih/_hh/_c_l{k}, layer_norm_bias_c_l{k}, _reverse for the reverse direction)."""
    layers = []
    for k in range(num_layers):
        for direction in range(2 if bidirectional else 1):
            s = f"_l{k}" + ("_reverse" if direction else "")
            ln_names = [f"layer_norm_weight_ih{s}", f"layer_norm_weight_hh{s}", f"layer_norm_weight_c{s}",
                        f"layer_norm_bias_c{s}"]
            layers.append(LayerWeights(
                params[f"weight_ih{s}"], params[f"weight_hh{s}"], params.get(f"bias_ih{s}"), params.get(f"bias_hh{s}"),
                params.get(f"weight_hr{s}"), params.get(f"weight_peephole{s}"),
                tuple(params[n] for n in ln_names) if ln_names[0] in params else None))
    return layers


def masks_from_variant_masks(variant_masks, count: int, zoneout_rates=(0.0, 0.0)) -> list[LayerMasks]:
    """LayerMasks from a VariantMasks-like pair (recurrent_dropout_masks, zoneout_masks), either part None;
    a missing zoneout mask uses its rate as d."""
    recurrent, zoneout = (None, None) if variant_masks is None else tuple(variant_masks)
    cell_rate, hidden_rate = zoneout_rates
    result = []
    for index in range(count):
        cell_mask, hidden_mask = (None, None) if zoneout is None else zoneout[index]
        result.append(LayerMasks(None if recurrent is None else recurrent[index],
                                 cell_rate if cell_mask is None else cell_mask,
                                 hidden_rate if hidden_mask is None else hidden_mask))
    return result


def module_forward(params: dict[str, Tensor], input, hx=None, *, num_layers: int = 1, bidirectional: bool = False,
                   batch_first: bool = False, hidden_size: int, proj_size: int = 0, variant_masks=None,
                   zoneout_rates=(0.0, 0.0), return_cell_states: bool = False):
    """What the module's forward computes, given its parameters and this forward's masks (variant_masks as
    sample_masks returns them, in the functional form's terms: packed rows in the PackedSequence's order,
    recurrent masks over its sorted batch). input: a batched tensor or a PackedSequence; hx in the caller's
    batch order or None (zeros)."""
    D = 2 if bidirectional else 1
    packed = isinstance(input, PackedSequence)
    if packed:
        data, batch_sizes = input.data, input.batch_sizes
        batch = int(batch_sizes[0])
    else:
        data, batch_sizes = input, None
        batch = input.shape[0 if batch_first else 1]
    if hx is None:
        zeros = data.new_zeros
        hx = (zeros(num_layers * D, batch, proj_size or hidden_size), zeros(num_layers * D, batch, hidden_size))
    elif packed and input.sorted_indices is not None:
        hx = tuple(s.index_select(1, input.sorted_indices) for s in hx)
    layers = module_layers(params, num_layers, bidirectional)
    masks = masks_from_variant_masks(variant_masks, len(layers), zoneout_rates)
    output, (h_n, c_n), *cells = lstm(data, hx, layers, num_layers, bidirectional, batch_first and not packed,
                                      batch_sizes, masks, return_cell_states=True)
    cell_states = cells[0]
    if packed:
        output = PackedSequence(output, batch_sizes, input.sorted_indices, input.unsorted_indices)
        cell_states = PackedSequence(cell_states, batch_sizes, input.sorted_indices, input.unsorted_indices)
        if input.unsorted_indices is not None:
            h_n, c_n = h_n.index_select(1, input.unsorted_indices), c_n.index_select(1, input.unsorted_indices)
    return (output, (h_n, c_n), cell_states) if return_cell_states else (output, (h_n, c_n))


def init_parameters(input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                    bidirectional: bool = False, proj_size: int = 0, *, peephole: bool = False,
                    layer_norm: bool = False, forget_bias: float = 0.0, dtype=None, device=None) -> dict[str, Tensor]:
    """The parameters the variants' API says a freshly built LSTM holds, drawn from the default generator:
    nn.LSTM's own (its init stream), then the peepholes U(-1/sqrt(H), 1/sqrt(H)) layer by layer and direction
    by direction, then layer norm weights ones and biases zeros, then forget_bias added to bias_ih's forget
    quarter. Ordered: nn.LSTM's names first, then the peepholes, then the layer norm parameters."""
    nn_lstm = torch.nn.LSTM(input_size, hidden_size, num_layers, bias=bias, bidirectional=bidirectional,
                            proj_size=proj_size, dtype=dtype, device=device)
    params = {name: p.detach().clone() for name, p in nn_lstm.named_parameters()}
    suffixes = [f"_l{k}" + ("_reverse" if d else "") for k in range(num_layers) for d in range(1 + bidirectional)]
    bound = 1.0 / math.sqrt(hidden_size)
    factory = dict(dtype=params["weight_ih_l0"].dtype, device=params["weight_ih_l0"].device)
    if peephole:
        for s in suffixes:
            params[f"weight_peephole{s}"] = torch.empty(3 * hidden_size, **factory).uniform_(-bound, bound)
    if layer_norm:
        for s in suffixes:
            params[f"layer_norm_weight_ih{s}"] = torch.ones(4 * hidden_size, **factory)
            params[f"layer_norm_weight_hh{s}"] = torch.ones(4 * hidden_size, **factory)
            params[f"layer_norm_weight_c{s}"] = torch.ones(hidden_size, **factory)
            params[f"layer_norm_bias_c{s}"] = torch.zeros(hidden_size, **factory)
    if forget_bias:
        for s in suffixes:
            params[f"bias_ih{s}"][hidden_size:2 * hidden_size] += forget_bias
    return params
