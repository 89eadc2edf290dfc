"""nn.LSTM's and nn.LSTMCell's attribute surface and errors on lstm_ext's modules.

The names are computed from torch (what an nn.LSTM / nn.LSTMCell has beyond a plain nn.Module), so a
name a newer torch adds fails these tests until lstm_ext has it, and a new method fails until it has a
case here. Values are compared with nn's on modules built from the same seed; methods are called on the
same arguments, and where nn raises, lstm_ext must raise the same exception type with the same message.
"""

import weakref

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_ext

LSTM_CONFIGS = [
    dict(input_size=3, hidden_size=5),
    dict(input_size=3, hidden_size=5, num_layers=2, bias=False, batch_first=True, bidirectional=True, dropout=0.25),
    dict(input_size=3, hidden_size=5, proj_size=2, bidirectional=True),
]
CELL_CONFIGS = [dict(input_size=3, hidden_size=5), dict(input_size=3, hidden_size=5, bias=False)]
# Where lstm_ext differs from nn by design: name -> why (and what is checked instead).
BY_DESIGN = {
    # TorchScript metadata: lstm_ext lists its lookups (_flat_weights, ...) too; nn's entries must be in it.
    "__jit_unused_properties__": lambda ours, theirs: set(theirs) <= set(ours),
}


def make_pair(nn_cls, ext_cls, config):
    torch.manual_seed(11)
    ref = nn_cls(**config)
    torch.manual_seed(11)
    ext = ext_cls(**config)
    return ref, ext


def surface(module):
    """The names of module beyond a plain nn.Module's (attributes, methods, parameters)."""
    return sorted(set(dir(module)) - set(dir(nn.Module())))


def assert_same(actual, expected, where):
    assert type(actual) is type(expected), f"{where}: {type(actual).__name__}, nn has {type(expected).__name__}"
    if isinstance(expected, torch.Tensor):
        assert actual.shape == expected.shape and torch.equal(actual, expected), f"{where}: values differ"
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{where}: {len(actual)} items, nn has {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{i}]")
    elif isinstance(expected, weakref.ReferenceType):
        assert_same(actual(), expected(), f"{where}()")
    else:
        assert actual == expected, f"{where}: {actual!r}, nn has {expected!r}"


def outcome(call):
    try:
        return "returned", call()
    except Exception as error:  # any exception is part of the behaviour compared
        return "raised", error


def assert_same_outcome(ext_call, ref_call, where):
    """ext_call() returns what ref_call() returns, or raises the same type with the same message."""
    kind, expected = outcome(ref_call)
    if kind == "raised":
        with pytest.raises(type(expected)) as info:
            ext_call()
        assert type(info.value) is type(expected), f"{where}: {type(info.value).__name__}: {info.value}"
        assert str(info.value) == str(expected), f"{where}: message differs"
    else:
        assert_same(ext_call(), expected, where)
    return kind


# ---- names and data attributes


@pytest.mark.parametrize("nn_cls,ext_cls,config", [(nn.LSTM, lstm_ext.LSTM, c) for c in LSTM_CONFIGS]
                         + [(nn.LSTMCell, lstm_ext.LSTMCell, c) for c in CELL_CONFIGS], ids=str)
def test_every_name_of_nn_exists_with_nn_value(nn_cls, ext_cls, config):
    ref, ext = make_pair(nn_cls, ext_cls, config)
    names = surface(ref)
    assert "weight_ih" in names or "weight_ih_l0" in names  # the diff is computed, and holds the parameters
    missing = [name for name in names if not hasattr(ext, name)]
    assert not missing, f"lstm_ext.{ext_cls.__name__} lacks nn.{nn_cls.__name__}'s {missing}"
    for name in names:
        expected = getattr(ref, name)
        if callable(expected) and not isinstance(expected, torch.Tensor):
            assert callable(getattr(ext, name)), f"{name}: nn's is a method, lstm_ext's is not"
            continue
        if name in BY_DESIGN:
            assert BY_DESIGN[name](getattr(ext, name), expected), name
        else:
            assert_same(getattr(ext, name), expected, name)


@pytest.mark.parametrize("config", LSTM_CONFIGS, ids=str)
def test_lstm_data_attributes_equal_nn(config):
    # Also the ones both classes have (so not in the computed diff), which code written for nn.LSTM reads.
    ref, ext = make_pair(nn.LSTM, lstm_ext.LSTM, config)
    assert ext.mode == "LSTM"
    for name in ("mode", "_flat_weights_names", "_all_weights", "_flat_weights", "all_weights", "__constants__",
                 "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
                 "proj_size"):
        assert_same(getattr(ext, name), getattr(ref, name), name)
    # _flat_weights and all_weights hold the module's own parameters, looked up at each use
    assert all(w is p for w, p in zip(ext._flat_weights, ext.parameters()))
    replacement = nn.Parameter(torch.zeros_like(ext.weight_hh_l0))
    ext.weight_hh_l0 = replacement
    assert ext._flat_weights[1] is replacement and ext.all_weights[0][1] is replacement
    assert ext._flat_weight_refs[1]() is replacement


# ---- methods, called with the same arguments on both


def lstm_method_cases(ref):
    """method name -> list of (label, args) for an nn.LSTM-like module with ref's configuration."""
    torch.manual_seed(5)
    directions = 2 if ref.bidirectional else 1
    layers = ref.num_layers * directions
    h_size = ref.proj_size or ref.hidden_size
    batch = 2
    x = torch.randn((batch, 4, ref.input_size) if ref.batch_first else (4, batch, ref.input_size))
    packed = pack_padded_sequence(torch.randn(4, batch, ref.input_size), torch.tensor([4, 2]))
    h = torch.randn(layers, batch, h_size)
    c = torch.randn(layers, batch, ref.hidden_size)
    wrong = torch.randn(layers, batch + 1, h_size)
    permutation = torch.tensor([1, 0])
    return {
        "check_input": [("padded", (x, None)), ("packed", (packed.data, packed.batch_sizes)),
                        ("dtype", (x.double(), None)), ("2-D unpacked", (x[0], None)),
                        ("3-D packed", (x, packed.batch_sizes)), ("input size", (torch.randn(4, batch, 9), None)),
                        ("int", (x.long(), None))],
        "get_expected_hidden_size": [("padded", (x, None)), ("packed", (packed.data, packed.batch_sizes))],
        "get_expected_cell_size": [("padded", (x, None)), ("packed", (packed.data, packed.batch_sizes))],
        "check_hidden_size": [("right", (h, (layers, batch, h_size))), ("wrong", (wrong, (layers, batch, h_size))),
                              ("custom message", (wrong, (layers, batch, h_size), "bad {} vs {}"))],
        "check_forward_args": [("right", (x, (h, c), None)), ("wrong h", (x, (wrong, c), None)),
                               ("wrong c", (x, (h, h if h_size != ref.hidden_size else wrong), None)),
                               ("dtype", (x.double(), (h, c), None)),
                               ("packed", (packed.data, (h, c), packed.batch_sizes))],
        "permute_hidden": [("none", ((h, c), None)), ("permuted", ((h, c), permutation))],
        "flatten_parameters": [("", ())],
        "_init_flat_weights": [("", ())],
        "_update_flat_weights": [("", ())],
        "_weights_have_changed": [("fresh", ())],
        "reset_parameters": [("", ())],  # from the same seed: the same values (compared after the calls)
    }


# nn.LSTMCell's methods beyond nn.Module's (a new one fails test_cell_methods_behave_as_nn until it has a case).
CELL_METHOD_CASES = {"reset_parameters": [("", ())]}


def methods_of(ref):
    return {name for name in surface(ref) if callable(getattr(ref, name)) and not isinstance(getattr(ref, name),
                                                                                           torch.Tensor)}


@pytest.mark.parametrize("config", LSTM_CONFIGS, ids=str)
def test_lstm_methods_behave_as_nn(config):
    ref, ext = make_pair(nn.LSTM, lstm_ext.LSTM, config)
    cases = lstm_method_cases(ref)
    uncovered = methods_of(ref) - set(cases)
    assert not uncovered, f"nn.LSTM methods without a case in lstm_method_cases: {sorted(uncovered)}"
    assert call_all(ref, ext, cases) >= 6  # the error cases are there, and raise


@pytest.mark.parametrize("config", CELL_CONFIGS, ids=str)
def test_cell_methods_behave_as_nn(config):
    ref, ext = make_pair(nn.LSTMCell, lstm_ext.LSTMCell, config)
    uncovered = methods_of(ref) - set(CELL_METHOD_CASES)
    assert not uncovered, f"nn.LSTMCell methods without a case in CELL_METHOD_CASES: {sorted(uncovered)}"
    call_all(ref, ext, CELL_METHOD_CASES)
    assert_same(ext.__constants__, ref.__constants__, "__constants__")


def call_all(ref, ext, cases):
    """Calls every case on both modules (each from the same seed); returns how many raised."""
    def seeded(module, name, args):
        torch.manual_seed(3)
        return getattr(module, name)(*args)

    raised = 0
    for name, calls in cases.items():
        for label, args in calls:
            kind = assert_same_outcome(lambda: seeded(ext, name, args), lambda: seeded(ref, name, args),
                                       f"{name}({label})")
            raised += kind == "raised"
    assert_same(list(ext.state_dict().values()), list(ref.state_dict().values()), "parameters after the calls")
    return raised


def test_weights_never_stale():
    # nn.LSTM reports its weight cache stale from a replacement until its next forward; lstm_ext has no
    # cache (documented on _weights_have_changed), and the replaced weight is the one used.
    ext = lstm_ext.LSTM(3, 5)
    x = torch.randn(4, 2, 3)
    before = ext(x)[0]
    ext.weight_ih_l0 = nn.Parameter(torch.zeros_like(ext.weight_ih_l0))
    assert ext._weights_have_changed() is False
    assert not torch.equal(ext(x)[0], before)
    assert ext.flatten_parameters() is None and ext._init_flat_weights() is None


# ---- forward's errors: what nn raises, lstm_ext raises (type and message)


def lstm_forward_cases(device):
    x = torch.randn(5, 3, 4, device=device)
    h = torch.randn(1, 3, 6, device=device)
    packed = pack_padded_sequence(torch.randn(5, 3, 4, device=device), torch.tensor([5, 3, 2]))
    meta = torch.device("meta")
    return {
        "int input": (x.long(), None),
        "float64 input": (x.double(), None),
        "float64 input of the wrong size": (torch.randn(5, 3, 7, dtype=torch.float64, device=device), None),
        "4-D float64 input": (x.double()[..., None], None),
        "1-D input": (x[0, 0], None),
        "empty sequence": (x[:0], None),
        "wrong input size": (torch.randn(5, 3, 7, device=device), None),
        "float64 input, 2-D states": (x.double(), (h[0], h[0])),
        "unbatched float64 input, 3-D states": (x[:, 0].double(), (h, h)),
        "2-D h, 3-D c": (x, (h, h[0])),
        "wrong h batch": (x, (torch.randn(1, 2, 6, device=device), h)),
        "wrong c size": (x, (h, torch.randn(1, 3, 5, device=device))),
        "unbatched, wrong state size": (x[:, 0], (torch.randn(1, 7, device=device),) * 2),
        "meta input": (x.to(meta), None),
        "meta input and states": (x.to(meta), (h.to(meta),) * 2),
        "meta states": (x, (h.to(meta),) * 2),
        "meta c": (x, (h, h.to(meta))),
        "hx one tensor [2, L, B, H]": (x, torch.randn(2, 1, 3, 6, device=device)),
        "hx one tensor [L, B, H]": (x, h),
        "hx one tensor [2, B, H]": (x, torch.randn(2, 3, 6, device=device)),
        "hx of one tensor": (x, (h,)),
        "hx of three tensors": (x, (h, h, h)),
        "hx of Nones": (x, (None, None)),
        "hx an int": (x, 3),
        "packed, hx one tensor": (packed, torch.randn(2, 1, 3, 6, device=device)),
        "packed, hx of three tensors": (packed, (h, h, h)),
    }


# Where nn.LSTM on CUDA goes to cuDNN, whose words for these differ from its native path's (lstm_ext has nn's
# native words everywhere).
CUDNN_WORDED = {"meta states", "meta c"}


def assert_raises_like_nn(ref, ext, *args):
    """ext(*args) raises what ref(*args) raises: the same type and message."""
    with pytest.raises(Exception) as expected:
        ref(*args)
    with pytest.raises(type(expected.value)) as actual:
        ext(*args)
    assert type(actual.value) is type(expected.value)
    assert str(actual.value) == str(expected.value)


@pytest.mark.parametrize("case", list(lstm_forward_cases("cpu")))
def test_lstm_forward_errors_as_nn(device, case):
    if device.type == "cuda" and case in CUDNN_WORDED:
        pytest.skip("nn.LSTM raises cuDNN's words for this on CUDA")
    torch.manual_seed(2)
    ref = nn.LSTM(4, 6, device=device)
    ext = lstm_ext.LSTM(4, 6, device=device)
    input, hx = lstm_forward_cases(device)[case]
    assert_raises_like_nn(ref, ext, input, hx)


def test_lstm_input_on_another_device_than_the_weights(device):
    # nn.LSTM's words for it; before, an input on "meta" with CPU weights ran the ops' fake kernels and
    # returned meta tensors.
    ext = lstm_ext.LSTM(4, 6, device=device)
    with pytest.raises(RuntimeError, match=rf"^Input and parameter tensors are not at the same device, found input "
                                           rf"tensor at meta and parameter tensor at {device}"):
        ext(torch.randn(5, 3, 4, device="meta"))
    if device.type == "cuda":
        ref = nn.LSTM(4, 6, device=device)
        for module in (ref, ext):
            with pytest.raises(RuntimeError, match="found input tensor at cpu and parameter tensor at cuda"):
                module(torch.randn(5, 3, 4))


def test_lstm_structures_nn_accepts_are_accepted(device):
    torch.manual_seed(2)
    ref = nn.LSTM(4, 6, device=device)
    ext = lstm_ext.LSTM(4, 6, device=device)
    ext.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 4, device=device)
    h = torch.randn(1, 3, 6, device=device)
    c = torch.randn(1, 3, 6, device=device)
    unsorted = pack_padded_sequence(x, torch.tensor([3, 5, 2]), enforce_sorted=False)
    cases = [
        (x, [h, c]),  # a list
        (x[:, 0], (h[:, 0], c[:, 0], c[:, 0])),  # unbatched: nn.LSTM keeps the first two
        (unsorted, torch.stack([h, c])),  # packed and unsorted: nn.LSTM permutes one tensor into a pair
    ]
    for input, hx in cases:
        expected, actual = ref(input, hx), ext(input, hx)
        out_e, out_a = (expected[0].data, actual[0].data) if isinstance(input, tuple) else (expected[0], actual[0])
        torch.testing.assert_close(out_a, out_e)
        torch.testing.assert_close(actual[1], expected[1])


def test_lstm_dtype_check_is_off_under_any_autocast():
    # nn.LSTM skips its dtype check while any autocast is on (torch._C._is_any_autocast_enabled), CPU's too.
    ext = lstm_ext.LSTM(4, 6)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="RNN input dtype"):
        ext(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        try:
            ext(x)
        except Exception as error:  # what follows the check may refuse it, not the check
            assert not isinstance(error, ValueError) and "RNN input dtype" not in str(error), error


def cell_forward_cases(device):
    x = torch.randn(3, 4, device=device)
    h = torch.randn(3, 7, device=device)
    meta = torch.device("meta")
    return {
        "3-D input": (torch.randn(2, 3, 4, device=device), None),
        "0-D input": (torch.tensor(1.0, device=device), None),
        "3-D h": (x, (torch.randn(1, 3, 7, device=device),) * 2),
        "wrong input size": (torch.randn(3, 5, device=device), None),
        "int input": (x.long(), None),
        "float64 input": (x.double(), None),
        "bfloat16 input": (x.bfloat16(), None),
        "float64 input of the wrong size": (torch.randn(3, 5, dtype=torch.float64, device=device), None),
        "float64 states": (x, (h.double(), h.double())),
        "float64 h": (x, (h.double(), h)),
        "int states": (x, (h.long(), h.long())),
        "float64 states of the wrong batch": (x, (torch.randn(2, 7, dtype=torch.float64, device=device),) * 2),
        "float64 input, states of the wrong size": (x.double(), (torch.randn(3, 6, device=device),) * 2),
        "wrong h batch": (x, (torch.randn(2, 7, device=device), h)),
        "wrong h size": (x, (torch.randn(3, 6, device=device), h)),
        "wrong c batch": (x, (h, torch.randn(2, 7, device=device))),
        "wrong c size": (x, (h, torch.randn(3, 6, device=device))),
        "1-D states, batched input": (x, (torch.randn(7, device=device),) * 2),
        "1-D h, 2-D c": (x, (torch.randn(7, device=device), h)),
        "unbatched input, batched states": (torch.randn(4, device=device), (h, h)),
        "hx one tensor [2, B, H]": (x, torch.randn(2, 3, 7, device=device)),
        "hx one tensor [3, B, H]": (x, torch.randn(3, 3, 7, device=device)),
        "hx of one tensor": (x, (h,)),
        "hx of three tensors": (x, (h, h, h)),
        "unbatched, hx of one tensor": (torch.randn(4, device=device), (torch.randn(7, device=device),)),
        "hx of Nones": (x, (None, None)),
        "meta input": (x.to(meta), None),
        "meta input, states": (x.to(meta), (h, h)),
        "meta states": (x, (h.to(meta), h.to(meta))),
        "meta c": (x, (h, h.to(meta))),
    }


@pytest.mark.parametrize("case", list(cell_forward_cases("cpu")))
def test_cell_forward_errors_as_nn(device, case):
    torch.manual_seed(2)
    ref = nn.LSTMCell(4, 7, device=device)
    ext = lstm_ext.LSTMCell(4, 7, device=device)
    input, hx = cell_forward_cases(device)[case]
    assert_raises_like_nn(ref, ext, input, hx)


def test_cell_structures_nn_accepts_are_accepted(device):
    torch.manual_seed(2)
    ref = nn.LSTMCell(4, 7, device=device)
    ext = lstm_ext.LSTMCell(4, 7, device=device)
    ext.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4, device=device)
    h, c = torch.randn(3, 7, device=device), torch.randn(3, 7, device=device)
    for input, hx in [(x, [h, c]),  # a list
                      (x[0], torch.stack([h[0], c[0]])),  # unbatched: one [2, H] tensor, split by rows
                      (x[0], (h[0], c[0], c[0]))]:  # unbatched: nn.LSTMCell keeps the first two
        for a, e in zip(ext(input, hx), ref(input, hx)):
            torch.testing.assert_close(a, e)


def test_cell_state_of_another_dtype_is_refused():
    # nn.LSTMCell computes a float64 c with float32 input and weights in mixed precision; lstm_ext refuses it.
    ref = nn.LSTMCell(4, 7)
    x, h = torch.randn(3, 4), torch.randn(3, 7)
    ref(x, (h, h.double()))
    with pytest.raises(RuntimeError, match=r"hx\[1\] must have the dtype and device of input \(torch.float32 on cpu\), "
                                           r"got torch.float64 on cpu"):
        lstm_ext.LSTMCell(4, 7)(x, (h, h.double()))


# ---- the variants keep nn's surface


VARIANT_CONFIGS = [
    dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, peephole=True, layer_norm=True,
         forget_bias=1.0, recurrent_dropout=0.25, zoneout=0.1),
    dict(input_size=3, hidden_size=5, proj_size=2, bias=False, peephole=True, layer_norm=True),
]


@pytest.mark.parametrize("config", VARIANT_CONFIGS, ids=str)
def test_lstm_with_variants_keeps_nn_names_values_and_flat_weights(config):
    # nn.LSTM's names and values on a module with every variant (from the same seed: nn's parameters are
    # drawn first); _flat_weights and all_weights hold nn's parameters only, which tools expect.
    nn_config = {k: v for k, v in config.items() if k not in ("peephole", "layer_norm", "forget_bias",
                                                             "recurrent_dropout", "zoneout")}
    torch.manual_seed(11)
    ref = nn.LSTM(**nn_config)
    torch.manual_seed(11)
    ext = lstm_ext.LSTM(**config)
    for name in ("mode", "_flat_weights_names", "_all_weights", "__constants__", "input_size", "hidden_size",
                 "num_layers", "bias", "batch_first", "dropout", "bidirectional", "proj_size"):
        assert_same(getattr(ext, name), getattr(ref, name), name)
    nn_names = set(ref.state_dict())
    assert [w is getattr(ext, n) for n, w in zip(ext._flat_weights_names, ext._flat_weights)] == \
        [True] * len(ref._flat_weights)
    assert sum(len(ws) for ws in ext.all_weights) == len(nn_names)
    assert all(any(w is p for w in ext._flat_weights) for n, p in ext.named_parameters() if n in nn_names)
    assert not any(any(w is p for w in ext._flat_weights) for n, p in ext.named_parameters() if n not in nn_names)
    missing = [name for name in surface(ref) if not hasattr(ext, name)]
    assert not missing, missing


def test_public_names():
    for name in ("LSTM", "LSTMCell", "lstm", "lstm_cell", "VariantMasks", "convert", "to_torch"):
        assert name in lstm_ext.__all__ and hasattr(lstm_ext, name), name
    assert lstm_ext.VariantMasks._fields == ("recurrent_dropout_masks", "zoneout_masks")
