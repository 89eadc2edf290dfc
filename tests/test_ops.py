"""The ops themselves: torch.library.opcheck, gradcheck, and argument errors that name the argument."""

import pytest
import torch

import lstm_ext  # registers torch.ops.lstm_ext
from conftest import CUDA_READY, CUDA_SKIP_REASON
from lstm_ext import LSTMFunction
from lstm_ext._ops import BackwardArgs, ForwardArgs, ForwardResults

forward_op = torch.ops.lstm_ext.lstm_layer_forward
backward_op = torch.ops.lstm_ext.lstm_layer_backward


def layer_args(device, dtype=torch.float64, T=4, B=3, I=5, H=6, bias=True, requires_grad=False, lengths=None,
               proj=0):
    """The forward op's tensor arguments:
    [input, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, h0, c0].
    With `lengths` (sorted, longest first) the input is packed rows with their batch_sizes; with `proj`
    a weight_hr projects h to that size."""
    def t(*shape):
        return torch.randn(*shape, dtype=dtype, device=device, requires_grad=requires_grad)
    b_ih, b_hh = (t(4 * H), t(4 * H)) if bias else (None, None)
    if lengths is None:
        x, batch_sizes = t(T, B, I), None
    else:
        batch_sizes = torch.tensor([sum(1 for n in lengths if n > step) for step in range(max(lengths))])
        x, B = t(int(batch_sizes.sum()), I), len(lengths)
    P = proj or H
    weight_hr = t(P, H) if proj else None
    return [x, batch_sizes, t(4 * H, I), t(4 * H, P), b_ih, b_hh, weight_hr, t(B, P), t(B, H)]


PACKED_LENGTHS = [5, 3, 3, 1]


def backward_args(forward_args, forward_results, reverse=False, need_grad_input=True, training=True):
    """The backward op's arguments (lstm_ext._ops.BackwardArgs) for a forward's tensor arguments and results,
    with random gradients of its output and last states."""
    r = ForwardResults(*forward_results)
    grads = [torch.randn_like(r.output), torch.randn_like(r.h_n), torch.randn_like(r.c_n), None]
    return list(BackwardArgs(*grads, *ForwardArgs(*forward_args, reverse, training), *r, need_grad_input))


VARIANTS = {"padded": {}, "packed": dict(lengths=[5, 3, 3, 1]), "proj": dict(proj=4),
            "packed_proj": dict(lengths=[5, 3, 3, 1], proj=2)}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_opcheck_forward(device, variant, reverse, bias, training):
    args = layer_args(device, bias=bias, requires_grad=training, **VARIANTS[variant])
    torch.library.opcheck(forward_op, (*args, reverse, training))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_backward(device, variant, reverse, bias):
    args = layer_args(device, bias=bias, **VARIANTS[variant])
    results = forward_op(*args, reverse, True)
    for need_grad_input in (True, False):
        torch.library.opcheck(backward_op, backward_args(args, results, reverse, need_grad_input))


@pytest.mark.parametrize("variant", VARIANTS)
def test_backward_without_grad_input(device, variant):
    """need_grad_input=False leaves out grad_input only: every other gradient is bitwise the same."""
    args = layer_args(device, **VARIANTS[variant])
    results = forward_op(*args, False, True)
    full_args = backward_args(args, results, need_grad_input=True)
    full = backward_op(*full_args)
    partial = backward_op(*BackwardArgs(*full_args)._replace(need_grad_input=False))
    assert full[0].shape == args[0].shape and partial[0].numel() == 0
    for name, a, b in zip(["grad_weight_ih", "grad_weight_hh", "grad_bias", "grad_weight_hr", "grad_h0", "grad_c0"],
                          full[1:], partial[1:]):
        assert torch.equal(a, b), name


def test_module_input_without_grad_skips_grad_input(device):
    """Through the module: a leaf input that needs no gradient gets none, and the weights get nn.LSTM's."""
    torch.manual_seed(0)
    reference = torch.nn.LSTM(5, 7, device=device, dtype=torch.float64)
    fused = lstm_ext.LSTM(5, 7, device=device, dtype=torch.float64)
    fused.load_state_dict(reference.state_dict())
    x = torch.randn(6, 3, 5, device=device, dtype=torch.float64)
    for module in (reference, fused):
        output, _ = module(x)
        output.square().sum().backward()
    assert x.grad is None
    for (name, a), b in zip(reference.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sizes", [(4, 3, 5, 6), (1, 1, 1, 1), (3, 2, 1, 3), "packed", "proj", "packed_proj"],
                         ids=str)
def test_gradcheck_function(device, reverse, bias, sizes):
    if isinstance(sizes, str):
        args = layer_args(device, I=3, H=4, bias=bias, requires_grad=True, **VARIANTS[sizes])
    else:
        T, B, I, H = sizes
        args = layer_args(device, T=T, B=B, I=I, H=H, bias=bias, requires_grad=True)

    def f(*tensors):
        output, h_n, c_n, *_ = LSTMFunction.apply(*tensors, reverse, True)
        return output, h_n, c_n

    assert torch.autograd.gradcheck(f, args)


def test_gradcheck_op_directly(device):
    # The op is differentiable on its own too (torch.library.register_autograd), with the same backward.
    args = layer_args(device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: forward_op(*a, True, True)[:3], args)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_double_backward_through_the_function(device, reverse):
    # Packed rows with a projection: the second-order route recomputes every kind of step.
    args = layer_args(device, T=3, B=2, I=2, H=2, requires_grad=True, lengths=[3, 1], proj=1)
    assert torch.autograd.gradgradcheck(lambda *a: LSTMFunction.apply(*a, reverse, True)[:3], args)


def test_backward_op_is_not_differentiable_itself(device):
    args = layer_args(device, requires_grad=True)
    results = forward_op(*args, False, True)
    grads = torch.ops.lstm_ext.lstm_layer_backward(*backward_args(args, results))
    with pytest.raises(RuntimeError, match="not differentiable itself"):
        grads[0].sum().backward()


def test_backward_after_inference_forward_is_a_clear_error(device):
    args = layer_args(device, requires_grad=True)
    output = forward_op(*args, False, False)[0]
    with pytest.raises(RuntimeError, match="training=False"):
        output.sum().backward()


INFERENCE_CASES = {  # the CPU projects the input per step inside its batch chunks from 8 rows and 2^20 MACs
    "small": dict(),
    "f32_chunk_projection": dict(dtype=torch.float32, T=5, B=24, I=160, H=160),
    "f32_chunk_projection_packed": dict(dtype=torch.float32, I=160, H=160, lengths=[6] * 9 + [4] * 9 + [1] * 6),
    "f32_chunk_projection_no_bias": dict(dtype=torch.float32, T=3, B=24, I=160, H=160, bias=False),
}


@pytest.mark.parametrize("case", INFERENCE_CASES)
def test_inference_equals_training_forward(device, case):
    # Bitwise: inference projects the input in blocks of steps or per step in chunks, training all at
    # once; every way sums each gate in the same order.
    args = layer_args(device, **INFERENCE_CASES[case])
    trained = forward_op(*args, True, True)
    inferred = forward_op(*args, True, False)
    for a, b in zip(trained[:3], inferred[:3]):
        assert torch.equal(a, b)
    assert all(t.numel() == 0 for t in ForwardResults(*inferred)[3:])


def test_noncontiguous_arguments(device):
    # Any strides are accepted: the op makes what it needs contiguous.
    args = layer_args(device)
    expected = forward_op(*args, False, True)
    x, batch_sizes, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 = args
    strided = [x.transpose(0, 1).contiguous().transpose(0, 1), batch_sizes, w_ih.t().contiguous().t(), w_hh[:, :],
               torch.stack([b_ih, b_ih], 1)[:, 0].copy_(b_ih), b_hh, w_hr, h0.t().contiguous().t(), c0]
    assert not strided[0].is_contiguous() and not strided[2].is_contiguous() and not strided[4].is_contiguous()
    actual = forward_op(*strided, False, True)
    for a, b in zip(expected, actual):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _replace(args, index, value):
    args = list(args)
    args[index] = value
    return args


ERROR_CASES = {  # name: (argument index, replacement builder, message fragment)
    "input_2d": (0, lambda a: a[0][0], "input must be 3-D"),
    "input_int": (0, lambda a: a[0].long(), "input must be float32, float64 or bfloat16"),
    "packed_input_3d": (1, lambda a: torch.tensor([3, 3, 3, 3]), "with batch_sizes, input must be 2-D"),
    "weight_ih_shape": (2, lambda a: a[2][:, :-1], "weight_ih must have shape [4*hidden_size, input_size]"),
    "weight_hh_shape": (3, lambda a: a[3][:-1], "weight_hh must have shape [4*hidden_size, hidden_size]"),
    "bias_ih_shape": (4, lambda a: a[4][:-1], "bias_ih must have shape [4*hidden_size]"),
    "bias_hh_missing": (5, lambda a: None, "bias_ih and bias_hh must both be given or both be None"),
    "weight_hr_shape": (6, lambda a: torch.randn(4, 5, dtype=a[0].dtype),
                        "weight_hh must have shape [4*hidden_size, proj_size] = [20, 4], got [24, 6]"),
    "h0_shape": (7, lambda a: a[7][:-1], "h0 must have shape [batch, hidden_size]"),
    "c0_shape": (8, lambda a: a[8][:, :-1], "c0 must have shape [batch, hidden_size]"),
    "h0_dtype": (7, lambda a: a[7].float(), "h0 must have the dtype of input"),
    "weight_hh_dtype": (3, lambda a: a[3].float(), "weight_hh must have the dtype of input"),
}

PACKED_ERROR_CASES = {  # batch_sizes given with 9 packed rows of 3 sequences: what is wrong with it
    "increasing": (torch.tensor([2, 3, 3, 1]), "batch_sizes must be positive and non-increasing"),
    "zero": (torch.tensor([3, 3, 3, 0]), "batch_sizes must be positive and non-increasing"),
    "sum": (torch.tensor([3, 3, 2]), "batch_sizes must sum to the rows of input (9), got 8"),
    "dtype": (torch.tensor([3.0, 3.0, 3.0]), "batch_sizes must be a 1-D int64 CPU tensor"),
    "rank": (torch.tensor([[3, 3, 3]]), "batch_sizes must be a 1-D int64 CPU tensor"),
    "h0_rows": (torch.tensor([2, 2, 2, 2, 1]), "h0 must have shape [batch, hidden_size] = [2, 6], got [3, 6]"),
}


@pytest.mark.parametrize("case", PACKED_ERROR_CASES, ids=str)
def test_packed_argument_errors(device, case):
    batch_sizes, message = PACKED_ERROR_CASES[case]
    args = layer_args(device, lengths=[3, 3, 3])
    with pytest.raises(RuntimeError) as info:
        forward_op(*_replace(args, 1, batch_sizes), False, True)
    assert message in str(info.value)


@pytest.mark.parametrize("case", ERROR_CASES, ids=str)
def test_forward_argument_errors(device, case):
    index, build, message = ERROR_CASES[case]
    args = layer_args(device)
    bad = _replace(args, index, build(args))
    with pytest.raises(RuntimeError) as info:
        forward_op(*bad, False, True)
    assert "lstm_ext.lstm_layer_forward" in str(info.value)
    assert message in str(info.value)


def test_backward_argument_errors(device):
    args = layer_args(device)
    results = forward_op(*args, False, True)
    r = ForwardResults(*results)
    good = BackwardArgs(*backward_args(args, results))
    backward_op(*good)
    for name, value, message in [
        ("grad_output", r.output[:, :-1], "grad_output must have shape [seq_len, batch, hidden_size or proj_size]"),
        ("grad_h_n", r.h_n.float(), "grad_h_n must have the dtype of input"),
        ("grad_cells", r.cells[:-1], "grad_cells must have shape [seq_len, batch, hidden_size]"),
        ("gates", r.gates[..., :-1], "gates must have shape [seq_len, batch, 4*hidden_size]"),
        ("gates", r.gates.new_empty(0), "gates is empty: the forward ran with training=False"),
        ("cells", r.cells[:-1], "cells must have shape [seq_len, batch, hidden_size]"),
    ]:
        with pytest.raises(RuntimeError, match="lstm_ext.lstm_layer_backward") as info:
            backward_op(*good._replace(**{name: value}))
        assert message in str(info.value)


@pytest.mark.skipif(not CUDA_READY, reason=CUDA_SKIP_REASON)
def test_cpu_state_with_cuda_input_is_an_error():
    args = layer_args("cuda")
    bad = _replace(args, 7, args[7].cpu())
    with pytest.raises(RuntimeError, match="h0 must be on the device of input"):
        forward_op(*bad, False, True)


def test_one_description_of_the_arguments():
    """The op's schema (from csrc/layer_op_args.h) is what the Python layers take: LSTMFunction's public
    signature and the composite route's parameters name the same arguments in the same order."""
    import inspect

    from lstm_ext import composite

    assert list(inspect.signature(LSTMFunction.forward).parameters)[1:] == list(ForwardArgs._fields)
    assert list(inspect.signature(composite.layer).parameters) == list(ForwardArgs._fields)
    backward_fields = list(BackwardArgs._fields)
    assert backward_fields[4:4 + len(ForwardArgs._fields)] == list(ForwardArgs._fields)
    assert backward_fields[4 + len(ForwardArgs._fields):-1] == list(ForwardResults._fields)
