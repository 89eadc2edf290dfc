"""lstm_ext.LSTM as a module: nn.LSTM's constructor, parameters, initialisation, dropout, errors."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import lstm_ext
from lstm_reference import Config, make_pair

CONSTRUCTOR_CASES = [
    dict(input_size=3, hidden_size=5),
    dict(input_size=3, hidden_size=5, num_layers=3, bias=False, batch_first=True, dropout=0.5, bidirectional=True),
    dict(input_size=3, hidden_size=5, proj_size=2),
]
BAD_CONSTRUCTOR_CASES = [
    dict(input_size=0, hidden_size=5),
    dict(input_size=3, hidden_size=0),
    dict(input_size=3.0, hidden_size=5),
    dict(input_size=3, hidden_size="5"),
    dict(input_size=3, hidden_size=5, num_layers=0),
    dict(input_size=3, hidden_size=5, dropout=1.5),
    dict(input_size=3, hidden_size=5, dropout=True),
    dict(input_size=3, hidden_size=5, bias=1),
    dict(input_size=3, hidden_size=5, batch_first="yes"),
    dict(input_size=3, hidden_size=5, proj_size=-1),
    dict(input_size=3, hidden_size=5, proj_size=5),
]


@pytest.mark.parametrize("kwargs", CONSTRUCTOR_CASES, ids=str)
def test_same_parameters_and_initialisation(kwargs):
    torch.manual_seed(7)
    ref = nn.LSTM(**kwargs)
    torch.manual_seed(7)
    ext = lstm_ext.LSTM(**kwargs)
    ref_params, ext_params = dict(ref.named_parameters()), dict(ext.named_parameters())
    assert list(ext_params) == list(ref_params)  # same names in the same order
    for name, p in ref_params.items():
        assert ext_params[name].shape == p.shape
        assert torch.equal(ext_params[name], p), f"{name} initialised differently"
    assert repr(ext).replace("lstm_ext.", "") == repr(ref).replace(type(ref).__name__, type(ext).__name__)


@pytest.mark.parametrize("kwargs", BAD_CONSTRUCTOR_CASES, ids=str)
def test_same_constructor_errors(kwargs):
    with pytest.raises(Exception) as expected:
        nn.LSTM(**kwargs)
    with pytest.raises(type(expected.value)) as actual:
        lstm_ext.LSTM(**kwargs)
    assert str(actual.value) == str(expected.value)


def test_dropout_warning_like_nn_lstm():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        lstm_ext.LSTM(3, 4, dropout=0.3)


def test_device_and_dtype_arguments(device):
    ext = lstm_ext.LSTM(3, 4, device=device, dtype=torch.float64)
    assert all(p.device.type == device.type and p.dtype == torch.float64 for p in ext.parameters())


@pytest.mark.parametrize("bidirectional", [False, True])
def test_dropout_between_layers_equals_nn_lstm(device, bidirectional):
    # The same dropout masks from the same seed: dropout sits where nn.LSTM puts it, on the same shapes.
    cfg = Config(seq_len=6, batch=4, input_size=5, hidden_size=7, num_layers=3, bidirectional=bidirectional)
    ref, ext = make_pair(cfg, torch.float64, device)
    ref.dropout = ext.dropout = 0.4
    ref.train(), ext.train()
    x = torch.randn(6, 4, 5, dtype=torch.float64, device=device)
    torch.manual_seed(123)
    expected = ref(x)
    torch.manual_seed(123)
    actual = ext(x)
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(actual[1], expected[1], rtol=1e-9, atol=1e-9)
    # and dropout really acted: eval mode differs
    ext.eval()
    assert not torch.allclose(ext(x)[0], actual[0])


def test_gradcheck_module(device):
    ext = lstm_ext.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64, device=device)
    x = torch.randn(5, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    h0 = torch.randn(4, 2, 4, dtype=torch.float64, device=device, requires_grad=True)
    c0 = torch.randn(4, 2, 4, dtype=torch.float64, device=device, requires_grad=True)
    params = list(ext.parameters())

    def f(x, h0, c0, *weights):
        out, (h, c) = torch.func.functional_call(ext, dict(zip([n for n, _ in ext.named_parameters()], weights)),
                                                 (x, (h0, c0)))
        return out, h, c

    assert torch.autograd.gradcheck(f, (x, h0, c0, *params))


def test_inference_mode_and_no_grad(device):
    cfg = Config(seq_len=5, batch=3, input_size=4, hidden_size=6, num_layers=2, bidirectional=True)
    ref, ext = make_pair(cfg, torch.float64, device)
    x = torch.randn(5, 3, 4, dtype=torch.float64, device=device)
    with torch.inference_mode():
        out_inference = ext(x)[0]
    with torch.no_grad():
        out_no_grad = ext(x)[0]
        expected = ref(x)[0]
    torch.testing.assert_close(out_inference, expected, rtol=1e-9, atol=1e-9)
    assert torch.equal(out_inference, out_no_grad)


def test_strided_input_values(device):
    ref, ext = make_pair(Config(input_size=4, hidden_size=5), torch.float64, device)
    base = torch.randn(10, 6, 7, dtype=torch.float64, device=device)
    x = base[::2, 1:4, ::2]  # non-contiguous in every dimension
    torch.testing.assert_close(ext(x)[0], ref(x)[0], rtol=1e-9, atol=1e-9)
    expanded = torch.randn(1, 1, 4, dtype=torch.float64, device=device).expand(5, 3, 4)
    torch.testing.assert_close(ext(expanded)[0], ref(expanded)[0], rtol=1e-9, atol=1e-9)


FORWARD_ERRORS = [  # (input shape, state shape or None, exception, message fragment of nn.LSTM's)
    ((5,), None, ValueError, "Expected input to be 2D or 3D, got 1D"),
    ((2, 5, 3, 4), None, ValueError, "Expected input to be 2D or 3D, got 4D"),
    ((5, 3, 7), None, RuntimeError, "input.size(-1) must be equal to input_size. Expected 4, got 7"),
    ((5, 3, 4), (1, 2, 6), RuntimeError, "Expected hidden[0] size (1, 3, 6), got [1, 2, 6]"),
    ((5, 3, 4), (2, 3, 6), RuntimeError, "Expected hidden[0] size (1, 3, 6), got [2, 3, 6]"),
    ((5, 3, 4), (3, 6), RuntimeError, "For batched 3-D input, hx and cx should also be 3-D"),
    ((5, 4), (1, 1, 6), RuntimeError, "For unbatched 2-D input, hx and cx should also be 2-D"),
]


@pytest.mark.parametrize("input_shape,state_shape,exc,message", FORWARD_ERRORS, ids=str)
def test_forward_errors_like_nn_lstm(device, input_shape, state_shape, exc, message):
    ref, ext = make_pair(Config(input_size=4, hidden_size=6), torch.float64, device)
    x = torch.randn(input_shape, dtype=torch.float64, device=device)
    hx = None
    if state_shape is not None:
        hx = (torch.randn(state_shape, dtype=torch.float64, device=device),) * 2
    for module in (ref, ext):
        with pytest.raises(exc) as info:
            module(x, hx)
        assert message in str(info.value)


def test_input_dtype_errors(device):
    ext = lstm_ext.LSTM(4, 6, device=device)
    with pytest.raises(ValueError, match=r"input dtype \(torch.int64\) does not match weight dtype \(torch.float32\)"):
        ext(torch.ones(5, 3, 4, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match=r"hidden\[0\] dtype \(torch.float64\) does not match input dtype"):
        ext(torch.ones(5, 3, 4, device=device), (torch.zeros(1, 3, 6, dtype=torch.float64, device=device),) * 2)


def test_wrongly_shaped_parameter_is_refused(device):
    # nn.LSTM's CPU path can run a weight_hh of the wrong shape silently; lstm_ext refuses it.
    ext = lstm_ext.LSTM(4, 6, device=device)
    ext.weight_hh_l0 = nn.Parameter(torch.randn(24, 5, device=device))
    with pytest.raises(RuntimeError, match="weight_hh must have shape"):
        ext(torch.randn(5, 3, 4, device=device))


def test_parameter_of_the_wrong_dtype_is_refused(device):
    ext = lstm_ext.LSTM(4, 6, device=device)
    ext.weight_hh_l0 = nn.Parameter(torch.randn(24, 6, device=device, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"weight_hh must have the dtype of input \(Float\), got Double"):
        ext(torch.randn(5, 3, 4, device=device))


def test_packed_output_is_a_packed_sequence(device):
    ref, ext = make_pair(Config(input_size=4, hidden_size=6), torch.float64, device)
    packed = pack_padded_sequence(torch.randn(5, 2, 4, dtype=torch.float64, device=device), torch.tensor([3, 5]),
                                  enforce_sorted=False)
    output, _ = ext(packed)
    expected, _ = ref(packed)
    assert isinstance(output, PackedSequence)
    assert torch.equal(output.batch_sizes, expected.batch_sizes)
    assert torch.equal(output.sorted_indices, expected.sorted_indices)
    assert torch.equal(output.unsorted_indices, expected.unsorted_indices)


def test_empty_batch_like_nn_lstm(device):
    ref, ext = make_pair(Config(input_size=4, hidden_size=6, num_layers=2), torch.float64, device)
    x = torch.randn(5, 0, 4, dtype=torch.float64, device=device, requires_grad=True)
    expected, actual = ref(x), ext(x)
    assert actual[0].shape == expected[0].shape and actual[1][0].shape == expected[1][0].shape
    actual[0].sum().backward()
    assert x.grad.shape == x.shape


def test_version_and_backends():
    assert isinstance(lstm_ext.__version__, str) and lstm_ext.__version__
    assert lstm_ext.compiled_backends()[0] == "cpu"
