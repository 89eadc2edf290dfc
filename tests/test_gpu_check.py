"""benchmarks/gpu_check.py (`make gpu-check`) without a GPU: the plan it derives from a compute capability
(environment, commands in order, timeouts within the budget, report path), the refusal where no GPU is
present, the readers of pytest's JUnit XML and the sweep's JSON, the recurrence stage's grid and its table of
measured against predicted ratios, the report, and the whole orchestration with stand-in commands in place
of the build, the tests, the sweep and the recurrence benchmark."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture
def gpu_check(import_benchmark):
    return import_benchmark("gpu_check")


def by_name(steps):
    return {step.name: step for step in steps}


# --- the plan ------------------------------------------------------------------------------------------

def test_plan_for_capability_9_0_builds_for_sm_90_only_then_tests_then_sweeps(gpu_check, tmp_path):
    report_dir = tmp_path / "gpu-check" / "run"
    steps = gpu_check.make_plan((9, 0), 16, "/usr/bin/python3", report_dir)
    assert [s.name for s in steps] == ["preflight", "build", "verify", "tests", "sweep", "sweep-tf32-off",
                                       "recurrence"]
    assert all(s.argv[0] == "/usr/bin/python3" for s in steps)
    steps = by_name(steps)

    build = steps["build"]
    assert dict(build.env) == {"FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": "9.0", "MAX_JOBS": "16",
                               "FORCE_CPU": None, "LSTM_EXT_LIBRARY": None}
    assert build.argv[1:] == ("-m", "pip", "install", "--disable-pip-version-check", "--no-build-isolation",
                              "--no-deps", "-v", "-e", str(ROOT))
    # What the children really get: FORCE_CPU (which wins over FORCE_CUDA) and LSTM_EXT_LIBRARY removed.
    env = gpu_check.child_env(build)
    assert env["TORCH_CUDA_ARCH_LIST"] == "9.0" and "FORCE_CPU" not in env and "LSTM_EXT_LIBRARY" not in env

    assert steps["verify"].argv[1:] == (str(SCRIPT), "--verify-build", "9.0")
    tests = steps["tests"]
    assert tests.argv[1:4] == ("-m", "pytest", str(ROOT / "tests"))
    assert f"--junitxml={report_dir / 'pytest.xml'}" in tests.argv and "junit_family=xunit1" in tests.argv
    assert dict(tests.env)["TORCH_CUDA_ARCH_LIST"] == "9.0"  # an on-the-fly build in a test would match too
    sweep = steps["sweep"]
    assert sweep.argv[1:] == (str(ROOT / "benchmarks" / "sweep.py"), "--quick", "--device", "cuda", "--no-progress",
                              "--out", str(report_dir / "sweep"))
    again = steps["sweep-tf32-off"]
    assert again.only_if and dict(again.env)["NVIDIA_TF32_OVERRIDE"] == "0"
    assert again.argv[-1] == str(report_dir / "sweep-tf32-off")
    recurrence = steps["recurrence"]
    assert recurrence.argv[1:] == (str(SCRIPT), "--time-recurrence", str(report_dir / "recurrence"))
    assert not recurrence.only_if
    # The benchmark sets LSTM_EXT_CUDA_RECURRENCE itself before every call; an inherited value is removed.
    assert dict(recurrence.env)["LSTM_EXT_CUDA_RECURRENCE"] is None
    assert dict(recurrence.env)["TORCH_CUDA_ARCH_LIST"] == "9.0" and dict(recurrence.env)["FORCE_CPU"] is None
    assert [s.log for s in steps.values()] == ["preflight.json", "build.log", "verify.log", "pytest.log",
                                               "sweep.log", "sweep-tf32-off.log", "recurrence.log"]


@pytest.mark.parametrize("text, capability, arch, sm", [
    ("9.0", (9, 0), "9.0", "sm_90"), ("8.0", (8, 0), "8.0", "sm_80"), ("8.6", (8, 6), "8.6", "sm_86"),
    ("10.0", (10, 0), "10.0", "sm_100"), ("(12, 1)", (12, 1), "12.1", "sm_121"),
])
def test_capability_to_arch_list(gpu_check, text, capability, arch, sm):
    assert gpu_check.parse_capability(text) == capability
    assert gpu_check.arch_list(capability) == arch
    assert gpu_check.sm_name(capability) == sm
    assert dict(gpu_check.build_env(capability, 3))["TORCH_CUDA_ARCH_LIST"] == arch


@pytest.mark.parametrize("text", ["90", "sm_90", "9", "9.0a", "nine"])
def test_malformed_capability_is_refused(gpu_check, text):
    with pytest.raises(ValueError, match="MAJOR.MINOR"):
        gpu_check.parse_capability(text)


def test_every_step_fits_in_the_ten_minutes(gpu_check, tmp_path):
    steps = gpu_check.make_plan((9, 0), 16, "python", tmp_path)
    schedule = gpu_check.worst_case_schedule(steps)
    assert [name for name, _, _ in schedule] == ["preflight", "build", "verify", "tests", "sweep", "recurrence"]
    end = sum(timeout for _, _, timeout in schedule)
    assert end <= gpu_check.BUDGET_S and gpu_check.BUDGET_S + gpu_check.GRACE_S + 10 <= 600
    for (name, _, timeout), step in zip(schedule, steps):
        assert timeout >= max(step.reserve_s, gpu_check.MIN_STEP_S), name
    index = {step.name: i for i, step in enumerate(steps)}
    # A usual run (preflight 10 s, build 100 s, verify 10 s): the tests get their whole cap.
    assert gpu_check.step_timeout(steps, index["tests"], 120) == steps[index["tests"]].cap_s == 330
    # Tests done by +380 s: the sweep gets its cap, the recurrence stage the rest.
    assert gpu_check.step_timeout(steps, index["sweep"], 380) == 120
    assert gpu_check.step_timeout(steps, index["recurrence"], 450) == 120
    # A slow build: the tests are cut so that the sweep and the recurrence stage keep their 60 s each.
    assert gpu_check.step_timeout(steps, index["tests"], 300) == gpu_check.BUDGET_S - 300 - 60 - 60
    # Late tests: the sweep is cut to leave the recurrence stage its reserve; so is the conditional sweep.
    assert gpu_check.step_timeout(steps, index["sweep"], 460) == gpu_check.BUDGET_S - 460 - 60
    assert gpu_check.step_timeout(steps, index["sweep-tf32-off"], 480) == gpu_check.BUDGET_S - 480 - 60
    assert gpu_check.step_labels(steps) == ["0.", "1.", "2.", "3.", "4.", "4b.", "5."]


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    # Run as a user would, in a fresh interpreter: the plan needs neither torch nor a GPU.
    wrapper = (f"import sys; sys.path.insert(0, {str(SCRIPT.parent)!r}); import gpu_check; "
               f"code = gpu_check.main(['--dry-run', '--capability', '9.0', '--jobs', '16', '--out-root', "
               f"{str(tmp_path)!r}, '--name', 'fixed']); print('torch imported:', 'torch' in sys.modules); "
               f"sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "torch imported: False" in out
    assert "GPU capability  9.0 (given with --capability)" in out
    assert "FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 (device code sm_90 only)" in out
    assert f"report          {tmp_path / 'fixed' / 'report.md'}" in out
    positions = [out.index(marker) for marker in ("-m pip install", "--verify-build 9.0", "-m pytest tests",
                                                  "sweep.py --quick --device cuda", "NVIDIA_TF32_OVERRIDE=0",
                                                  "5.  recurrence", "-u LSTM_EXT_CUDA_RECURRENCE",
                                                  f"--time-recurrence {tmp_path / 'fixed' / 'recurrence'}",
                                                  "6.  report")]
    assert positions == sorted(positions)
    assert ("LSTM_EXT_CUDA_RECURRENCE=persistent vs =alternating vs nn.LSTM (cuDNN): T=256, B {1, 8, 32, 64} x "
            "H {256, 512, 1024}, float32 and bfloat16, inference and training step") in out
    assert "4b. sweep-tf32-off" in out
    assert "(dry run: nothing was run)" in out
    assert not any(tmp_path.iterdir())


# --- preflight -----------------------------------------------------------------------------------------

GOOD_PROBE = {"torch_version": "2.14.1", "torch_cuda": "13.0", "cuda_available": True, "capability": [9, 0],
              "cuda_home": "/usr/local/cuda", "nvcc_version": "13.0", "nvcc_gpu_codes": ["sm_80", "sm_90"]}


@pytest.mark.parametrize("change, message", [
    ({"torch_cuda": None, "cuda_available": False, "capability": None}, "CPU-only build"),
    ({"cuda_available": False, "capability": None}, "no CUDA GPU: torch.cuda.is_available() is False"),
    ({"cuda_home": None}, "nvcc was not found"),
    ({"nvcc_version": "12.8"}, "refuses a different major version"),
    ({"nvcc_gpu_codes": ["sm_75", "sm_80"]}, "cannot compile for the GPU's sm_90"),
])
def test_missing_prerequisites_are_named(gpu_check, change, message):
    assert gpu_check.prerequisite_problems(GOOD_PROBE) == []
    problems = gpu_check.prerequisite_problems(GOOD_PROBE | change)
    assert len(problems) == 1 and message in problems[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the check would really run")
def test_refuses_without_a_gpu_and_writes_nothing(gpu_check, tmp_path):
    info = gpu_check.probe()
    assert info["cuda_available"] is False and info["capability"] is None
    assert any("no CUDA GPU" in p or "CPU-only" in p for p in gpu_check.prerequisite_problems(info))

    done = subprocess.run([sys.executable, str(SCRIPT), "--out-root", str(tmp_path), "--name", "run"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == gpu_check.EXIT_REFUSED
    assert "refused, nothing was run" in done.stderr
    assert "no CUDA GPU" in done.stderr or "CPU-only" in done.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_probe_reads_this_gpu(gpu_check):
    info = gpu_check.probe()
    assert tuple(info["capability"]) == torch.cuda.get_device_capability(0)
    assert info["gpu_name"] == torch.cuda.get_device_name(0)


# --- reading results and writing the report ------------------------------------------------------------

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite name="pytest"
errors="1" failures="1" skipped="2" tests="6" time="12.5">
<testcase classname="tests.test_ops" name="test_forward[cpu]" file="tests/test_ops.py" line="3" time="0.25"/>
<testcase classname="tests.test_ops" name="test_forward[cuda]" file="tests/test_ops.py" line="3" time="1.5"/>
<testcase classname="tests.test_cuda" name="test_graph" file="tests/test_cuda.py" line="9" time="0.5"/>
<testcase classname="tests.test_equivalence.TestGrid" name="test_grid[cuda-float32]" file="tests/test_equivalence.py"
 line="20" time="2.0"><failure message="AssertionError: Tensor-likes are not close!&#10;Mismatched elements: 3">
E  AssertionError</failure></testcase>
<testcase classname="tests.test_module" name="test_load[cuda]" file="tests/test_module.py" line="5" time="0.0">
<error message="failed on setup with &quot;RuntimeError: CUDA error&quot;">E RuntimeError</error></testcase>
<testcase classname="tests.test_module" name="test_half[cpu]" file="tests/test_module.py" line="7" time="0.0">
<skipped type="pytest.skip" message="float16 runs on CUDA only">tests/test_module.py:7: float16 runs on CUDA only
</skipped></testcase>
<testcase classname="tests.test_module" name="test_double_backward" file="tests/test_module.py" line="9" time="0.0">
<skipped type="pytest.xfail" message="not supported"/></testcase>
<testcase time="0.01"/>
</testsuite></testsuites>"""


def sweep_document():
    rows = []
    for seq_len, ext, ref in ((16, 0.5, 1.0), (64, 2.0, 1.0)):
        for mode, factor in (("infer", 1), ("train", 3)):
            rows.append({"device": "cuda", "dtype": "float32", "input_size": 128, "hidden_size": 128, "num_layers": 1,
                         "bidirectional": False, "seq_len": seq_len, "batch": 8, "mode": mode,
                         "ext_median_ms": ext * factor, "torch_median_ms": ref * factor, "speedup": ref / ext,
                         "max_abs_diff": 2e-7, "ext_peak_mem_mib": 1.5 if mode == "train" else None,
                         "torch_peak_mem_mib": 2.25 if mode == "train" else None})
    return {"environment": {"cuda_device": "NVIDIA H200", "cudnn_version": 92400,
                            "nn_lstm_backend": {"name": "cuDNN", "evidence": "CudnnRnnBackward0"}},
            "results": rows}


def test_junit_summary_counts_and_names_the_failures(gpu_check, tmp_path):
    (tmp_path / "pytest.xml").write_text(JUNIT)
    summary = gpu_check.summarize_junit(tmp_path / "pytest.xml")
    assert summary["counts"] == {"passed": 3, "failed": 1, "errors": 1, "skipped": 1, "xfailed": 1, "total": 7}
    assert summary["cuda"] == {"passed": 2, "failed": 2, "skipped": 0}
    assert summary["failing"] == [
        {"id": "tests/test_equivalence.py::TestGrid::test_grid[cuda-float32]", "kind": "failed",
         "message": "AssertionError: Tensor-likes are not close!"},
        {"id": "tests/test_module.py::test_load[cuda]", "kind": "error",
         "message": 'failed on setup with "RuntimeError: CUDA error"'}]
    assert summary["skip_reasons"] == [("float16 runs on CUDA only", 1)]
    assert summary["slowest"][0] == (2.0, "tests/test_equivalence.py::TestGrid::test_grid[cuda-float32]")
    assert gpu_check.summarize_junit(tmp_path / "missing.xml") is None


def test_killed_pytest_log_gives_counts_so_far_and_the_running_test(gpu_check):
    log = textwrap.dedent("""\
        collecting ... collected 5 items

        tests/test_ops.py::test_forward[cpu] PASSED                  [ 20%]
        tests/test_ops.py::test_forward[cuda] SKIPPED (no CUDA device on this machine) [ 40%]
        tests/test_ops.py::TestK::test_b FAILED                      [ 60%]
        tests/test_ops.py::test_c XFAIL (known)                      [ 80%]
        tests/test_cuda.py::test_graph_capture[cuda] """)
    summary = gpu_check.summarize_pytest_log(log)
    assert summary["counts"] == {"passed": 1, "failed": 1, "errors": 0, "skipped": 1, "xfailed": 1, "total": 4}
    assert [f["id"] for f in summary["failing"]] == ["tests/test_ops.py::TestK::test_b"]
    assert summary["running_at_kill"] == "tests/test_cuda.py::test_graph_capture[cuda]"


def test_gencode_targets_from_the_build_log(gpu_check):
    log = ("[9/14] /usr/local/cuda/bin/nvcc -c pointwise_cuda.cu -O3 -gencode=arch=compute_90,code=sm_90 -std=c++20\n"
           "[9/14] nvcc -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=compute_90\n")
    assert gpu_check.gencode_targets(log) == ["compute_90", "sm_80", "sm_90"]
    assert gpu_check.gencode_targets("no CUDA here") == []


def test_report_holds_the_machine_the_counts_the_failures_and_the_sweep_table(gpu_check, tmp_path):
    (tmp_path / "pytest.xml").write_text(JUNIT)
    result = gpu_check.StepResult
    data = {
        "probe": GOOD_PROBE | {"gpu_name": "NVIDIA H200", "gpu_memory_gib": 139.8, "cudnn_version": 92400,
                               "hostname": "gpu-1", "python": "3.12.3", "cpu_cores": 16, "driver_version": "580.1"},
        "started_utc": "2026-12-01T20:00:00+00:00", "report_dir": "gpu-check/run", "jobs": 16, "arch_list": "9.0",
        "steps": [result("preflight", "ok", 4.2, 60, 0, "", "preflight.json"),
                  result("build", "ok", 95.4, 240, 0, "", "build.log"),
                  result("verify", "ok", 8.0, 60, 0, "", "verify.log"),
                  result("tests", "failed", 250.0, 330, 1, "", "pytest.log"),
                  result("sweep", "ok", 40.0, 120, 0, "", "sweep.log")],
        "gencode": ["sm_90"],
        "verify": {"compiled_backends": ["cpu", "cuda"], "device_code": ["sm_90"], "module": "lstm_ext/_C.so",
                   "smoke_max_abs_diff_float64": 1e-16, "problems": [], "warnings": []},
        "junit": gpu_check.summarize_junit(tmp_path / "pytest.xml"),
        "sweeps": {"sweep": sweep_document()},
        "verdict_reasons": ["tests failed"], "exit_status": 1, "files": ["build.log", "pytest.xml"],
    }
    report = gpu_check.render_report(data)
    assert report.startswith("# lstm_ext GPU check: FAILED")
    assert "| GPU | NVIDIA H200, compute capability 9.0, 139.8 GiB; driver 580.1 |" in report
    assert "| torch | 2.14.1, CUDA 13.0, cuDNN 92400 |" in report
    assert "TORCH_CUDA_ARCH_LIST=9.0 FORCE_CUDA=1, ok in 95 s" in report
    assert "| build | ok | 95 s | 240 s | build.log |" in report
    assert "| tests | failed (exit 1) | 250 s | 330 s | pytest.log |" in report
    assert "**3 passed, 1 failed, 1 errors, 1 skipped**, 1 xfailed, of 7" in report
    assert "- `tests/test_equivalence.py::TestGrid::test_grid[cuda-float32]` (failed): AssertionError" in report
    assert "- `tests/test_module.py::test_load[cuda]` (error)" in report
    assert "nn.LSTM ran on **cuDNN** (CudnnRnnBackward0)" in report
    assert "| 128 | 1 | 16 | 8 | 0.500 / 1.000 | 2.00x | 1.500 / 3.000 | 2.00x | 1.5 / 2.2 | 2.0e-07 |" in report
    assert "| 128 | 1 | 64 | 8 | 2.000 / 1.000 | 0.50x |" in report
    assert "- inference: geometric-mean speedup 1.00x (range 0.50x – 2.00x)" in report
    assert "- `pytest.xml`" in report


# --- the whole run, with stand-ins for the build, the tests and the sweep ------------------------------

STAND_IN = r'''
import json, os, sys, time
from pathlib import Path
role, behaviour = sys.argv[1], sys.argv[2]
if role == "preflight":
    print("GPU_CHECK_PROBE " + json.dumps({
        "torch_version": "2.14.1", "torch_cuda": "13.0", "cuda_available": True, "capability": [9, 0],
        "gpu_name": "NVIDIA H200", "cuda_home": "/usr/local/cuda", "nvcc_version": "13.0",
        "nvcc_gpu_codes": ["sm_90"], "hostname": "stand-in"}))
elif role == "build":
    print("arch", os.environ["TORCH_CUDA_ARCH_LIST"], "jobs", os.environ["MAX_JOBS"],
          "force_cpu" in {k.lower() for k in os.environ})
    print("nvcc -gencode=arch=compute_90,code=sm_90 pointwise_cuda.cu")
    sys.exit(0 if behaviour == "ok" else 1)
elif role == "verify":
    print("GPU_CHECK_VERIFY " + json.dumps({"problems": [], "warnings": [], "compiled_backends": ["cpu", "cuda"],
                                            "device_code": ["sm_90"], "module": "_C.so",
                                            "module_mtime": time.time() - (3600 if behaviour == "stale" else 0)}))
elif role == "tests":
    print("tests/test_ops.py::test_forward[cuda] PASSED", flush=True)
    if behaviour == "hang":
        print("tests/test_cuda.py::test_hangs[cuda] ", end="", flush=True)
        time.sleep(60)
    junit = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--junitxml="))
    Path(junit).write_text('<testsuites><testsuite time="1.0">'
        '<testcase classname="tests.test_ops" name="test_forward[cuda]" file="tests/test_ops.py" time="0.5"/>'
        '<testcase classname="tests.test_ops" name="test_backward[cuda]" file="tests/test_ops.py" time="0.5">'
        '<failure message="AssertionError: not close">E</failure></testcase></testsuite></testsuites>')
    sys.exit(1)
elif role in ("sweep", "sweep-tf32-off"):
    if behaviour == "disagree" and os.environ.get("NVIDIA_TF32_OVERRIDE") != "0":
        sys.exit("sweep stopped: lstm_ext and nn.LSTM disagree at H=128 L=1 T=16 B=1 (infer), so it is not timed")
    out = Path(sys.argv[sys.argv.index("--out") + 1])
    out.mkdir(parents=True)
    row = {"device": "cuda", "dtype": "float32", "hidden_size": 128, "num_layers": 1, "bidirectional": False,
           "seq_len": 16, "batch": 1, "mode": "infer", "ext_median_ms": 0.25, "torch_median_ms": 0.75,
           "speedup": 3.0, "max_abs_diff": 1e-7}
    (out / "sweep.json").write_text(json.dumps({"environment": {"nn_lstm_backend": {"name": "cuDNN"}},
                                                "results": [row]}))
elif role == "recurrence":
    if "LSTM_EXT_CUDA_RECURRENCE" in os.environ:
        sys.exit("LSTM_EXT_CUDA_RECURRENCE was inherited")
    if behaviour == "hang":
        time.sleep(60)
    out = Path(sys.argv[sys.argv.index("--time-recurrence") + 1])
    out.mkdir(parents=True)
    row = {"batch": 1, "hidden": 256, "dtype": "float32", "mode": "infer", "seq_len": 256,
           "median_ms": {"alternating": 2.0, "nn.LSTM": 0.6} | ({} if behaviour == "disagree" else {"persistent": 0.5}),
           "unavailable": {},
           "disagreement": {"persistent": "disagrees with alternating: not close"} if behaviour == "disagree" else {},
           "predicted": {"gpu_model": "H200 SXM", "persistent_over_alternating": 0.2, "persistent_over_cudnn": 0.9}}
    (out / "recurrence.json").write_text(json.dumps({
        "environment": {"gpu": "NVIDIA H200"}, "complete": True, "seconds": 1.0, "rows": [] if behaviour == "empty"
        else [row], "settings": {"seq_len": 256, "timeout_s": float(os.environ["GPU_CHECK_STEP_TIMEOUT_S"])}}))
    sys.exit(1 if behaviour == "disagree" else 0)
'''


@pytest.fixture
def stand_ins(gpu_check, monkeypatch, tmp_path):
    """Replaces every step's command by STAND_IN (same env, caps and logs); returns a runner."""
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    real_plan = gpu_check.make_plan

    def run(monkeypatch=monkeypatch, **behaviours):
        def plan(capability, jobs, python, report_dir):
            steps = real_plan(capability, jobs, python, report_dir)
            return [dataclasses.replace(
                s, argv=(sys.executable, str(script), s.name, behaviours.get(s.name, "ok"), *s.argv[1:]),
                cap_s=behaviours.get(s.name + "_cap", s.cap_s)) for s in steps]

        monkeypatch.setattr(gpu_check, "make_plan", plan)
        monkeypatch.setenv("FORCE_CPU", "1")  # would make the real build CPU-only: the steps must not see it
        monkeypatch.setenv("LSTM_EXT_CUDA_RECURRENCE", "persistent")  # the recurrence stage must not inherit it
        monkeypatch.setattr(gpu_check, "GRACE_S", 2)
        monkeypatch.setattr(gpu_check, "MIN_STEP_S", 1)
        report_dir = tmp_path / "gpu-check" / "run"
        code = gpu_check.run_check(gpu_check.parse_args(["--jobs", "7"]), report_dir)
        return code, report_dir, json.loads((report_dir / "summary.json").read_text())

    return run


def test_a_failing_test_does_not_stop_the_sweep_and_fails_the_run(stand_ins, capsys):
    code, report_dir, summary = stand_ins(sweep="disagree")
    assert code == 1
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [
        ("preflight", "ok"), ("build", "ok"), ("verify", "ok"), ("tests", "failed"), ("sweep", "failed"),
        ("sweep-tf32-off", "ok"), ("recurrence", "ok")]
    assert "arch 9.0 jobs 7 False" in (report_dir / "build.log").read_text()
    report = (report_dir / "report.md").read_text()
    assert "**1 passed, 1 failed, 0 errors, 0 skipped**" in report
    assert "- `tests/test_ops.py::test_backward[cuda]` (failed): AssertionError: not close" in report
    assert "No results (failed: lstm_ext and nn.LSTM disagree (see sweep.log))" in report
    assert "| 128 | 1 | 16 | 1 | 0.250 / 0.750 | 3.00x | 1.0e-07 |" in report
    assert report.index("## Benchmark sweep") < report.index("## Recurrence paths") < report.index("## Raw files")
    assert "| float32 | 256 | 1 | 0.500 | 2.000 | 0.600 | 0.25 | 0.20 | 0.83 | 0.90 |" in report
    # The stage learned its own timeout from the environment.
    steps = {s["name"]: s for s in summary["steps"]}
    assert summary["recurrence"]["settings"]["timeout_s"] == round(steps["recurrence"]["timeout_s"])
    assert summary["verdict_reasons"] == ["tests failed"]
    assert capsys.readouterr().out.rstrip().endswith(f"Report: {report_dir / 'report.md'}")


def test_a_hanging_test_suite_is_stopped_and_reported(stand_ins):
    code, report_dir, summary = stand_ins(tests="hang", tests_cap=2)
    assert code == 1
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["tests"]["status"] == "timed out" and steps["tests"]["seconds"] < 10
    assert steps["sweep"]["status"] == "ok" and "sweep-tf32-off" not in steps
    assert steps["recurrence"]["status"] == "ok"
    report = (report_dir / "report.md").read_text()
    assert "**The test step timed out after 2 s**; it was running `tests/test_cuda.py::test_hangs[cuda]`" in report
    assert summary["verdict_reasons"] == ["the tests timed out"]


def test_a_failed_build_skips_the_tests_and_the_sweep(stand_ins):
    code, report_dir, summary = stand_ins(build="fail")
    assert code == 1
    assert [(s["name"], s["status"]) for s in summary["steps"]][1:] == [
        ("build", "failed"), ("verify", "skipped"), ("tests", "skipped"), ("sweep", "skipped"),
        ("recurrence", "skipped")]
    report = (report_dir / "report.md").read_text()
    assert "Last lines of build.log:" in report and "code=sm_90 pointwise_cuda.cu" in report
    assert summary["verdict_reasons"][0] == "the build failed"


def test_a_build_the_tests_would_not_import_stops_the_run(stand_ins):
    code, report_dir, summary = stand_ins(verify="stale")
    assert code == 1
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["verify"]["status"] == "failed" and "older than this build" in steps["verify"]["note"]
    assert steps["tests"]["status"] == "skipped" and steps["sweep"]["status"] == "skipped"
    assert steps["recurrence"]["status"] == "skipped"
    assert summary["verdict_reasons"] == ["the built module failed its check (verify.log)"]


def test_a_disagreeing_persistent_path_fails_the_run(stand_ins):
    code, report_dir, summary = stand_ins(recurrence="disagree")
    assert code == 1
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["recurrence"]["status"] == "failed" and steps["sweep"]["status"] == "ok"
    assert "the recurrence paths disagree at 1 measurements (report: Recurrence paths)" in summary["verdict_reasons"]
    report = (report_dir / "report.md").read_text()
    assert "| float32 | 256 | 1 | not timed (disagrees with alternating: not close) |" in report
    assert "- **problem:** infer float32 H=256 B=1: persistent disagrees with alternating: not close" in report


def test_a_hanging_recurrence_stage_is_stopped_and_fails_the_run(stand_ins):
    code, report_dir, summary = stand_ins(recurrence="hang", recurrence_cap=2)
    assert code == 1
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["recurrence"]["status"] == "timed out" and steps["recurrence"]["seconds"] < 10
    assert summary["verdict_reasons"][-1].startswith("the recurrence benchmark timed out")
    assert "## Recurrence paths" in (report_dir / "report.md").read_text()


def test_a_recurrence_stage_without_rows_fails_the_run(stand_ins):
    code, report_dir, summary = stand_ins(recurrence="empty")
    assert code == 1
    assert summary["verdict_reasons"][-1] == "the recurrence benchmark produced no results (ok)"
    assert "No results (ok)" in (report_dir / "report.md").read_text()


# --- the recurrence stage ------------------------------------------------------------------------------

def test_recurrence_grid_is_the_cost_models_small_batches_first(gpu_check):
    import cost_model
    points = gpu_check.recurrence_points()
    assert sorted(points) == sorted((b, h, d) for b in cost_model.GRID_BATCHES for h in cost_model.GRID_HIDDEN
                                    for d in cost_model.DTYPES)
    assert len(points) == 4 * 3 * 2 and len(set(points)) == len(points)
    assert [b for b, _, _ in points] == sorted(b for b, _, _ in points)  # B=1 first: cut short, those stay
    assert gpu_check.RECURRENCE_SEQ_LEN == 256 and gpu_check.RECURRENCE_MODES == ("infer", "train")
    assert gpu_check.PERSISTENT_KERNELS["train"] == ("lstm_persistent_forward_kernel", "lstm_persistent_backward_kernel")


def test_measurement_budget_shares_the_time_left(gpu_check):
    assert gpu_check.measurement_budget(90, 10) == pytest.approx(3.0)
    assert gpu_check.measurement_budget(90, 0) == pytest.approx(30.0)
    assert gpu_check.measurement_budget(-5, 10) == 0.0
    # The whole grid within the recurrence stage's worst-case timeout: 144 measurements, 60 s less the margin.
    grid = len(gpu_check.recurrence_points()) * len(gpu_check.RECURRENCE_MODES) * 3
    assert grid == 144 and gpu_check.measurement_budget(60 - gpu_check.RECURRENCE_MARGIN_S, grid) < 0.12


def test_unavailable_reason_is_the_errors_first_line(gpu_check):
    error = RuntimeError("lstm_ext: LSTM_EXT_CUDA_RECURRENCE=persistent: batch 96 exceeds the persistent kernel's "
                         "limit of 64 rows\nException raised from launch at csrc/cuda/persistent_cuda.cu:120")
    assert gpu_check.unavailable_reason(error) == ("lstm_ext: LSTM_EXT_CUDA_RECURRENCE=persistent: batch 96 exceeds "
                                                  "the persistent kernel's limit of 64 rows")
    located = RuntimeError("W_hh slices need 300 KiB of shared memory per block, 227 KiB available "
                           "(Exception raised from plan at persistent_launch.h:40 (most recent call first))")
    assert gpu_check.unavailable_reason(located) == ("W_hh slices need 300 KiB of shared memory per block, 227 KiB "
                                                    "available")
    assert gpu_check.unavailable_reason(RuntimeError("")) == "RuntimeError"
    # A crash is a problem of the run, not the contract's refusal.
    assert gpu_check.CUDA_FAULT.search("CUDA error: an illegal memory access was encountered")
    assert not gpu_check.CUDA_FAULT.search(str(error)) and not gpu_check.CUDA_FAULT.search(str(located))


def test_predicted_ratios_come_from_the_cost_model_for_that_gpu(gpu_check):
    import cost_model
    h200 = gpu_check.predicted_ratios(8, 512, "bfloat16", "train", "NVIDIA H200")
    model = cost_model.predict(8, 512, "bfloat16", "train", 256, cost_model.GPUS["h200"])
    assert h200 == {"gpu_model": "H200 SXM",
                    "persistent_over_alternating": round(model.ratio("persistent", "alternating"), 4),
                    "persistent_over_cudnn": round(model.ratio("persistent", "cudnn"), 4)}
    assert gpu_check.predicted_ratios(8, 512, "bfloat16", "train", "NVIDIA H100 80GB HBM3")["gpu_model"] == "H100 SXM5"


def recurrence_row(gpu_check, mode, dtype, hidden, batch, ms, unavailable=None, disagreement=None):
    return {"batch": batch, "hidden": hidden, "dtype": dtype, "mode": mode, "seq_len": 256, "median_ms": ms,
            "min_ms": ms, "runs": {name: 5 for name in ms}, "unavailable": unavailable or {},
            "disagreement": disagreement or {}, "max_abs_diff_vs_alternating": {}, "notes": [],
            "predicted": gpu_check.predicted_ratios(batch, hidden, dtype, mode, "NVIDIA H200")}


def recurrence_document(gpu_check, disagree=False):
    rows = [
        recurrence_row(gpu_check, "infer", "float32", 256, 1, {"persistent": 0.5, "alternating": 2.5, "nn.LSTM": 0.625}),
        recurrence_row(gpu_check, "infer", "bfloat16", 1024, 64, {"alternating": 3.0, "nn.LSTM": 1.0},
                       unavailable={"persistent": "batch 64 exceeds the persistent limit of 32"}),
        recurrence_row(gpu_check, "train", "float32", 512, 8, {"alternating": 8.0, "nn.LSTM": 2.5} if disagree else
                       {"persistent": 2.0, "alternating": 8.0, "nn.LSTM": 2.5},
                       disagreement={"persistent": "disagrees with alternating: output 0: not close"} if disagree
                       else None),
    ]
    return {"environment": {"gpu": "NVIDIA H200", "cudnn_version": 91002, "cudnn_allow_tf32": True},
            "settings": {"seq_len": 256, "repeats": 5}, "rows": rows, "complete": False, "seconds": 42.0,
            "not_run": [{"batch": 64, "hidden": 1024, "dtype": "bfloat16", "mode": "train"}]}


def test_recurrence_table_shows_measured_and_predicted_ratios(gpu_check):
    document = recurrence_document(gpu_check)
    text = gpu_check.recurrence_markdown(document)
    p = {(r["mode"], r["hidden"]): r["predicted"] for r in document["rows"]}
    assert text.startswith("3 points measured (incomplete) in 42.0 s on NVIDIA H200, T=256")
    assert "cost model's prediction (H200 SXM, `benchmarks/cost_model.py`)" in text
    assert text.index("### Inference (forward)") < text.index("### Training step (forward + backward)")
    assert (f"| float32 | 256 | 1 | 0.500 | 2.500 | 0.625 | 0.20 | "
            f"{p['infer', 256]['persistent_over_alternating']:.2f} | 0.80 | "
            f"{p['infer', 256]['persistent_over_cudnn']:.2f} |") in text
    assert (f"| bfloat16 | 1024 | 64 | n/a (batch 64 exceeds the persistent limit of 32) | 3.000 | 1.000 | - | "
            f"{p['infer', 1024]['persistent_over_alternating']:.2f} | - |") in text
    assert f"| float32 | 512 | 8 | 2.000 | 8.000 | 2.500 | 0.25 | " in text
    errors_a = [0.2 / p["infer", 256]["persistent_over_alternating"], 0.25 / p["train", 512]["persistent_over_alternating"]]
    mean_a = (errors_a[0] * errors_a[1]) ** 0.5
    assert (f"- P / A: measured / predicted, geometric mean {mean_a:.2f} (range {min(errors_a):.2f} – "
            f"{max(errors_a):.2f}) over 2 measurements") in text
    assert "- persistent path timed at 2 of 3 measured points" in text
    assert "- n/a at 1 points: persistent: batch 64 exceeds the persistent limit of 32" in text
    assert "- not run (the stage's time ran out): 1 measurements, from train bfloat16 H=1024 B=64" in text
    assert gpu_check.recurrence_problems(document) == []


def test_a_disagreement_is_a_problem_and_not_timed(gpu_check):
    document = recurrence_document(gpu_check, disagree=True)
    assert gpu_check.recurrence_problems(document) == [
        "train float32 H=512 B=8: persistent disagrees with alternating: output 0: not close"]
    text = gpu_check.recurrence_markdown(document)
    assert "| float32 | 512 | 8 | not timed (disagrees with alternating: output 0: not close) | 8.000 | 2.500 | - |" in text
    assert "- **problem:** train float32 H=512 B=8: persistent disagrees with alternating" in text
    assert "- persistent path timed at 1 of 3 measured points" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_time_recurrence_on_this_gpu(gpu_check, tmp_path):
    import lstm_ext
    if "cuda" not in lstm_ext.compiled_backends():
        pytest.skip("lstm_ext was built without CUDA (FORCE_CPU=1 or no toolkit)")
    document = gpu_check.time_recurrence(tmp_path, timeout_s=gpu_check.RECURRENCE_MARGIN_S + 12)
    assert json.loads((tmp_path / "recurrence.json").read_text())["rows"] == document["rows"]
    assert document["rows"], "no point measured in 12 s"
    assert document["seconds"] <= gpu_check.RECURRENCE_MARGIN_S + 12  # it stopped itself before its timeout
    assert document["complete"] or document["not_run"]
    assert os.environ.get("LSTM_EXT_CUDA_RECURRENCE") is None
    first = document["rows"][0]
    assert (first["batch"], first["mode"]) == (1, "infer")
    assert first["median_ms"]["alternating"] > 0 and first["median_ms"]["nn.LSTM"] > 0
    assert "persistent" in first["median_ms"] or first["unavailable"].get("persistent")
    assert gpu_check.recurrence_problems(document) == []


class FakeProfile:
    """torch.profiler.profile as the recurrence stage uses it, reporting the persistent kernels as launched
    when LSTM_EXT_CUDA_RECURRENCE was `persistent_when` at the end of the profiled call (any value: None)."""
    persistent_when = "persistent"

    def __init__(self, activities):
        self.names = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        value = os.environ.get("LSTM_EXT_CUDA_RECURRENCE")
        if self.persistent_when is None or value == self.persistent_when:
            self.names = ["void lstm_ext::cuda::lstm_persistent_forward_kernel<float>(Params)",
                          "void lstm_ext::cuda::lstm_persistent_backward_kernel<float>(Params)", "gemv2T_kernel"]
        else:
            self.names = ["ampere_sgemm_32x32_sliced1x4_nn", "void lstm_ext::cuda::forward_step_kernel<float>()"]
        return False

    def events(self):
        return [types.SimpleNamespace(name=name) for name in self.names]


@pytest.mark.parametrize("profiler", ["unavailable", "no persistent kernels", "persistent kernels",
                                      "persistent kernels for every value", "persistent kernels, wrong results"])
def test_time_recurrence_procedure_on_the_cpu(gpu_check, tmp_path, monkeypatch, profiler):
    """The stage's procedure where no GPU is, on a tiny grid: each point and mode becomes a row, the variable
    is set per call and restored after, and the persistent setting is timed only where the profiler saw its
    kernels run; the alternating setting running them is a problem."""
    import lstm_ext
    import torch.profiler
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny calls: OpenMP threads would only wait on each other (and on a busy machine)
    monkeypatch.setattr(gpu_check, "RECURRENCE_BATCHES", (1,))
    monkeypatch.setattr(gpu_check, "RECURRENCE_HIDDEN", (8, 16))
    monkeypatch.setattr(gpu_check, "RECURRENCE_DTYPES", ("float32",))
    monkeypatch.setattr(gpu_check, "RECURRENCE_SEQ_LEN", 4)
    monkeypatch.setattr(gpu_check, "RECURRENCE_REPEATS", 3)
    monkeypatch.setenv("LSTM_EXT_CUDA_RECURRENCE", "auto")
    monkeypatch.delattr(lstm_ext, "cuda_recurrence", raising=False)
    if profiler == "unavailable":
        monkeypatch.setattr(torch.profiler, "profile", lambda activities: (_ for _ in ()).throw(
            AssertionError("No activities specified for the profiler")))
    else:
        monkeypatch.setattr(FakeProfile, "persistent_when",
                            None if profiler == "persistent kernels for every value" else "persistent")
        if profiler == "no persistent kernels":
            monkeypatch.setattr(FakeProfile, "persistent_when", "never")
        monkeypatch.setattr(torch.profiler, "profile", FakeProfile)
    if profiler == "persistent kernels, wrong results":
        import lstm_workloads
        real_steps = lstm_workloads.lstm_steps

        def steps_with_a_wrong_persistent_path(modules, x, mode):
            steps = real_steps(modules, x, mode)
            ext = steps["ext"]

            def step():
                outputs, gradients = ext()
                if os.environ["LSTM_EXT_CUDA_RECURRENCE"] == "persistent":
                    outputs = (outputs[0] + 1e-2, *outputs[1:])
                return outputs, gradients
            return steps | {"ext": step}
        monkeypatch.setattr(lstm_workloads, "lstm_steps", steps_with_a_wrong_persistent_path)
    try:
        document = gpu_check.time_recurrence(tmp_path, timeout_s=gpu_check.RECURRENCE_MARGIN_S + 300, device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert os.environ["LSTM_EXT_CUDA_RECURRENCE"] == "auto"
    assert document["complete"] and not document["not_run"]
    assert json.loads((tmp_path / "recurrence.json").read_text())["rows"] == document["rows"]
    assert [(r["hidden"], r["mode"]) for r in document["rows"]] == [(8, "infer"), (8, "train"), (16, "infer"),
                                                                    (16, "train")]
    for row in document["rows"]:
        assert row["median_ms"]["nn.LSTM"] > 0 and row["runs"]["nn.LSTM"] == 3
        assert row["predicted"]["gpu_model"] == "H100 SXM5"
        reason = row["unavailable"].get("persistent")
        if profiler == "unavailable":
            assert reason == "cannot tell which path ran: no profiler, and this lstm_ext has no cuda_recurrence()"
        elif profiler == "no persistent kernels":
            kernels = ", ".join(gpu_check.PERSISTENT_KERNELS[row["mode"]])
            assert reason == f"LSTM_EXT_CUDA_RECURRENCE=persistent ran no {kernels}: this build has no persistent path"
        elif profiler == "persistent kernels, wrong results":
            assert reason is None and "persistent" not in row["median_ms"]
            assert row["disagreement"]["persistent"].startswith("disagrees with alternating: output 0")
            assert row["max_abs_diff_vs_alternating"]["persistent"] == pytest.approx(1e-2)
            continue
        else:
            assert reason is None and sorted(row["persistent_kernels"]) == sorted(gpu_check.PERSISTENT_KERNELS["train"])
            assert row["median_ms"]["persistent"] > 0  # seen running (here: the CPU path, which ignores it)
        if profiler == "persistent kernels for every value":  # checked again at the next point: it never passed
            assert "alternating" not in row["median_ms"] and "persistent" not in row["max_abs_diff_vs_alternating"]
            assert "the variable did not reach the op" in row["disagreement"]["alternating"]
            assert any("not checked against the alternating path" in note for note in row["notes"])
        else:
            if profiler == "persistent kernels":
                assert row["max_abs_diff_vs_alternating"]["persistent"] == 0.0
            assert row["disagreement"] == {} and row["median_ms"]["alternating"] > 0
            assert row["max_abs_diff_vs_alternating"]["nn.LSTM"] < 1e-5
    problems = gpu_check.recurrence_problems(document)
    assert len(problems) == (4 if profiler in ("persistent kernels for every value",
                                               "persistent kernels, wrong results") else 0)
    text = gpu_check.recurrence_markdown(document)
    timed = 4 if profiler in ("persistent kernels", "persistent kernels for every value") else 0
    assert f"- persistent path timed at {timed} of 4 measured points" in text
