"""lstm() during ONNX export: the fused lstm_ext ops have no ONNX translation, so the export records
PyTorch's own aten::lstm, which the ONNX exporters write as ONNX's standard LSTM operator."""

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
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``lstm_ext.functional.lstm`` for ONNX export: the same arguments and results, as aten::lstm."""
    if batch_sizes is not None:
        reject_packed()
    per_direction = len(flat_weights) // (num_layers * (2 if bidirectional else 1))
    if per_direction == (4 if has_biases else 2) + 1:  # a weight_hr per direction
        raise NotImplementedError(
            "lstm_ext.LSTM: cannot export proj_size > 0 to ONNX: ONNX's LSTM operator has no projection "
            "(weight_hr, applied to h inside the recurrence). Export a model built with proj_size=0 instead."
        )
    # The exporter swaps in a dynamic-shape decomposition of aten::lstm per export, but the op's Python
    # dispatch cache may still hold the unrolled one from an earlier export, which bakes in T: drop it.
    getattr(torch.ops.aten.lstm.input, "_dispatch_cache", {}).clear()
    output, h_n, c_n = torch._VF.lstm(input, hx, flat_weights, has_biases, num_layers, dropout, training,
                                      bidirectional, batch_first)
    return output, (h_n, c_n)
