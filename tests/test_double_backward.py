"""Second derivatives (create_graph=True then backward: gradient penalties, gradgradcheck) through the op,
the module (layers, bidirectional, proj_size, packed) and LSTMCell, in float64. The first-order backward
is the fused op; under create_graph the backward recomputes the layer in differentiable ops."""

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_ext

F64 = dict(dtype=torch.float64)


def module_as_function(module):
    """f(x, *parameters) -> the module's outputs, the parameters as inputs of gradgradcheck."""
    names = [name for name, _ in module.named_parameters()]

    def f(x, *params):
        output, (h_n, c_n) = functional_call(module, dict(zip(names, params)), (x,))
        return output, h_n, c_n

    return f, tuple(p.detach().clone().requires_grad_() for p in module.parameters())


@pytest.mark.parametrize("kwargs", [dict(), dict(num_layers=2, bidirectional=True), dict(proj_size=2, bias=False)],
                         ids=["plain", "layers-bidirectional", "proj-nobias"])
def test_module_gradgradcheck(device, kwargs):
    module = lstm_ext.LSTM(2, 3, **kwargs).to(device=device, **F64)
    f, params = module_as_function(module)
    x = torch.randn(3, 2, 2, device=device, requires_grad=True, **F64)
    assert gradgradcheck(f, (x, *params))


def test_packed_gradgradcheck(device):
    lstm = lstm_ext.LSTM(2, 3, bidirectional=True).to(device=device, **F64)
    lengths = torch.tensor([2, 4, 3])

    def f(x, h0, c0):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        output, (h_n, c_n) = lstm(packed, (h0, c0))
        return output.data, h_n, c_n

    x = torch.randn(4, 3, 2, device=device, requires_grad=True, **F64)
    h0 = torch.randn(2, 3, 3, device=device, requires_grad=True, **F64)
    c0 = torch.randn(2, 3, 3, device=device, requires_grad=True, **F64)
    assert gradgradcheck(f, (x, h0, c0))


def test_cell_gradgradcheck(device):
    cell = lstm_ext.LSTMCell(2, 3).to(device=device, **F64)
    x = torch.randn(2, 2, device=device, requires_grad=True, **F64)
    h = torch.randn(2, 3, device=device, requires_grad=True, **F64)
    c = torch.randn(2, 3, device=device, requires_grad=True, **F64)
    assert gradgradcheck(lambda x, h, c: cell(x, (h, c)), (x, h, c))


def test_op_gradgradcheck(device):
    t, b, i, h = 3, 2, 2, 3
    args = [torch.randn(shape, device=device, requires_grad=True, **F64)
            for shape in [(t, b, i), (4 * h, i), (4 * h, h), (4 * h,), (4 * h,)]]
    h0 = torch.randn(b, h, device=device, requires_grad=True, **F64)
    c0 = torch.randn(b, h, device=device, requires_grad=True, **F64)

    def f(x, w_ih, w_hh, b_ih, b_hh, h0, c0):
        output, h_n, c_n, *_ = torch.ops.lstm_ext.lstm_layer_forward(x, None, w_ih, w_hh, b_ih, b_hh, None, h0, c0,
                                                                     True, True)
        return output, h_n, c_n

    assert gradcheck(f, (*args, h0, c0))
    assert gradgradcheck(f, (*args, h0, c0))


def test_gradient_penalty_equals_nn_lstm(device):
    # The everyday use: a penalty on the input gradient's norm, trained through.
    ref = nn.LSTM(3, 4, num_layers=2).to(device=device, **F64)
    ext = lstm_ext.LSTM(3, 4, num_layers=2).to(device=device, **F64)
    ext.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3, device=device, **F64)
    grads = {}
    for name, module in (("nn", ref), ("ext", ext)):
        xi = x.clone().requires_grad_()
        output, _ = module(xi)
        (grad_x,) = torch.autograd.grad(output.square().sum(), xi, create_graph=True)
        penalty = grad_x.square().sum()
        grads[name] = torch.autograd.grad(penalty, list(module.parameters()))
    for expected, actual in zip(grads["nn"], grads["ext"]):
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)


def test_first_order_backward_keeps_the_fused_op(device):
    # Without create_graph the backward is the fused backward op, not the recomputation.
    lstm = lstm_ext.LSTM(3, 4).to(device)
    x = torch.randn(5, 2, 3, device=device, requires_grad=True)
    output, _ = lstm(x)
    with torch.profiler.profile() as prof:
        output.sum().backward()
    names = {event.name for event in prof.events()}
    assert "lstm_ext::lstm_layer_backward" in names
    assert not any(name.startswith("aten::sigmoid") for name in names)


@pytest.mark.parametrize("kwargs", [dict(num_layers=2, bidirectional=True), dict(proj_size=2, bias=False),
                                    dict(bidirectional=True, packed=True)], ids=["layers-bidirectional", "proj", "packed"])
def test_create_graph_gradients_equal_the_fused_backward(device, kwargs):
    # gradgradcheck differentiates the create_graph route against itself; this pins that route to the fused
    # backward's first-order gradients.
    kwargs = dict(kwargs)
    packed = kwargs.pop("packed", False)
    lstm = lstm_ext.LSTM(3, 4, **kwargs).to(device=device, **F64)
    x = torch.randn(5, 3, 3, device=device, requires_grad=True, **F64)
    leaves = [x, *lstm.parameters()]
    results = []
    for create_graph in (False, True):
        input = pack_padded_sequence(x, torch.tensor([5, 2, 4]), enforce_sorted=False) if packed else x
        output, (h_n, c_n) = lstm(input)
        output = output.data if packed else output
        loss = output.sin().sum() + h_n.square().sum() + c_n.sum()
        results.append(torch.autograd.grad(loss, leaves, create_graph=create_graph))
    for fused, recomputed in zip(*results):
        assert recomputed.requires_grad
        torch.testing.assert_close(recomputed, fused, rtol=1e-9, atol=1e-9)


def test_create_graph_through_chained_calls_equals_nn(device):
    # Several calls whose inputs share history (a cell stepped in a loop, its state fed back; hx = (s, s)):
    # each call's create_graph gradient must take only its own paths, as nn.LSTMCell's does.
    ref = nn.LSTMCell(3, 4).to(device=device, **F64)
    ext = lstm_ext.LSTMCell(3, 4).to(device=device, **F64)
    ext.load_state_dict(ref.state_dict())
    xs = torch.randn(3, 2, 3, device=device, **F64)
    s = torch.randn(2, 4, device=device, requires_grad=True, **F64)
    results = {}
    for name, cell in (("nn", ref), ("ext", ext)):
        for create_graph in (False, True):
            state = (s, s)
            for x in xs:
                state = cell(x, state)
            loss = state[0].square().sum() + state[1].sin().sum()
            results[name, create_graph] = torch.autograd.grad(loss, [s, *cell.parameters()],
                                                              create_graph=create_graph)
    for key in (("ext", False), ("ext", True), ("nn", True)):
        for expected, actual in zip(results["nn", False], results[key]):
            torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9, msg=lambda m: f"{key}: {m}")
    # And the second derivative of that loop, against nn.LSTMCell's.
    second = {}
    for name, cell in (("nn", ref), ("ext", ext)):
        grad_s = results[name, True][0]
        second[name] = torch.autograd.grad(grad_s.square().sum(), [s, *cell.parameters()])
    for expected, actual in zip(second["nn"], second["ext"]):
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)
