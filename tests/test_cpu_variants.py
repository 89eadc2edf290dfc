"""The CPU kernels are built once per instruction set (baseline, AVX2, AVX-512) and one is chosen at run
time, following ATen's own choice (lstm_ext.cpu_kernels()). The process running the suite tests one of
them; here every other one the machine can run goes through the CPU equivalence tests in a subprocess
with ATEN_CPU_CAPABILITY set, and the per-step product's block shapes (which differ per build: 6 rows by
16 columns with AVX2, 6 by 64 with AVX-512, and other heights and widths for the remaining rows) are checked against
nn.LSTM for every remainder of rows."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lstm_ext
from lstm_reference import Config, assert_equal_to_nn_lstm

TESTS = Path(__file__).resolve().parent
VARIANT_OF_CAPABILITY = {"AVX512": "avx512", "AVX2": "avx2", "DEFAULT": "baseline"}
# The CPU tests each build runs: equivalence with nn.LSTM over the module's options, dtypes, the
# thread splits, the cell, the activations' accuracy, and this file's block shapes.
VARIANT_SUITE = ["test_equivalence.py", "test_cpu_work_split.py", "test_dtypes.py", "test_cell.py",
                 "test_activations.py",
                 "test_cpu_variants.py::test_every_block_shape_matches_nn_lstm",
                 "test_cpu_variants.py::test_weight_gradients_match_nn_lstm"]
CHILD_TIMEOUT_S = 600


def _capability_env(capability: str) -> dict:
    env = dict(os.environ)
    env["ATEN_CPU_CAPABILITY"] = capability
    return env


def _variant_under(capability: str) -> str:
    """The build lstm_ext runs in a process started with ATEN_CPU_CAPABILITY=capability."""
    probe = subprocess.run([sys.executable, "-c", "import lstm_ext; print(lstm_ext.cpu_kernels())"],
                           env=_capability_env(capability), capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    return probe.stdout.strip()


def test_lstm_ext_runs_the_build_of_atens_cpu_capability():
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in VARIANT_OF_CAPABILITY:
        pytest.skip(f"ATen's CPU capability here is {capability}: lstm_ext runs its baseline build")
    assert lstm_ext.cpu_kernels() == VARIANT_OF_CAPABILITY[capability]


@pytest.mark.parametrize("capability", ["avx512", "avx2", "default"])
def test_every_cpu_build_matches_nn_lstm(capability):
    variant = _variant_under(capability)
    if variant == lstm_ext.cpu_kernels():
        pytest.skip(f"ATEN_CPU_CAPABILITY={capability} runs the {variant} build, which this process tests")
    if capability != "default" and variant != capability:
        pytest.skip(f"this CPU cannot run the {capability} build (ATEN_CPU_CAPABILITY={capability} gives {variant})")
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *VARIANT_SUITE],
                           cwd=TESTS, env=_capability_env(capability), capture_output=True, text=True,
                           timeout=CHILD_TIMEOUT_S)
    assert child.returncode == 0, (f"the {variant} build failed its tests:\n{child.stdout[-6000:]}\n"
                                   f"{child.stderr[-2000:]}")
    assert " passed" in child.stdout.splitlines()[-1], child.stdout[-2000:]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one chunk: each step's product has all B rows
    yield
    torch.set_num_threads(threads)


# B = 1..26 at one thread gives each step's product every row count: full blocks of 6 rows and every
# remainder (AVX2), or every split into blocks of 3-6 rows (AVX-512), and each one-block tail. H = 36
# and 48: gate widths of 144 and 192, and, in the backward's product, 36 and 48 columns: partial panels
# of both widths. H = 160: the backward's depth 4H = 640
# is taken in two blocks of k.
@pytest.mark.parametrize("hidden_size", [36, 48, 160])
@pytest.mark.parametrize("batch", list(range(1, 27)))
def test_every_block_shape_matches_nn_lstm(batch, hidden_size, one_thread):
    if hidden_size == 160 and batch % 5 != 1:
        pytest.skip("H=160 (two depth blocks) at B = 1, 6, 11, ...: a sample of the row counts is enough")
    cfg = Config(seq_len=3, batch=batch, input_size=20, hidden_size=hidden_size, given_state=True)
    assert_equal_to_nn_lstm(cfg, torch.float32, "cpu")


# The weight gradients' product (csrc/cpu/weight_grad_gemm.h, the vector builds) sums over k = T * B =
# 333 rows: blocks of 256 and a remainder; its threads split the 4H rows of dW. Its paths by width n
# (I for dW_ih, H for dW_hh): 36 and 200 (a partial last panel), 64 (b read in place, a in place), 160
# and 200 (a copied).
@pytest.mark.parametrize("input_size,hidden_size", [(200, 36), (64, 160), (36, 64)])
@pytest.mark.parametrize("threads", [1, 2])
def test_weight_gradients_match_nn_lstm(input_size, hidden_size, threads):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cfg = Config(seq_len=37, batch=9, input_size=input_size, hidden_size=hidden_size, given_state=True)
        assert_equal_to_nn_lstm(cfg, torch.float32, "cpu")
    finally:
        torch.set_num_threads(saved)
