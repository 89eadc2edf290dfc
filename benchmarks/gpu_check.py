#!/usr/bin/env python
"""lstm_ext on a real NVIDIA GPU in one command (`make gpu-check`), in about 10 minutes at most:

0. preflight: read the GPU's compute capability and check what the build needs (a CUDA GPU, a CUDA build
   of torch, nvcc of torch's CUDA major version that can compile for that GPU); without them it refuses
   and runs nothing;
1. build: `pip install -e .` with FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=<that GPU's capability only>,
   MAX_JOBS=<the usable cores>;
2. verify: the module that got built has the CUDA backend and device code for that GPU, and runs;
3. tests: `python -m pytest tests` (every device-parametrized test then runs on CUDA too), counted from
   its JUnit XML;
4. sweep: `benchmarks/sweep.py --quick --device cuda`, lstm_ext against nn.LSTM on cuDNN (if it stops on
   a disagreement, once more with NVIDIA_TF32_OVERRIDE=0, cuDNN in full float32, in the time left);
5. recurrence: lstm_ext with LSTM_EXT_CUDA_RECURRENCE=persistent and =alternating against nn.LSTM (cuDNN),
   T=256, B {1, 8, 32, 64} x H {256, 512, 1024}, float32 and bfloat16, inference and training step, with
   the cost model's predicted ratios (benchmarks/cost_model.py) beside the measured ones;
6. report: gpu-check/<UTC time>/report.md, with every step's raw output beside it.

Every step runs under a timeout (its cap, cut where needed so that the later steps keep their reserve,
all within BUDGET_S), so a hang costs only its own step; a step learns its timeout from the environment
variable GPU_CHECK_STEP_TIMEOUT_S (the recurrence benchmark stops itself before it). A failing test does not
stop the sweep; a failed build stops the rest. Exit status: 0 when the build, the tests, the sweep and the
recurrence benchmark all passed (persistent measurements that are "n/a" do not fail it; a persistent path
that disagrees with the alternating one does), 1 when one failed or timed out, 2 when the preflight refused.

    python benchmarks/gpu_check.py                          # the whole check (make gpu-check)
    python benchmarks/gpu_check.py --dry-run --capability 9.0 --jobs 16   # the plan only, nothing is run

This file imports neither torch nor lstm_ext at module level, so the plan and the report can be computed
(and tested) anywhere; the steps that need torch run as child processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cost_model  # noqa: E402  (plain Python: the predicted ratios beside the measured ones)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
REPORT_ROOT = ROOT / "gpu-check"

BUDGET_S = 570  # all steps; 30 s of the 10 minutes are left for a killed step's grace time and the report
GRACE_S = 15  # a timed-out step gets SIGINT (pytest then still writes its JUnit XML), SIGKILL after this
MIN_STEP_S = 20  # a step left with less time than this is skipped, not started
UNSET = None  # an env value that removes the variable from the child's environment

# Environment variables that would make the build or the tests use something else than this check builds.
REMOVED_VARIABLES = ("FORCE_CPU",  # wins over FORCE_CUDA in lstm_ext/_build.py: the build would be CPU-only
                     "LSTM_EXT_LIBRARY")  # lstm_ext/_library.py would load that library instead of the build

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2
PROBE_TAG, VERIFY_TAG = "GPU_CHECK_PROBE ", "GPU_CHECK_VERIFY "
STEP_TIMEOUT_VARIABLE = "GPU_CHECK_STEP_TIMEOUT_S"  # each step's timeout, in its environment

# The recurrence stage: the cost model's grid, timed on the GPU.
RECURRENCE_VARIABLE = "LSTM_EXT_CUDA_RECURRENCE"  # read by the op on every call (std::getenv)
RECURRENCE_SEQ_LEN = 256
RECURRENCE_BATCHES = cost_model.GRID_BATCHES
RECURRENCE_HIDDEN = cost_model.GRID_HIDDEN
RECURRENCE_DTYPES = cost_model.DTYPES
RECURRENCE_MODES = cost_model.MODES
RECURRENCE_IMPLEMENTATIONS = ("persistent", "alternating", "nn.LSTM")
RECURRENCE_REPEATS = 5  # timed runs per implementation at most
RECURRENCE_MIN_RUN_S = 0.01  # a timed run repeats the call until it lasts this long
RECURRENCE_MARGIN_S = 10  # stop this long before the step's timeout: the JSON is written, the process exits
CUDA_FAULT = re.compile(r"CUDA error|cudaError|illegal memory access|device-side assert|unspecified launch failure",
                        re.I)
PERSISTENT_KERNELS = {"infer": ("lstm_persistent_forward_kernel",),
                      "train": ("lstm_persistent_forward_kernel", "lstm_persistent_backward_kernel")}


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    what: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str | None], ...]  # overrides of the inherited environment; None unsets
    cap_s: int  # the most this step may take
    reserve_s: int  # what earlier steps must leave for this one
    log: str  # file name in the report folder
    only_if: str = ""  # a condition, for the conditional step

    def command_line(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env if v is not None)
        unset = " ".join(f"-u {k}" for k, v in self.env if v is None)
        prefix = "env " + " ".join(part for part in (unset, env) if part) + " " if self.env else ""
        return prefix + " ".join(shlex.quote(_short(a)) for a in self.argv)


@dataclasses.dataclass
class StepResult:
    name: str
    status: str  # ok, failed, timed out, skipped
    seconds: float = 0.0
    timeout_s: float | None = None
    returncode: int | None = None
    note: str = ""
    log: str = ""


def _short(arg: str) -> str:
    """Paths under the repository as relative paths, so that the printed plan reads as typed in its root."""
    option, equals, value = arg.partition("=")
    if equals and option.startswith("--"):
        return f"{option}={_short(value)}"
    try:
        path = Path(arg)
        if path.is_absolute() and path.is_relative_to(ROOT):
            return str(path.relative_to(ROOT)) or "."
    except (ValueError, OSError):
        pass
    return arg


# --- the plan ------------------------------------------------------------------------------------------

def parse_capability(text: str) -> tuple[int, int]:
    """"9.0" -> (9, 0). Also takes torch's tuple printed as "(9, 0)" or "9,0"."""
    match = re.fullmatch(r"\(?\s*(\d+)\s*[.,]\s*(\d+)\s*\)?", text.strip())
    if not match:
        raise ValueError(f"a compute capability is MAJOR.MINOR, e.g. 9.0 (not {text!r})")
    return int(match.group(1)), int(match.group(2))


def arch_list(capability: tuple[int, int]) -> str:
    """TORCH_CUDA_ARCH_LIST for exactly this GPU: (9, 0) -> "9.0" (nvcc: compute_90, code sm_90)."""
    return f"{capability[0]}.{capability[1]}"


def sm_name(capability: tuple[int, int]) -> str:
    return f"sm_{capability[0]}{capability[1]}"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def build_env(capability: tuple[int, int], jobs: int) -> tuple[tuple[str, str | None], ...]:
    return (("FORCE_CUDA", "1"), ("TORCH_CUDA_ARCH_LIST", arch_list(capability)), ("MAX_JOBS", str(jobs)),
            *((name, UNSET) for name in REMOVED_VARIABLES))


def make_plan(capability: tuple[int, int], jobs: int, python: str, report_dir: Path) -> list[Step]:
    """The steps in order; every child gets PYTHONUNBUFFERED=1 (logs complete up to a kill). The conditional
    sweep-tf32-off runs right after the sweep, before the recurrence stage."""
    env = build_env(capability, jobs)
    cap = arch_list(capability)
    return [
        Step("preflight", "GPU, capability, torch/CUDA/cuDNN, nvcc; refuse if anything is missing",
             (python, str(SCRIPT), "--probe"), (), 60, 0, "preflight.json"),
        Step("build", f"build lstm_ext for {sm_name(capability)} only",
             (python, "-m", "pip", "install", "--disable-pip-version-check", "--no-build-isolation", "--no-deps",
              "-v", "-e", str(ROOT)), env, 240, 0, "build.log"),
        Step("verify", f"the module has the CUDA backend and {sm_name(capability)} code, and runs on the GPU",
             (python, str(SCRIPT), "--verify-build", cap), env, 60, 30, "verify.log"),
        Step("tests", "the whole test suite, CUDA-parametrized tests on the GPU",
             (python, "-m", "pytest", str(ROOT / "tests"), "-v", "-o", "junit_family=xunit1",
              f"--junitxml={report_dir / 'pytest.xml'}"), env, 330, 120, "pytest.log"),
        Step("sweep", "quick sweep, lstm_ext vs nn.LSTM (cuDNN) on CUDA, float32",
             (python, str(ROOT / "benchmarks" / "sweep.py"), "--quick", "--device", "cuda", "--no-progress",
              "--out", str(report_dir / "sweep")), env, 120, 60, "sweep.log"),
        Step("sweep-tf32-off", "the sweep again with cuDNN kept off TF32 tensor cores",
             (python, str(ROOT / "benchmarks" / "sweep.py"), "--quick", "--device", "cuda", "--no-progress",
              "--out", str(report_dir / "sweep-tf32-off")), env + (("NVIDIA_TF32_OVERRIDE", "0"),), 120, 0,
             "sweep-tf32-off.log", only_if="the sweep stopped because lstm_ext and nn.LSTM disagree"),
        Step("recurrence", f"{RECURRENCE_VARIABLE}=persistent vs =alternating vs nn.LSTM (cuDNN): "
                           f"T={RECURRENCE_SEQ_LEN}, B {_listed(RECURRENCE_BATCHES)} x H {_listed(RECURRENCE_HIDDEN)}, "
                           f"{' and '.join(RECURRENCE_DTYPES)}, inference and training step, beside the cost "
                           f"model's ratios; it stops itself {RECURRENCE_MARGIN_S} s before its timeout",
             (python, str(SCRIPT), "--time-recurrence", str(report_dir / "recurrence")),
             env + ((RECURRENCE_VARIABLE, UNSET),), 120, 60, "recurrence.log"),
    ]


def _listed(values) -> str:
    return "{" + ", ".join(str(v) for v in values) + "}"


def step_labels(steps: list[Step]) -> list[str]:
    """"0.", "1.", ..., a conditional step numbered after the step before it: "4b."."""
    labels, number = [], -1
    for step in steps:
        if step.only_if:
            labels.append(f"{number}b.")
        else:
            number += 1
            labels.append(f"{number}.")
    return labels


def step_timeout(steps: list[Step], index: int, elapsed_s: float, budget_s: float = BUDGET_S) -> float:
    """Step `index`'s timeout when it starts `elapsed_s` into the run: its cap, cut to leave every later
    unconditional step its reserve within the budget."""
    later = sum(s.reserve_s for s in steps[index + 1:] if not s.only_if)
    return max(0.0, min(steps[index].cap_s, budget_s - elapsed_s - later))


def worst_case_schedule(steps: list[Step], budget_s: float = BUDGET_S) -> list[tuple[str, float, float]]:
    """(name, start, timeout) if every unconditional step ran to its timeout: the budget fits or not."""
    schedule, elapsed = [], 0.0
    for index, step in enumerate(steps):
        if step.only_if:
            continue
        timeout = step_timeout(steps, index, elapsed, budget_s)
        schedule.append((step.name, elapsed, timeout))
        elapsed += timeout
    return schedule


def format_plan(steps: list[Step], capability: tuple[int, int], capability_source: str, jobs: int,
                report_dir: Path) -> str:
    env = dict(build_env(capability, jobs))
    lines = [
        "gpu-check plan",
        f"  GPU capability  {arch_list(capability)} ({capability_source})",
        f"  build with      FORCE_CUDA={env['FORCE_CUDA']} TORCH_CUDA_ARCH_LIST={env['TORCH_CUDA_ARCH_LIST']} "
        f"MAX_JOBS={env['MAX_JOBS']} (device code {sm_name(capability)} only); unset: {', '.join(REMOVED_VARIABLES)}",
        f"  interpreter     {steps[0].argv[0]}",
        f"  report          {_short(str(report_dir / 'report.md'))} (raw files beside it)",
        f"  time budget     {BUDGET_S} s for all steps: a step's timeout is its cap, cut to leave the later steps "
        f"their reserve; on timeout SIGINT, SIGKILL {GRACE_S} s later",
        "",
    ]
    schedule = {name: (start, timeout) for name, start, timeout in worst_case_schedule(steps)}
    for label, step in zip(step_labels(steps), steps):
        if step.only_if:
            limits = (f"only if {step.only_if}; timeout: the time left less the later steps' reserve, at most "
                      f"{step.cap_s} s")
        else:
            start, timeout = schedule[step.name]
            limits = (f"cap {step.cap_s} s, reserve {step.reserve_s} s; worst case starts at +{start:.0f} s "
                      f"with timeout {timeout:.0f} s")
        lines.append(f"  {label:<4}{step.name:<15}{step.what}")
        lines.append(f"      {limits}; output -> {step.log}")
        lines.append(f"      $ {step.command_line()}")
    end = sum(timeout for _, _, timeout in worst_case_schedule(steps))
    report_label = f"{sum(1 for s in steps if not s.only_if)}."
    lines.append(f"  {report_label:<4}{'report':<15}{_short(str(report_dir / 'report.md'))}, "
                 f"also when every step ran to its timeout: by +{end:.0f} s (+{GRACE_S} s grace)")
    return "\n".join(lines)


# --- preflight (runs in a child: python gpu_check.py --probe) -----------------------------------------

def _run_quiet(argv: list[str], timeout: float = 30) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout + done.stderr) if done.returncode == 0 else None


def _load_build_module():
    spec = importlib.util.spec_from_file_location("lstm_ext_build", ROOT / "lstm_ext" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def probe() -> dict:
    """What the machine has: the GPU, torch and its CUDA/cuDNN, the toolkit lstm_ext's build would use."""
    import platform

    import torch

    info = {
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn_version": None,
        "cuda_available": False,
        "device_count": 0,
        "gpu_name": None,
        "capability": None,
        "gpu_memory_gib": None,
        "torch_arch_list": [],
        "cpu_cores": usable_cores(),
        "cuda_home": None,
        "nvcc_version": None,
        "nvcc_gpu_codes": [],
        "driver_version": None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    try:
        info["cuda_available"] = torch.cuda.is_available()
        if info["cuda_available"]:
            info["device_count"] = torch.cuda.device_count()
            properties = torch.cuda.get_device_properties(0)
            info["gpu_name"] = properties.name
            info["capability"] = list(torch.cuda.get_device_capability(0))
            info["gpu_memory_gib"] = round(properties.total_memory / 2 ** 30, 1)
            info["torch_arch_list"] = torch.cuda.get_arch_list()
            info["cudnn_version"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception as error:  # a broken driver: report it as the reason, do not crash the probe
        info["cuda_error"] = f"{type(error).__name__}: {error}"
        info["cuda_available"] = False
    cuda_home = _load_build_module().find_cuda_home()  # the toolkit setup.py will build with
    info["cuda_home"] = cuda_home
    if cuda_home:
        nvcc = os.path.join(cuda_home, "bin", "nvcc")
        version = _run_quiet([nvcc, "--version"])
        match = re.search(r"release (\d+\.\d+)", version or "")
        info["nvcc_version"] = match.group(1) if match else None
        codes = _run_quiet([nvcc, "--list-gpu-code"])
        info["nvcc_gpu_codes"] = sorted(set(re.findall(r"\bsm_\w+", codes or "")))
    if shutil.which("nvidia-smi"):
        driver = _run_quiet(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], timeout=20)
        info["driver_version"] = driver.strip().splitlines()[0] if driver and driver.strip() else None
    return info


def prerequisite_problems(info: dict) -> list[str]:
    """Why the check cannot run here, one sentence each; empty when it can."""
    problems = []
    if not info.get("torch_cuda"):
        problems.append(f"torch {info.get('torch_version')} is a CPU-only build (torch.version.cuda is None): "
                        "install a CUDA build of torch")
    elif not info.get("cuda_available"):
        reason = info.get("cuda_error") or "torch.cuda.is_available() is False"
        visible = info.get("cuda_visible_devices")
        where = f"torch {info.get('torch_version')}, CUDA {info.get('torch_cuda')}" + (
            f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "")
        problems.append(f"no CUDA GPU: {reason} ({where}); run this on a machine with an NVIDIA GPU")
    if not info.get("cuda_home"):
        problems.append("no CUDA toolkit: nvcc was not found (CUDA_HOME, CUDA_PATH, nvcc on PATH, /usr/local/cuda)")
    else:
        nvcc, torch_cuda = info.get("nvcc_version"), info.get("torch_cuda")
        if nvcc and torch_cuda and nvcc.split(".")[0] != torch_cuda.split(".")[0]:
            problems.append(f"nvcc is CUDA {nvcc} but torch was built with CUDA {torch_cuda}: "
                            "torch.utils.cpp_extension refuses a different major version")
        if info.get("capability") and info.get("nvcc_gpu_codes"):
            wanted = sm_name(tuple(info["capability"]))
            if wanted not in info["nvcc_gpu_codes"]:
                problems.append(f"this nvcc ({nvcc}) cannot compile for the GPU's {wanted} "
                                f"(nvcc --list-gpu-code: {' '.join(info['nvcc_gpu_codes'])})")
    return problems


# --- verify the build (runs in a child: python gpu_check.py --verify-build 9.0) ------------------------

def verify_build(capability: tuple[int, int]) -> dict:
    """The module the tests will import: CUDA compiled in, device code for exactly this GPU, and a small
    bidirectional 2-layer LSTM on the GPU equal to nn.LSTM (float64, no TF32)."""
    import torch

    import lstm_ext
    from lstm_ext import _build, _ops

    result = {"problems": [], "warnings": []}
    result["compiled_backends"] = list(lstm_ext.compiled_backends())
    module_file = getattr(_ops._C, "__file__", None)
    result["module"] = module_file
    result["module_mtime"] = os.path.getmtime(module_file) if module_file else None
    result["module_mtime_utc"] = (datetime.datetime.fromtimestamp(os.path.getmtime(module_file), datetime.timezone.utc)
                                  .isoformat(timespec="seconds") if module_file else None)
    if "cuda" not in result["compiled_backends"]:
        result["problems"].append("the module was built without CUDA")
    cuda_home = _build.find_cuda_home()
    cuobjdump = os.path.join(cuda_home, "bin", "cuobjdump") if cuda_home else shutil.which("cuobjdump")
    result["device_code"] = None
    if module_file and cuobjdump and os.path.isfile(cuobjdump):
        listing = _run_quiet([cuobjdump, "--list-elf", module_file], timeout=60)
        if listing is not None:
            result["device_code"] = sorted(set(re.findall(r"\.(sm_\w+?)\.cubin", listing)))
            if result["device_code"] != [sm_name(capability)]:
                result["problems"].append(f"device code in the module is {result['device_code']}, "
                                          f"not [{sm_name(capability)!r}]")
    if "cuda" in result["compiled_backends"]:
        try:
            torch.manual_seed(0)
            kwargs = dict(num_layers=2, bidirectional=True, device="cuda", dtype=torch.float64)
            reference = torch.nn.LSTM(8, 16, **kwargs)
            fused = lstm_ext.LSTM(8, 16, **kwargs)
            fused.load_state_dict(reference.state_dict())
            x = torch.randn(7, 3, 8, device="cuda", dtype=torch.float64)
            (out, (h, c)), (ref_out, (ref_h, ref_c)) = fused(x), reference(x)
            diff = max((a - b).abs().max().item() for a, b in ((out, ref_out), (h, ref_h), (c, ref_c)))
            result["smoke_max_abs_diff_float64"] = diff
            if not diff <= 1e-9:
                result["warnings"].append(f"the smoke test's outputs differ from nn.LSTM by {diff:.2e} (float64)")
        except Exception as error:
            result["problems"].append(f"lstm_ext.LSTM failed on the GPU: {type(error).__name__}: {error}")
    return result


# --- the recurrence paths (runs in a child: python gpu_check.py --time-recurrence DIR) ------------------

def recurrence_points() -> list[tuple[int, int, str]]:
    """(batch, hidden, dtype) in the order they are timed: the small batches, where the persistent kernel is
    predicted to matter most, first, so that a run cut short still has them."""
    return [(b, h, d) for b in RECURRENCE_BATCHES for h in RECURRENCE_HIDDEN for d in RECURRENCE_DTYPES]


def measurement_budget(seconds_left: float, measurements_left: int) -> float:
    """Seconds of timed runs one measurement may take: the time left shared evenly, a third of it for the timed
    runs (the rest: first calls, the path check, warm-up)."""
    return max(0.0, seconds_left) / max(1, measurements_left) / 3


def unavailable_reason(error: BaseException) -> str:
    """"n/a (...)"'s reason: the RuntimeError's first line, without the C++ source location torch appends."""
    text = _first_line(str(error), 240)
    return re.sub(r"\s*\(?Exception raised from .*$", "", text) or type(error).__name__


def predicted_ratios(batch: int, hidden: int, dtype: str, mode: str, gpu_name: str | None) -> dict:
    gpu = cost_model.GPUS["h200" if gpu_name and "H200" in gpu_name else "h100"]
    p = cost_model.predict(batch, hidden, dtype, mode, RECURRENCE_SEQ_LEN, gpu)
    return {"gpu_model": gpu.name, "persistent_over_alternating": round(p.ratio("persistent", "alternating"), 4),
            "persistent_over_cudnn": round(p.ratio("persistent", "cudnn"), 4)}


def time_recurrence(out_dir: Path, timeout_s: float | None, device: str = "cuda") -> dict:
    """Times LSTM_EXT_CUDA_RECURRENCE=persistent and =alternating (one lstm_ext module, the variable set before
    each call: the op reads it per call) against nn.LSTM over the cost model's grid; writes
    out_dir/recurrence.json after every point. The persistent path counts only where the profiler saw its
    kernels run; a RuntimeError of the persistent path is recorded as "n/a (reason)". `device` "cpu" runs
    the same procedure where no GPU is (the tests: no persistent kernel ever runs there)."""
    started = time.monotonic()
    deadline = started + (timeout_s - RECURRENCE_MARGIN_S if timeout_s else 600)
    import torch

    import lstm_ext
    sys.path.insert(0, str(SCRIPT.parent))
    from lstm_workloads import assert_results_agree, lstm_input, lstm_pair, lstm_steps, synchronizer
    from sweep import calls_per_run, run_timed, time_alternating, warm_up

    out_dir.mkdir(parents=True, exist_ok=True)
    gpu_name = torch.cuda.get_device_name(0) if device == "cuda" else f"none ({device})"
    document = {
        "environment": {"gpu": gpu_name, "torch": torch.__version__, "cuda": torch.version.cuda,
                        "cudnn_version": torch.backends.cudnn.version() if device == "cuda" else None,
                        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                        "lstm_ext_has_cuda_recurrence": hasattr(lstm_ext, "cuda_recurrence")},
        "settings": {"seq_len": RECURRENCE_SEQ_LEN, "repeats": RECURRENCE_REPEATS,
                     "min_run_s": RECURRENCE_MIN_RUN_S, "timeout_s": timeout_s},
        "rows": [], "not_run": [], "complete": False,
    }
    path = out_dir / "recurrence.json"

    def save():
        document["seconds"] = round(time.monotonic() - started, 1)
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(document, indent=2) + "\n")
        scratch.replace(path)

    synchronize = synchronizer(device)
    previous = os.environ.get(RECURRENCE_VARIABLE)

    def with_recurrence(value, step):
        def run():
            os.environ[RECURRENCE_VARIABLE] = value
            return step()
        return run

    def persistent_kernels_seen(step) -> tuple[list[str] | None, object, str]:
        """(the lstm_persistent_* kernels one call launched, its result, a note if the profiler failed)."""
        try:
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CUDA]) as trace:
                result = step()
                synchronize()
            names = {event.name for event in trace.events()}
            return sorted({k for k in PERSISTENT_KERNELS["train"] for name in names if k in name}), result, ""
        except RuntimeError:
            raise
        except Exception as error:  # no CUPTI: time anyway, say the path was not checked
            return None, step(), f"path not checked (profiler: {type(error).__name__}: {_first_line(str(error))})"

    points = [(b, h, d, m) for b, h, d in recurrence_points() for m in RECURRENCE_MODES]
    alternating_checked = set()
    try:
        for index, (batch, hidden, dtype_name, mode) in enumerate(points):
            if index % len(RECURRENCE_MODES) == 0:
                dtype = getattr(torch, dtype_name)
                modules = lstm_pair(hidden, hidden, device=device, dtype=dtype)
                x = lstm_input(RECURRENCE_SEQ_LEN, batch, hidden, device=device, dtype=dtype)
            measurements_left = (len(points) - index) * len(RECURRENCE_IMPLEMENTATIONS)
            if time.monotonic() > deadline - 2.0:
                document["not_run"] = [dict(zip(("batch", "hidden", "dtype", "mode"), p)) for p in points[index:]]
                break
            base = lstm_steps(modules, x, mode)
            steps = {"persistent": with_recurrence("persistent", base["ext"]),
                     "alternating": with_recurrence("alternating", base["ext"]), "nn.LSTM": base["torch"]}
            row = {"batch": batch, "hidden": hidden, "dtype": dtype_name, "mode": mode,
                   "seq_len": RECURRENCE_SEQ_LEN, "median_ms": {}, "min_ms": {}, "runs": {}, "unavailable": {},
                   "disagreement": {}, "max_abs_diff_vs_alternating": {}, "notes": [],
                   "predicted": predicted_ratios(batch, hidden, dtype_name, mode, gpu_name)}
            results, first_seconds = {}, {}
            for name in RECURRENCE_IMPLEMENTATIONS:
                step = steps[name]
                try:
                    if name == "persistent" or (name == "alternating" and (dtype_name, mode) not in alternating_checked):
                        kernels, results[name], note = persistent_kernels_seen(step)
                        if note:
                            row["notes"].append(f"{name}: {note}")
                        if name == "persistent":
                            row["persistent_kernels"] = kernels
                            missing = [k for k in PERSISTENT_KERNELS[mode] if kernels is not None and k not in kernels]
                            if kernels is None and not hasattr(lstm_ext, "cuda_recurrence"):
                                # Without the profiler only the contract tells: a build that predates it
                                # would ignore the variable and time the alternating path under this name.
                                row["unavailable"][name] = ("cannot tell which path ran: no profiler, and this "
                                                            "lstm_ext has no cuda_recurrence()")
                                del results[name]
                                continue
                            if missing:
                                row["unavailable"][name] = (f"{RECURRENCE_VARIABLE}=persistent ran no "
                                                            f"{', '.join(missing)}: this build has no persistent path")
                                del results[name]
                                continue
                        elif kernels:
                            row["disagreement"][name] = (f"{RECURRENCE_VARIABLE}=alternating ran {', '.join(kernels)}"
                                                         f": the variable did not reach the op")
                            del results[name]
                            continue
                        else:
                            alternating_checked.add((dtype_name, mode))
                    first_seconds[name] = run_timed(step, 1, synchronize)
                    if name not in results:
                        results[name] = step()
                except RuntimeError as error:
                    if name != "persistent":
                        raise
                    if CUDA_FAULT.search(str(error)):  # a crash of the kernel, not the contract's refusal
                        row["disagreement"][name] = f"failed: {unavailable_reason(error)}"
                    else:
                        row["unavailable"][name] = unavailable_reason(error)
            if "persistent" in results and "alternating" not in results:
                row["notes"].append("persistent: not checked against the alternating path (which did not run)")
            if "alternating" in results:
                for name in ("persistent", "nn.LSTM"):
                    if name not in results:
                        continue
                    (outputs, _), (reference, _) = results[name], results["alternating"]
                    row["max_abs_diff_vs_alternating"][name] = max(
                        (a.float() - b.float()).abs().max().item() for a, b in zip(outputs, reference))
                if "persistent" in results:
                    try:
                        assert_results_agree(results["persistent"], results["alternating"], dtype)
                    except AssertionError as error:
                        row["disagreement"]["persistent"] = f"disagrees with alternating: {_first_line(str(error))}"
            timed = {name: steps[name] for name in RECURRENCE_IMPLEMENTATIONS
                     if name in first_seconds and name not in row["disagreement"]}
            results.clear()
            if timed:
                budget = measurement_budget(deadline - time.monotonic(), measurements_left)
                last = warm_up(timed, {n: first_seconds[n] for n in timed}, 2, min(0.05, budget / 4), synchronize)
                calls = calls_per_run(last, RECURRENCE_MIN_RUN_S)
                seconds = time_alternating(timed, RECURRENCE_REPEATS, budget * len(timed), calls, synchronize)
                row["calls_per_run"] = calls
                for name, runs in seconds.items():
                    row["median_ms"][name] = round(statistics.median(runs) * 1e3, 4)
                    row["min_ms"][name] = round(min(runs) * 1e3, 4)
                    row["runs"][name] = len(runs)
            document["rows"].append(row)
            save()
        else:
            document["complete"] = True
    finally:
        if previous is None:
            os.environ.pop(RECURRENCE_VARIABLE, None)
        else:
            os.environ[RECURRENCE_VARIABLE] = previous
        save()
    return document


# --- running the steps ---------------------------------------------------------------------------------

def child_env(step: Step) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for key, value in step.env:
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_command(step: Step, timeout: float, log_path: Path | None) -> tuple[int | None, float, bool, str]:
    """(returncode, seconds, timed out, output if not logged). The child runs in its own process group,
    so that a timeout reaches its children too (ninja's compilers, pytest's subprocesses)."""
    started = time.monotonic()
    log = open(log_path, "w") if log_path else subprocess.PIPE
    env = child_env(step) | {STEP_TIMEOUT_VARIABLE: f"{timeout:.0f}"}
    try:
        child = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        timed_out = False
        try:
            output, _ = child.communicate(timeout=timeout)
        except KeyboardInterrupt:  # Ctrl-C reaches only this process: the child has a session of its own
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            raise
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, wait in ((signal.SIGINT, GRACE_S), (signal.SIGKILL, 30)):
                try:
                    os.killpg(child.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    output, _ = child.communicate(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            else:
                output = None
        return child.returncode, time.monotonic() - started, timed_out, output or ""
    finally:
        if log_path:
            log.close()


def tagged_json(text: str, tag: str) -> dict | None:
    for line in reversed(text.splitlines()):
        if line.startswith(tag):
            try:
                return json.loads(line[len(tag):])
            except json.JSONDecodeError:
                return None
    return None


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- reading the results -------------------------------------------------------------------------------

PYTEST_VERBOSE_LINE = re.compile(r"^(?P<id>\S+::\S+)\s+(?P<status>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
PYTEST_STARTED_LINE = re.compile(r"^(?P<id>\S+\.py::\S+)(?:\s|$)")  # its outcome not (yet) on the line


def _node_id(case: ET.Element) -> str:
    """pytest's node id from an xunit1 testcase: file "tests/test_a.py", classname "tests.test_a.TestX"."""
    name, classname, file = case.get("name", ""), case.get("classname", ""), case.get("file")
    if file:
        module = file[:-3].replace("/", ".") if file.endswith(".py") else file
        rest = classname[len(module) + 1:] if classname.startswith(module + ".") else ""
        return "::".join(part for part in (file, rest.replace(".", "::"), name) if part)
    return f"{classname}::{name}" if classname else name


def _first_line(text: str | None, limit: int = 200) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[:limit - 1] + "…"


def summarize_junit(path: Path) -> dict | None:
    """Counts, failing ids with their messages, skip reasons and the slowest tests from pytest's JUnit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "xfailed": 0}
    cuda = {"passed": 0, "failed": 0, "skipped": 0}
    failing, skip_reasons, times = [], {}, []
    for case in root.iter("testcase"):
        if not case.get("name"):
            continue  # the entry an interrupted pytest writes for the test it was running: no outcome
        node = _node_id(case)
        failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
        if failure is not None or error is not None:
            kind = "failed" if failure is not None else "errors"
            counts[kind] += 1
            element = failure if failure is not None else error
            failing.append({"id": node, "kind": "failed" if kind == "failed" else "error",
                            "message": _first_line(element.get("message") or element.text)})
            outcome = "failed"
        elif skipped is not None:
            if (skipped.get("type") or "") == "pytest.xfail":
                counts["xfailed"] += 1
                outcome = "xfailed"
            else:
                counts["skipped"] += 1
                reason = _first_line(skipped.get("message") or skipped.text)
                reason = re.sub(r"^(?:\S+:\d+: )", "", reason)  # "tests/x.py:12: reason" -> reason
                skip_reasons[reason] = skip_reasons.get(reason, 0) + 1
                outcome = "skipped"
        else:
            counts["passed"] += 1
            outcome = "passed"
        if re.search(r"\bcuda\b", case.get("name", "")) or "test_cuda" in node:
            cuda[{"xfailed": "skipped"}.get(outcome, outcome)] += 1
        times.append((float(case.get("time") or 0.0), node))
    counts["total"] = sum(counts.values())
    suite_time = sum(float(s.get("time") or 0.0) for s in root.iter("testsuite"))
    return {"counts": counts, "cuda": cuda, "failing": failing,
            "skip_reasons": sorted(skip_reasons.items(), key=lambda item: -item[1]),
            "slowest": sorted(times, reverse=True)[:10], "seconds": round(suite_time, 1)}


def summarize_pytest_log(text: str) -> dict:
    """What a killed pytest -v had printed: counts so far, failing ids, and the test it was running."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "xfailed": 0}
    key = {"PASSED": "passed", "XPASS": "passed", "FAILED": "failed", "ERROR": "errors", "SKIPPED": "skipped",
           "XFAIL": "xfailed"}
    failing, running = [], None
    for line in text.splitlines():
        match = PYTEST_VERBOSE_LINE.match(line)
        if match:
            counts[key[match.group("status")]] += 1
            if match.group("status") in ("FAILED", "ERROR"):
                failing.append({"id": match.group("id"), "kind": match.group("status").lower(), "message": ""})
            running = None
        elif PYTEST_STARTED_LINE.match(line):
            running = PYTEST_STARTED_LINE.match(line).group("id")
    counts["total"] = sum(counts.values())
    return {"counts": counts, "failing": failing, "running_at_kill": running}


def gencode_targets(build_log: str) -> list[str]:
    """The device code nvcc was asked for in the build log: ["sm_90"] for -gencode=arch=compute_90,code=sm_90."""
    return sorted(set(re.findall(r"-gencode[= ]arch=compute_\w+,code=\[?((?:sm|compute)_\w+)", build_log)))


def load_sweep(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "sweep.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def geometric_mean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def sweep_markdown(document: dict) -> str:
    """The sweep's results as one markdown table, a row per point with both modes, and the geometric means."""
    rows = document.get("results", [])
    environment = document.get("environment", {})
    backend = environment.get("nn_lstm_backend", {})
    by_point = {}
    for row in rows:
        key = (row["hidden_size"], row["num_layers"], row["bidirectional"], row["seq_len"], row["batch"])
        by_point.setdefault(key, {})[row["mode"]] = row
    modes = [m for m in ("infer", "train") if any(r["mode"] == m for r in rows)]
    first = rows[0] if rows else {}
    lines = [f"{len(rows)} measurements, {first.get('device', '?')} {first.get('dtype', '?')}; "
             f"nn.LSTM ran on **{backend.get('name', '?')}** ({backend.get('evidence', '?')}); "
             f"GPU {environment.get('cuda_device', '?')}, cuDNN {environment.get('cudnn_version', '?')}; "
             f"times in ms per step (median), speedup = nn.LSTM / lstm_ext.", ""]
    header = "| H=I | layers | T | B |"
    rule = "|---|---|---|---|"
    labels = {"infer": "inference", "train": "training step"}
    for mode in modes:
        header += f" {labels[mode]} ms (lstm_ext / nn.LSTM) | speedup |"
        rule += "---|---|"
    if "train" in modes:
        header += " training peak MiB (lstm_ext / nn.LSTM) |"
        rule += "---|"
    header += " max abs diff |"
    rule += "---|"
    lines += [header, rule]
    for key in sorted(by_point):
        hidden, layers, bidirectional, seq_len, batch = key
        line = f"| {hidden} | {layers}{' bi' if bidirectional else ''} | {seq_len} | {batch} |"
        for mode in modes:
            row = by_point[key].get(mode)
            line += (f" {_ms(row['ext_median_ms'])} / {_ms(row['torch_median_ms'])} | {row['speedup']:.2f}x |"
                     if row else " - | - |")
        if "train" in modes:
            row = by_point[key].get("train") or {}
            ext, ref = row.get("ext_peak_mem_mib"), row.get("torch_peak_mem_mib")
            line += f" {'-' if ext is None else f'{ext:.1f}'} / {'-' if ref is None else f'{ref:.1f}'} |"
        line += f" {max(r['max_abs_diff'] for r in by_point[key].values()):.1e} |"
        lines.append(line)
    lines.append("")
    for mode in modes:
        speedups = [r["speedup"] for r in rows if r["mode"] == mode]
        mean = geometric_mean(speedups)
        if mean:
            lines.append(f"- {labels[mode]}: geometric-mean speedup {mean:.2f}x "
                         f"(range {min(speedups):.2f}x – {max(speedups):.2f}x)")
    return "\n".join(lines)


def load_recurrence(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "recurrence.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def recurrence_problems(document: dict | None) -> list[str]:
    """Failures the recurrence stage found: a persistent path that disagrees with the alternating one, or an
    alternating measurement that ran the persistent kernels."""
    problems = []
    for row in (document or {}).get("rows", []):
        for name, what in row.get("disagreement", {}).items():
            problems.append(f"{row['mode']} {row['dtype']} H={row['hidden']} B={row['batch']}: {name} {what}")
    return problems


def _ratio_cell(row: dict, over: str) -> str:
    ms = row.get("median_ms", {})
    if "persistent" in ms and over in ms and ms[over] > 0:
        return f"{ms['persistent'] / ms[over]:.2f}"
    return "-"


def _time_cell(row: dict, name: str) -> str:
    if name in row.get("median_ms", {}):
        return _ms(row["median_ms"][name])
    if name in row.get("unavailable", {}):
        return "n/a (" + _cell(row["unavailable"][name]) + ")"
    if name in row.get("disagreement", {}):
        return "not timed (" + _cell(row["disagreement"][name]) + ")"
    return "-"


def recurrence_markdown(document: dict) -> str:
    """The recurrence stage's measurements, a table per mode: times, measured and predicted ratios."""
    environment, settings = document.get("environment", {}), document.get("settings", {})
    rows = document.get("rows", [])
    predicted_for = next((r["predicted"].get("gpu_model") for r in rows if r.get("predicted")), "?")
    lines = [f"{len(rows)} points measured{'' if document.get('complete') else ' (incomplete)'} in "
             f"{document.get('seconds', '?')} s on {environment.get('gpu', '?')}, T={settings.get('seq_len', '?')}, "
             f"one layer, I = H; ms per call (median of up to {settings.get('repeats', '?')} runs). P = "
             f"{RECURRENCE_VARIABLE}=persistent, A = {RECURRENCE_VARIABLE}=alternating, C = nn.LSTM (cuDNN {environment.get('cudnn_version', '?')}"
             f", allow_tf32 {environment.get('cudnn_allow_tf32', '?')}). Ratios measured, with the cost model's "
             f"prediction ({predicted_for}, `benchmarks/cost_model.py`) beside them.", ""]
    labels = {"infer": "Inference (forward)", "train": "Training step (forward + backward)"}
    for mode in RECURRENCE_MODES:
        selected = sorted((r for r in rows if r["mode"] == mode),
                          key=lambda r: (RECURRENCE_DTYPES.index(r["dtype"]) if r["dtype"] in RECURRENCE_DTYPES
                                         else 99, r["hidden"], r["batch"]))
        if not selected:
            continue
        lines += [f"### {labels[mode]}", "",
                  "| dtype | H | B | P ms | A ms | C ms | P / A measured | P / A predicted | P / C measured | "
                  "P / C predicted |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in selected:
            predicted = r.get("predicted") or {}
            over_a, over_c = (predicted.get(k) for k in ("persistent_over_alternating", "persistent_over_cudnn"))
            lines.append(f"| {r['dtype']} | {r['hidden']} | {r['batch']} | {_time_cell(r, 'persistent')} | "
                         f"{_time_cell(r, 'alternating')} | {_time_cell(r, 'nn.LSTM')} | "
                         f"{_ratio_cell(r, 'alternating')} | {'-' if over_a is None else f'{over_a:.2f}'} | "
                         f"{_ratio_cell(r, 'nn.LSTM')} | {'-' if over_c is None else f'{over_c:.2f}'} |")
        lines.append("")
    measured = [r for r in rows if "persistent" in r.get("median_ms", {})]
    for over, key, label in (("alternating", "persistent_over_alternating", "P / A"),
                             ("nn.LSTM", "persistent_over_cudnn", "P / C")):
        errors = [float(_ratio_cell(r, over)) / r["predicted"][key] for r in measured
                  if _ratio_cell(r, over) != "-" and r.get("predicted", {}).get(key)]
        if errors:
            lines.append(f"- {label}: measured / predicted, geometric mean {geometric_mean(errors):.2f} "
                         f"(range {min(errors):.2f} – {max(errors):.2f}) over {len(errors)} measurements")
    unavailable = {}
    for r in rows:
        for name, reason in r.get("unavailable", {}).items():
            unavailable.setdefault(f"{name}: {reason}", []).append(f"{r['mode']} {r['dtype']} H={r['hidden']} "
                                                                    f"B={r['batch']}")
    lines.append(f"- persistent path timed at {len(measured)} of {len(rows)} measured points")
    lines += [f"- n/a at {len(where)} points: {reason}" for reason, where in unavailable.items()]
    lines += [f"- **problem:** {p}" for p in recurrence_problems(document)]
    notes = sorted({note for r in rows for note in r.get("notes", [])})
    lines += [f"- note: {note}" for note in notes]
    if document.get("not_run"):
        lines.append(f"- not run (the stage's time ran out): {len(document['not_run'])} measurements, from "
                     + ", ".join(f"{p['mode']} {p['dtype']} H={p['hidden']} B={p['batch']}"
                                 for p in document["not_run"][:4]) + (" ..." if len(document["not_run"]) > 4 else ""))
    return "\n".join(lines)


# --- the report ----------------------------------------------------------------------------------------

def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_report(data: dict) -> str:
    """report.md from what the run collected (see run_check for the keys); every key may be missing."""
    probe_info = data.get("probe") or {}
    results = data.get("steps") or []
    by_name = {r.name: r for r in results}
    verdict = "PASSED" if data.get("exit_status") == EXIT_OK else "FAILED"
    capability = probe_info.get("capability")
    cap_text = arch_list(tuple(capability)) if capability else "?"
    lines = [f"# lstm_ext GPU check: {verdict}", "",
             f"{data.get('started_utc', '?')} on {probe_info.get('hostname', '?')}; exit status "
             f"{data.get('exit_status', '?')}; folder `{data.get('report_dir', '?')}`.", ""]
    if data.get("verdict_reasons"):
        lines += [f"- {reason}" for reason in data["verdict_reasons"]] + [""]
    lines += ["| | |", "|---|---|",
              f"| GPU | {probe_info.get('gpu_name', '?')}, compute capability {cap_text}, "
              f"{probe_info.get('gpu_memory_gib', '?')} GiB; driver {probe_info.get('driver_version') or '?'} |",
              f"| torch | {probe_info.get('torch_version', '?')}, CUDA {probe_info.get('torch_cuda', '?')}, "
              f"cuDNN {probe_info.get('cudnn_version', '?')} |",
              f"| toolkit | nvcc {probe_info.get('nvcc_version', '?')} ({probe_info.get('cuda_home', '?')}) |",
              f"| python | {probe_info.get('python', '?')} ({probe_info.get('python_executable', '?')}) |",
              f"| CPU cores | {probe_info.get('cpu_cores', '?')} usable; MAX_JOBS {data.get('jobs', '?')} |",
              f"| build | TORCH_CUDA_ARCH_LIST={data.get('arch_list', '?')} FORCE_CUDA=1, "
              f"{_seconds(by_name.get('build'))} |", ""]

    lines += ["## Steps", "", "| step | result | time | timeout | output |", "|---|---|---|---|---|"]
    for r in results:
        status = r.status + (f" (exit {r.returncode})" if r.status == "failed" and r.returncode is not None else "")
        lines.append(f"| {r.name} | {_cell(status + (': ' + r.note if r.note else ''))} | {r.seconds:.0f} s | "
                     f"{'-' if r.timeout_s is None else f'{r.timeout_s:.0f} s'} | {r.log or '-'} |")
    lines.append("")

    verify = data.get("verify") or {}
    lines += ["## Build", ""]
    build = by_name.get("build")
    if build:
        lines.append(f"- {build.status} in {build.seconds:.0f} s (`pip install -e .`, log `build.log`); nvcc was "
                     f"asked for: {', '.join(data.get('gencode') or []) or 'nothing seen in the log'}")
    if verify:
        lines += [f"- compiled backends: {', '.join(verify.get('compiled_backends') or []) or '?'}; module "
                  f"`{verify.get('module')}` ({verify.get('module_mtime_utc')})",
                  f"- device code in the module (cuobjdump --list-elf): "
                  f"{', '.join(verify.get('device_code') or []) or 'not read'}",
                  f"- smoke test on the GPU (2-layer bidirectional, float64) against nn.LSTM: max abs diff "
                  f"{verify.get('smoke_max_abs_diff_float64', 'not run')}"]
        lines += [f"- **problem:** {p}" for p in verify.get("problems", [])]
        lines += [f"- warning: {w}" for w in verify.get("warnings", [])]
    if build and build.status != "ok":
        lines += ["", "Last lines of build.log:", "", "```", data.get("build_tail", ""), "```"]
    lines.append("")

    lines += ["## Tests", ""]
    junit, partial = data.get("junit"), data.get("pytest_partial")
    tests = by_name.get("tests")
    if junit:
        c = junit["counts"]
        lines.append(f"`python -m pytest tests`: **{c['passed']} passed, {c['failed']} failed, {c['errors']} errors, "
                     f"{c['skipped']} skipped**, {c['xfailed']} xfailed, of {c['total']}, in {junit['seconds']} s "
                     f"(pytest.xml, pytest.log).")
        cu = junit["cuda"]
        lines.append(f"Tests on CUDA (a `cuda` parameter, or tests/test_cuda.py): {cu['passed']} passed, "
                     f"{cu['failed']} failed or errors, {cu['skipped']} skipped.")
        failing = junit["failing"]
    elif partial:
        c = partial["counts"]
        lines.append(f"No JUnit XML (pytest was killed); from pytest.log up to then: {c['passed']} passed, "
                     f"{c['failed']} failed, {c['errors']} errors, {c['skipped']} skipped, {c['xfailed']} xfailed.")
        failing = partial["failing"]
    else:
        lines.append("The tests did not run" + (f" ({tests.note})" if tests and tests.note else "") + ".")
        failing = []
    if tests and tests.status == "timed out":
        running = (partial or {}).get("running_at_kill")
        lines.append(f"**The test step timed out after {tests.timeout_s:.0f} s**"
                     + (f"; it was running `{running}`." if running else "."))
    if failing:
        lines += ["", "Failing tests:", ""]
        lines += [f"- `{f['id']}` ({f['kind']})" + (f": {f['message']}" if f["message"] else "") for f in failing]
    if junit and junit["skip_reasons"]:
        lines += ["", "Skip reasons:", ""] + [f"- {n} × {reason}" for reason, n in junit["skip_reasons"][:15]]
    if junit and junit["slowest"]:
        lines += ["", "Slowest tests:", ""] + [f"- {t:.1f} s `{node}`" for t, node in junit["slowest"]]
    lines.append("")

    lines += ["## Benchmark sweep: lstm_ext vs nn.LSTM on CUDA (quick grid)", ""]
    sweeps = data.get("sweeps") or {}
    for name, title in (("sweep", "cuDNN with its default math (TF32 tensor cores allowed, as torch ships it)"),
                        ("sweep-tf32-off", "NVIDIA_TF32_OVERRIDE=0: cuDNN in full float32")):
        result = by_name.get(name)
        if result is None:
            continue
        lines.append(f"### {name}: {title}")
        lines.append("")
        if sweeps.get(name):
            lines += [sweep_markdown(sweeps[name]), "", f"Raw: `{name}/sweep.csv`, `{name}/sweep.json`, "
                      f"`{name}/sweep.png`, `{result.log}`."]
        else:
            lines += [f"No results ({result.status}{': ' + result.note if result.note else ''}). "
                      f"Last lines of {result.log}:", "", "```", data.get(f"{name}_tail", ""), "```"]
        lines.append("")

    result = by_name.get("recurrence")
    if result is not None:
        lines += ["## Recurrence paths: persistent vs alternating vs nn.LSTM (cuDNN)", ""]
        document = data.get("recurrence")
        if document and document.get("rows"):
            lines += [recurrence_markdown(document), "", f"Raw: `recurrence/recurrence.json`, `{result.log}`."]
        else:
            lines += [f"No results ({result.status}{': ' + result.note if result.note else ''}). Last lines of "
                      f"{result.log}:", "", "```", data.get("recurrence_tail", ""), "```"]
        lines.append("")

    lines += ["## Raw files", ""] + [f"- `{f}`" for f in data.get("files", [])]
    return "\n".join(lines) + "\n"


def _seconds(result: StepResult | None) -> str:
    if result is None:
        return "not run"
    return f"{result.status} in {result.seconds:.0f} s"


# --- the whole check -----------------------------------------------------------------------------------

def run_check(args, report_dir: Path) -> int:
    started = time.monotonic()
    started_utc = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    python = sys.executable
    placeholder = make_plan((0, 0), args.jobs, python, report_dir)
    # 0. preflight: before anything is written.
    print(f"gpu-check: preflight ({placeholder[0].cap_s} s at most) ...", flush=True)
    rc, seconds, timed_out, output = run_command(placeholder[0], placeholder[0].cap_s, None)
    info = tagged_json(output, PROBE_TAG)
    if info is None:
        why = f"timed out after {placeholder[0].cap_s} s" if timed_out else f"exit {rc}"
        print(f"gpu-check: refused: the preflight probe failed ({why}):\n{output[-3000:]}", file=sys.stderr)
        return EXIT_REFUSED
    problems = prerequisite_problems(info)
    if not problems and args.capability and tuple(info["capability"]) != args.capability:
        problems.append(f"--capability {arch_list(args.capability)} is not this GPU's "
                        f"({arch_list(tuple(info['capability']))})")
    if problems:
        print("gpu-check: refused, nothing was run:\n" + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
        return EXIT_REFUSED

    capability = tuple(info["capability"])
    steps = make_plan(capability, args.jobs, python, report_dir)
    report_dir.mkdir(parents=True, exist_ok=False)
    (report_dir / "preflight.json").write_text(json.dumps(info, indent=2) + "\n")
    (report_dir / "plan.txt").write_text(format_plan(steps, capability, "read from the GPU", args.jobs,
                                                     report_dir) + "\n")
    print(format_plan(steps, capability, "read from the GPU", args.jobs, report_dir), flush=True)
    results = [StepResult("preflight", "ok", seconds, steps[0].cap_s, rc, "", "preflight.json")]
    data = {"probe": info, "started_utc": started_utc, "report_dir": _short(str(report_dir)), "jobs": args.jobs,
            "arch_list": arch_list(capability), "steps": results, "sweeps": {}}

    position = {step.name: index for index, step in enumerate(steps)}

    def run(name: str, skip_reason: str = "", timeout: float | None = None) -> StepResult:
        index = position[name]
        step = steps[index]
        if timeout is None:
            timeout = step_timeout(steps, index, time.monotonic() - started)
        if not skip_reason and timeout < MIN_STEP_S:
            skip_reason = f"only {timeout:.0f} s of the budget left"
        if skip_reason:
            result = StepResult(step.name, "skipped", note=skip_reason)
            print(f"gpu-check: {step.name}: skipped ({skip_reason})", flush=True)
        else:
            print(f"gpu-check: [+{time.monotonic() - started:.0f} s] {step.name} (timeout {timeout:.0f} s, "
                  f"output {_short(str(report_dir / step.log))}) ...", flush=True)
            rc, seconds, timed_out, _ = run_command(step, timeout, report_dir / step.log)
            status = "timed out" if timed_out else "ok" if rc == 0 else "failed"
            result = StepResult(step.name, status, seconds, timeout, rc, "", step.log)
            print(f"gpu-check: {step.name}: {status} in {seconds:.0f} s", flush=True)
        results.append(result)
        return result

    build_started = time.time()
    build = run("build")
    data["build_tail"] = tail(report_dir / "build.log")
    data["gencode"] = gencode_targets((report_dir / "build.log").read_text(errors="replace")
                                      if (report_dir / "build.log").exists() else "")
    verify = run("verify", "" if build.status == "ok" else "the build did not succeed")
    data["verify"] = tagged_json((report_dir / "verify.log").read_text(errors="replace")
                                 if (report_dir / "verify.log").exists() else "", VERIFY_TAG)
    mtime = (data["verify"] or {}).get("module_mtime")
    if build.status == "ok" and mtime is not None and mtime < build_started - 5:
        data["verify"]["problems"].append(f"the module the tests import ({data['verify']['module']}) is older "
                                          "than this build: the build went elsewhere")
    if data["verify"] and data["verify"]["problems"]:
        verify.status, verify.note = "failed", "; ".join(data["verify"]["problems"])
    built = build.status == "ok" and verify.status == "ok"
    tests = run("tests", "" if built else "no verified build to test")
    data["junit"] = summarize_junit(report_dir / "pytest.xml") if tests.status != "skipped" else None
    if tests.status != "skipped" and (report_dir / "pytest.log").exists():
        data["pytest_partial"] = summarize_pytest_log((report_dir / "pytest.log").read_text(errors="replace"))
    sweep = run("sweep", "" if built else "no verified build to time")
    data["sweeps"]["sweep"] = load_sweep(report_dir / "sweep") if sweep.status == "ok" else None
    data["sweep_tail"] = tail(report_dir / "sweep.log", 25)
    sweep_log = (report_dir / "sweep.log").read_text(errors="replace") if (report_dir / "sweep.log").exists() else ""
    if sweep.status == "failed" and "sweep stopped:" in sweep_log and "disagree" in sweep_log:
        sweep.note = "lstm_ext and nn.LSTM disagree (see sweep.log)"
        again = run("sweep-tf32-off")
        data["sweeps"]["sweep-tf32-off"] = load_sweep(report_dir / "sweep-tf32-off") if again.status == "ok" else None
        data["sweep-tf32-off_tail"] = tail(report_dir / "sweep-tf32-off.log", 25)
    recurrence = run("recurrence", "" if built else "no verified build to time")
    data["recurrence"] = load_recurrence(report_dir / "recurrence") if recurrence.status != "skipped" else None
    data["recurrence_tail"] = tail(report_dir / "recurrence.log", 25)

    reasons = []
    if not built:
        reasons.append("the build failed" if build.status != "ok"
                       else "the built module failed its check (verify.log)")
    junit = data.get("junit")
    if tests.status == "timed out":
        reasons.append("the tests timed out")
    elif tests.status != "skipped" and (tests.returncode != 0 or not junit):
        reasons.append("tests failed" if junit and (junit["counts"]["failed"] or junit["counts"]["errors"])
                       else f"pytest exited with {tests.returncode}")
    elif built and tests.status == "skipped":
        reasons.append(f"the tests did not run ({tests.note})")
    if junit and tests.status == "ok" and junit["cuda"]["passed"] == 0:
        reasons.append("no test passed on CUDA: the CUDA tests did not run on the GPU")
    if built and not any(data["sweeps"].values()):
        reasons.append(f"the sweep produced no results ({sweep.status}{': ' + sweep.note if sweep.note else ''})")
    if recurrence.status == "timed out":
        reasons.append("the recurrence benchmark timed out (it stops itself before its timeout: something hung)")
    elif built and recurrence.status != "skipped" and not (data["recurrence"] or {}).get("rows"):
        reasons.append(f"the recurrence benchmark produced no results ({recurrence.status})")
    problems = recurrence_problems(data["recurrence"])
    if problems:
        reasons.append(f"the recurrence paths disagree at {len(problems)} measurements (report: Recurrence paths)")
    data["verdict_reasons"] = reasons
    data["exit_status"] = EXIT_FAILED if reasons else EXIT_OK
    written = sorted(str(p.relative_to(report_dir)) for p in report_dir.rglob("*") if p.is_file())
    data["files"] = written + ["report.md", "summary.json"]
    report = report_dir / "report.md"
    report.write_text(render_report(data))
    (report_dir / "summary.json").write_text(json.dumps(
        {key: value for key, value in data.items()
         if key not in ("build_tail", "sweep_tail", "sweep-tf32-off_tail", "recurrence_tail")}
        | {"steps": [dataclasses.asdict(r) for r in results]}, indent=2, default=str) + "\n")
    shown = os.path.relpath(report) if report.is_relative_to(Path.cwd()) else str(report)
    print(f"\ngpu-check: {'PASSED' if not reasons else 'FAILED: ' + '; '.join(reasons)} "
          f"(in {time.monotonic() - started:.0f} s)\nReport: {shown}", flush=True)
    return data["exit_status"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="make gpu-check: build lstm_ext for this machine's GPU only, run the test suite, the quick "
                    "sweep against nn.LSTM (cuDNN) and the persistent/alternating recurrence benchmark on it, and "
                    "write gpu-check/<UTC time>/report.md, all within "
                    f"{BUDGET_S} s. Exit status 0 passed, 1 failed, 2 refused (no GPU, nvcc or CUDA torch).")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    parser.add_argument("--capability", type=_capability_arg, metavar="MAJOR.MINOR",
                        help="the GPU's compute capability, e.g. 9.0 (default: read from the GPU; in a real run it "
                             "must match it)")
    parser.add_argument("--jobs", type=int, default=usable_cores(),
                        help=f"MAX_JOBS for the build (default: the usable cores, here {usable_cores()})")
    parser.add_argument("--out-root", type=Path, default=REPORT_ROOT,
                        help=f"where report folders go (default {_short(str(REPORT_ROOT))}/)")
    parser.add_argument("--name", help="the report folder's name (default: the UTC start time, 20261201T200000Z)")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--verify-build", type=_capability_arg, metavar="MAJOR.MINOR", help=argparse.SUPPRESS)
    parser.add_argument("--time-recurrence", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def _capability_arg(text: str) -> tuple[int, int]:
    try:
        return parse_capability(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:
        print(PROBE_TAG + json.dumps(probe()), flush=True)
        return EXIT_OK
    if args.time_recurrence:
        timeout = float(os.environ.get(STEP_TIMEOUT_VARIABLE) or 0) or None
        document = time_recurrence(args.time_recurrence.resolve(), timeout)
        print(recurrence_markdown(document), flush=True)
        return EXIT_FAILED if recurrence_problems(document) else EXIT_OK
    if args.verify_build:
        result = verify_build(args.verify_build)
        print(json.dumps(result, indent=2))
        print(VERIFY_TAG + json.dumps(result), flush=True)
        return EXIT_FAILED if result["problems"] else EXIT_OK
    name = args.name or datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report_dir = (args.out_root / name).resolve()
    if report_dir.exists():
        print(f"gpu-check: {report_dir} exists already; choose another --name", file=sys.stderr)
        return EXIT_REFUSED
    if args.dry_run:
        if args.capability:
            capability, source = args.capability, "given with --capability"
        else:
            preflight = make_plan((0, 0), args.jobs, sys.executable, report_dir)[0]
            rc, _, timed_out, output = run_command(preflight, preflight.cap_s, None)
            info = tagged_json(output, PROBE_TAG) or {}
            problems = prerequisite_problems(info) if info else [
                f"the probe failed ({'timed out' if timed_out else f'exit {rc}'}): {output[-2000:]}"]
            if problems or not info.get("capability"):
                print("gpu-check: refused (give --capability to see the plan anyway):\n"
                      + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
                return EXIT_REFUSED
            capability, source = tuple(info["capability"]), "read from the GPU"
        print(format_plan(make_plan(capability, args.jobs, sys.executable, report_dir), capability, source,
                          args.jobs, report_dir))
        print("\n(dry run: nothing was run)")
        return EXIT_OK
    return run_check(args, report_dir)


if __name__ == "__main__":
    sys.exit(main())
