#!/usr/bin/env python
"""Sweep lstm_ext.LSTM against torch.nn.LSTM over sequence length × batch size (× hidden size).

    python benchmarks/sweep.py                 # default grid: T 16..1024, B 1..256, H = I in {128, 256}
    python benchmarks/sweep.py --quick         # a small grid, under a minute on two cores
    python benchmarks/sweep.py --seq-lens 32,512 --batches 4 64 --hidden-sizes 512 --mode train

For every point both implementations run in this one process, with identical weights (load_state_dict)
and the very same input tensors:

1. agreement: the first warm-up run of each implementation is compared (outputs to rtol 1e-4 / atol 1e-5
   in float32, gradients normwise); a disagreement stops the sweep, since timing a wrong result is useless;
2. warm-up: untimed runs, at least --warmup in all and at least --warmup-time seconds per implementation;
3. timing: up to --repeats alternating runs (lstm_ext, nn.LSTM, lstm_ext, nn.LSTM, ...), so that drifting
   machine load hits both alike; after --max-time seconds no new run starts once each has 3; a run of a
   fast point calls the step several times to last at least --min-run-time; the reported time per step
   is the median over the runs;
4. memory (training steps): the peak memory of one more step per implementation (see peak_memory_bytes).

Output: a table on stdout, and sweep.csv, sweep.json and sweep.png in --out (default bench-results).
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import ctypes.util
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

# lstm_workloads lives beside this file. Running the script puts this directory on sys.path; loading the
# module by file path (as the smoke test does) does not, hence the explicit entry.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lstm_ext  # noqa: E402
from lstm_workloads import (IMPLEMENTATIONS, MODES, Step, assert_results_agree, lstm_input,  # noqa: E402
                            lstm_pair, lstm_steps, synchronizer)

DEFAULT_GRID = dict(seq_lens=[16, 64, 256, 1024], batches=[1, 8, 64, 256], hidden_sizes=[128, 256], repeats=5)
# Sized to take about a quarter of a minute on two quiet cores, leaving room for a busy machine.
QUICK_GRID = dict(seq_lens=[16, 64, 256], batches=[1, 8, 32], hidden_sizes=[128], repeats=3)
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODE_LABELS = {"infer": "inference", "train": "training step"}
OUTPUT_STEM = "sweep"
MIN_REPEATS = 3  # --max-time never cuts a measurement below this many runs: a median of 3 still resists an outlier
MIB = 2 ** 20

# One row per (point, mode); the CSV columns in order, described in the JSON and the README.
COLUMNS = {
    "device": "cpu or cuda",
    "dtype": "parameter and input dtype",
    "input_size": "LSTM input size I (= hidden_size)",
    "hidden_size": "LSTM hidden size H",
    "num_layers": "stacked LSTM layers",
    "bidirectional": "True for a bidirectional LSTM",
    "seq_len": "sequence length T",
    "batch": "batch size B",
    "mode": "infer (forward under torch.inference_mode) or train (forward, loss = output.sum(), backward)",
    "ext_median_ms": "lstm_ext: median time of one step, ms",
    "torch_median_ms": "nn.LSTM: median time of one step, ms",
    "speedup": "torch_median_ms / ext_median_ms (> 1: lstm_ext is faster)",
    "ext_min_ms": "lstm_ext: fastest run's time of one step, ms",
    "torch_min_ms": "nn.LSTM: fastest run's time of one step, ms",
    "repeats": "timed runs per implementation (the median is over these; fewer than --repeats when --max-time ran out)",
    "calls_per_run": "steps per timed run (fast points repeat the step to outlast timer noise)",
    "max_abs_diff": "max |lstm_ext - nn.LSTM| over output, h_n and c_n of the checked run",
    "max_grad_rel_diff": "train: max over gradients of max|diff| / max|nn.LSTM gradient|; empty for infer",
    "ext_peak_mem_mib": "train: lstm_ext's peak memory of one step above what was allocated before it, MiB",
    "torch_peak_mem_mib": "train: nn.LSTM's peak memory of one step above what was allocated before it, MiB",
}


class AgreementError(AssertionError):
    """lstm_ext and nn.LSTM computed different results at a point: nothing there is worth timing."""


@dataclasses.dataclass(frozen=True)
class Point:
    hidden_size: int
    num_layers: int
    bidirectional: bool
    seq_len: int
    batch: int

    @property
    def input_size(self) -> int:
        return self.hidden_size

    def describe(self) -> str:
        return f"H={self.hidden_size} L={self.num_layers}{' bi' if self.bidirectional else ''} " \
               f"T={self.seq_len} B={self.batch}"


@dataclasses.dataclass(frozen=True)
class Settings:
    grid: str
    points: tuple[Point, ...]
    modes: tuple[str, ...]
    device: torch.device
    dtype: torch.dtype
    repeats: int
    max_time: float
    warmup: int
    warmup_time: float
    min_run_time: float
    measure_memory: bool
    show_progress: bool
    out_dir: Path

    def as_json(self) -> dict:
        return {
            "grid": self.grid,
            "seq_lens": sorted({p.seq_len for p in self.points}),
            "batches": sorted({p.batch for p in self.points}),
            "hidden_sizes": sorted({p.hidden_size for p in self.points}),
            "layers": sorted({p.num_layers for p in self.points}),
            "bidirectional": sorted({p.bidirectional for p in self.points}),
            "modes": list(self.modes),
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "repeats": self.repeats,
            "max_time_s": self.max_time,
            "warmup": self.warmup,
            "warmup_time_s": self.warmup_time,
            "min_run_time_s": self.min_run_time,
            "measure_memory": self.measure_memory,
        }


# --- command line --------------------------------------------------------------------------------------

def int_list(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item.strip()]


def flatten(lists: Sequence[Sequence[int]] | None) -> list[int] | None:
    """The values of a list flag given as `16,64 256`, in order, without repeats."""
    return None if lists is None else list(dict.fromkeys(value for values in lists for value in values))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time lstm_ext.LSTM against torch.nn.LSTM over sequence length × batch size.",
        epilog="Lists take commas or spaces: --seq-lens 16,64 256. Explicit lists override the grid's.")
    parser.add_argument("--quick", action="store_true",
                        help=f"small grid (T {QUICK_GRID['seq_lens']}, B {QUICK_GRID['batches']}, "
                             f"H {QUICK_GRID['hidden_sizes']}, {QUICK_GRID['repeats']} repeats): "
                             f"well under a minute on two cores")
    parser.add_argument("--seq-lens", type=int_list, nargs="+", metavar="T",
                        help=f"sequence lengths (default {DEFAULT_GRID['seq_lens']})")
    parser.add_argument("--batches", type=int_list, nargs="+", metavar="B",
                        help=f"batch sizes (default {DEFAULT_GRID['batches']})")
    parser.add_argument("--hidden-sizes", type=int_list, nargs="+", metavar="H",
                        help=f"hidden sizes, input size = hidden size (default {DEFAULT_GRID['hidden_sizes']})")
    parser.add_argument("--layers", type=int_list, nargs="+", metavar="L", help="numbers of layers (default 1)")
    parser.add_argument("--bidirectional", choices=["off", "on", "both"], nargs="?", const="on", default="off",
                        help="bidirectional LSTMs: off (default), on (the flag alone), or both")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--mode", choices=["infer", "train", "both"], default="both",
                        help="inference, training step, or both (default)")
    parser.add_argument("--repeats", type=int,
                        help=f"timed runs per implementation (default {DEFAULT_GRID['repeats']}, "
                             f"with --quick {QUICK_GRID['repeats']})")
    parser.add_argument("--max-time", type=float, default=20.0, metavar="SECONDS",
                        help=f"stop timing a point's mode after this many seconds of timed runs, once each "
                             f"implementation has {MIN_REPEATS} runs (default 20)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs per implementation before timing, at least 1: the first one is "
                             "also the agreement check (default 1)")
    parser.add_argument("--warmup-time", type=float, default=0.1, metavar="SECONDS",
                        help="keep warming up until each implementation has run this long (default 0.1)")
    parser.add_argument("--min-run-time", type=float, default=0.02, metavar="SECONDS",
                        help="a timed run repeats a fast step until it lasts this long (default 0.02)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory measurement")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output directory")
    args = parser.parse_args(argv)
    for flag in ("seq_lens", "batches", "hidden_sizes", "layers"):
        values = flatten(getattr(args, flag))
        if values is not None and (not values or min(values) < 1):
            parser.error(f"--{flag.replace('_', '-')} needs positive integers")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first warm-up run is the agreement check)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device on this machine")
    if args.device == "cuda" and "cuda" not in lstm_ext.compiled_backends():
        parser.error("--device cuda: lstm_ext was built without CUDA")
    if args.device == "cpu" and args.dtype in ("float16", "bfloat16"):
        parser.error(f"--dtype {args.dtype} runs on CUDA only (lstm_ext's CPU kernels are float32/float64)")
    return args


def settings_from_args(args: argparse.Namespace) -> Settings:
    base_grid = QUICK_GRID if args.quick else DEFAULT_GRID
    seq_lens = flatten(args.seq_lens) or base_grid["seq_lens"]
    batches = flatten(args.batches) or base_grid["batches"]
    hidden_sizes = flatten(args.hidden_sizes) or base_grid["hidden_sizes"]
    layers = flatten(args.layers) or [1]
    bidirectional = {"off": [False], "on": [True], "both": [False, True]}[args.bidirectional]
    customised = any(v is not None for v in (args.seq_lens, args.batches, args.hidden_sizes, args.layers))
    grid = ("quick" if args.quick else "default") + ("+custom" if customised else "")
    points = tuple(Point(h, layer_count, bi, t, b)
                   for h in hidden_sizes for layer_count in layers for bi in bidirectional
                   for t in seq_lens for b in batches)
    return Settings(grid=grid, points=points, modes=MODES if args.mode == "both" else (args.mode,),
                    device=torch.device(args.device), dtype=DTYPES[args.dtype],
                    repeats=args.repeats or base_grid["repeats"], max_time=args.max_time,
                    warmup=args.warmup, warmup_time=args.warmup_time, min_run_time=args.min_run_time,
                    measure_memory=not args.no_memory, show_progress=not args.no_progress, out_dir=args.out)


# --- timing --------------------------------------------------------------------------------------------

def run_timed(step: Step, calls: int, synchronize: Callable[[], None]) -> float:
    """Seconds per call of `step`, over `calls` back-to-back calls (device work included)."""
    synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        step()
    synchronize()
    return (time.perf_counter() - start) / calls


def warm_up(steps: dict[str, Step], first_run_seconds: dict[str, float], min_runs: int, min_seconds: float,
            synchronize: Callable[[], None]) -> dict[str, float]:
    """Untimed runs until each implementation has had min_runs runs (the first one already done) and
    spent min_seconds; returns each one's last run time.

    Counting time and not only runs matters for fast points: their first calls stay slow for a while
    (allocator growth, oneDNN primitive creation, sleeping OpenMP threads), and the last warm-up run is
    what sizes the timed runs.
    """
    last_seconds, spent_seconds, runs = dict(first_run_seconds), dict(first_run_seconds), 1
    while runs < min_runs or min(spent_seconds.values()) < min_seconds:
        for name, step in steps.items():
            last_seconds[name] = run_timed(step, 1, synchronize)
            spent_seconds[name] += last_seconds[name]
        runs += 1
    return last_seconds


def calls_per_run(seconds_per_call: dict[str, float], min_run_time: float) -> int:
    """Calls that make one timed run last at least min_run_time, for the faster implementation too."""
    return min(10_000, max(1, math.ceil(min_run_time / max(min(seconds_per_call.values()), 1e-9))))


def time_alternating(steps: dict[str, Step], repeats: int, max_seconds: float, calls: int,
                     synchronize: Callable[[], None]) -> dict[str, list[float]]:
    """Seconds per call for each implementation and run; the runs alternate between implementations.

    Up to `repeats` runs each; once the timed runs have taken max_seconds in all, timing stops after at
    least MIN_REPEATS runs each, so the largest points (seconds per step) do not dominate the sweep.
    """
    seconds = {name: [] for name in steps}
    started = time.perf_counter()
    # The cyclic garbage collector would fire at a random point of some run; the steps free everything by
    # reference counting, so it has nothing to do here. (No gc.collect() either: with torch loaded a full
    # collection costs about a tenth of a second, more than many whole measurements.)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for repeat in range(repeats):
            if repeat >= MIN_REPEATS and time.perf_counter() - started >= max_seconds:
                break
            for name, step in steps.items():
                seconds[name].append(run_timed(step, calls, synchronize))
    finally:
        if gc_was_enabled:
            gc.enable()
    return seconds


# --- peak memory ---------------------------------------------------------------------------------------

_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform.startswith("linux") else None


def cpu_peak_memory_supported() -> bool:
    return (_LIBC is not None and hasattr(_LIBC, "malloc_trim")
            and os.access("/proc/self/clear_refs", os.W_OK) and os.access("/proc/self/status", os.R_OK))


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise KeyError(field)


def peak_memory_bytes(step: Step, device: torch.device) -> int | None:
    """Peak memory of one call of `step` above what was in use just before it; None where unmeasurable.

    CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated before
    the step (the caching allocator's own count: the step's tensors, not the allocator's reserve).

    CPU: the peak increase of the process's resident set, measured in this process after the warm-up:
    - the kernel's high-water mark VmHWM is monotonic, but Linux (>= 4.0) resets it to the current RSS
      when "5" is written to /proc/self/clear_refs, so each step gets a fresh peak;
    - glibc keeps freed heap pages resident and would hand the step pages an earlier step (or the other
      implementation) already faulted in, making its growth invisible; malloc_trim(0) returns all free
      pages to the kernel first, so every page the step needs shows up in the peak; for the same reason
      lstm_ext.empty_cache() first returns the large buffers lstm_ext keeps for reuse;
    - not a forked child: torch's OpenMP (GNU libgomp) thread pool does not survive fork (the child hangs
      in its first parallel region), and a single-threaded child would measure another program.
    The number covers everything the step makes resident (tensors, saved activations, gradients, library
    scratch space), to page granularity; one-time costs such as first-call code paging stay out because
    the warm-up ran before. Other threads of the process must be idle, which they are here.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = step()
        torch.cuda.synchronize(device)
        del result
        return torch.cuda.max_memory_allocated(device) - before
    if not cpu_peak_memory_supported():
        return None
    lstm_ext.empty_cache()
    _LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = _proc_status_bytes("VmRSS")
    result = step()
    peak = _proc_status_bytes("VmHWM")
    del result
    return max(0, peak - before)


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated before the step"
    if cpu_peak_memory_supported():
        return ("peak resident-set increase of one step in this process after warm-up: lstm_ext.empty_cache(), "
                "malloc_trim(0), VmHWM reset via /proc/self/clear_refs, then VmHWM - VmRSS before the step")
    return "unavailable (needs Linux /proc/self/clear_refs and glibc malloc_trim)"


# --- one point -----------------------------------------------------------------------------------------

def measure_mode(point: Point, mode: str, steps: dict[str, Step], settings: Settings) -> dict:
    """One CSV row: check, warm up, time and (training) measure both implementations at one point."""
    synchronize = synchronizer(settings.device)
    # The agreement check is the first warm-up run.
    results, first_run_seconds = {}, {}
    for name, step in steps.items():
        synchronize()
        start = time.perf_counter()
        results[name] = step()
        synchronize()
        first_run_seconds[name] = time.perf_counter() - start
    try:
        agreement = assert_results_agree(results["ext"], results["torch"], settings.dtype)
    except AssertionError as error:
        raise AgreementError(f"lstm_ext and nn.LSTM disagree at {point.describe()} ({mode}), "
                             f"so it is not timed:\n{error}") from None
    del results

    last_warmup_seconds = warm_up(steps, first_run_seconds, settings.warmup, settings.warmup_time, synchronize)
    calls = calls_per_run(last_warmup_seconds, settings.min_run_time)
    seconds = time_alternating(steps, settings.repeats, settings.max_time, calls, synchronize)

    peak_mib = {name: None for name in steps}
    if mode == "train" and settings.measure_memory:
        for name, step in steps.items():
            peak = peak_memory_bytes(step, settings.device)
            peak_mib[name] = None if peak is None else round(peak / MIB, 2)

    ext_ms, torch_ms = (1e3 * statistics.median(seconds[name]) for name in IMPLEMENTATIONS)
    return {
        "device": settings.device.type,
        "dtype": dtype_name(settings.dtype),
        "input_size": point.input_size,
        "hidden_size": point.hidden_size,
        "num_layers": point.num_layers,
        "bidirectional": point.bidirectional,
        "seq_len": point.seq_len,
        "batch": point.batch,
        "mode": mode,
        "ext_median_ms": ext_ms,
        "torch_median_ms": torch_ms,
        "speedup": torch_ms / ext_ms,
        "ext_min_ms": 1e3 * min(seconds["ext"]),
        "torch_min_ms": 1e3 * min(seconds["torch"]),
        "repeats": len(seconds["ext"]),
        "calls_per_run": calls,
        "max_abs_diff": agreement["max_abs_diff"],
        "max_grad_rel_diff": agreement["max_grad_rel_diff"],
        "ext_peak_mem_mib": peak_mib["ext"],
        "torch_peak_mem_mib": peak_mib["torch"],
    }


def measure_point(point: Point, settings: Settings, progress: tqdm) -> list[dict]:
    modules = lstm_pair(point.input_size, point.hidden_size, point.num_layers, point.bidirectional,
                        device=settings.device, dtype=settings.dtype)
    x = lstm_input(point.seq_len, point.batch, point.input_size, device=settings.device, dtype=settings.dtype)
    rows = []
    for mode in settings.modes:
        progress.set_postfix_str(f"{point.describe()} {mode}")
        rows.append(measure_mode(point, mode, lstm_steps(modules, x, mode), settings))
        progress.update()
    return rows


# --- environment ---------------------------------------------------------------------------------------

def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cpu_model() -> str | None:
    """The CPU's model name, with its family and model numbers where /proc/cpuinfo has them: a
    virtual machine may name only the brand ("AMD EPYC"), and the numbers tell its generation."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:
                    break  # the first CPU is enough
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or None
    numbers = ", ".join(f"{k} {fields[k]}" for k in ("cpu family", "model") if k in fields)
    return f"{fields['model name']} ({numbers})" if numbers else fields["model name"]


def nn_lstm_backend(device: torch.device, dtype: torch.dtype) -> dict:
    """Which kernels nn.LSTM runs for this device and dtype.

    The rule: on the CPU nn.LSTM uses oneDNN (mkldnn) for float32 when torch has it and it is enabled,
    else ATen's native loop; on CUDA it uses cuDNN when available. `name` is what a small nn.LSTM
    actually did, read from its autograd graph (MkldnnRnnLayerBackward0, CudnnRnnBackward0, ...).
    """
    if device.type == "cuda":
        by_rule = "cuDNN" if torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled else "native"
    else:
        mkldnn_usable = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
        by_rule = "oneDNN (mkldnn)" if mkldnn_usable and dtype == torch.float32 else "native"

    probe = torch.nn.LSTM(4, 4, device=device, dtype=dtype)
    output, _ = probe(torch.zeros(2, 1, 4, device=device, dtype=dtype))
    node_names, visited, pending = set(), set(), [output.grad_fn]
    while pending:
        node = pending.pop()
        if node is not None and node not in visited:
            visited.add(node)
            node_names.add(type(node).__name__)
            pending.extend(next_node for next_node, _ in node.next_functions)
    observed, evidence = "native", None
    for marker, backend in (("Mkldnn", "oneDNN (mkldnn)"), ("Cudnn", "cuDNN"), ("Miopen", "MIOpen")):
        evidence = next((name for name in sorted(node_names) if marker in name), None)
        if evidence:
            observed = backend
            break
    return {"name": observed, "by_rule": by_rule, "evidence": evidence or "no fused RNN node in the autograd graph"}


def parallel_backend() -> str | None:
    """ATen's intra-op thread pool ("OpenMP" or "native thread pool"), from torch's parallel info."""
    for line in torch.__config__.parallel_info().splitlines():
        if line.startswith("ATen parallel backend:"):
            return line.split(":", 1)[1].strip()
    return None


def describe_environment(device: torch.device, dtype: torch.dtype) -> dict:
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cpus = None
    environment = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_parallel_backend": parallel_backend(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "nn_lstm_backend": nn_lstm_backend(device, dtype),
        "lstm_ext_version": lstm_ext.__version__,
        "lstm_ext_compiled_backends": list(lstm_ext.compiled_backends()),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "lstm_ext_cpu_kernels": lstm_ext.cpu_kernels(),
        "lstm_ext_path": str(Path(lstm_ext.__file__).resolve().parent),
        "memory_method": memory_method(device),
    }
    if device.type == "cuda":
        environment.update(cuda_device=torch.cuda.get_device_name(device), torch_cuda_version=torch.version.cuda,
                           cudnn_version=torch.backends.cudnn.version())
    return environment


class OtherProcessesCpuMeter:
    """How much CPU other processes took while the sweep ran, in cores on average.

    The system's busy time (/proc/stat, including time a hypervisor stole for other guests) minus this
    process's own CPU time, over the wall time. On two
    cores even one busy neighbour distorts timings badly (OpenMP threads wait on each other's time
    slices), so the sweep reports this next to its results instead of leaving the reader to guess.
    """

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as stat:
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, stat.readline().split()[1:9])
        except (OSError, ValueError):
            return None
        own = os.times()
        busy_seconds = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        return busy_seconds, own.user + own.system, time.monotonic()

    def cores_used_by_others(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None or end[2] <= self.start[2]:
            return None
        others = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return max(0.0, others / (end[2] - self.start[2]))


# --- output --------------------------------------------------------------------------------------------

def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def format_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def format_optional(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def lstm_shape(row: dict) -> tuple[int, int, bool]:
    """What the rows of one printed table and one plot panel column share."""
    return row["hidden_size"], row["num_layers"], row["bidirectional"]


def modes_present(rows: list[dict]) -> list[str]:
    return [mode for mode in MODES if any(row["mode"] == mode for row in rows)]


def print_table(rows: list[dict], environment: dict, file=sys.stdout) -> None:
    """One table per LSTM shape; a line per (T, B) with both modes side by side."""
    by_point = {}  # (shape, T, B) -> {mode: row}
    for row in rows:
        by_point.setdefault((lstm_shape(row), row["seq_len"], row["batch"]), {})[row["mode"]] = row
    modes = modes_present(rows)

    first = rows[0]
    for shape in sorted({lstm_shape(row) for row in rows}):
        hidden_size, num_layers, bidirectional = shape
        print(f"\nlstm_ext vs nn.LSTM: {first['device']} {first['dtype']}, H=I={hidden_size}, "
              f"{num_layers} layer{'s' if num_layers > 1 else ''}, {'bi' if bidirectional else 'uni'}directional; "
              f"nn.LSTM on {environment['nn_lstm_backend']['name']}, "
              f"{environment['torch_num_threads']} threads; times in ms per step, speedup = nn.LSTM / lstm_ext",
              file=file)
        header = f"{'T':>6} {'B':>5}"
        for mode in modes:
            header += f" | {mode + ' lstm_ext':>15} {'nn.LSTM':>9} {'speedup':>7}"
        if "train" in modes:
            header += f" | {'train MiB ext':>13} {'nn.LSTM':>8}"
        header += f" | {'max|diff|':>9}"
        print(header, file=file)
        print("-" * len(header), file=file)
        for key in sorted(key for key in by_point if key[0] == shape):
            _, seq_len, batch = key
            line = f"{seq_len:>6} {batch:>5}"
            for mode in modes:
                row = by_point[key][mode]
                line += (f" | {format_ms(row['ext_median_ms']):>15} {format_ms(row['torch_median_ms']):>9} "
                         f"{row['speedup']:>6.2f}x")
            if "train" in modes:
                row = by_point[key]["train"]
                line += (f" | {format_optional(row['ext_peak_mem_mib'], '.1f'):>13} "
                         f"{format_optional(row['torch_peak_mem_mib'], '.1f'):>8}")
            line += f" | {max(r['max_abs_diff'] for r in by_point[key].values()):>9.1e}"
            print(line, file=file)


def warn_if_distorted(others: float | None, environment: dict, run: str) -> None:
    """A warning on stderr where other processes used more than a quarter of a CPU on average during `run`."""
    if others is not None and others > 0.25:
        print(f"warning: other processes used {others:.1f} of {environment['usable_cpus']} CPUs on average during "
              f"{run}; these timings are distorted, rerun on a quiet machine", file=sys.stderr)


def write_csv(path: Path, rows: list[dict], environment: dict, settings: dict) -> None:
    """Plain CSV after '#' comment lines with the machine and settings (pandas: read_csv(path, comment='#'))."""
    backend = environment["nn_lstm_backend"]
    comments = [
        f"lstm_ext vs torch.nn.LSTM sweep, {utc_now()}",
        f"machine: {environment['platform']}; cpu: {environment['cpu_model']}; cpus: {environment['cpu_count']} "
        f"(usable {environment['usable_cpus']})",
        f"torch {environment['torch_version']}, {environment['torch_num_threads']} threads; "
        f"nn.LSTM backend: {backend['name']} ({backend['evidence']})",
        f"lstm_ext {environment['lstm_ext_version']}, "
        f"compiled backends: {','.join(environment['lstm_ext_compiled_backends'])}, "
        f"CPU kernels: {environment['lstm_ext_cpu_kernels']} (ATen's CPU capability: "
        f"{environment['torch_cpu_capability']})",
        f"settings: {json.dumps(settings)}",
        f"peak memory: {environment['memory_method']}",
        f"CPU cores used by other processes during the sweep (average): "
        f"{environment['other_processes_cpu_cores_during_sweep']}",
        "speedup = torch_median_ms / ext_median_ms; full metadata in sweep.json",
    ]
    with open(path, "w", newline="") as file:
        file.writelines(f"# {comment}\n" for comment in comments)
        writer = csv.DictWriter(file, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})


def write_json(path: Path, rows: list[dict], environment: dict, settings: dict, arguments: list[str],
               elapsed_s: float) -> None:
    document = {
        "created_utc": utc_now(),
        "arguments": arguments,
        "elapsed_s": round(elapsed_s, 1),
        "environment": environment,
        "settings": settings,
        "columns": COLUMNS,
        "results": rows,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


SPEEDUP_TICKS = [1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.25, 1.5, 2, 3, 4, 6, 8,
                 16, 32, 64]


def plot_speedups(path: Path, rows: list[dict], environment: dict) -> None:
    """Speedup vs T, one line per B; a panel per mode (rows) and LSTM shape (columns); 1.0 dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullLocator

    modes = modes_present(rows)
    shapes = sorted({lstm_shape(row) for row in rows})
    figure, axes = plt.subplots(len(modes), len(shapes), figsize=(5.2 * len(shapes), 3.8 * len(modes)),
                                squeeze=False, sharex=True)
    for mode_index, mode in enumerate(modes):
        for shape_index, shape in enumerate(shapes):
            hidden_size, num_layers, bidirectional = shape
            ax = axes[mode_index][shape_index]
            panel = [row for row in rows if row["mode"] == mode and lstm_shape(row) == shape]
            for batch in sorted({row["batch"] for row in panel}):
                line = sorted((row["seq_len"], row["speedup"]) for row in panel if row["batch"] == batch)
                ax.plot([t for t, _ in line], [s for _, s in line], marker="o", label=f"B={batch}")
            ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
            seq_lens = sorted({row["seq_len"] for row in panel})
            ax.set_xscale("log", base=2)
            ax.set_xticks(seq_lens, [str(t) for t in seq_lens])
            # Speedups are ratios: on a log axis 0.5x and 2x sit symmetrically around the 1.0 line.
            speedups = [row["speedup"] for row in panel] + [1.0]
            low, high = min(speedups) / 1.15, max(speedups) * 1.15
            ax.set_yscale("log")
            ax.set_ylim(low, high)
            ax.set_yticks([tick for tick in SPEEDUP_TICKS if low <= tick <= high])
            ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}x"))
            ax.yaxis.set_minor_locator(NullLocator())
            shape = f"H=I={hidden_size}" + (f", {num_layers} layers" if num_layers > 1 else "") \
                + (", bidirectional" if bidirectional else "")
            ax.set_title(f"{MODE_LABELS[mode]}, {shape}")
            if mode_index == len(modes) - 1:
                ax.set_xlabel("sequence length T")
            ax.set_ylabel("speedup = nn.LSTM time / lstm_ext time")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
    first = rows[0]
    figure.suptitle(f"lstm_ext vs nn.LSTM on {environment['nn_lstm_backend']['name']}, {first['device']} "
                    f"{first['dtype']}\ntorch {environment['torch_version']}, {environment['torch_num_threads']} "
                    f"threads, {environment['cpu_model']}", fontsize="medium")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# --- main ----------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Runs the sweep; returns the paths written, {"csv": ..., "json": ..., "png": ...}."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(arguments)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_from_args(args)
    environment = describe_environment(settings.device, settings.dtype)
    print(f"Sweeping {len(settings.points)} points × {len(settings.modes)} mode{'s' * (len(settings.modes) > 1)} "
          f"on {settings.device.type} "
          f"{dtype_name(settings.dtype)} ({environment['torch_num_threads']} threads; nn.LSTM on "
          f"{environment['nn_lstm_backend']['name']}; lstm_ext {environment['lstm_ext_version']}, "
          f"{environment['lstm_ext_cpu_kernels']} CPU kernels)",
          file=sys.stderr)

    started = time.perf_counter()
    contention = OtherProcessesCpuMeter()
    rows = []
    with tqdm(total=len(settings.points) * len(settings.modes), desc="sweep", unit="run", file=sys.stderr,
              disable=not settings.show_progress, dynamic_ncols=True) as progress:
        for point in settings.points:
            rows.extend(measure_point(point, settings, progress))
    elapsed = time.perf_counter() - started
    others = contention.cores_used_by_others()
    environment["other_processes_cpu_cores_during_sweep"] = None if others is None else round(others, 2)

    print_table(rows, environment)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: settings.out_dir / f"{OUTPUT_STEM}.{kind}" for kind in ("csv", "json", "png")}
    settings_json = settings.as_json()
    write_csv(paths["csv"], rows, environment, settings_json)
    write_json(paths["json"], rows, environment, settings_json, arguments, elapsed)
    plot_speedups(paths["png"], rows, environment)
    print(f"\n{len(rows)} measurements in {elapsed:.0f} s; wrote {', '.join(str(p) for p in paths.values())}")
    warn_if_distorted(others, environment, "the sweep")
    return paths


if __name__ == "__main__":
    try:
        main()
    except AgreementError as error:
        sys.exit(f"sweep stopped: {error}")
