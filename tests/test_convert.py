"""lstm_ext.convert() and lstm_ext.to_torch(): every nn.LSTM / nn.LSTMCell of a model swapped for lstm_ext's
and back, on the same Parameter objects, with the same outputs, state dict and training flag."""

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

import lstm_ext

LSTM_CONFIGS = [
    dict(input_size=4, hidden_size=6),
    dict(input_size=4, hidden_size=6, num_layers=2, bidirectional=True, batch_first=True),
    dict(input_size=4, hidden_size=6, proj_size=3, bidirectional=True),
    dict(input_size=4, hidden_size=6, bias=False, num_layers=2, dropout=0.3),
]


class Model(nn.Module):
    """Every kind of place a module sits in: an attribute, a Sequential, a ModuleList, a ModuleDict."""

    def __init__(self, config):
        super().__init__()
        hidden = (config.get("proj_size") or config["hidden_size"]) * (2 if config.get("bidirectional") else 1)
        self.lstm = nn.LSTM(**config)
        self.seq = nn.Sequential(nn.Linear(hidden, 4), nn.LSTM(4, 5, batch_first=config.get("batch_first", False)))
        self.cells = nn.ModuleList([nn.LSTMCell(5, 3), nn.LSTMCell(3, 3, bias=False)])
        self.by_name = nn.ModuleDict({"lstm": nn.LSTM(5, 2), "head": nn.Linear(2, 1)})

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        out, _ = self.seq(out)
        step = out[:, 0] if self.seq[1].batch_first else out[0]
        h1, c1 = self.cells[0](step)
        h2, c2 = self.cells[1](h1, (h1, c1[:, :3]))
        out2, _ = self.by_name["lstm"](out)
        return [out, h, c, h2, c2, self.by_name["head"](out2)]


def snapshot(model):
    return [p for p in model.parameters()], {k: v.clone() for k, v in model.state_dict().items()}


def kinds(model):
    return [type(m) for m in model.modules() if isinstance(m, (nn.LSTM, nn.LSTMCell, lstm_ext.LSTM,
                                                                 lstm_ext.LSTMCell))]


def assert_same_state(model, params, state):
    assert all(a is b for a, b in zip(model.parameters(), params)) and len(list(model.parameters())) == len(params)
    now = model.state_dict()
    assert list(now) == list(state)
    for key, value in state.items():
        assert torch.equal(now[key], value), key


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("config", LSTM_CONFIGS, ids=str)
def test_round_trip(config, training):
    torch.manual_seed(0)
    model = Model(config).double().train(training)
    x = torch.randn((2, 5, 4) if config.get("batch_first") else (5, 2, 4), dtype=torch.float64)
    expected = model(x) if not training else None
    params, state = snapshot(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    assert lstm_ext.convert(model) is model
    assert kinds(model) == [lstm_ext.LSTM, lstm_ext.LSTM, lstm_ext.LSTMCell, lstm_ext.LSTMCell, lstm_ext.LSTM]
    assert_same_state(model, params, state)
    assert all(m.training is training for m in model.modules())
    assert model.lstm.dropout == config.get("dropout", 0.0) and model.lstm.bias == config.get("bias", True)
    if training:
        torch.manual_seed(1)
        converted_out = model(x)
    else:
        for a, e in zip(model(x), expected):
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)

    assert lstm_ext.to_torch(model) is model
    assert kinds(model) == [nn.LSTM, nn.LSTM, nn.LSTMCell, nn.LSTMCell, nn.LSTM]
    assert_same_state(model, params, state)
    assert all(m.training is training for m in model.modules())
    if training:  # dropout draws the same masks from the same seed
        torch.manual_seed(1)
        for a, e in zip(model(x), converted_out):
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)
    else:
        for a, e in zip(model(x), expected):
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)

    # The optimizer built before either conversion still updates the model's parameters.
    sum(o.sum() for o in model(x)).backward()
    optimizer.step()
    assert not torch.equal(model.lstm.weight_ih_l0, state["lstm.weight_ih_l0"])


def test_the_model_itself(device):
    torch.manual_seed(0)
    ref = nn.LSTM(4, 6, proj_size=2, device=device).eval()
    params, state = snapshot(ref)
    ext = lstm_ext.convert(ref)
    assert type(ext) is lstm_ext.LSTM and ext.training is False
    assert_same_state(ext, params, state)
    assert all(p.device.type == device.type for p in ext.parameters())
    x = torch.randn(5, 3, 4, device=device)
    torch.testing.assert_close(ext(x), ref(x))
    back = lstm_ext.to_torch(ext)
    assert type(back) is nn.LSTM and back is not ref
    assert_same_state(back, params, state)
    # nn.LSTM's cache of its weights was rebuilt from the assigned parameters, as for a freshly built one
    assert all(w is p for w, p in zip(back._flat_weights, params))
    assert all(r() is p for r, p in zip(back._flat_weight_refs, params)) and not back._weights_have_changed()
    torch.testing.assert_close(back(x), ref(x))

    cell = nn.LSTMCell(4, 6, device=device, dtype=torch.float64)
    converted = lstm_ext.convert(cell)
    assert type(converted) is lstm_ext.LSTMCell and converted.weight_ih is cell.weight_ih
    assert converted.weight_ih.dtype == torch.float64
    assert type(lstm_ext.to_torch(converted)) is nn.LSTMCell


def test_shared_module_and_tied_weights_stay_shared():
    lstm = nn.LSTM(4, 4)
    other = nn.LSTM(4, 4)
    other.weight_hh_l0 = lstm.weight_hh_l0  # tied
    model = nn.Sequential(lstm, lstm, other)
    lstm_ext.convert(model)
    assert model[0] is model[1] and type(model[0]) is lstm_ext.LSTM
    assert model[2].weight_hh_l0 is model[0].weight_hh_l0
    lstm_ext.to_torch(model)
    assert model[0] is model[1] and model[2].weight_hh_l0 is model[0].weight_hh_l0
    assert model[2]._flat_weights[1] is model[0].weight_hh_l0


def test_does_not_draw_from_the_random_stream():
    model = nn.Sequential(nn.LSTM(4, 6), nn.LSTMCell(6, 6))
    state = torch.random.get_rng_state()
    lstm_ext.to_torch(lstm_ext.convert(model))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_quantize_dynamic_after_to_torch():
    torch.manual_seed(0)
    model = lstm_ext.convert(nn.Sequential(nn.LSTM(4, 6), nn.Linear(6, 2))).eval()
    x = torch.randn(5, 3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        untouched = torch.ao.quantization.quantize_dynamic(model, {nn.LSTM}, dtype=torch.qint8)
        assert type(untouched[0]) is lstm_ext.LSTM  # what quantize_dynamic does not find, it leaves
        quantized = torch.ao.quantization.quantize_dynamic(lstm_ext.to_torch(model), {nn.LSTM}, dtype=torch.qint8)
        assert type(quantized[0]) is torch.ao.nn.quantized.dynamic.LSTM
        out, _ = quantized[0](x)
    expected, _ = model[0](x)
    torch.testing.assert_close(out, expected, rtol=0.1, atol=0.05)


def test_prune_after_to_torch_and_pruned_modules_are_refused():
    model = lstm_ext.to_torch(lstm_ext.LSTM(4, 6))
    prune.l1_unstructured(model, "weight_hh_l0", amount=0.5)
    x = torch.randn(5, 3, 4)
    model(x)
    with pytest.raises(ValueError, match=r"weight_hh_l0 is not a registered Parameter.*prune.remove"):
        lstm_ext.convert(model)
    prune.remove(model, "weight_hh_l0")
    converted = lstm_ext.convert(model)
    assert (converted.weight_hh_l0 == 0).float().mean() >= 0.5
    torch.testing.assert_close(converted(x), model(x))


class Negate(nn.Module):
    def forward(self, x):
        return -x

    def right_inverse(self, x):
        return -x


def test_parametrizations_move_with_their_parameters():
    torch.manual_seed(0)
    ref = nn.LSTM(4, 6)
    parametrize.register_parametrization(ref, "weight_hh_l0", Negate())
    original = ref.parametrizations.weight_hh_l0.original
    negate = ref.parametrizations.weight_hh_l0[0]
    params, state = snapshot(ref)
    x = torch.randn(5, 3, 4)
    expected = ref(x)

    ext = lstm_ext.convert(ref)
    assert parametrize.type_before_parametrizations(ext) is lstm_ext.LSTM
    assert ext.parametrizations.weight_hh_l0.original is original and ext.parametrizations.weight_hh_l0[0] is negate
    assert_same_state(ext, params, state)
    torch.testing.assert_close(ext(x), expected)
    assert torch.equal(ext.weight_hh_l0, -original)

    back = lstm_ext.to_torch(ext)
    assert parametrize.type_before_parametrizations(back) is nn.LSTM
    assert back.parametrizations.weight_hh_l0.original is original
    assert_same_state(back, params, state)
    torch.testing.assert_close(back(x), expected)


def test_subclasses_are_left_with_a_warning():
    class CustomLSTM(nn.LSTM):
        def forward(self, input, hx=None):
            output, state = super().forward(input, hx)
            return output * 2, state

    class CustomExt(lstm_ext.LSTMCell):
        pass

    model = nn.Sequential(CustomLSTM(4, 6), nn.LSTM(6, 6))
    with pytest.warns(UserWarning, match=r"left .*CustomLSTM as it is: a subclass of torch.nn.LSTM") as record:
        lstm_ext.convert(model)
    assert record[0].filename == __file__  # the warning points at the caller
    assert type(model[0]) is CustomLSTM and type(model[1]) is lstm_ext.LSTM
    with pytest.warns(UserWarning, match=r"left .*CustomExt as it is: a subclass of lstm_ext.LSTMCell"):
        assert type(lstm_ext.to_torch(CustomExt(3, 3))) is CustomExt


def test_hooks_are_not_carried_over_and_say_so():
    lstm = nn.LSTM(4, 6)
    lstm.register_forward_hook(lambda module, args, output: None)
    with pytest.warns(UserWarning, match="hooks registered on LSTM are not carried over"):
        converted = lstm_ext.convert(lstm)
    assert not converted._forward_hooks


def test_other_modules_and_non_modules():
    linear = nn.Linear(2, 2)
    assert lstm_ext.convert(linear) is linear and lstm_ext.to_torch(linear) is linear
    with pytest.raises(TypeError, match="expected a torch.nn.Module, got list"):
        lstm_ext.convert([nn.LSTM(2, 2)])


# ---- the variants


@pytest.mark.parametrize("cls, kwargs, words", [
    (lstm_ext.LSTM, dict(peephole=True), "peephole=True"),
    (lstm_ext.LSTM, dict(layer_norm=True, forget_bias=1.0), "layer_norm=True"),
    (lstm_ext.LSTM, dict(recurrent_dropout=0.25), "recurrent_dropout=0.25"),
    (lstm_ext.LSTM, dict(zoneout=(0.1, 0.2), peephole=True), r"peephole=True, zoneout=\(0.1, 0.2\)"),
    (lstm_ext.LSTMCell, dict(zoneout=0.5), "zoneout=0.5"),
], ids=["peephole", "layer_norm", "recurrent_dropout", "two", "cell_zoneout"])
def test_to_torch_refuses_what_nn_cannot_express_and_converts_nothing(cls, kwargs, words):
    model = nn.Sequential(lstm_ext.LSTM(4, 4), nn.ModuleDict({"encoder": cls(4, 4, **kwargs)}))
    target = "torch.nn.LSTM" if cls is lstm_ext.LSTM else "torch.nn.LSTMCell"
    with pytest.raises(ValueError, match=rf"^lstm_ext.to_torch: the model's '1.encoder' is an lstm_ext.{cls.__name__} "
                                         rf"with {words}, which {target} cannot express; nothing was converted$"):
        lstm_ext.to_torch(model)
    assert type(model[0]) is lstm_ext.LSTM and type(model[1]["encoder"]) is cls
    with pytest.raises(ValueError, match=r"^lstm_ext.to_torch: the model is an lstm_ext"):
        lstm_ext.to_torch(cls(4, 4, **kwargs))


@pytest.mark.parametrize("cls, nn_cls", [(lstm_ext.LSTM, nn.LSTM), (lstm_ext.LSTMCell, nn.LSTMCell)])
def test_to_torch_converts_forget_bias_an_initialisation(cls, nn_cls):
    torch.manual_seed(0)
    module = cls(4, 6, forget_bias=1.0).eval()
    params, state = snapshot(module)
    converted = lstm_ext.to_torch(module)
    assert type(converted) is nn_cls
    assert_same_state(converted, params, state)
    bias_ih = converted.bias_ih if cls is lstm_ext.LSTMCell else converted.bias_ih_l0
    assert (bias_ih[6:12] > 1.0 - 1 / 6 ** 0.5).all()  # the initialisation moved with the parameter
    x = torch.randn(5, 3, 4) if cls is lstm_ext.LSTM else torch.randn(3, 4)
    for a, e in zip(converted(x), module(x)):
        torch.testing.assert_close(a, e)


def test_convert_builds_modules_without_variants():
    converted = lstm_ext.convert(nn.Sequential(nn.LSTM(4, 6), nn.LSTMCell(6, 6)))
    for module in converted:
        assert (module.forget_bias, module.recurrent_dropout, module.zoneout, module.layer_norm, module.peephole) == \
            (0.0, 0.0, 0.0, False, False)
    assert list(converted[0].state_dict()) == list(nn.LSTM(4, 6).state_dict())
