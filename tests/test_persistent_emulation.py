"""The persistent CUDA kernels (csrc/cuda/persistent_kernels.cuh): one cooperative launch per (layer,
direction) and pass, W_hh's slices in shared memory, a grid barrier per step. Executed on the CPU through
the project's emulation (csrc/emulated/cuda_emulation.h), driven by the same loop seam of the recurrence
and the same plan and launch code (csrc/cuda/persistent_launch.h) as on a GPU, they equal the CPU path:
outputs, states, the kept activations and every gradient.

The emulated ops run under recurrence="persistent" unless a test says otherwise, so an equivalence test
that passes ran the persistent kernels (the launch counter checks it too). The geometry is forced small:
3 blocks of 64 threads by default, so slices are partial, H is not a multiple of the slice, and some
blocks own no unit."""

import pytest
import torch

import lstm_ext
from conftest import CUDA_READY, CUDA_SKIP_REASON
from lstm_ext._ops import BackwardArgs, BackwardResults, ForwardArgs, ForwardResults
from test_emulated_cuda import layer_args, variant_args

ops = torch.ops.lstm_ext_testing
cpu_forward = torch.ops.lstm_ext.lstm_layer_forward
cpu_backward = torch.ops.lstm_ext.lstm_layer_backward

TOLERANCES = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5)}
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
CASES = [  # (T, B, I, H, reverse, packed)
    (4, 3, 3, 37, False, False),  # slices of 13, 13, 11 units
    (5, 1, 2, 5, True, False),    # B = 1, reverse; slices of 2, 2, 1
    (6, 5, 4, 13, False, True),   # packed: rows leave the batch at several steps
    (5, 4, 3, 40, True, True),    # packed and reverse: rows join at several steps from h0/c0
    (3, 2, 2, 2, False, False),   # fewer units than blocks: the last block owns none
    (1, 2, 3, 8, False, False),   # one step
]
CASE_IDS = ["H37", "B1_rev", "packed", "packed_rev", "H2", "T1"]
GEOMETRY = dict(blocks=3, threads_per_block=64)


def forward_args(T, B, I, H, reverse, packed, dtype, bias=True):
    return ForwardArgs(*layer_args(T, B, I, H, dtype, bias=bias, packed=packed), reverse, True)


def persistent_forward(args, geometry=GEOMETRY, reverse_launch_order=False, **kw):
    return ForwardResults(*ops.emulated_persistent_layer_forward(*args, **geometry,
                                                                 reverse_launch_order=reverse_launch_order, **kw))


def backward_args(args, saved, seed=1, grad_cells=False):
    generator = torch.Generator().manual_seed(seed)

    def randn_like(t):
        return torch.randn(t.shape, dtype=t.dtype, generator=generator)

    grads = [randn_like(saved.output), randn_like(saved.h_n), randn_like(saved.c_n),
             randn_like(saved.cells) if grad_cells else None]
    return BackwardArgs(*grads, *args._replace(training=True), *saved, True)


def persistent_backward(bargs, geometry=GEOMETRY, reverse_launch_order=False, **kw):
    return BackwardResults(*ops.emulated_persistent_layer_backward(*bargs, **geometry,
                                                                   reverse_launch_order=reverse_launch_order, **kw))


def assert_all_close(actual, expected, tolerances, what):
    assert actual._fields == expected._fields
    for name, a, e in zip(actual._fields, actual, expected):
        torch.testing.assert_close(a, e, **tolerances, msg=lambda m: f"{what} {name}: {m}")


def assert_all_equal(actual, expected, what):
    for name, a, e in zip(actual._fields, actual, expected):
        assert torch.equal(a, e), f"{what} {name} differs bitwise"


def launches():
    return ops.emulated_persistent_launches()


@DTYPES
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_persistent_kernels_equal_cpu(dtype, case):
    """Training (kept gates and cells too) and inference forward, then every gradient of the backward, whose
    weight gradients and grad_input are the generic code's after the persistent loop."""
    args = forward_args(*case, dtype=dtype, bias=case[3] != 13)
    before = launches()
    for training in (True, False):
        call = args._replace(training=training)
        assert_all_close(persistent_forward(call), ForwardResults(*cpu_forward(*call)), TOLERANCES[dtype],
                         f"forward (training={training})")
    saved = ForwardResults(*cpu_forward(*args))
    bargs = backward_args(args, saved)
    assert_all_close(persistent_backward(bargs), BackwardResults(*cpu_backward(*bargs)), TOLERANCES[dtype], "backward")
    assert launches() - before == 3, "each pass ran one persistent launch"


@pytest.mark.parametrize("geometry", [dict(blocks=1, threads_per_block=32), dict(blocks=4, threads_per_block=96),
                                      dict(blocks=2, threads_per_block=7), dict(blocks=5, threads_per_block=128),
                                      dict(blocks=40, threads_per_block=32)],
                         ids=["1x32", "4x96", "2x7", "5x128", "40x32_one_unit_each"])
def test_persistent_kernels_equal_cpu_on_other_geometries(geometry):
    # One block for everything; threads not a warp multiple (one thread per product, no shuffles); more
    # threads than products; one unit per block.
    args = forward_args(4, 3, 3, 37, True, True, torch.float64)
    saved = persistent_forward(args, geometry)
    assert_all_close(saved, ForwardResults(*cpu_forward(*args)), TOLERANCES[torch.float64], "forward")
    bargs = backward_args(args, saved)
    assert_all_close(persistent_backward(bargs, geometry), BackwardResults(*cpu_backward(*bargs)),
                     TOLERANCES[torch.float64], "backward")


@DTYPES
def test_generic_and_persistent_loops_take_each_others_activations(dtype):
    """A persistent forward keeps what the generic loop keeps: the generic backward on its activations
    equals the generic backward on the generic forward's, and the persistent backward takes either."""
    args = forward_args(5, 4, 3, 13, True, True, dtype)
    generic_saved = ForwardResults(*cpu_forward(*args))
    persistent_saved = persistent_forward(args)
    expected = BackwardResults(*cpu_backward(*backward_args(args, generic_saved)))
    assert_all_close(BackwardResults(*cpu_backward(*backward_args(args, persistent_saved))), expected,
                     TOLERANCES[dtype], "generic backward of the persistent forward")
    assert_all_close(persistent_backward(backward_args(args, persistent_saved)), expected, TOLERANCES[dtype],
                     "persistent backward of the persistent forward")


@pytest.mark.parametrize("case", CASES[:4], ids=CASE_IDS[:4])
def test_persistent_kernels_are_bitwise_repeatable(case):
    # Twice, and with blocks and threads started in the reverse order: the same bits.
    args = forward_args(*case, dtype=torch.float32)
    first = persistent_forward(args)
    bargs = backward_args(args, first)
    first_grads = persistent_backward(bargs)
    assert_all_equal(persistent_forward(args), first, "forward, second run")
    assert_all_equal(persistent_forward(args, reverse_launch_order=True), first, "forward, reversed launch order")
    assert_all_equal(persistent_backward(bargs), first_grads, "backward, second run")
    assert_all_equal(persistent_backward(bargs, reverse_launch_order=True), first_grads,
                     "backward, reversed launch order")


def test_bfloat16_runs_in_float():
    # bfloat16 storage, float sums: the kernels' reduced-precision path, against float64 on the same
    # bfloat16 inputs and against the CPU's bfloat16.
    args = forward_args(4, 3, 3, 21, False, True, torch.float64)
    low = args._replace(**{k: getattr(args, k).to(torch.bfloat16) for k in
                           ("input", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0", "c0")})
    exact = ForwardResults(*cpu_forward(*low._replace(**{k: getattr(low, k).double() for k in
                                                         ("input", "weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                                          "h0", "c0")})))
    actual = persistent_forward(low)
    assert actual.output.dtype == torch.bfloat16
    cpu = ForwardResults(*cpu_forward(*low))
    tolerances = dict(rtol=1.6e-2, atol=1.6e-2)  # torch's rtol for bfloat16: a few of its epsilons over 4 steps
    for name in ("output", "h_n", "c_n", "gates", "cells"):
        torch.testing.assert_close(getattr(actual, name).double(), getattr(exact, name), **tolerances,
                                   msg=lambda m: f"{name} against float64: {m}")
        torch.testing.assert_close(getattr(actual, name), getattr(cpu, name), **tolerances,
                                   msg=lambda m: f"{name} against the CPU's bfloat16: {m}")


# ---- When the persistent kernels are not taken, and why. ----

def fallback_cases():
    """(id, ForwardArgs, grad_cells, what the error says): what the persistent kernels do not run."""
    f64 = torch.float64
    cases = [(name, variant_args(3, 2, 2, 5, f64, False, False, variants), False, "variants")
             for name, variants in [("peephole", ("peephole",)), ("layer_norm", ("layer_norm",)),
                                    ("recurrent_dropout", ("recurrent_dropout",)), ("zoneout", ("zoneout_rates",))]]
    cases.append(("proj_size", ForwardArgs(*layer_args(3, 2, 2, 5, f64, proj=3), False, True), False, "proj_size"))
    cases.append(("batch_65", forward_args(2, 65, 2, 3, False, False, f64), False, "at most 64"))
    # W_hh's slice of 96 units in float64 in one block: 295 KB of shared memory, more than a block may have.
    cases.append(("does_not_fit", forward_args(2, 2, 2, 96, False, False, f64), False, "more shared memory"))
    return cases


FALLBACKS = fallback_cases()


@pytest.mark.parametrize("name, args, grad_cells, why", FALLBACKS, ids=[c[0] for c in FALLBACKS])
def test_forced_persistent_says_why_it_cannot(name, args, grad_cells, why):
    geometry = dict(blocks=1, threads_per_block=64) if name == "does_not_fit" else GEOMETRY
    with pytest.raises(RuntimeError, match=rf"recurrence=persistent, but the persistent kernel cannot run this "
                                           rf"forward pass: .*{why}"):
        persistent_forward(args, geometry)
    saved = ForwardResults(*cpu_forward(*args))
    with pytest.raises(RuntimeError, match=rf"cannot run this backward pass: .*{why}"):
        persistent_backward(backward_args(args, saved), geometry)


@pytest.mark.parametrize("name, args, grad_cells, why", FALLBACKS, ids=[c[0] for c in FALLBACKS])
def test_auto_falls_back_to_the_alternating_loop(name, args, grad_cells, why):
    # The emulated pointwise kernels and the generic loop take over, with no persistent launch.
    geometry = dict(blocks=1, threads_per_block=64) if name == "does_not_fit" else GEOMETRY
    before = launches()
    saved = persistent_forward(args, geometry, recurrence="auto")
    assert_all_close(saved, ForwardResults(*cpu_forward(*args)), TOLERANCES[torch.float64], "forward")
    bargs = backward_args(args, saved)
    assert_all_close(persistent_backward(bargs, geometry, recurrence="auto"), BackwardResults(*cpu_backward(*bargs)),
                     TOLERANCES[torch.float64], "backward")
    assert launches() == before


def test_gradient_of_cell_states_falls_back():
    args = forward_args(3, 2, 2, 5, False, False, torch.float64)
    saved = persistent_forward(args)
    bargs = backward_args(args, saved, grad_cells=True)
    with pytest.raises(RuntimeError, match="cannot run this backward pass: a gradient of the cell states arrives"):
        persistent_backward(bargs)
    before = launches()
    assert_all_close(persistent_backward(bargs, recurrence="auto"), BackwardResults(*cpu_backward(*bargs)),
                     TOLERANCES[torch.float64], "backward")
    assert launches() == before


def test_auto_takes_the_persistent_kernels_where_they_fit_and_alternating_never():
    args = forward_args(4, 3, 3, 37, False, False, torch.float64)
    before = launches()
    saved = persistent_forward(args, recurrence="auto")
    persistent_backward(backward_args(args, saved), recurrence="auto")
    assert launches() == before + 2
    saved = persistent_forward(args, recurrence="alternating")
    assert_all_close(saved, ForwardResults(*cpu_forward(*args)), TOLERANCES[torch.float64], "forward")
    persistent_backward(backward_args(args, saved), recurrence="alternating")
    assert launches() == before + 2


@pytest.mark.parametrize("hidden, taken", [(256, True), (257, False)])
def test_auto_takes_the_persistent_forward_up_to_the_cost_models_batch_times_hidden(hidden, taken):
    # B * H <= 16 * 1024: where benchmarks/README.md's cost model predicts it well ahead of alternating. Both
    # shapes fit (persistent runs them); auto declines the larger.
    args = forward_args(1, 64, 3, hidden, False, False, torch.float32)
    geometry = dict(blocks=12, threads_per_block=64)  # W_hh's slices and the staged rows fit shared memory
    before = launches()
    persistent_forward(args, geometry, recurrence="auto")
    assert launches() == before + (1 if taken else 0)
    persistent_forward(args, geometry, recurrence="persistent")
    assert launches() == before + (2 if taken else 1)


def test_a_failed_cooperative_launch_falls_back_under_auto_and_raises_under_persistent():
    # What a device reports when it cannot run every block at once (cudaErrorCooperativeLaunchTooLarge).
    failure = "too many blocks in cooperative launch"
    args = forward_args(4, 3, 3, 37, False, False, torch.float64)
    before = launches()
    saved = persistent_forward(args, recurrence="auto", launch_failure=failure)
    assert_all_close(saved, ForwardResults(*cpu_forward(*args)), TOLERANCES[torch.float64], "forward")
    bargs = backward_args(args, saved)
    assert_all_close(persistent_backward(bargs, recurrence="auto", launch_failure=failure),
                     BackwardResults(*cpu_backward(*bargs)), TOLERANCES[torch.float64], "backward")
    assert launches() == before
    with pytest.raises(RuntimeError, match=f"cannot run this forward pass: {failure}"):
        persistent_forward(args, launch_failure=failure)
    with pytest.raises(RuntimeError, match=f"cannot run this backward pass: {failure}"):
        persistent_backward(bargs, launch_failure=failure)


def test_unknown_recurrence_is_an_error():
    args = forward_args(2, 2, 2, 5, False, False, torch.float64)
    with pytest.raises(RuntimeError, match="recurrence must be one of auto, persistent, alternating .*got 'fast'"):
        persistent_forward(args, recurrence="fast")


def test_cuda_recurrence_reads_the_environment_at_every_call(monkeypatch):
    monkeypatch.delenv("LSTM_EXT_CUDA_RECURRENCE", raising=False)
    assert lstm_ext.cuda_recurrence() == "auto"
    for value in ("auto", "persistent", "alternating"):
        monkeypatch.setenv("LSTM_EXT_CUDA_RECURRENCE", value)
        assert lstm_ext.cuda_recurrence() == value
    monkeypatch.setenv("LSTM_EXT_CUDA_RECURRENCE", "")
    assert lstm_ext.cuda_recurrence() == "auto"
    monkeypatch.setenv("LSTM_EXT_CUDA_RECURRENCE", "Persistent")
    with pytest.raises(RuntimeError, match="LSTM_EXT_CUDA_RECURRENCE must be one of auto, persistent, alternating "
                                           r"\(or unset: auto\), got 'Persistent'"):
        lstm_ext.cuda_recurrence()


def test_a_thread_that_misses_a_barrier_is_reported():
    # One thread of the last block returns at step 1: the emulation names the kernel, block and barrier.
    args = forward_args(3, 2, 2, 37, False, False, torch.float64)
    with pytest.raises(RuntimeError, match=r"lstm_persistent_forward_kernel.*block \(2,0,0\).*returned from the "
                                           r"kernel.*persistent_kernels\.cuh:\d+"):
        persistent_forward(args, planted_early_return_step=1)


# ---- The plan: geometry from the problem and the device's facts. ----

H100 = dict(sm_count=132, max_threads_per_block=1024, max_dynamic_shared_bytes=227 * 1024, threads_per_sm=2048,
            shared_per_sm=228 * 1024)


def plan(pass_="forward", hidden=1024, batch=4, dtype=torch.float32, device=H100, **forced):
    why, blocks, threads, units, k_split, shared = ops.persistent_plan(pass_, hidden, batch, dtype, **device, **forced)
    return dict(why=why, blocks=blocks, threads=threads, units=units, k_split=k_split, shared=shared)


@pytest.mark.parametrize("pass_", ["forward", "backward"])
@pytest.mark.parametrize("hidden", [1024, 1000, 37, 5, 132, 133])
def test_plan_covers_the_units_with_one_block_per_sm_at_most(pass_, hidden):
    p = plan(pass_, hidden)
    assert p["why"] == ""
    assert p["blocks"] <= 132 and p["threads"] == 256
    assert p["blocks"] * p["units"] >= hidden > (p["blocks"] - 1) * p["units"]  # the last block partial, none empty
    assert p["shared"] <= 227 * 1024


def test_plan_sizes_the_shared_memory_from_the_slice_and_the_staged_rows():
    f32, bf16 = plan(hidden=1024, batch=4), plan(hidden=1024, batch=4, dtype=torch.bfloat16)
    assert f32["units"] == 8  # 1024 units over 128 blocks
    # 32 gate columns of 1024 weights, 4 staged rows, 4 x 32 float sums; a row padded by at most 32 + k_split.
    assert 36 * 1024 * 4 + 4 * 32 * 4 <= f32["shared"] <= 36 * (1024 + 64) * 4 + 4 * 32 * 4 + 32
    assert bf16["shared"] < f32["shared"] * 0.6  # half the bytes per weight; the sums stay float
    backward = plan("backward", hidden=1024, batch=4)
    assert 12 * 4096 * 4 <= backward["shared"] <= 12 * (4096 + 64) * 4 + 32  # 8 columns of 4096 + 4 staged rows


def test_plan_forced_geometry_splits_units_with_a_partial_last_block():
    p = plan(hidden=37, batch=3, dtype=torch.float64, blocks=3, threads_per_block=64)
    assert (p["why"], p["blocks"], p["threads"], p["units"]) == ("", 3, 64, 13)
    p = plan(hidden=2, batch=3, blocks=3, threads_per_block=64)
    assert (p["blocks"], p["units"]) == (3, 1)  # the forced grid stays, a block without units included


def test_plan_threads_per_product():
    # As many threads per dot product as leave none idle, a power of two up to a warp, whole warps only.
    assert plan(hidden=5, batch=1, blocks=3, threads_per_block=64)["k_split"] == 4  # 8 products; 5 terms each
    assert plan(hidden=1024, batch=1)["k_split"] == 8  # 32 products on 256 threads
    assert plan("backward", hidden=1024, batch=1)["k_split"] == 32
    assert plan(hidden=37, batch=3, blocks=2, threads_per_block=7)["k_split"] == 1


def test_plan_does_not_fit_in_shared_memory():
    p = plan(hidden=2048, device=dict(H100, sm_count=8))  # 256 units a block: 8 MB of W_hh
    assert p["why"].startswith("8 blocks of 256 threads, 256 units and ")
    assert "more shared memory than the device gives a block (232448 bytes)" in p["why"]


def test_plan_does_not_fit_when_the_blocks_cannot_all_be_co_resident():
    # An SM with the shared memory of two blocks (of the 10-block plan) and a little: 4 SMs hold 8, not 10.
    shared = plan(hidden=100, batch=2, device=dict(H100, sm_count=4), blocks=10)["shared"]
    device = dict(H100, sm_count=4, shared_per_sm=2 * shared + 100)
    p = plan(hidden=100, batch=2, device=device, blocks=10)
    assert p["why"].endswith("not all co-resident, the device holds 8 (4 SMs x 2)"), p["why"]
    assert plan(hidden=100, batch=2, device=dict(device, sm_count=5), blocks=10)["why"] == ""  # 5 SMs x 2


def test_plan_refuses_more_threads_than_a_block_takes():
    p = plan(hidden=64, device=dict(H100, max_threads_per_block=512), threads_per_block=1024)
    assert p["why"] == "blocks of 1024 threads; the device takes at most 512"


# ---- On a GPU (skipped without one): the real cooperative launch against the CPU path. ----

def on_cuda(named_tuple):
    return named_tuple._replace(**{k: v.cuda() for k, v in named_tuple._asdict().items()
                                   if isinstance(v, torch.Tensor) and k != "batch_sizes"})


def on_cpu(named_tuple):
    return type(named_tuple)(*(t.cpu() for t in named_tuple))


@pytest.mark.skipif(not CUDA_READY, reason=CUDA_SKIP_REASON)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cuda_persistent_equals_cpu(monkeypatch, case):
    monkeypatch.setenv("LSTM_EXT_CUDA_RECURRENCE", "persistent")
    layer_forward, layer_backward = torch.ops.lstm_ext.lstm_layer_forward, torch.ops.lstm_ext.lstm_layer_backward
    tolerances = dict(rtol=1e-4, atol=1e-4)
    args = forward_args(*case, dtype=torch.float32)
    for training in (True, False):
        call = args._replace(training=training)
        assert_all_close(on_cpu(ForwardResults(*layer_forward(*on_cuda(call)))), ForwardResults(*cpu_forward(*call)),
                         tolerances, f"forward (training={training})")
    bargs = backward_args(args, ForwardResults(*cpu_forward(*args)))
    grads = on_cpu(BackwardResults(*layer_backward(*on_cuda(bargs))))
    assert_all_close(grads, BackwardResults(*cpu_backward(*bargs)), tolerances, "backward")
    assert_all_equal(on_cpu(BackwardResults(*layer_backward(*on_cuda(bargs)))), grads, "backward, second run")
