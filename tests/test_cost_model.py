"""benchmarks/cost_model.py: the persistent kernel's cost model (a prediction). The README's generated tables
are the script's output, the FLOP and byte counts follow their formulas, the printed ratios and crossovers
agree with the times they come from, and the calibrated constants still reproduce their calibration."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "cost_model.py"


@pytest.fixture
def cm(import_benchmark):
    return import_benchmark("cost_model")


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def table_rows(text, title):
    """The data rows of the markdown table that follows the line starting with `title`, as lists of cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # header and rule


def test_readme_section_holds_the_scripts_output(cm):
    done = run_script()
    assert done.returncode == 0, done.stderr
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    assert "## Persistent kernel: cost model (a prediction)" in readme
    assert cm.readme_block(readme) == done.stdout.rstrip("\n"), (
        "benchmarks/README.md's generated block is stale: run python benchmarks/cost_model.py --write-readme")


def test_write_readme_replaces_only_the_block(cm, tmp_path):
    page = tmp_path / "README.md"
    page.write_text(f"before\n{cm.BLOCK_BEGIN}\nold table\n{cm.BLOCK_END}\nafter\n")
    cm.write_readme("new | table", page)
    assert page.read_text() == f"before\n{cm.BLOCK_BEGIN}\nnew | table\n{cm.BLOCK_END}\nafter\n"
    assert cm.readme_block(page.read_text()) == "new | table"
    page.write_text("no markers\n")
    with pytest.raises(ValueError, match="no block between"):
        cm.write_readme("x", page)


@pytest.mark.parametrize("batch, hidden", [(1, 256), (8, 512), (64, 1024), (3, 100)])
def test_flop_counts(cm, batch, hidden):
    recurrent = 2 * batch * hidden * 4 * hidden
    assert cm.recurrent_flops(batch, hidden) == recurrent
    assert cm.projection_flops(batch, hidden, hidden) == recurrent  # I = H: the same GEMM size per step
    assert cm.training_hoisted_flops(batch, hidden, hidden) == 4 * recurrent
    assert cm.projection_flops(batch, 2 * hidden, hidden) == 2 * recurrent
    p = cm.predict(batch, hidden, "float32", "train")
    for path in cm.PATHS:
        forward, backward = p.recurrence[path]
        assert forward.flops == backward.flops == recurrent, path


def test_persistent_geometry_and_shared_memory(cm):
    gpu, a = cm.GPUS["h100"], cm.Assumptions()
    assert cm.w_hh_bytes(1024, "float32") == 16 * 2 ** 20
    assert cm.w_hh_bytes(1024, "bfloat16") == 8 * 2 ** 20
    for hidden in (256, 512, 1024, 1000, 131, 133):
        g = cm.persistent_geometry(hidden, "float32", gpu, a)
        assert g.blocks <= gpu.sm_count and g.blocks * g.units_per_block >= hidden
        assert (g.blocks - 1) * g.units_per_block < hidden  # no empty block
        assert g.slice_bytes == 4 * g.units_per_block * hidden * 4
    g = cm.persistent_geometry(1024, "float32", gpu, a)
    assert (g.blocks, g.units_per_block, g.slice_bytes, g.fits) == (128, 8, 128 * 1024, True)
    too_big = cm.persistent_geometry(2048, "float32", gpu, a)
    assert not too_big.fits and "KiB" in too_big.reason and "227 KiB" in too_big.reason
    for dtype in cm.DTYPES:
        largest = cm.largest_hidden_that_fits(dtype, gpu, a)
        assert cm.persistent_geometry(largest, dtype, gpu, a).fits
        assert not cm.persistent_geometry(largest + 8, dtype, gpu, a).fits
    assert cm.largest_hidden_that_fits("bfloat16", gpu, a) > cm.largest_hidden_that_fits("float32", gpu, a) > 1024
    assert not cm.predict(1, 2048, "float32", "infer").persistent_supported


def test_traffic_per_step(cm):
    gpu, a = cm.GPUS["h100"], cm.Assumptions()
    batch, hidden = 8, 512
    g = cm.persistent_geometry(hidden, "float32", gpu, a)
    forward = cm.persistent_forward_step(batch, hidden, "float32", False, gpu, a)
    backward = cm.persistent_backward_step(batch, hidden, "float32", gpu, a)
    assert forward.l2_bytes == g.blocks * batch * hidden * 4 + 2 * batch * hidden * 4  # h to every block; h, c out
    assert backward.l2_bytes - 4 * batch * hidden * 4 == g.blocks * batch * 4 * hidden * 4  # all of dG to every block
    assert forward.barriers == backward.barriers == 1 and forward.launches == 0
    # The alternating step re-reads W_hh every step: from L2 while it is resident, else from HBM.
    small = cm.alternating_step(batch, hidden, "float32", False, gpu, a)
    assert small.hbm_bytes == 0 and small.l2_bytes > cm.w_hh_bytes(hidden, "float32") and small.launches == 2
    large = cm.alternating_step(batch, 4096, "float32", False, gpu, a)  # 256 MiB of W_hh
    assert large.hbm_bytes == cm.w_hh_bytes(4096, "float32")
    assert cm.gemm_math("cudnn", "float32") == "tf32" and cm.gemm_math("alternating", "float32") == "fp32"
    assert cm.gemm_math("cudnn", "bfloat16") == cm.gemm_math("persistent", "bfloat16") == "bf16"


def test_printed_tables_match_the_predictions(cm):
    text = cm.markdown()
    for mode, title in (("infer", "Forward (inference)"), ("train", "Training step")):
        rows = table_rows(text, title)
        points = [p for p in cm.grid() if p.mode == mode]
        assert len(rows) == len(points) == len(cm.DTYPES) * len(cm.GRID_HIDDEN) * len(cm.GRID_BATCHES)
        for row, p in zip(rows, points):
            dtype, hidden, batch, persistent, alternating, cudnn, p_over_a, p_over_c = row[:8]
            assert (dtype, int(hidden), int(batch)) == (p.dtype, p.hidden, p.batch)
            assert float(persistent) == pytest.approx(p.us_per_step["persistent"], rel=0.01, abs=0.006)
            # The printed ratio is the quotient of the printed times (to their rounding).
            assert float(p_over_a) == pytest.approx(float(persistent) / float(alternating), rel=0.02, abs=0.006)
            assert float(p_over_c) == pytest.approx(float(persistent) / float(cudnn), rel=0.02, abs=0.006)


def test_crossover_batches_agree_with_the_ratios(cm):
    for dtype in cm.DTYPES:
        for hidden in cm.GRID_HIDDEN:
            for mode in cm.MODES:
                for over in ("alternating", "cudnn"):
                    crossover = cm.crossover_batch(hidden, dtype, mode, over)
                    ratio = lambda b: cm.predict(b, hidden, dtype, mode).ratio("persistent", over)  # noqa: E731
                    if crossover is None:
                        assert ratio(512) < 1
                        continue
                    assert ratio(crossover) >= 1
                    assert crossover == 1 or ratio(crossover - 1) < 1
                    for batch in cm.GRID_BATCHES:
                        if batch < crossover:
                            assert ratio(batch) < 1, (dtype, hidden, mode, over, batch)
    rows = table_rows(cm.markdown(), "Crossover")
    assert [(r[0], int(r[1])) for r in rows] == [(d, h) for d in cm.DTYPES for h in cm.GRID_HIDDEN]


def test_persistent_time_grows_with_batch_and_hidden(cm):
    for mode in cm.MODES:
        for dtype in cm.DTYPES:
            for hidden in cm.GRID_HIDDEN:
                times = [cm.predict(b, hidden, dtype, mode).us_per_step["persistent"] for b in (1, 2, 4, 8, 16, 32, 64)]
                assert times == sorted(times), (mode, dtype, hidden)
            by_hidden = [cm.predict(8, h, dtype, mode).us_per_step["persistent"] for h in cm.GRID_HIDDEN]
            assert by_hidden == sorted(by_hidden)


def test_calibration_still_holds(cm):
    """The calibrated constants (alternating host cost, cuDNN floors) must keep reproducing FlashRNN's figures."""
    tolerance = {"alternating (FlashRNN cuda), bfloat16, forward": 0.05,
                 "alternating (FlashRNN cuda), bfloat16, forward + backward": 0.20,
                 "nn.LSTM (cuDNN), bfloat16, forward": 0.05,
                 "nn.LSTM (cuDNN), bfloat16, forward + backward": 0.05}
    for label, measured, path, dtype, mode in cm.CALIBRATION:
        predicted_ms = cm.predict(16, 768, dtype, mode, 1024).us_per_step[path] * 1024 / 1000
        if label in tolerance:
            assert predicted_ms == pytest.approx(measured, rel=tolerance[label]), label
    rows = table_rows(cm.markdown(), "Calibration")
    assert [r[0] for r in rows] == [c[0] for c in cm.CALIBRATION]


def test_readme_claims(cm):
    """What benchmarks/README.md's prose says of the tables: persistent beats alternating at B <= 8, the auto
    threshold B*H <= 16*1024 admits only clear wins, cuDNN wins from B = 32 and loses at B = 1, and the H200
    changes the predictions by under 1%. A failure here means the prose needs rewriting with the constants."""
    points = cm.grid()
    assert all(p.ratio("persistent", "alternating") < 0.6 for p in points if p.batch <= 8)
    assert all(p.ratio("persistent", "alternating") < 0.7 for p in points if p.batch * p.hidden <= 16 * 1024)
    assert any(p.ratio("persistent", "alternating") > 1 for p in points)  # large B: the GEMMs win
    assert all(p.ratio("persistent", "cudnn") > 1 for p in points if p.batch >= 32)
    assert all(p.ratio("persistent", "cudnn") <= 1.0 + 1e-9 for p in points if p.batch == 1)
    h200 = cm.grid(gpu=cm.GPUS["h200"])
    for x, y in zip(points, h200):
        for path in cm.PATHS:
            assert y.us_per_step[path] <= x.us_per_step[path] <= 1.01 * y.us_per_step[path]


def test_barrier_override_moves_only_the_persistent_path(cm):
    base = json.loads(run_script("--json").stdout)
    slower = run_script("--json", "--set", "grid_barrier_us=2.0")
    assert slower.returncode == 0, slower.stderr
    slower = json.loads(slower.stdout)
    assert slower["assumptions"]["grid_barrier_us"] == 2.0
    added_us = 2.0 - base["assumptions"]["grid_barrier_us"]
    for b, s in zip(base["points"], slower["points"]):
        barriers_per_step = 2 if b["mode"] == "train" else 1  # one per forward step, one per backward step
        assert s["us_per_step"]["persistent"] == pytest.approx(b["us_per_step"]["persistent"]
                                                               + barriers_per_step * added_us)
        assert s["us_per_step"]["alternating"] == b["us_per_step"]["alternating"]
        assert s["us_per_step"]["cudnn"] == b["us_per_step"]["cudnn"]
        assert s["persistent_over_alternating"] == pytest.approx(
            s["us_per_step"]["persistent"] / s["us_per_step"]["alternating"])


def test_overrides_are_checked(cm):
    a, gpu = cm._override(cm.Assumptions(), cm.GPUS["h100"], "persistent_tensor_cores=1")
    assert a.persistent_tensor_cores is True
    a, gpu = cm._override(a, gpu, "persistent_tensor_cores=false")
    assert a.persistent_tensor_cores is False
    a, gpu = cm._override(a, gpu, "l2_tbs=8")
    assert gpu.l2_tbs == 8.0
    with pytest.raises(ValueError, match="takes 0, 1, true or false"):
        cm._override(a, gpu, "persistent_tensor_cores=yes")
    done = run_script("--set", "no_such_constant=1")
    assert done.returncode == 2 and "NAME one of" in done.stderr
    with pytest.raises(ValueError, match="dtype must be one of"):
        cm.predict(1, 256, "float16", "infer")
