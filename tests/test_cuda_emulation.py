"""The CUDA emulation (csrc/emulated/cuda_emulation.h) beyond elementwise kernels: block barriers over
static shared memory, warp shuffles, dynamic shared memory and the grid barrier of a cooperative launch,
checked on the small kernels of csrc/emulated/emulation_selftest_kernels.cuh through the test-only ops of
emulation_selftest.cpp; and barriers misused on purpose, each of which must raise an error that names the
kernel, block, thread and line instead of hanging."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lstm_ext  # noqa: F401  (registers the ops)

ops = torch.ops.lstm_ext_testing
ROOT = Path(__file__).resolve().parent.parent
KERNELS_FILE = "emulation_selftest_kernels.cuh"
TOLERANCES = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5)}
ORDERS = pytest.mark.parametrize("reverse_order", [False, True], ids=["fwd", "rev"])
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])


@DTYPES
@ORDERS
@pytest.mark.parametrize("threads", [1, 2, 3, 7, 31, 32, 33, 48, 100, 255, 256, 1000, 1024])
def test_block_reduction_through_shared_memory(threads, reverse_order, dtype):
    # Partial sums in static shared memory folded with __syncthreads between rounds; block sizes that
    # are not powers of two, below, at and above a warp, and larger than some rows.
    for cols in (1, 37, 2500):
        x = torch.randn(3, cols, dtype=dtype)
        out = ops.emulation_row_sum(x, threads, False, reverse_order)
        torch.testing.assert_close(out, x.double().sum(1).to(dtype), **TOLERANCES[dtype])


def test_fiber_stack_size_is_configurable():
    x = torch.randn(2, 100, dtype=torch.float64)
    out = ops.emulation_row_sum(x, 256, False, False, fiber_stack_kib=16)
    torch.testing.assert_close(out, x.sum(1), **TOLERANCES[torch.float64])
    with pytest.raises(RuntimeError, match="fiber_stack_bytes must be at least 16384, got 8192"):
        ops.emulation_row_sum(x, 256, False, False, fiber_stack_kib=8)


@DTYPES
@ORDERS
@pytest.mark.parametrize("threads", [32, 64, 96, 160, 512, 1024])
def test_warp_shuffle_reduction(threads, reverse_order, dtype):
    for cols in (1, 45, 3000):
        x = torch.randn(4, cols, dtype=dtype)
        out = ops.emulation_row_sum(x, threads, True, reverse_order)
        torch.testing.assert_close(out, x.double().sum(1).to(dtype), **TOLERANCES[dtype])


@pytest.mark.parametrize("threads", [48, 1000])
def test_full_mask_shuffle_in_a_partial_warp_is_an_error(threads):
    lanes = threads % 32
    with pytest.raises(RuntimeError, match=rf"warp_row_sum_kernel .*__shfl_xor_sync\(\) at {KERNELS_FILE}:\d+ with mask "
                                           rf"0xffffffff, which names lane\(s\) {lanes}-31 that do not exist: the block "
                                           rf"has {threads} threads, so warp {threads // 32} has lanes 0-{lanes - 1}"):
        ops.emulation_row_sum(torch.ones(1, 10, dtype=torch.float64), threads, True, False)


XOR, DOWN, UP, INDEX = 0, 1, 2, 3
OPERANDS = {XOR: range(0, 40), DOWN: range(0, 34), UP: range(0, 34), INDEX: range(-5, 40)}


def cuda_shuffle_source(lane, kind, operand, width):
    """The lane whose value `lane` reads, as CUDA's programming guide describes the shuffles: the warp is
    split into segments of `width` lanes; reaching past the end of one's own segment returns one's own
    value (xor may reach into an earlier segment)."""
    base = lane - lane % width
    if kind == XOR:
        source = lane ^ operand
        return lane if source >= base + width else source
    if kind == DOWN:
        return lane if lane % width + operand >= width else lane + operand
    if kind == UP:
        return lane if lane % width < operand else lane - operand
    return base + operand % width


@pytest.mark.parametrize("dtype", [torch.int32, torch.float64], ids=["i32", "f64"])
@pytest.mark.parametrize("width", [1, 2, 4, 8, 16, 32])
@pytest.mark.parametrize("kind", [XOR, DOWN, UP, INDEX], ids=["xor", "down", "up", "index"])
def test_shuffle_lanes_follow_cuda_rules(kind, width, dtype):
    threads = 64  # two warps: a lane's index is threadIdx.x % 32
    for operand in OPERANDS[kind]:
        out = ops.emulation_shuffle_lanes(torch.empty(0, dtype=dtype), threads, kind, operand, width)
        expected = [7 * (t - t % 32 + cuda_shuffle_source(t % 32, kind, operand, width)) + 3 for t in range(threads)]
        assert out.tolist() == expected, f"operand {operand}"


@pytest.mark.parametrize("width", [0, 3, 33, 64])
def test_shuffle_width_must_be_a_power_of_two_up_to_32(width):
    with pytest.raises(RuntimeError, match=rf"__shfl_xor_sync\(\) at {KERNELS_FILE}:\d+ with width {width}, which is not "
                                           r"a power of two in \[1, 32\]"):
        ops.emulation_shuffle_lanes(torch.empty(0, dtype=torch.int32), 32, XOR, 1, width)


@DTYPES
@pytest.mark.parametrize("threads", [1, 5, 32, 100, 1024])
@pytest.mark.parametrize("cols", [1, 33, 700])
def test_dynamic_shared_memory(threads, cols, dtype):
    x = torch.randn(3, cols, dtype=dtype)
    needed = cols * x.element_size()
    for dynamic_shared_bytes in (needed, needed + 100):
        out = ops.emulation_reverse_rows(x, threads, dynamic_shared_bytes)
        assert torch.equal(out, x.flip(1))


def test_dynamic_shared_memory_beyond_what_a_gpu_has_is_an_error():
    with pytest.raises(RuntimeError, match=r"reverse_rows_kernel .*dynamic_shared_bytes must be at most 232448, got 232449"):
        ops.emulation_reverse_rows(torch.ones(1, 4), 1, 227 * 1024 + 1)


def run_reverse_rows_in_a_subprocess(dynamic_shared_bytes):
    # The same library as this process (LSTM_EXT_LIBRARY, sanitizer preloads pass through the environment).
    script = ("import torch, lstm_ext\n"
              "x = torch.randn(2, 1000, dtype=torch.float64)\n"
              f"torch.ops.lstm_ext_testing.emulation_reverse_rows(x, 64, {dynamic_shared_bytes})\n"
              "print('finished')\n")
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))


def test_overrunning_dynamic_shared_memory_faults():
    # 8000 bytes are needed; with 4000 the kernel runs into the guard page past the buffer (or, under
    # AddressSanitizer, out of the heap block): the process dies instead of corrupting memory.
    fine = run_reverse_rows_in_a_subprocess(8000)
    assert fine.returncode == 0 and "finished" in fine.stdout, fine.stderr[-2000:]
    overrun = run_reverse_rows_in_a_subprocess(4000)
    assert "finished" not in overrun.stdout
    assert overrun.returncode == -signal.SIGSEGV or "AddressSanitizer: heap-buffer-overflow" in overrun.stderr, (
        overrun.returncode, overrun.stderr[-2000:])


def grid_exchange_model(seeds, rounds):
    """What grid_exchange_kernel computes, round by round: history [rounds, blocks, threads]."""
    blocks = seeds.shape[0]
    value, history = seeds.clone(), []
    for r in range(rounds):
        published = value.clone()
        partner = [(b + r + 1) % blocks for b in range(blocks)]
        value = value * 0.5 + published[partner]
        history.append(value)
    return torch.stack(history) if history else torch.empty(0, *seeds.shape, dtype=seeds.dtype)


@ORDERS
@pytest.mark.parametrize("blocks", [1, 2, 3, 8])
@pytest.mark.parametrize("threads", [1, 32, 33, 128])
def test_grid_barrier_exchanges_values_between_blocks(blocks, threads, reverse_order):
    seeds = torch.randn(blocks, threads, dtype=torch.float64)
    for rounds in (0, 1, 5):
        history = ops.emulation_grid_exchange(seeds, rounds, True, reverse_order)
        torch.testing.assert_close(history, grid_exchange_model(seeds, rounds), rtol=0, atol=0)


def test_grid_barrier_needs_a_cooperative_launch():
    with pytest.raises(RuntimeError, match=rf"grid_exchange_kernel .*block \(0,0,0\) thread \(0,0,0\) reached grid_sync\(\) "
                                           rf"at {KERNELS_FILE}:\d+, but the kernel was not launched cooperatively"):
        ops.emulation_grid_exchange(torch.zeros(2, 4, dtype=torch.float64), 1, False, False)


def test_cooperative_launch_must_fit_the_co_resident_limit():
    with pytest.raises(RuntimeError, match=r"holds at most 16384 threads, got 17 blocks of 1024"):
        ops.emulation_grid_exchange(torch.zeros(17, 1024, dtype=torch.float64), 1, True, False)


EARLY = r"(returned from the kernel while \d+ of the block's \d+ threads wait at __syncthreads\(\) at {f}:\d+" \
        r"|reached __syncthreads\(\) at {f}:\d+ after thread \(\d+,0,0\) of its block returned from the kernel)"
FAULTS = {  # name -> (fault id, blocks, threads, cooperative, what the message must say)
    "early_return": (0, 2, 64, False, EARLY),
    "divergent_barriers": (1, 2, 64, False,
                           r"reached __syncthreads\(\) at {f}:(\d+) while 1 thread of its block \(thread \(\d+,0,0\) "
                           r"first\) wait at __syncthreads\(\) at {f}:(?!\1)\d+: all threads of a block must reach the "
                           r"same barrier"),
    "uneven_barrier_counts": (2, 2, 64, False, EARLY),
    "shuffle_deadlock": (3, 1, 64, False,
                         r"deadlock: no emulated thread can continue\. Block \(0,0,0\): .*threads 0-15 wait at "
                         r"__shfl_xor_sync\(\) at {f}:\d+ \(warp 0, for lanes 16-31\).*threads 16-31, 48-63 wait at "
                         r"__syncthreads\(\) at {f}:\d+"),
    "shuffle_after_return": (4, 2, 64, False,
                             r"(lane 31 of warp \d\) returned from the kernel while lanes 0-30 wait for it at "
                             r"__shfl_xor_sync\(\) at {f}:\d+|called __shfl_xor_sync\(\) at {f}:\d+ with mask "
                             r"0xffffffff, which names lane\(s\) 31 that returned from the kernel)"),
    "source_not_in_mask": (5, 2, 64, False,
                           r"thread \(\d+,0,0\) \(lane 0 of warp \d\) reads lane 20 at __shfl_sync\(\) at {f}:\d+, "
                           r"which is not in the mask 0x0000ffff"),
    "grid_early_return": (6, 3, 64, True,
                          r"(returned from the kernel while 128 threads of the grid wait at grid_sync\(\) at {f}:\d+"
                          r"|reached grid_sync\(\) at {f}:\d+ after block \(0,0,0\) thread \(\d+,0,0\) returned)"),
}


@ORDERS
@pytest.mark.parametrize("name", list(FAULTS))
def test_misused_barrier_is_reported_not_hung(name, reverse_order):
    fault, blocks, threads, cooperative, what = FAULTS[name]
    out = torch.zeros(blocks * threads, dtype=torch.int32)
    with pytest.raises(RuntimeError) as error:
        ops.emulation_barrier_fault(out, fault, blocks, threads, cooperative, reverse_order)
    message = str(error.value)
    # The kernel by its symbol, the launch, and where: a block and thread, or the threads of a deadlock.
    assert re.search(rf"emulated CUDA kernel lstm_ext::selftest::barrier_fault_kernel\(int, int\*\) \(grid \({blocks},1,1\), "
                     rf"block \({threads},1,1\)\): ", message), message
    assert re.search(r"[Bb]lock \(\d+,0,0\)", message) and re.search(r"threads? [(\d]", message), message
    assert re.search(what.format(f=re.escape(KERNELS_FILE)), message), message
    # The launch state is gone with the error: the next launches run normally.
    x = torch.randn(2, 50, dtype=torch.float64)
    torch.testing.assert_close(ops.emulation_row_sum(x, 64, True, reverse_order), x.sum(1), rtol=1e-12, atol=1e-12)
    seeds = torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(ops.emulation_grid_exchange(seeds, 2, True, reverse_order),
                               grid_exchange_model(seeds, 2), rtol=0, atol=0)


def test_barrier_used_correctly_in_the_fault_kernel_runs_through():
    # The fault kernel's default case reaches no barrier: every thread writes its index.
    out = torch.zeros(2 * 40, dtype=torch.int32)
    ops.emulation_barrier_fault(out, 99, 2, 40, False, False)
    assert out.tolist() == list(range(80))
