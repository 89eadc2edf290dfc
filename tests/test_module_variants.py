"""The variants on the modules (lstm_ext.LSTM / LSTMCell's forget_bias, recurrent_dropout, zoneout,
layer_norm, peephole and forward's return_cell_states): constructor validation, parameters and their
initialisation, state dicts, repr, the layout of the cell states, the masks forward draws and uses, eval
against training. The variants' numbers against an independent reference are tests/test_variants.py's."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import lstm_ext

ALL_VARIANTS = dict(forget_bias=1.0, recurrent_dropout=0.25, zoneout=(0.1, 0.2), layer_norm=True, peephole=True)


def nn_kwargs(config):
    return {k: v for k, v in config.items() if k not in ALL_VARIANTS}


# ---- constructor validation


@pytest.mark.parametrize("cls", [lstm_ext.LSTM, lstm_ext.LSTMCell])
@pytest.mark.parametrize("name", ["layer_norm", "peephole"])
def test_bool_variants_are_checked_in_nn_words(cls, name):
    # nn's words for its bool arguments (bias), with the variant's name
    with pytest.raises(TypeError) as expected:
        nn.LSTM(3, 5, bias=1)
    with pytest.raises(TypeError) as actual:
        cls(3, 5, **{name: 1})
    assert str(actual.value) == str(expected.value).replace("bias", name)


@pytest.mark.parametrize("cls", [lstm_ext.LSTM, lstm_ext.LSTMCell])
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, "0.1", True, float("nan")])
def test_recurrent_dropout_outside_zero_one_is_refused(cls, value):
    with pytest.raises(ValueError, match=r"^recurrent_dropout should be a number in range \[0, 1\) representing the "
                                         r"probability of an element of the recurrent input being zeroed, got "
                                         + repr(value).replace(".", r"\.")):
        cls(3, 5, recurrent_dropout=value)


@pytest.mark.parametrize("cls", [lstm_ext.LSTM, lstm_ext.LSTMCell])
@pytest.mark.parametrize("value", [1.5, -0.5, (0.1, -0.1), (0.1, 1.2), (0.1, 0.2, 0.3), (0.1,), "0.1", (0.1, None)])
def test_zoneout_outside_zero_one_is_refused(cls, value):
    with pytest.raises(ValueError, match=r"^zoneout should be a number or a pair \(cell_rate, hidden_rate\) of numbers "
                                         r"in range \[0, 1\]") as info:
        cls(3, 5, zoneout=value)
    assert str(info.value).endswith(f"got {value!r}")


@pytest.mark.parametrize("cls", [lstm_ext.LSTM, lstm_ext.LSTMCell])
def test_forget_bias_is_checked(cls):
    with pytest.raises(ValueError, match=r"^forget_bias requires bias=True \(it is added to bias_ih\), got bias=False "
                                         r"with forget_bias=1.0$"):
        cls(3, 5, bias=False, forget_bias=1.0)
    with pytest.raises(TypeError, match="^forget_bias should be a real number, got: str$"):
        cls(3, 5, forget_bias="1")
    with pytest.raises(ValueError, match="^forget_bias should be a finite number, got inf$"):
        cls(3, 5, forget_bias=math.inf)
    cls(3, 5, bias=False, forget_bias=0.0)  # the default needs no bias


def test_zoneout_with_projections_is_not_implemented():
    with pytest.raises(NotImplementedError, match=r"^zoneout with proj_size > 0 is not implemented, got "
                                                  r"zoneout=\(0.0, 0.1\) and proj_size=2$"):
        lstm_ext.LSTM(3, 5, proj_size=2, zoneout=(0.0, 0.1))
    # every other variant works with projections
    lstm_ext.LSTM(3, 5, proj_size=2, zoneout=0.0, **{k: v for k, v in ALL_VARIANTS.items() if k != "zoneout"})


def test_nn_arguments_are_checked_first():
    # nn.LSTM's error for nn's argument, before the variants'
    with pytest.raises(ValueError, match="^dropout should be a number in range"):
        lstm_ext.LSTM(3, 5, dropout=2.0, recurrent_dropout=2.0)
    with pytest.raises(ValueError, match="^proj_size has to be smaller than hidden_size"):
        lstm_ext.LSTM(3, 5, proj_size=6, zoneout=0.5)


@pytest.mark.parametrize("cls", [lstm_ext.LSTM, lstm_ext.LSTMCell])
def test_variants_are_keyword_only(cls):
    args = (3, 5, 2, True, False, 0.0, False, 0, None, None) if cls is lstm_ext.LSTM else (3, 5, True, None, None)
    with pytest.raises(TypeError, match="positional argument"):
        cls(*args, 1.0)


def test_the_attributes_hold_the_arguments():
    lstm = lstm_ext.LSTM(3, 5, forget_bias=1, recurrent_dropout=0.5, zoneout=[0.25, 0.5], layer_norm=True)
    assert (lstm.forget_bias, lstm.recurrent_dropout, lstm.zoneout, lstm.layer_norm, lstm.peephole) == \
        (1.0, 0.5, (0.25, 0.5), True, False)
    assert type(lstm.forget_bias) is float and type(lstm.zoneout) is tuple
    assert lstm_ext.LSTM(3, 5, zoneout=0.25).zoneout == 0.25


# ---- parameters


def variant_names(config, suffixes):
    names = []
    if config.get("peephole"):
        names += [f"weight_peephole{s}" for s in suffixes]
    if config.get("layer_norm"):
        names += [f"{n}{s}" for s in suffixes for n in ("layer_norm_weight_ih", "layer_norm_weight_hh",
                                                         "layer_norm_weight_c", "layer_norm_bias_c")]
    return names


@pytest.mark.parametrize("config", [
    dict(peephole=True), dict(layer_norm=True), dict(peephole=True, layer_norm=True, num_layers=2, bidirectional=True),
    dict(peephole=True, layer_norm=True, proj_size=2, bidirectional=True, bias=False),
], ids=str)
def test_lstm_parameters_after_nn_ones(config):
    hidden = 5
    lstm = lstm_ext.LSTM(3, hidden, **config)
    ref = nn.LSTM(3, hidden, **nn_kwargs(config))
    suffixes = [f"_l{k}{r}" for k in range(config.get("num_layers", 1))
                for r in ([""] + (["_reverse"] if config.get("bidirectional") else []))]
    names = [name for name, _ in lstm.named_parameters()]
    nn_names = [name for name, _ in ref.named_parameters()]
    assert names == nn_names + variant_names(config, suffixes)
    shapes = dict(lstm.named_parameters())
    for name, p in ref.named_parameters():
        assert shapes[name].shape == p.shape, name
    for name in variant_names(config, suffixes):
        expected = 3 * hidden if "peephole" in name else (4 * hidden if name.split("_l")[0].endswith(("ih", "hh"))
                                                          else hidden)
        assert shapes[name].shape == (expected,), name
    # nn's surface keeps nn's parameters only
    assert lstm._flat_weights_names == ref._flat_weights_names
    assert lstm._all_weights == ref._all_weights
    assert [[w.shape for w in ws] for ws in lstm.all_weights] == [[w.shape for w in ws] for ws in ref.all_weights]


def test_cell_parameters_after_nn_ones_and_none_when_off():
    cell = lstm_ext.LSTMCell(3, 5, peephole=True, layer_norm=True)
    assert [name for name, _ in cell.named_parameters()] == [
        "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_peephole", "layer_norm_weight_ih",
        "layer_norm_weight_hh", "layer_norm_weight_c", "layer_norm_bias_c"]
    assert [p.shape[0] for p in list(cell.parameters())[4:]] == [15, 20, 20, 5, 5]
    plain = lstm_ext.LSTMCell(3, 5)
    assert plain.weight_peephole is None and plain.layer_norm_weight_c is None
    assert list(plain.state_dict()) == list(nn.LSTMCell(3, 5).state_dict())


@pytest.mark.parametrize("config", [
    dict(num_layers=2, bidirectional=True, peephole=True, layer_norm=True, forget_bias=1.5),
    dict(proj_size=2, peephole=True, forget_bias=-1.0),
    dict(peephole=True, dtype=torch.float64),
], ids=str)
def test_same_seed_gives_nn_weights_then_the_variants_init(config):
    hidden = 5
    torch.manual_seed(7)
    lstm = lstm_ext.LSTM(3, hidden, **config)
    torch.manual_seed(7)
    ref = nn.LSTM(3, hidden, **nn_kwargs(config))
    stdv = 1 / math.sqrt(hidden)
    # after nn's draws, the peepholes from the same stream, in registration order
    peepholes = [torch.empty(3 * hidden, dtype=config.get("dtype")).uniform_(-stdv, stdv)
                 for _ in lstm._all_weights] if config.get("peephole") else []
    params = dict(lstm.named_parameters())
    fb = config.get("forget_bias", 0.0)
    for name, p in ref.named_parameters():
        expected = p.detach().clone()
        if name.startswith("bias_ih"):
            expected[hidden:2 * hidden] += fb
        assert torch.equal(params[name], expected), name
    assert not torch.equal(params["bias_ih_l0"], ref.bias_ih_l0) or fb == 0
    ours = [p for name, p in lstm.named_parameters() if name.startswith("weight_peephole")]
    assert len(ours) == len(peepholes)
    for a, e in zip(ours, peepholes):
        assert torch.equal(a, e)
        assert a.abs().max() <= stdv
    for name, p in params.items():
        if name.startswith("layer_norm_bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        elif name.startswith("layer_norm"):
            assert torch.equal(p, torch.ones_like(p)), name


def test_reset_parameters_redraws_in_the_same_order():
    lstm = lstm_ext.LSTM(3, 5, num_layers=2, peephole=True, layer_norm=True, forget_bias=2.0)
    torch.manual_seed(4)
    lstm.reset_parameters()
    first = {k: v.clone() for k, v in lstm.state_dict().items()}
    with torch.no_grad():
        for p in lstm.parameters():
            p.fill_(3.0)
    torch.manual_seed(4)
    lstm.reset_parameters()
    for k, v in lstm.state_dict().items():
        assert torch.equal(v, first[k]), k
    assert (lstm.bias_ih_l1[5:10] >= 2.0 - 1 / math.sqrt(5)).all()


def test_cell_same_seed_gives_nn_weights_then_the_variants_init():
    torch.manual_seed(7)
    cell = lstm_ext.LSTMCell(3, 4, peephole=True, layer_norm=True, forget_bias=1.0)
    torch.manual_seed(7)
    ref = nn.LSTMCell(3, 4)
    peephole = torch.empty(12).uniform_(-0.5, 0.5)
    assert torch.equal(cell.weight_ih, ref.weight_ih) and torch.equal(cell.weight_hh, ref.weight_hh)
    assert torch.equal(cell.bias_hh, ref.bias_hh)
    assert torch.equal(cell.bias_ih, ref.bias_ih.detach() + torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 8))
    assert torch.equal(cell.weight_peephole, peephole)
    assert torch.equal(cell.layer_norm_weight_ih, torch.ones(16))
    assert torch.equal(cell.layer_norm_bias_c, torch.zeros(4))


def test_state_dict_round_trip_and_nn_keys():
    config = dict(num_layers=2, bidirectional=True, peephole=True, layer_norm=True)
    torch.manual_seed(1)
    lstm = lstm_ext.LSTM(3, 5, **config)
    with torch.no_grad():  # the variants' parameters away from their init, so that the load is seen
        for p in lstm.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    other = lstm_ext.LSTM(3, 5, **config)
    other.load_state_dict(lstm.state_dict())
    for (ka, a), (kb, b) in zip(lstm.state_dict().items(), other.state_dict().items()):
        assert ka == kb and torch.equal(a, b)
    x = torch.randn(4, 2, 3)
    lstm.eval(), other.eval()
    assert torch.equal(lstm(x)[0], other(x)[0])
    # nn.LSTM's state dict is the first part of it; the variants' keys are what it lacks
    ref = nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    assert list(lstm.state_dict())[:len(ref.state_dict())] == list(ref.state_dict())
    result = other.load_state_dict(ref.state_dict(), strict=False)
    assert result.missing_keys == list(lstm.state_dict())[len(ref.state_dict()):] and not result.unexpected_keys


# ---- repr


def test_extra_repr_shows_the_non_default_variants():
    assert repr(lstm_ext.LSTM(3, 5, num_layers=2)) == repr(nn.LSTM(3, 5, num_layers=2))
    assert repr(lstm_ext.LSTM(3, 5, num_layers=2, **ALL_VARIANTS)) == (
        "LSTM(3, 5, num_layers=2, forget_bias=1.0, recurrent_dropout=0.25, zoneout=(0.1, 0.2), layer_norm=True, "
        "peephole=True)")
    assert repr(lstm_ext.LSTM(3, 5, zoneout=0.5)) == "LSTM(3, 5, zoneout=0.5)"
    assert repr(lstm_ext.LSTMCell(3, 5, bias=False, peephole=True)) == "LSTMCell(3, 5, bias=False, peephole=True)"
    assert repr(lstm_ext.LSTMCell(3, 5)) == repr(nn.LSTMCell(3, 5))


# ---- return_cell_states: shapes and layouts


def assert_last_cells(cell_states, c_n, lengths, hidden, num_directions, batch_first=False):
    """The cell state of each sequence's last step (forward direction) and of its first step (reverse
    direction) are the last layer's c_n: the layout is output's."""
    steps_dim = 1 if batch_first else 0
    for b, length in enumerate(lengths):
        last = cell_states.select(1 - steps_dim, b).select(0, length - 1)
        torch.testing.assert_close(last[:hidden], c_n[-num_directions, b], rtol=0, atol=0)
        if num_directions == 2:
            first = cell_states.select(1 - steps_dim, b).select(0, 0)
            torch.testing.assert_close(first[hidden:], c_n[-1, b], rtol=0, atol=0)


@pytest.mark.parametrize("variants", [{}, dict(peephole=True, layer_norm=True)], ids=["plain", "peephole_ln"])
@pytest.mark.parametrize("config", [
    dict(), dict(batch_first=True), dict(bidirectional=True, num_layers=2), dict(bidirectional=True, batch_first=True),
    dict(proj_size=2, bidirectional=True),
], ids=str)
def test_cell_states_padded(config, variants):
    lstm = lstm_ext.LSTM(3, 5, **config, **variants)
    steps, batch = 4, 2
    x = torch.randn((batch, steps, 3) if config.get("batch_first") else (steps, batch, 3), requires_grad=True)
    output, (h_n, c_n), cell_states = lstm(x, return_cell_states=True)
    directions = 2 if config.get("bidirectional") else 1
    assert cell_states.shape == output.shape[:2] + (directions * 5,)
    assert_last_cells(cell_states, c_n, [steps] * batch, 5, directions, config.get("batch_first", False))
    # the same output and states as without them
    again = lstm(x)
    assert torch.equal(again[0], output) and torch.equal(again[1][1], c_n)
    cell_states.sum().backward()  # differentiable
    assert x.grad is not None and lstm.weight_ih_l0.grad is not None


@pytest.mark.parametrize("batch_first", [False, True])
def test_cell_states_unbatched(batch_first):
    lstm = lstm_ext.LSTM(3, 5, bidirectional=True, batch_first=batch_first, peephole=True)
    x = torch.randn(4, 3)
    output, (h_n, c_n), cell_states = lstm(x, return_cell_states=True)
    assert output.shape == (4, 10) and cell_states.shape == (4, 10) and c_n.shape == (2, 5)
    batched = lstm(x.unsqueeze(0 if batch_first else 1), return_cell_states=True)[2]
    assert torch.equal(cell_states, batched.squeeze(0 if batch_first else 1))


@pytest.mark.parametrize("variants", [{}, dict(peephole=True)], ids=["plain", "peephole"])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_cell_states_packed(enforce_sorted, variants):
    lstm = lstm_ext.LSTM(3, 5, bidirectional=True, num_layers=2, **variants)
    lengths = [5, 3, 2] if enforce_sorted else [3, 5, 2]
    packed = pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor(lengths), enforce_sorted=enforce_sorted)
    output, (h_n, c_n), cell_states = lstm(packed, return_cell_states=True)
    assert isinstance(cell_states, PackedSequence)
    assert cell_states.data.shape == (packed.data.size(0), 10)
    assert torch.equal(cell_states.batch_sizes, output.batch_sizes)
    for name in ("sorted_indices", "unsorted_indices"):
        a, e = getattr(cell_states, name), getattr(output, name)
        assert (a is None and e is None) or torch.equal(a, e), name
    padded, padded_lengths = pad_packed_sequence(cell_states)  # the caller's batch order, as output's
    assert padded_lengths.tolist() == lengths
    assert_last_cells(padded, c_n, lengths, 5, 2)


def test_cell_states_with_projections_are_hidden_size_wide():
    lstm = lstm_ext.LSTM(3, 5, proj_size=2, peephole=True)
    output, (h_n, c_n), cell_states = lstm(torch.randn(4, 2, 3), return_cell_states=True)
    assert output.shape == (4, 2, 2) and cell_states.shape == (4, 2, 5)
    torch.testing.assert_close(cell_states[-1], c_n[0], rtol=0, atol=0)


def test_return_cell_states_is_keyword_only_and_off_by_default():
    lstm = lstm_ext.LSTM(3, 5)
    x = torch.randn(4, 2, 3)
    assert len(lstm(x)) == 2 and len(lstm(x, None)) == 2
    with pytest.raises(TypeError):
        lstm(x, None, True)
    import inspect
    parameter = inspect.signature(lstm.forward).parameters["return_cell_states"]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default is False


# ---- masks


MASK_CONFIGS = [
    dict(recurrent_dropout=0.3),
    dict(zoneout=0.2, num_layers=2, bidirectional=True),
    dict(zoneout=(0.0, 0.4), recurrent_dropout=0.5, batch_first=True),
    dict(zoneout=(0.3, 0.0), bidirectional=True),
    dict(recurrent_dropout=0.2, proj_size=2, num_layers=2),
]


@pytest.mark.parametrize("config", MASK_CONFIGS, ids=str)
def test_sample_masks_shapes_and_values(config):
    lstm = lstm_ext.LSTM(3, 5, **config)
    steps, batch = 6, 4
    batch_first = config.get("batch_first", False)
    x = torch.randn((batch, steps, 3) if batch_first else (steps, batch, 3), dtype=torch.float64)
    lstm.double()
    masks = lstm.sample_masks(x)
    assert isinstance(masks, lstm_ext.VariantMasks)
    count = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
    p = config.get("recurrent_dropout", 0.0)
    if p == 0:
        assert masks.recurrent_dropout_masks is None
    else:
        assert len(masks.recurrent_dropout_masks) == count
        for mask in masks.recurrent_dropout_masks:
            assert mask.shape == (batch, config.get("proj_size") or 5) and mask.dtype == torch.float64
            assert set(mask.unique().tolist()) <= {0.0, 1 / (1 - p)}
    rates = config.get("zoneout", 0.0)
    rates = rates if isinstance(rates, tuple) else (rates, rates)
    if not any(rates):
        assert masks.zoneout_masks is None
    else:
        assert len(masks.zoneout_masks) == count
        for pair in masks.zoneout_masks:
            assert len(pair) == 2
            for rate, mask in zip(rates, pair):
                if rate == 0:
                    assert mask is None
                else:
                    assert mask.shape == x.shape[:2] + (5,) and mask.dtype == torch.float64
                    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_sample_masks_of_packed_and_unbatched_input():
    lstm = lstm_ext.LSTM(3, 5, recurrent_dropout=0.5, zoneout=0.5, bidirectional=True)
    packed = pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor([2, 5, 3]), enforce_sorted=False)
    masks = lstm.sample_masks(packed)
    assert [m.shape for m in masks.recurrent_dropout_masks] == [(3, 5)] * 2
    assert [m.shape for pair in masks.zoneout_masks for m in pair] == [(10, 5)] * 4  # the packed rows
    masks = lstm.sample_masks(torch.randn(5, 3))
    assert [m.shape for m in masks.recurrent_dropout_masks] == [(1, 5)] * 2
    assert [m.shape for pair in masks.zoneout_masks for m in pair] == [(5, 1, 5)] * 4
    lstm.batch_first = True
    assert lstm.sample_masks(torch.randn(5, 3)).zoneout_masks[0][0].shape == (1, 5, 5)


def test_sample_masks_draws_in_the_functional_order():
    # per layer and direction: the recurrent mask, then zoneout's cell mask, then its hidden mask
    lstm = lstm_ext.LSTM(3, 5, recurrent_dropout=0.5, zoneout=(0.25, 0.75), num_layers=2)
    x = torch.randn(6, 4, 3)
    torch.manual_seed(9)
    masks = lstm.sample_masks(x)
    torch.manual_seed(9)
    for index in range(2):
        recurrent = lstm_ext.bernoulli_mask((4, 5), 0.5, dtype=torch.float32, device="cpu").div_(0.5)
        cell = lstm_ext.bernoulli_mask((6, 4, 5), 0.25, dtype=torch.float32, device="cpu")
        hidden = lstm_ext.bernoulli_mask((6, 4, 5), 0.75, dtype=torch.float32, device="cpu")
        assert torch.equal(masks.recurrent_dropout_masks[index], recurrent)
        assert torch.equal(masks.zoneout_masks[index][0], cell) and torch.equal(masks.zoneout_masks[index][1], hidden)


def functional_forward(lstm, x, hx=None, masks=None, training=True, **kwargs):
    """lstm_ext.lstm on the module's weights in the functional order, with the given masks."""
    batch = x.size(0 if lstm.batch_first else 1)
    if hx is None:
        directions = 2 if lstm.bidirectional else 1
        hx = (torch.zeros(lstm.num_layers * directions, batch, lstm.proj_size or lstm.hidden_size),
              torch.zeros(lstm.num_layers * directions, batch, lstm.hidden_size))
    weights = lstm._lstm_weights(lstm._flat_weights)
    return lstm_ext.lstm(x, hx, weights, lstm.bias, lstm.num_layers, lstm.dropout, training, lstm.bidirectional,
                         lstm.batch_first, peephole=lstm.peephole, layer_norm=lstm.layer_norm,
                         recurrent_dropout=lstm.recurrent_dropout,
                         recurrent_dropout_masks=None if masks is None else masks.recurrent_dropout_masks,
                         zoneout=lstm.zoneout, zoneout_masks=None if masks is None else masks.zoneout_masks,
                         **kwargs)


@pytest.mark.parametrize("config", MASK_CONFIGS + [dict(recurrent_dropout=0.3, zoneout=0.2, num_layers=2,
                                                        dropout=0.5, peephole=True, layer_norm=True)], ids=str)
def test_training_forward_uses_the_masks_of_sample_masks(config):
    lstm = lstm_ext.LSTM(3, 5, **config).train()
    x = torch.randn((4, 6, 3) if config.get("batch_first") else (6, 4, 3))
    torch.manual_seed(5)
    masks = lstm.sample_masks(x)
    expected = functional_forward(lstm, x, masks=masks)  # with dropout: drawn after the masks, as forward's
    torch.manual_seed(5)
    actual = lstm(x)
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1][0], expected[1][0])
    assert torch.equal(actual[1][1], expected[1][1])
    # the masks matter: the expectation's result (eval) is another
    with torch.no_grad():
        assert not torch.equal(actual[0], functional_forward(lstm, x, training=False)[0])


def test_training_forward_of_packed_input_uses_the_masks_of_sample_masks():
    lstm = lstm_ext.LSTM(3, 5, recurrent_dropout=0.4, zoneout=0.3, bidirectional=True)
    packed = pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor([2, 5, 3]), enforce_sorted=False)
    torch.manual_seed(5)
    masks = lstm.sample_masks(packed)
    torch.manual_seed(5)
    output, (h_n, c_n) = lstm(packed)
    hx = (torch.zeros(2, 3, 5), torch.zeros(2, 3, 5))
    expected = lstm_ext.lstm(packed.data, hx, lstm._flat_weights, True, 1, 0.0, True, True, False,
                             batch_sizes=packed.batch_sizes, recurrent_dropout=0.4,
                             recurrent_dropout_masks=masks.recurrent_dropout_masks, zoneout=(0.3, 0.3),
                             zoneout_masks=masks.zoneout_masks)
    assert torch.equal(output.data, expected[0])
    assert torch.equal(h_n, expected[1][0].index_select(1, packed.unsorted_indices))


@pytest.mark.parametrize("config", [dict(recurrent_dropout=0.5), dict(zoneout=(0.3, 0.6)),
                                    dict(recurrent_dropout=0.5, zoneout=0.3, peephole=True, num_layers=2)], ids=str)
def test_eval_draws_nothing_and_is_deterministic(config):
    lstm = lstm_ext.LSTM(3, 5, **config).eval()
    x = torch.randn(6, 4, 3)
    state = torch.get_rng_state()
    first = lstm(x)[0]
    assert torch.equal(torch.get_rng_state(), state)  # no masks drawn
    assert torch.equal(lstm(x)[0], first)
    # eval: recurrent dropout does nothing, zoneout is its expectation (the rates as d)
    torch.testing.assert_close(first, functional_forward(lstm, x, training=False)[0], rtol=0, atol=0)
    if "zoneout" not in config:
        plain = lstm_ext.LSTM(3, 5, **{k: v for k, v in config.items() if k != "recurrent_dropout"}).eval()
        plain.load_state_dict(lstm.state_dict())
        torch.testing.assert_close(first, plain(x)[0], rtol=0, atol=0)
    # training draws, so two calls differ
    lstm.train()
    assert not torch.equal(lstm(x)[0], lstm(x)[0])


@pytest.mark.parametrize("training", [True, False])
def test_zoneout_of_one_keeps_the_initial_state(training):
    # d = 1 everywhere (training: every mask is 1; eval: the rate): every step keeps h0 and c0
    lstm = lstm_ext.LSTM(3, 5, zoneout=1.0, num_layers=2).train(training)
    h0, c0 = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    output, (h_n, c_n), cell_states = lstm(torch.randn(6, 4, 3), (h0, c0), return_cell_states=True)
    assert torch.equal(output, h0[-1].expand(6, 4, 5)) and torch.equal(cell_states, c0[-1].expand(6, 4, 5))
    assert torch.equal(h_n, h0) and torch.equal(c_n, c0)


def test_forget_bias_alone_draws_no_masks_and_runs_as_nn():
    torch.manual_seed(3)
    lstm = lstm_ext.LSTM(3, 5, forget_bias=1.0, num_layers=2)
    ref = nn.LSTM(3, 5, num_layers=2)
    ref.load_state_dict(lstm.state_dict())
    x = torch.randn(6, 4, 3)
    state = torch.get_rng_state()
    for a, e in zip(lstm(x), ref(x)):
        torch.testing.assert_close(a, e)
    assert torch.equal(torch.get_rng_state(), state)


# ---- LSTMCell


@pytest.mark.parametrize("variants", [dict(peephole=True), dict(layer_norm=True), dict(recurrent_dropout=0.3),
                                      dict(zoneout=(0.2, 0.4)), ALL_VARIANTS], ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_cell_shapes(variants, training):
    cell = lstm_ext.LSTMCell(3, 5, **variants).train(training)
    x, h, c = torch.randn(4, 3, requires_grad=True), torch.randn(4, 5), torch.randn(4, 5)
    h1, c1 = cell(x, (h, c))
    assert h1.shape == c1.shape == (4, 5)
    h1, c1 = cell(x)
    assert h1.shape == c1.shape == (4, 5)
    h1, c1 = cell(x[0], (h[0], c[0]))  # unbatched
    assert h1.shape == c1.shape == (5,)
    (h1.sum() + c1.sum()).backward()
    assert cell.weight_ih.grad is not None and x.grad is not None


def test_cell_draws_its_masks_per_call_over_the_callers_state():
    p, rates = 0.4, (0.25, 0.5)
    cell = lstm_ext.LSTMCell(3, 5, recurrent_dropout=p, zoneout=rates, peephole=True)
    x, h, c = torch.randn(4, 3), torch.randn(4, 5), torch.randn(4, 5)
    torch.manual_seed(8)
    actual = cell(x, (h, c))
    torch.manual_seed(8)
    recurrent = lstm_ext.bernoulli_mask((4, 5), 1 - p, dtype=torch.float32, device="cpu").div_(1 - p)
    cell_mask = lstm_ext.bernoulli_mask((4, 5), rates[0], dtype=torch.float32, device="cpu")
    hidden_mask = lstm_ext.bernoulli_mask((4, 5), rates[1], dtype=torch.float32, device="cpu")
    expected = lstm_ext.lstm_cell(x, (h, c), cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh,
                                  training=True, weight_peephole=cell.weight_peephole, recurrent_mask=recurrent,
                                  zoneout=rates, zoneout_masks=(cell_mask, hidden_mask))
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])
    # the zoneout masks keep the caller's values where they are 1
    keep_c, keep_h = cell_mask.bool(), hidden_mask.bool()
    assert torch.equal(actual[1][keep_c], c[keep_c]) and torch.equal(actual[0][keep_h], h[keep_h])
    assert not torch.equal(cell(x, (h, c))[0], actual[0])  # fresh masks at the next call


def test_cell_eval_is_the_expectation_and_draws_nothing():
    cell = lstm_ext.LSTMCell(3, 5, recurrent_dropout=0.4, zoneout=(0.25, 0.5), layer_norm=True).eval()
    x, h, c = torch.randn(4, 3), torch.randn(4, 5), torch.randn(4, 5)
    state = torch.get_rng_state()
    actual = cell(x, (h, c))
    assert torch.equal(torch.get_rng_state(), state)
    lnw = (cell.layer_norm_weight_ih, cell.layer_norm_weight_hh, cell.layer_norm_weight_c, cell.layer_norm_bias_c)
    expected = lstm_ext.lstm_cell(x, (h, c), cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh,
                                  training=False, layer_norm_weights=lnw, zoneout=(0.25, 0.5))
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])
    # zoneout 1: the state kept as it was, in eval and training
    keep = lstm_ext.LSTMCell(3, 5, zoneout=1.0)
    for training in (False, True):
        h1, c1 = keep.train(training)(x, (h, c))
        assert torch.equal(h1, h) and torch.equal(c1, c)


# ---- torch.compile: the masks are drawn inside the graph

def test_compiled_training_forward_draws_the_eager_masks(dynamo_graphs):
    lstm = lstm_ext.LSTM(3, 5, num_layers=2, bidirectional=True, peephole=True, layer_norm=True,
                         recurrent_dropout=0.3, zoneout=(0.2, 0.1))
    compiled = torch.compile(lstm, fullgraph=True, backend="aot_eager")
    x = torch.randn(6, 4, 3)
    torch.manual_seed(1)
    actual = compiled(x, return_cell_states=True)
    torch.manual_seed(1)
    expected = lstm(x, return_cell_states=True)
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[2], expected[2])


def test_compiled_packed_training_forward_is_one_graph(dynamo_graphs):
    # sample_masks takes a packed input's batch from sorted_indices, not from batch_sizes (data to dynamo)
    lstm = lstm_ext.LSTM(3, 4, zoneout=0.2, recurrent_dropout=0.2)
    compiled = torch.compile(lstm, backend="aot_eager")
    packed = pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor([2, 5, 3]), enforce_sorted=False)
    torch.manual_seed(0)
    actual = compiled(packed, return_cell_states=True)
    torch.manual_seed(0)
    expected = lstm(packed, return_cell_states=True)
    assert torch.equal(actual[0].data, expected[0].data) and torch.equal(actual[2].data, expected[2].data)
    assert dynamo_graphs() == 1
