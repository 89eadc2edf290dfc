"""lstm_ext.LSTMCell equals torch.nn.LSTMCell: parameters, initialisation, values, gradients, errors."""

import pytest
import torch
from torch import nn

import lstm_ext


def make_cells(input_size, hidden_size, bias, dtype, device):
    torch.manual_seed(3)
    ref = nn.LSTMCell(input_size, hidden_size, bias=bias, dtype=dtype, device=device)
    torch.manual_seed(3)
    ext = lstm_ext.LSTMCell(input_size, hidden_size, bias=bias, dtype=dtype, device=device)
    return ref, ext


@pytest.mark.parametrize("bias", [True, False])
def test_same_parameters_and_initialisation(bias):
    ref, ext = make_cells(3, 5, bias, torch.float32, "cpu")
    assert [n for n, _ in ext.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (name, p), (_, q) in zip(ref.named_parameters(), ext.named_parameters()):
        assert torch.equal(p, q), name
    assert repr(ext).replace("lstm_ext.", "") == repr(ref)
    ext.load_state_dict(ref.state_dict())
    ref.load_state_dict(ext.state_dict())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("given_state", [True, False])
def test_matches_nn_lstm_cell(device, dtype, bias, batched, given_state):
    ref, ext = make_cells(4, 7, bias, dtype, device)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    shape = (3, 4) if batched else (4,)
    state_shape = (3, 7) if batched else (7,)
    x = torch.randn(shape, dtype=dtype, device=device)
    hx = (torch.randn(state_shape, dtype=dtype, device=device), torch.randn(state_shape, dtype=dtype, device=device)) \
        if given_state else None

    def run(cell):
        leaves = [x.clone().requires_grad_(True)]
        state = None
        if hx is not None:
            state = tuple(s.clone().requires_grad_(True) for s in hx)
            leaves += list(state)
        # Two steps, so the state carried from one call to the next is exercised.
        h, c = cell(leaves[0], state)
        h, c = cell(leaves[0] * 0.5, (h, c))
        loss = (h * torch.arange(h.numel(), dtype=dtype, device=device).view_as(h)).sum() + (c * c).sum()
        return [h, c, *torch.autograd.grad(loss, leaves + list(cell.parameters()))]

    for name, expected, actual in zip(["h", "c", "input", "h0", "c0"], run(ref), run(ext)):
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{name}: {m}")


def test_gradcheck_cell(device):
    ext = lstm_ext.LSTMCell(3, 4, dtype=torch.float64, device=device)
    x = torch.randn(2, 3, dtype=torch.float64, device=device, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, device=device, requires_grad=True)
    c = torch.randn(2, 4, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h, c: ext(x, (h, c)), (x, h, c))


@pytest.mark.parametrize("input_shape,state_shape,exc,message", [
    ((2, 3, 4), None, ValueError, "LSTMCell: Expected input to be 1D or 2D, got 3D instead"),
    ((3, 4), (1, 3, 7), ValueError, "LSTMCell: Expected hx[0] to be 1D or 2D, got 3D instead"),
    ((3, 5), None, RuntimeError, "input has inconsistent input_size: got 5 expected 4"),
    ((3, 4), (2, 7), RuntimeError, "Input batch size 3 doesn't match hidden0 batch size 2"),
    ((3, 4), (3, 6), RuntimeError, "hidden0 has inconsistent hidden_size: got 6, expected 7"),
], ids=str)
def test_errors_like_nn_lstm_cell(device, input_shape, state_shape, exc, message):
    ref, ext = make_cells(4, 7, True, torch.float32, device)
    x = torch.randn(input_shape, device=device)
    hx = None if state_shape is None else (torch.randn(state_shape, device=device),) * 2
    for cell in (ref, ext):
        with pytest.raises(exc) as info:
            cell(x, hx)
        assert message in str(info.value), f"{type(cell).__module__}: {info.value}"
