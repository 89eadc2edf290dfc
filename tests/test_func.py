"""torch.func over models holding lstm_ext modules: grad, jacrev, vjp, jvp, hessian over functional_call,
and vmap of the forward (nn.LSTM has no batching rule), equal to nn.LSTM where it has results. Under a
torch.func transform the layer runs as differentiable torch ops (lstm_ext.composite)."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, hessian, jacrev, jvp, vjp, vmap

import lstm_ext

F64 = dict(dtype=torch.float64)
EXACT = dict(rtol=1e-9, atol=1e-9)


@pytest.fixture
def pair(device):
    ref = nn.LSTM(3, 4, num_layers=2, bidirectional=True).to(device=device, **F64)
    ext = lstm_ext.LSTM(3, 4, num_layers=2, bidirectional=True).to(device=device, **F64)
    ext.load_state_dict(ref.state_dict())
    params = {name: p.detach() for name, p in ref.named_parameters()}
    return ref, ext, params


def loss_of(module):
    def loss(params, x):
        output, (h_n, c_n) = functional_call(module, params, (x,))
        return output.square().sum() + h_n.sum() + c_n.cos().sum()
    return loss


def output_of(module, params):
    return lambda x: functional_call(module, params, (x,))[0]


def assert_trees_close(actual, expected):
    for a, e in zip(torch.utils._pytree.tree_leaves(actual), torch.utils._pytree.tree_leaves(expected)):
        torch.testing.assert_close(a, e, **EXACT)


def test_grad_over_functional_call(device, pair):
    ref, ext, params = pair
    x = torch.randn(5, 2, 3, device=device, **F64)
    assert_trees_close(grad(loss_of(ext))(params, x), grad(loss_of(ref))(params, x))


def test_jacrev_and_vjp(device, pair):
    ref, ext, params = pair
    x = torch.randn(4, 2, 3, device=device, **F64)
    assert_trees_close(jacrev(output_of(ext, params))(x), jacrev(output_of(ref, params))(x))
    out_ext, vjp_ext = vjp(output_of(ext, params), x)
    out_ref, vjp_ref = vjp(output_of(ref, params), x)
    cotangent = torch.randn_like(out_ref)
    assert_trees_close((out_ext, vjp_ext(cotangent)), (out_ref, vjp_ref(cotangent)))


def test_jvp_and_hessian(device, pair):
    ref, ext, params = pair
    x = torch.randn(3, 2, 3, device=device, **F64)
    tangent = torch.randn_like(x)
    assert_trees_close(jvp(output_of(ext, params), (x,), (tangent,)), jvp(output_of(ref, params), (x,), (tangent,)))
    small = torch.randn(2, 1, 3, device=device, **F64)
    assert_trees_close(hessian(lambda x: loss_of(ext)(params, x))(small),
                       hessian(lambda x: loss_of(ref)(params, x))(small))


def test_vmap_of_the_forward_in_grad_mode(device, pair):
    ref, ext, _ = pair
    xs = torch.randn(4, 5, 2, 3, device=device, **F64)
    with pytest.raises(RuntimeError, match="Batching rule not implemented for aten::lstm"):
        vmap(lambda x: ref(x)[0])(xs)  # why this matters: nn.LSTM cannot
    output, (h_n, c_n) = vmap(ext)(xs)
    for i, x in enumerate(xs):
        expected_output, (expected_h, expected_c) = ref(x)
        assert_trees_close((output[i], h_n[i], c_n[i]), (expected_output, expected_h, expected_c))
    output.sum().backward()  # gradients reach the parameters through the vmapped forward
    assert all(p.grad is not None for p in ext.parameters())


def test_per_sample_gradients(device, pair):
    # vmap(grad(...)): the usual per-sample gradient recipe, against a loop of single-sample backwards.
    ref, ext, params = pair
    x = torch.randn(5, 3, 3, device=device, **F64)

    def sample_loss(params, sample):
        return loss_of(ext)(params, sample.unsqueeze(1))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 1))(params, x)
    for b in range(x.size(1)):
        expected = grad(loss_of(ref))(params, x[:, b:b + 1])
        assert_trees_close({k: v[b] for k, v in per_sample.items()}, expected)


def test_cell_under_grad_and_vmap(device):
    ref = nn.LSTMCell(3, 4).to(device=device, **F64)
    ext = lstm_ext.LSTMCell(3, 4).to(device=device, **F64)
    ext.load_state_dict(ref.state_dict())
    params = {name: p.detach() for name, p in ref.named_parameters()}
    x = torch.randn(2, 3, device=device, **F64)

    def loss(module):
        return lambda p, x: sum(s.square().sum() for s in functional_call(module, p, (x,)))

    assert_trees_close(grad(loss(ext))(params, x), grad(loss(ref))(params, x))
    xs = torch.randn(3, 2, 3, device=device, **F64)
    with pytest.raises(RuntimeError, match="Batching rule not implemented for aten::lstm_cell"):
        vmap(ref)(xs)
    h, c = vmap(ext)(xs)
    for i, x in enumerate(xs):
        assert_trees_close((h[i], c[i]), ref(x))
