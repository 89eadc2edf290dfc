"""torch.fx.symbolic_trace keeps lstm_ext.LSTM / LSTMCell as leaves (one call_module node each, as it does
torch.nn's modules), and torch.jit.script compiles a model holding them (into nn.LSTM's TorchScript
code on the same parameters, with a warning naming torch.export) and leaves the model as it was."""

import io
import warnings
from typing import Optional, Tuple  # TorchScript reads the annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import lstm_ext

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")  # torch.jit's deprecation notices


class Tagger(nn.Module):
    def __init__(self, lstm_cls=lstm_ext.LSTM, cell_cls=lstm_ext.LSTMCell):
        super().__init__()
        self.lstm = lstm_cls(4, 6, num_layers=2, bidirectional=True, batch_first=True, proj_size=3)
        self.cell = cell_cls(6, 5)
        self.cell_no_bias = cell_cls(6, 5, bias=False)
        self.head = nn.Linear(5, 2)

    def forward(self, x, h0, c0):
        output, (h, c) = self.lstm(x, (h0, c0))  # unpacked in the caller, with hx given
        h1, c1 = self.cell(output[:, 0])  # without hx
        h2, c2 = self.cell_no_bias(output[:, -1], (h1, c1))
        return self.head(h2), output, h, c, c2


def tagger_inputs(dtype=torch.float64):
    torch.manual_seed(3)
    return (torch.randn(2, 5, 4, dtype=dtype), torch.randn(4, 2, 3, dtype=dtype), torch.randn(4, 2, 6, dtype=dtype))


# ---- torch.fx


def module_calls(graph_module):
    return [(node.op, node.target) for node in graph_module.graph.nodes if node.op in ("call_module",)]


def test_symbolic_trace_keeps_them_as_leaves_like_nn():
    torch.manual_seed(0)
    model = Tagger().double()
    traced = torch.fx.symbolic_trace(model)
    assert module_calls(traced) == [("call_module", "lstm"), ("call_module", "cell"),
                                    ("call_module", "cell_no_bias"), ("call_module", "head")]
    assert traced.get_submodule("lstm") is model.lstm  # the GraphModule calls the module itself
    # The same graph as the nn.LSTM twin's, node for node.
    reference = torch.fx.symbolic_trace(Tagger(nn.LSTM, nn.LSTMCell).double())
    assert [(n.op, str(n.target), str(n.args)) for n in traced.graph.nodes] == \
        [(n.op, str(n.target), str(n.args)) for n in reference.graph.nodes]
    inputs = tagger_inputs()
    for a, e in zip(traced(*inputs), model(*inputs)):
        assert torch.equal(a, e)
    # trains through the GraphModule: the gradients reach the model's parameters
    traced(*inputs)[0].sum().backward()
    assert model.lstm.weight_ih_l0.grad is not None and model.cell.weight_hh.grad is not None


class LastState(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = lstm_ext.LSTM(4, 6)

    def forward(self, x):
        output, (h, c) = self.lstm(x)  # unpacked, no hx
        return output.sum(0) + h[-1] * c[-1]


def test_symbolic_trace_in_containers_and_unbatched():
    torch.manual_seed(0)
    model = nn.Sequential(lstm_ext.LSTM(4, 6))
    traced = torch.fx.symbolic_trace(model)
    assert module_calls(traced) == [("call_module", "0")]
    x = torch.randn(5, 4)
    for a, e in zip(traced(x), model(x)):
        torch.testing.assert_close(a, e, rtol=0, atol=0)
    model = nn.ModuleList([LastState()])
    traced = torch.fx.symbolic_trace(model[0])
    assert module_calls(traced) == [("call_module", "lstm")]
    x = torch.randn(5, 3, 4)
    assert torch.equal(traced(x), model[0](x))


def test_symbolic_trace_of_the_module_itself_says_what_to_do():
    with pytest.raises(torch.fx.proxy.TraceError, match=r"as the root module.*Sequential\(lstm\).*torch.export"):
        torch.fx.symbolic_trace(lstm_ext.LSTM(4, 6))
    with pytest.raises(torch.fx.proxy.TraceError):  # nn.LSTM cannot be traced as the root either
        torch.fx.symbolic_trace(nn.LSTM(4, 6))


# ---- torch.jit.script


def script(model):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scripted = torch.jit.script(model)
    return scripted, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_script_runs_like_eager_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = Tagger().double()
    before = {name: p for name, p in model.named_parameters()}
    scripted, messages = script(model)
    # The original model still holds lstm_ext's modules and parameters, unchanged.
    assert type(model.lstm) is lstm_ext.LSTM and type(model.cell) is lstm_ext.LSTMCell
    assert all(p is before[name] for name, p in model.named_parameters())
    assert any("LSTM runs torch.nn.LSTM's TorchScript implementation" in m and "torch.export" in m
               for m in messages), messages
    assert any("LSTMCell runs torch.nn.LSTMCell's" in m for m in messages), messages

    inputs = tagger_inputs()
    eager = model(*inputs)
    for a, e in zip(scripted(*inputs), eager):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)
    # The scripted module shares the parameters: training it trains the model.
    scripted(*inputs)[0].sum().backward()
    assert model.lstm.weight_hh_l0.grad is not None and model.cell.bias_ih.grad is not None
    # It saves and loads as TorchScript.
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    for a, e in zip(torch.jit.load(buffer)(*inputs), eager):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)
    # nn.LSTM's errors, in TorchScript too
    with pytest.raises(Exception, match="input.size\\(-1\\) must be equal to input_size. Expected 4, got 3"):
        scripted(inputs[0][..., :3], inputs[1], inputs[2])


class PackedTagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = lstm_ext.LSTM(4, 6, bidirectional=True)

    def forward(self, packed: PackedSequence, hx: Optional[Tuple[Tensor, Tensor]]):
        output, (h, c) = self.lstm(packed, hx)
        return output.data, h, c


@pytest.mark.parametrize("given_state", [False, True])
def test_script_packed_input(given_state):
    torch.manual_seed(0)
    model = PackedTagger().double()
    scripted, _ = script(model)
    packed = pack_padded_sequence(torch.randn(5, 3, 4, dtype=torch.float64), torch.tensor([2, 5, 3]),
                                  enforce_sorted=False)
    hx = (torch.randn(2, 3, 6, dtype=torch.float64), torch.randn(2, 3, 6, dtype=torch.float64)) if given_state \
        else None
    for a, e in zip(scripted(packed, hx), model(packed, hx)):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


def test_script_sees_weights_replaced_before_scripting():
    # The TorchScript weight list is taken when scripting (by __prepare_scriptable__), not at construction.
    torch.manual_seed(0)
    model = PackedTagger()
    model.lstm.weight_hh_l0 = nn.Parameter(torch.zeros(24, 6))
    scripted, _ = script(model)
    packed = pack_padded_sequence(torch.randn(5, 3, 4), torch.tensor([5, 3, 2]))
    for a, e in zip(scripted(packed, None), model(packed, None)):
        torch.testing.assert_close(a, e)


# ---- the variants


class CellStatesModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = lstm_ext.LSTM(4, 6, bidirectional=True, peephole=True)

    def forward(self, x):
        output, (h, c), cell_states = self.lstm(x, return_cell_states=True)
        return output + cell_states, h, c


def test_symbolic_trace_keeps_return_cell_states_on_the_leaf():
    torch.manual_seed(0)
    model = CellStatesModel()
    traced = torch.fx.symbolic_trace(model)
    [node] = [n for n in traced.graph.nodes if n.op == "call_module"]
    assert node.target == "lstm" and node.kwargs == {"return_cell_states": True}
    x = torch.randn(5, 3, 4)
    for a, e in zip(traced(x), model(x)):
        assert torch.equal(a, e)
    # without it, the node is nn.LSTM's (no keyword arguments), as test_symbolic_trace_keeps_them_as_leaves_like_nn
    traced = torch.fx.symbolic_trace(LastState())
    assert [n.kwargs for n in traced.graph.nodes if n.op == "call_module"] == [{}]


@pytest.mark.parametrize("cls, kwargs, words", [
    (lstm_ext.LSTM, dict(peephole=True), "peephole=True"),
    (lstm_ext.LSTM, dict(layer_norm=True, recurrent_dropout=0.5), "layer_norm=True, recurrent_dropout=0.5"),
    (lstm_ext.LSTM, dict(zoneout=0.1), r"zoneout=0.1"),
    (lstm_ext.LSTMCell, dict(peephole=True), "peephole=True"),
    (lstm_ext.LSTMCell, dict(recurrent_dropout=0.1), "recurrent_dropout=0.1"),
], ids=["peephole", "two", "zoneout", "cell_peephole", "cell_recurrent_dropout"])
def test_script_refuses_variants_torchscript_does_not_compute(cls, kwargs, words):
    model = nn.Sequential(cls(4, 6, **kwargs))
    with pytest.raises(NotImplementedError, match=rf"^torch.jit.script: lstm_ext.{cls.__name__} with {words} cannot be "
                                                  r"scripted.*torch.export"):
        torch.jit.script(model)
    assert type(model[0]) is cls


def test_script_of_forget_bias_runs_like_eager():
    torch.manual_seed(0)
    model = Tagger().double()
    model.lstm = lstm_ext.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True, proj_size=3,
                               forget_bias=1.0).double()
    model.cell = lstm_ext.LSTMCell(6, 5, forget_bias=2.0).double()
    scripted, _ = script(model)
    inputs = tagger_inputs()
    for a, e in zip(scripted(*inputs), model(*inputs)):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


def test_forward_signature_is_the_eager_one():
    # TorchScript compiles nn.LSTM's forward (input, hx); Python and torch.export see lstm_ext's
    import inspect
    parameters = inspect.signature(lstm_ext.LSTM.forward).parameters
    assert list(parameters) == ["self", "input", "hx", "return_cell_states"]
    assert parameters["return_cell_states"].kind is inspect.Parameter.KEYWORD_ONLY
