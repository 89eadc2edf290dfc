"""lstm() during ONNX export: the fused lstm_ext ops have no ONNX translation, so the export records
PyTorch's own aten::lstm, which the ONNX exporters write as ONNX's standard LSTM operator. With peepholes,
which aten::lstm lacks, the layers are written as ONNX LSTM nodes with their P input directly
(torch.onnx.ops.symbolic_multi_out for the dynamo exporter, an autograd.Function's symbolic for the
TorchScript one)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

try:  # the two flags torch.onnx.is_in_onnx_export() imports at every call
    from torch.onnx._internal.exporter import _flags as _dynamo_exporter
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS as _torchscript_exporter
except ImportError:
    _dynamo_exporter = _torchscript_exporter = None


def exporting() -> bool:
    """Whether an ONNX export is tracing. Unlike ``torch.onnx.is_in_onnx_export()``, which dynamo folds to
    False, this holds in the strict torch.export that ``torch.onnx.export(dynamo=True)`` falls back to."""
    if _dynamo_exporter is None:
        return torch.onnx.is_in_onnx_export()
    return _dynamo_exporter._is_onnx_exporting or _torchscript_exporter.in_onnx_export


def reject_packed() -> None:
    raise NotImplementedError(
        "lstm_ext.LSTM: cannot export a PackedSequence input to ONNX: ONNX's LSTM operator has no packed "
        "sequences. Export with a padded input instead (a [T, B, I] tensor, or [B, T, I] with batch_first; "
        "torch.nn.utils.rnn.pad_packed_sequence gives one)."
    )


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
    recurrent_dropout_masks=None,
    zoneout=0.0,
    zoneout_masks=None,
    return_cell_states: bool = False,
):
    """``lstm_ext.functional.lstm`` for ONNX export: the same arguments and results, as ONNX's LSTM operator
    (aten::lstm, which the exporters translate; with peepholes ONNX's LSTM with its P input, written here).

    Refused with an error naming it: what ONNX's LSTM does not compute (packed input, projections, layer
    norm, zoneout, recurrent dropout masks or a training recurrent dropout, every step's cell state).
    Recurrent dropout in eval does nothing and exports as the plain LSTM."""
    if batch_sizes is not None:
        reject_packed()
    _reject_variants(layer_norm, recurrent_dropout, recurrent_dropout_masks, zoneout, zoneout_masks,
                     return_cell_states, training)
    base = 4 if has_biases else 2
    per_direction = len(flat_weights) // (num_layers * (2 if bidirectional else 1))
    if per_direction == base + 1 + int(peephole):  # a weight_hr per direction
        raise NotImplementedError(
            "lstm_ext.LSTM: cannot export proj_size > 0 to ONNX: ONNX's LSTM operator has no projection "
            "(weight_hr, applied to h inside the recurrence). Export a model built with proj_size=0 instead."
        )
    if peephole:
        output, h_n, c_n = _peephole_lstm(input, hx, flat_weights, has_biases, num_layers, dropout, training,
                                          bidirectional, batch_first)
        return output, (h_n, c_n)
    # The exporter swaps in a dynamic-shape decomposition of aten::lstm per export, but the op's Python
    # dispatch cache may still hold the unrolled one from an earlier export, which bakes in T: drop it.
    getattr(torch.ops.aten.lstm.input, "_dispatch_cache", {}).clear()
    output, h_n, c_n = torch._VF.lstm(input, hx, flat_weights, has_biases, num_layers, dropout, training,
                                      bidirectional, batch_first)
    return output, (h_n, c_n)


def _reject_variants(layer_norm, recurrent_dropout, recurrent_dropout_masks, zoneout, zoneout_masks,
                     return_cell_states, training) -> None:
    def refuse(what: str, why: str) -> None:
        raise NotImplementedError(f"lstm_ext.LSTM: cannot export {what} to ONNX: {why}")

    if layer_norm:
        refuse("layer_norm=True", "ONNX's LSTM operator has no layer normalisation of its gates or cell")
    rates = zoneout if isinstance(zoneout, (tuple, list)) else (zoneout, zoneout)
    if any(rate > 0 for rate in rates) or zoneout_masks is not None:
        refuse(f"zoneout={zoneout}", "ONNX's LSTM operator has no zoneout (in eval, the rates' expectation "
               "mixes every step's new state with the previous one)")
    if recurrent_dropout_masks is not None or (training and recurrent_dropout > 0):
        refuse(f"recurrent dropout in training (recurrent_dropout={recurrent_dropout})",
               "ONNX's LSTM operator has no dropout mask on its recurrent input. Export the model in eval mode "
               "(model.eval()), where recurrent dropout does nothing")
    if return_cell_states:
        refuse("return_cell_states=True", "ONNX's LSTM operator returns the last cell state only (Y_c), not "
               "every step's")


def _onnx_gates(weight: Tensor, hidden_size: int) -> Tensor:
    """nn.LSTM's gate blocks (i, f, g, o) along dimension 0 in ONNX's order (i, o, f, c)."""
    i, f, g, o = weight.split(hidden_size)
    return torch.cat([i, o, f, g])


def _peephole_lstm(input, hx, flat_weights, has_biases, num_layers, dropout, training, bidirectional,
                   batch_first):
    """The layers as ONNX LSTM nodes with the P (peephole) input, one node per layer (both directions), as
    the exporters write aten::lstm. Our peephole blocks are (i, f, o), ONNX's P is (i, o, f)."""
    num_directions = 2 if bidirectional else 1
    per_direction = len(flat_weights) // (num_layers * num_directions)
    h0, c0 = hx
    hidden_size = int(c0.size(-1))  # an attribute of the node (a traced size is a tensor under jit.trace)
    layer_input = input.transpose(0, 1) if batch_first else input  # ONNX's layout 0: [T, B, I]
    h_n, c_n = [], []
    for layer in range(num_layers):
        first = layer * num_directions
        W, R, B, P = [], [], [], []
        for direction in range(num_directions):
            w = flat_weights[(first + direction) * per_direction:(first + direction + 1) * per_direction]
            W.append(_onnx_gates(w[0], hidden_size))
            R.append(_onnx_gates(w[1], hidden_size))
            if has_biases:
                B.append(torch.cat([_onnx_gates(w[2], hidden_size), _onnx_gates(w[3], hidden_size)]))
            p_i, p_f, p_o = w[-1].split(hidden_size)
            P.append(torch.cat([p_i, p_o, p_f]))
        output, h, c = _lstm_node(layer_input, torch.stack(W), torch.stack(R), torch.stack(B) if has_biases else None,
                                  h0[first:first + num_directions], c0[first:first + num_directions],
                                  torch.stack(P), hidden_size, "bidirectional" if bidirectional else "forward")
        steps, batch = layer_input.size(0), layer_input.size(1)
        layer_output = output.transpose(1, 2).reshape(steps, batch, num_directions * hidden_size)  # [T, B, D*H]
        if dropout > 0 and training and layer < num_layers - 1:
            layer_output = torch.nn.functional.dropout(layer_output, p=dropout, training=True)
        layer_input = layer_output
        h_n.append(h)
        c_n.append(c)
    output = layer_input.transpose(0, 1) if batch_first else layer_input
    return output, torch.cat(h_n), torch.cat(c_n)


def _lstm_node(X, W, R, B, initial_h, initial_c, P, hidden_size: int, direction: str):
    """One ONNX LSTM node: (Y [T, D, B, H], Y_h [D, B, H], Y_c [D, B, H]). The dynamo exporter (torch.export)
    records it as torch.onnx.ops.symbolic_multi_out, the TorchScript exporter as _LSTMNode's symbolic."""
    steps, batch, directions = X.size(0), X.size(1), W.size(0)
    if torch._C._get_tracing_state() is not None:
        return _LSTMNode.apply(X, W, R, B, initial_h, initial_c, P, hidden_size, direction)
    return torch.onnx.ops.symbolic_multi_out(
        "LSTM", [X, W, R, B, None, initial_h, initial_c, P], {"hidden_size": hidden_size, "direction": direction},
        dtypes=[X.dtype] * 3,
        shapes=[[steps, directions, batch, hidden_size], [directions, batch, hidden_size],
                [directions, batch, hidden_size]],
    )


class _LSTMNode(torch.autograd.Function):
    """ONNX's LSTM node for the TorchScript exporter, which writes an autograd.Function through its
    ``symbolic``. The traced values are not read (the exporter writes the node, and onnxruntime computes it):
    forward gives tensors of the node's shapes."""

    @staticmethod
    def forward(ctx, X, W, R, B, initial_h, initial_c, P, hidden_size, direction):
        return X.new_zeros(X.size(0), W.size(0), X.size(1), hidden_size), initial_h.clone(), initial_c.clone()

    @staticmethod
    def symbolic(g, X, W, R, B, initial_h, initial_c, P, hidden_size, direction):
        def missing():  # an absent optional input
            node = g.op("prim::Constant")
            node.setType(torch._C.OptionalType.ofTensor())
            return node

        return g.op("LSTM", X, W, R, missing() if B is None else B, missing(), initial_h, initial_c, P,
                    hidden_size_i=hidden_size, direction_s=direction, outputs=3)
