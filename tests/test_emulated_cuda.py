"""The CUDA pointwise kernels (csrc/cuda/pointwise_kernels.cuh), executed on the CPU through the
project's emulated launch (csrc/emulated/cuda_emulation.h) and driven by the same recurrence and launch
code as on a GPU, equal the CPU path: outputs, states and every gradient.

The launch geometry is forced small so that blocks are partial and the grid-stride loop wraps."""

import pytest
import torch

import lstm_ext  # noqa: F401  (registers the ops)
from lstm_ext._ops import BackwardArgs, ForwardArgs, ForwardResults

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
    launch_order_reversed = sizes[1] % 2 == 1  # both block/thread orders are exercised across sizes
    launch = launch_kwargs(*geometry, launch_order_reversed)
    assert_emulated_equals_cpu(ForwardArgs(*args, reverse, True), launch, TOLERANCES[dtype])


def launch_kwargs(threads_per_block, max_blocks, force_64bit_index, reverse_launch_order):
    return dict(threads_per_block=threads_per_block, max_blocks=max_blocks, force_64bit_index=force_64bit_index,
                reverse_launch_order=reverse_launch_order)


def assert_emulated_equals_cpu(args, launch, tolerances, grad_cells=False):
    """The emulated CUDA ops equal the CPU ops on `args` (ForwardArgs): every forward result in training and
    inference, then every gradient."""
    for training in (True, False):
        call = args._replace(training=training)
        expected = ForwardResults(*cpu_forward(*call))
        actual = ForwardResults(*emulated_forward(*call, **launch))
        for name, e, a in zip(ForwardResults._fields, expected, actual):
            torch.testing.assert_close(a, e, **tolerances, msg=lambda m: f"forward {name}: {m}")

    results = ForwardResults(*cpu_forward(*args._replace(training=True)))
    grads = [torch.randn_like(results.output), torch.randn_like(results.h_n), torch.randn_like(results.c_n),
             torch.randn_like(results.cells) if grad_cells else None]
    backward_args = BackwardArgs(*grads, *args._replace(training=True), *results, True)
    expected = cpu_backward(*backward_args)
    actual = emulated_backward(*backward_args, **launch)
    for name, e, a in zip(torch.ops.lstm_ext.lstm_layer_backward.default._schema.returns, expected, actual):
        torch.testing.assert_close(a, e, **tolerances, msg=lambda m: f"backward {name.name}: {m}")


def test_emulated_kernels_really_ran():
    # A geometry error reaches the emulated op, so these tests do run the kernel path, not a fallback.
    args = layer_args(2, 3, 4, 5, torch.float64)
    with pytest.raises(RuntimeError, match="threads_per_block must be in"):
        emulated_forward(*args, False, True, **launch_kwargs(0, 1, False, False))


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
                                              **launch_kwargs(16, 2, False, False))
    torch.testing.assert_close(output, expected_output.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, expected_h[0].detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c_n, expected_c[0].detach(), rtol=1e-12, atol=1e-12)


def variant_args(T, B, I, H, dtype, reverse, packed, variants):
    """ForwardArgs with the cell's variants (lstm_cell.h) switched on by name."""
    args = layer_args(T, B, I, H, dtype, packed=packed)
    rows = args[0].shape[:-1]

    def t(*shape):
        return torch.randn(*shape, dtype=dtype)

    def bits(*shape, p=0.5):
        return (torch.rand(*shape) < p).to(dtype)

    kw = {}
    if "peephole" in variants:
        kw["weight_peephole"] = t(3 * H)
    if "layer_norm" in variants:
        kw.update(layer_norm_weight_ih=t(4 * H), layer_norm_weight_hh=t(4 * H), layer_norm_weight_c=t(H),
                  layer_norm_bias_c=t(H))
    if "recurrent_dropout" in variants:
        kw["recurrent_mask"] = bits(B, H, p=0.7) / 0.7
    if "zoneout" in variants:
        kw.update(zoneout_cell_mask=bits(*rows, H), zoneout_hidden_mask=bits(*rows, H))
    if "zoneout_rates" in variants:
        kw.update(zoneout_cell=0.25, zoneout_hidden=0.5)
    return ForwardArgs(*args, reverse, True, **kw)


VARIANT_SETS = [("peephole",), ("layer_norm",), ("recurrent_dropout",), ("zoneout",), ("zoneout_rates",),
                ("peephole", "layer_norm", "recurrent_dropout", "zoneout")]
ROW_GEOMETRIES = [(64, 3, False), (32, 1, False), (7, 2, False)]  # (threads per block, blocks, _): partial slices


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("variants", VARIANT_SETS, ids="+".join)
@pytest.mark.parametrize("geometry", ROW_GEOMETRIES, ids=lambda g: "tpb{}_blocks{}".format(*g[:2]))
@pytest.mark.parametrize("case", [(3, 4, 3, 37, False, False), (4, 1, 2, 5, True, False), (5, 4, 3, 13, False, True)],
                         ids=["H37", "B1_rev", "packed"])
def test_emulated_variant_kernels_equal_cpu(dtype, variants, geometry, case):
    """The variants' row kernels (a row per block, sums through shared memory and barriers): H not a
    multiple of the block, more rows than blocks, B = 1, reverse, packed; cell-state gradients too."""
    T, B, I, H, reverse, packed = case
    args = variant_args(T, B, I, H, dtype, reverse, packed, variants)
    assert_emulated_equals_cpu(args, launch_kwargs(*geometry, B % 2 == 0), TOLERANCES[dtype], grad_cells=True)
