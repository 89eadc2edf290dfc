"""The CPU splits a pass's work over its threads: a batch chunk per thread, and, where the batch has fewer
sequences than threads, a chunk's hidden units over several threads that meet once per step
(StepKernels::for_each_work_share). The split must never show in the numbers: every thread count gives
nn.LSTM's results, and the values computed by the recurrence itself are bitwise those of one thread."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import lstm_ext
from lstm_reference import TOLERANCES, Config, assert_equal_to_nn_lstm, make_pair, make_inputs, run_with_grads

# Thread counts: 1 (no split), 2 (two chunks, or a B=1 batch's units in two), 3 (uneven unit slices:
# H=160 is 10 panels of 16 with AVX2, split 3 + 3 + 4, or 5 of 32 with AVX-512, split 1 + 2 + 2) and 4
# (two chunks of two unit slices each at B=2).
THREAD_COUNTS = [1, 2, 3, 4]

CASES = {  # name: (Config, dtype). Units are split where H is whole panels and a share has >= 16K MACs.
    "b1_h96": (Config(seq_len=7, batch=1, input_size=40, hidden_size=96, given_state=True), torch.float32),
    "b1_h160_bidirectional_2layers": (
        Config(seq_len=6, batch=1, input_size=24, hidden_size=160, num_layers=2, bidirectional=True),
        torch.float32),
    "b2_h128_packed": (Config(input_size=16, hidden_size=128, lengths=(5, 2), given_state=True), torch.float32),
    "b1_h96_float64": (Config(seq_len=5, batch=1, input_size=8, hidden_size=96, given_state=True), torch.float64),
    "b1_h96_no_bias_batch_first": (
        Config(seq_len=5, batch=1, input_size=8, hidden_size=96, bias=False, batch_first=True), torch.float32),
    # 208 rows: the input projection and grad_input run in row blocks of 70, 69 and 69 (at most 96 each,
    # even heights), split over the threads as runs of (row block, panel) tasks.
    "b16_t13_row_blocks": (Config(seq_len=13, batch=16, input_size=20, hidden_size=48), torch.float32),
}

# Computed by the recurrence and lstm_ext's own GEMMs, whose sums do not depend on the split; the weight
# gradients come from ATen's large products, whose blocking may follow the thread count. The baseline
# build (no AVX2: lstm_ext.cpu_kernels()) has no GEMM of its own: its per-step products are BLAS calls
# too, so there the split is only checked to nn.LSTM's tolerance.
SPLIT_IS_BITWISE = lstm_ext.cpu_kernels() != "baseline"
BITWISE_KEYS = ["output", "h_n", "c_n", "input", "h0", "c0"] if SPLIT_IS_BITWISE else []


def assert_same_as_one_thread(actual, expected, dtype):
    if SPLIT_IS_BITWISE:
        assert torch.equal(actual, expected)
    else:
        torch.testing.assert_close(actual, expected, **TOLERANCES[dtype])


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", CASES)
def test_every_thread_count_matches_nn_lstm_and_one_thread(case, restore_threads):
    cfg, dtype = CASES[case]
    tolerance = 1e-9 if dtype == torch.float64 else 1e-5
    torch.set_num_threads(1)
    _, ext = make_pair(cfg, dtype, "cpu")
    x, hx = make_inputs(cfg, dtype, "cpu")
    one_thread = run_with_grads(ext, x, hx)
    for threads in THREAD_COUNTS[1:]:
        torch.set_num_threads(threads)
        assert_equal_to_nn_lstm(cfg, dtype, "cpu")
        split = run_with_grads(ext, x, hx)
        for key in one_thread:
            if key in BITWISE_KEYS:
                assert torch.equal(split[key], one_thread[key]), f"{key} differs with {threads} threads"
            else:
                torch.testing.assert_close(split[key], one_thread[key], rtol=tolerance, atol=tolerance)


def test_inference_matches_with_split_units(restore_threads):
    # Inference keeps one c per sequence, updated in place by each share for its own units.
    cfg, dtype = CASES["b1_h160_bidirectional_2layers"]
    _, ext = make_pair(cfg, dtype, "cpu")
    ext.eval()
    x, _ = make_inputs(cfg, dtype, "cpu")
    torch.set_num_threads(1)
    with torch.inference_mode():
        expected = ext(x)
    for threads in THREAD_COUNTS[1:]:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            output, (h_n, c_n) = ext(x)
        assert_same_as_one_thread(output, expected[0], dtype)
        assert_same_as_one_thread(h_n, expected[1][0], dtype)
        assert_same_as_one_thread(c_n, expected[1][1], dtype)


def test_fewer_openmp_threads_than_shares(tmp_path):
    # OMP_THREAD_LIMIT=2 caps OpenMP's team below torch's 4 threads: B=1, H=160 is planned as 4 unit
    # slices, and each of the 2 threads gets two adjacent ones, which it runs as one share arriving at the
    # barrier for both. A miscount there would hang, hence a separate process with a timeout.
    script = tmp_path / "team.py"
    script.write_text(textwrap.dedent("""
        import sys, torch, lstm_ext
        torch.manual_seed(0)
        model = lstm_ext.LSTM(24, 160, num_layers=2, bidirectional=True)
        x = torch.randn(6, 1, 24, requires_grad=True)
        results = []
        for threads in (4, 1):
            torch.set_num_threads(threads)
            x.grad = None
            output, _ = model(x)
            output.square().sum().backward()
            results.append((output.detach(), x.grad.clone()))
        torch.save(results, sys.argv[1])
    """))
    saved = tmp_path / "results.pt"
    env = dict(os.environ, OMP_THREAD_LIMIT="2")
    done = subprocess.run([sys.executable, str(script), str(saved)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (split_output, split_grad), (single_output, single_grad) = torch.load(saved)
    assert_same_as_one_thread(split_output, single_output, torch.float32)
    assert_same_as_one_thread(split_grad, single_grad, torch.float32)
