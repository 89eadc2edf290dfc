"""Shared fixtures: every test that takes `device` runs on the CPU and, where a GPU and the CUDA build
exist, on CUDA too."""

import importlib
import sys
from pathlib import Path

import pytest
import torch

import lstm_ext

CUDA_READY = torch.cuda.is_available() and "cuda" in lstm_ext.compiled_backends()
CUDA_SKIP_REASON = (
    "no CUDA device on this machine" if not torch.cuda.is_available()
    else "lstm_ext was built without CUDA (FORCE_CPU=1 or no toolkit)"
)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_READY, reason=CUDA_SKIP_REASON))]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def dynamo_graphs():
    """torch.compile from a clean slate; calling the fixture's value counts the graphs dynamo built since."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield lambda: torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch._dynamo.reset()


BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def import_benchmark(monkeypatch):
    """import_benchmark(name): benchmarks/<name>.py as a module, with its folder on sys.path as the scripts
    expect; afterwards every module imported from that folder is dropped, so the next test imports afresh."""
    monkeypatch.syspath_prepend(str(BENCHMARKS_DIR))
    yield importlib.import_module
    for name, module in list(sys.modules.items()):
        if Path(getattr(module, "__file__", None) or "").parent == BENCHMARKS_DIR:
            del sys.modules[name]
