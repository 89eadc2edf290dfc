"""The CUDA pointwise kernels (csrc/cuda/pointwise_kernels.cuh), executed on the CPU through the
project's emulated launch (csrc/emulated/cuda_emulation.h) and driven by the same recurrence and launch
code as on a GPU, equal the CPU path: outputs, states and every gradient.

The launch geometry is forced small so that blocks are partial and the grid-stride loop wraps."""

import pytest
import torch

import lstm_ext  # noqa: F401  (registers the ops)

cpu_forward = torch.ops.lstm_ext.lstm_layer_forward
cpu_backward = torch.ops.lstm_ext.lstm_layer_backward
emulated_forward = torch.ops.lstm_ext_testing.emulated_cuda_layer_forward
emulated_backward = torch.ops.lstm_ext_testing.emulated_cuda_layer_backward

TOLERANCES = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5)}
SIZES = [  # (T, B, I, H): ones, B and H off any block size, sizes larger than the forced grid
    (1, 1, 1, 1),
    (3, 1, 2, 5),
    (4, 7, 3, 1),
    (5, 3, 4, 13),
    (2, 9, 6, 37),
]
GEOMETRIES = [  # (threads_per_block, max_blocks, force_64bit_index)
    (256, 1024, False),  # one partial block covers everything
    (32, 2, False),      # the grid-stride loop wraps
    (7, 3, False),       # blocks not a warp multiple, wrapping
    (1, 1, True),        # one thread does it all, 64-bit indices
    (5, 64, True),
]


def layer_args(T, B, I, H, dtype, bias=True, packed=False, proj=0):
    """[input, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, h0, c0]; packed: B sequences
    of lengths T, T-1, ... (at least 1), so rows leave the batch at several steps; proj: weight_hr's rows."""
    def t(*shape):
        return torch.randn(*shape, dtype=dtype)
    b_ih, b_hh = (t(4 * H), t(4 * H)) if bias else (None, None)
    if packed:
        lengths = [max(T - b, 1) for b in range(B)]
        batch_sizes = torch.tensor([sum(1 for n in lengths if n > step) for step in range(T)])
        x = t(int(batch_sizes.sum()), I)
    else:
        x, batch_sizes = t(T, B, I), None
    P = proj or H
    return [x, batch_sizes, t(4 * H, I), t(4 * H, P), b_ih, b_hh, t(P, H) if proj else None, t(B, P), t(B, H)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "tpb{}_blocks{}_{}".format(g[0], g[1], "i64" if g[2] else "i32"))
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_emulated_cuda_equals_cpu(dtype, sizes, geometry, reverse, packed):
    # One size runs without bias, one with a projection.
    args = layer_args(*sizes, dtype=dtype, bias=sizes[0] != 3, packed=packed, proj=2 if sizes[3] == 13 else 0)
    has_bias = args[4] is not None
    launch_order_reversed = sizes[1] % 2 == 1  # both block/thread orders are exercised across sizes
    launch = (*geometry, launch_order_reversed)

    for training in (True, False):
        expected = cpu_forward(*args, reverse, training)
        actual = emulated_forward(*args, reverse, training, *launch)
        for name, e, a in zip(["output", "h_n", "c_n", "gates", "cells", "unprojected"], expected, actual):
            torch.testing.assert_close(a, e, **TOLERANCES[dtype], msg=lambda m: f"forward {name}: {m}")

    output, h_n, c_n, gates, cells, unprojected = cpu_forward(*args, reverse, True)
    x, batch_sizes, w_ih, w_hh, _, _, w_hr, h0, c0 = args
    grads = [torch.randn_like(output), torch.randn_like(h_n), torch.randn_like(c_n)]
    backward_args = (*grads, x, batch_sizes, w_ih, w_hh, w_hr, h0, c0, output, gates, cells, unprojected, reverse,
                     has_bias, True)
    expected = cpu_backward(*backward_args)
    actual = emulated_backward(*backward_args, *launch)
    names = ["grad_input", "grad_weight_ih", "grad_weight_hh", "grad_bias", "grad_weight_hr", "grad_h0", "grad_c0"]
    for name, e, a in zip(names, expected, actual):
        torch.testing.assert_close(a, e, **TOLERANCES[dtype], msg=lambda m: f"backward {name}: {m}")


def test_emulated_kernels_really_ran():
    # A geometry error reaches the emulated op, so these tests do run the kernel path, not a fallback.
    args = layer_args(2, 3, 4, 5, torch.float64)
    with pytest.raises(RuntimeError, match="threads_per_block must be in"):
        emulated_forward(*args, False, True, 0, 1, False, False)


def test_emulated_cuda_gradients_match_nn_lstm_through_the_cpu_reference():
    # Ties the emulated kernels to nn.LSTM itself: one layer, same weights, same loss.
    T, B, I, H = 6, 5, 3, 7
    ref = torch.nn.LSTM(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(1, B, H, dtype=torch.float64)
    c0 = torch.randn(1, B, H, dtype=torch.float64)
    expected_output, (expected_h, expected_c) = ref(x, (h0, c0))
    weights = [ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0]
    output, h_n, c_n, *_ = emulated_forward(x, None, *[w.detach() for w in weights], None, h0[0], c0[0], False, True,
                                              16, 2, False, False)
    torch.testing.assert_close(output, expected_output.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, expected_h[0].detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c_n, expected_c[0].detach(), rtol=1e-12, atol=1e-12)
