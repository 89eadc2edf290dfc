"""pytest configuration of the benchmark suite (run: python -m pytest benchmarks/ --benchmark-only).

Every benchmark takes `device`: the CPU always, CUDA only where a GPU and lstm_ext's CUDA kernels exist.
The `run_benchmark` fixture times a step the same way for every test, synchronising CUDA inside the
timed function so that each timing covers the device work and not just the launches.
"""

import pytest
import torch

from lstm_workloads import cuda_available_for_ext, synchronizer

CUDA_USABLE, CUDA_SKIP_REASON = cuda_available_for_ext()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_USABLE, reason=CUDA_SKIP_REASON))]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def run_benchmark(benchmark):
    """run_benchmark(step, device, group): time `step` under the given comparison group."""

    def run(step, device, group):
        benchmark.group = group
        synchronize = synchronizer(device)

        def timed_step():
            step()
            synchronize()

        synchronize()  # nothing queued earlier may land in the first timing
        benchmark(timed_step)

    return run
