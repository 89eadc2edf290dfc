"""ONNX export of lstm_ext.LSTM: torch.onnx.export writes ONNX's standard LSTM operator (no lstm_ext op),
and onnxruntime computes what nn.LSTM with the same weights computes. CPU only."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.export import Dim
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import lstm_ext  # noqa: E402
from lstm_ext import _onnx  # noqa: E402

ATOL = 2e-6  # float32; onnxruntime's LSTM and PyTorch's differ by a few ulps

pytestmark = [
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore:.*'dynamic_axes' is not recommended:UserWarning"),
    pytest.mark.filterwarnings("ignore:Exporting a model to ONNX with a batch_size other than 1:UserWarning"),
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
]


class Flat(nn.Module):
    """The LSTM with outputs flattened to (output, h_n, c_n), and (h0, c0) as inputs when given."""

    def __init__(self, lstm):
        super().__init__()
        self.lstm = lstm

    def forward(self, x, h0=None, c0=None):
        output, (h_n, c_n) = self.lstm(x, None if h0 is None else (h0, c0))
        return output, h_n, c_n


class Packed(nn.Module):
    def __init__(self, lstm):
        super().__init__()
        self.lstm = lstm

    def forward(self, x, lengths):
        output, (h_n, c_n) = self.lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return pad_packed_sequence(output)[0], h_n, c_n


def _pair(**kwargs):
    """lstm_ext.LSTM and nn.LSTM holding the same weights, both wrapped in Flat, in eval mode."""
    ext = lstm_ext.LSTM(**kwargs)
    ref = nn.LSTM(**kwargs)
    ref.load_state_dict(ext.state_dict())
    return Flat(ext).eval(), Flat(ref).eval()


def _export(model, args, path, dynamo=True, **kwargs):
    torch.onnx.export(model, args, str(path), dynamo=dynamo, verbose=False, **kwargs)
    return onnx.load(str(path))


def _assert_standard_lstm(model_proto, num_layers):
    nodes = model_proto.graph.node
    lstm_nodes = [n for n in nodes if n.op_type == "LSTM" and n.domain in ("", "ai.onnx")]
    assert len(lstm_nodes) == num_layers, [n.op_type for n in nodes]  # one node per layer, both directions
    assert all(n.domain in ("", "ai.onnx") for n in nodes), {(n.domain, n.op_type) for n in nodes}
    assert not any("lstm_ext" in o.domain for o in model_proto.opset_import)


def _run(path, *arrays):
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert len(names) == len(arrays), names
    return session.run(None, {name: a.numpy() for name, a in zip(names, arrays)})


def _assert_matches(actual, ref_model, *args):
    with torch.no_grad():
        expected = ref_model(*args)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == tuple(e.shape)
        np.testing.assert_allclose(a, e.numpy(), rtol=0, atol=ATOL)


def _states(num_states, batch, hidden):
    return torch.randn(num_states, batch, hidden), torch.randn(num_states, batch, hidden)


@pytest.mark.parametrize("kwargs, with_state", [
    (dict(num_layers=2), False),
    (dict(bidirectional=True), False),
    (dict(batch_first=True, bias=False), False),
    (dict(num_layers=2, bidirectional=True, batch_first=True), True),
], ids=["two_layers", "bidirectional", "batch_first_no_bias", "given_state"])
def test_export_is_onnx_lstm_equal_to_nn_lstm(tmp_path, kwargs, with_state):
    ext, ref = _pair(input_size=4, hidden_size=6, **kwargs)
    x = torch.randn(3, 5, 4) if kwargs.get("batch_first") else torch.randn(5, 3, 4)
    args = (x, *_states(kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1), 3, 6)) \
        if with_state else (x,)
    path = tmp_path / "lstm.onnx"
    _assert_standard_lstm(_export(ext, args, path), kwargs.get("num_layers", 1))
    _assert_matches(_run(path, *args), ref, *args)


@pytest.mark.parametrize("style", ["dynamic_shapes", "dynamic_axes"])
def test_export_with_dynamic_sequence_length_and_batch(tmp_path, style):
    # Exported at T=5, B=3; run at other T and B. dynamic_shapes with (h0, c0) given, dynamic_axes without.
    ext, ref = _pair(input_size=4, hidden_size=6, num_layers=2, bidirectional=True, batch_first=True)
    with_state = style == "dynamic_shapes"
    x = torch.randn(3, 5, 4)
    path = tmp_path / "lstm.onnx"
    if with_state:
        batch, steps = Dim("batch"), Dim("steps")
        args = (x, *_states(4, 3, 6))
        dynamic = dict(dynamic_shapes={"x": {0: batch, 1: steps}, "h0": {1: batch}, "c0": {1: batch}})
    else:
        args = (x,)
        dynamic = dict(input_names=["x"], dynamic_axes={"x": {0: "batch", 1: "steps"}})
    _assert_standard_lstm(_export(ext, args, path, **dynamic), 2)
    for batch, steps in [(5, 9), (1, 1)]:
        x = torch.randn(batch, steps, 4)
        args = (x, *_states(4, batch, 6)) if with_state else (x,)
        _assert_matches(_run(path, *args), ref, *args)


def test_legacy_torchscript_export_is_onnx_lstm_too(tmp_path):
    ext, ref = _pair(input_size=4, hidden_size=6, num_layers=2, bidirectional=True)
    path = tmp_path / "lstm.onnx"
    model_proto = _export(ext, (torch.randn(5, 3, 4),), path, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "steps", 1: "batch"}})
    assert sum(n.op_type == "LSTM" for n in model_proto.graph.node) == 2
    assert all(n.domain in ("", "ai.onnx") for n in model_proto.graph.node)
    x = torch.randn(7, 2, 4)
    _assert_matches(_run(path, x), ref, x)


@pytest.mark.parametrize("dynamo", [False, True])
def test_proj_size_export_names_the_missing_projection(tmp_path, dynamo):
    # nn.LSTM(proj_size=...) exports with dynamo=True without complaint, into a file onnxruntime rejects.
    model = Flat(lstm_ext.LSTM(4, 6, proj_size=3)).eval()
    with pytest.raises(RuntimeError, match="ONNX's LSTM operator has no projection"):
        _export(model, (torch.randn(5, 3, 4),), tmp_path / "lstm.onnx", dynamo=dynamo)


@pytest.mark.parametrize("dynamo", [False, True])
def test_packed_sequence_export_names_the_missing_packing(tmp_path, dynamo):
    model = Packed(lstm_ext.LSTM(4, 6)).eval()
    args = (torch.randn(5, 3, 4), torch.tensor([5, 2, 4]))
    with pytest.raises(RuntimeError, match="ONNX's LSTM operator has no packed sequences"):
        _export(model, args, tmp_path / "lstm.onnx", dynamo=dynamo)


def test_eager_use_does_not_take_the_export_path(monkeypatch):
    def not_exporting(*args, **kwargs):
        raise AssertionError("the ONNX export path ran outside an export")

    monkeypatch.setattr(_onnx, "lstm", not_exporting)
    assert not torch.onnx.is_in_onnx_export() and not _onnx.exporting()
    ext, ref = _pair(input_size=4, hidden_size=6, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 4, requires_grad=True)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            for a, e in zip(ext(x), ref(x)):
                torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


# ---- the variants


def _lstm_nodes(model_proto):
    return [n for n in model_proto.graph.node if n.op_type == "LSTM" and n.domain in ("", "ai.onnx")]


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("kwargs, with_state", [
    (dict(), False),
    (dict(num_layers=2, bidirectional=True), True),
    (dict(batch_first=True, bias=False), False),
    (dict(bidirectional=True, batch_first=True, num_layers=2, forget_bias=1.0, recurrent_dropout=0.3), True),
], ids=["one_layer", "two_layers_bidirectional_given_state", "batch_first_no_bias", "with_eval_no_ops"])
def test_peephole_exports_as_onnx_lstm_with_its_p_input(tmp_path, kwargs, with_state, dynamo):
    torch.manual_seed(0)
    ext = lstm_ext.LSTM(input_size=4, hidden_size=6, peephole=True, **kwargs)
    with torch.no_grad():  # peepholes of a size that changes the result visibly
        for name, p in ext.named_parameters():
            if name.startswith("weight_peephole"):
                p.mul_(4)
    model = Flat(ext).eval()
    num_layers, directions = kwargs.get("num_layers", 1), 2 if kwargs.get("bidirectional") else 1
    x = torch.randn(3, 5, 4) if kwargs.get("batch_first") else torch.randn(5, 3, 4)
    args = (x, *_states(num_layers * directions, 3, 6)) if with_state else (x,)
    path = tmp_path / "lstm.onnx"
    names = ["x", "h0", "c0"][:len(args)]
    batch_axis, steps_axis = (0, 1) if kwargs.get("batch_first") else (1, 0)
    dynamic = dict(input_names=names, dynamic_axes={"x": {batch_axis: "batch", steps_axis: "steps"},
                                                    **{n: {1: "batch"} for n in names[1:]}})
    model_proto = _export(model, args, path, dynamo=dynamo, **dynamic)
    nodes = _lstm_nodes(model_proto)
    assert len(nodes) == num_layers
    assert all(len(n.input) == 8 and n.input[7] != "" for n in nodes)  # P, ONNX's eighth input
    assert all(n.domain in ("", "ai.onnx") for n in model_proto.graph.node)
    _assert_matches(_run(path, *args), model, *args)
    # at another batch and length
    x = torch.randn(2, 7, 4) if kwargs.get("batch_first") else torch.randn(7, 2, 4)
    args = (x, *_states(num_layers * directions, 2, 6)) if with_state else (x,)
    _assert_matches(_run(path, *args), model, *args)
    # and not what the same LSTM without peepholes computes
    plain = lstm_ext.LSTM(input_size=4, hidden_size=6, **kwargs).eval()
    plain.load_state_dict({k: v for k, v in ext.state_dict().items() if "peephole" not in k})
    assert not np.allclose(_run(path, *args)[0], Flat(plain)(*args)[0].detach().numpy(), atol=1e-3)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("kwargs, words", [
    (dict(layer_norm=True), "cannot export layer_norm=True to ONNX"),
    (dict(zoneout=0.1), r"cannot export zoneout=\(0.1, 0.1\) to ONNX"),
    (dict(zoneout=(0.0, 0.2), peephole=True), r"cannot export zoneout=\(0.0, 0.2\) to ONNX"),
], ids=["layer_norm", "zoneout", "hidden_zoneout"])
def test_variants_without_an_onnx_equivalent_are_refused(tmp_path, kwargs, words, dynamo):
    model = Flat(lstm_ext.LSTM(4, 6, **kwargs)).eval()
    with pytest.raises(RuntimeError, match=words):
        _export(model, (torch.randn(5, 3, 4),), tmp_path / "lstm.onnx", dynamo=dynamo)


class CellStates(nn.Module):
    def __init__(self, lstm):
        super().__init__()
        self.lstm = lstm

    def forward(self, x):
        output, _, cell_states = self.lstm(x, return_cell_states=True)
        return output, cell_states


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_cell_states_and_training_recurrent_dropout_are_refused(tmp_path, dynamo):
    with pytest.raises(RuntimeError, match="cannot export return_cell_states=True to ONNX"):
        _export(CellStates(lstm_ext.LSTM(4, 6)).eval(), (torch.randn(5, 3, 4),), tmp_path / "a.onnx", dynamo=dynamo)
    model = Flat(lstm_ext.LSTM(4, 6, recurrent_dropout=0.3)).train()
    # the TorchScript exporter puts the model in eval unless told to keep training
    training = {} if dynamo else dict(training=torch.onnx.TrainingMode.TRAINING)
    with pytest.raises(RuntimeError, match=r"cannot export recurrent dropout in training \(recurrent_dropout=0.3\) "
                                           r"to ONNX.*model.eval\(\)"):
        _export(model, (torch.randn(5, 3, 4),), tmp_path / "b.onnx", dynamo=dynamo, **training)


def test_eval_recurrent_dropout_and_forget_bias_export_as_the_plain_lstm(tmp_path):
    torch.manual_seed(0)
    ext = lstm_ext.LSTM(4, 6, num_layers=2, bidirectional=True, recurrent_dropout=0.5, forget_bias=1.0)
    ref = nn.LSTM(4, 6, num_layers=2, bidirectional=True)
    ref.load_state_dict(ext.state_dict())
    x = torch.randn(5, 3, 4)
    path = tmp_path / "lstm.onnx"
    _assert_standard_lstm(_export(Flat(ext).eval(), (x,), path), 2)
    assert all(len(n.input) < 8 or n.input[7] == "" for n in _lstm_nodes(onnx.load(str(path))))  # no P
    _assert_matches(_run(path, x), Flat(ref).eval(), x)
