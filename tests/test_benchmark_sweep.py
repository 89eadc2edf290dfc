"""Smoke test of benchmarks/sweep.py: a tiny grid end to end, checking the files it writes.

It finds benchmarks/ from the repository root. It does not check timings, only that the sweep runs,
agrees with itself about its columns, and produces positive speedups.
"""

import csv
import json
import math

import pytest


@pytest.fixture
def sweep(import_benchmark):
    return import_benchmark("sweep")


def test_sweep_writes_csv_json_and_png_with_positive_speedups(sweep, tmp_path):
    paths = sweep.main(["--seq-lens", "4,6", "--batches", "2", "--hidden-sizes", "8", "--repeats", "2",
                        "--min-run-time", "0.001", "--no-progress", "--out", str(tmp_path)])
    assert paths == {kind: tmp_path / f"sweep.{kind}" for kind in ("csv", "json", "png")}

    with open(paths["csv"], newline="") as file:
        lines = [line for line in file if not line.startswith("#")]
    rows = list(csv.DictReader(lines))
    assert list(rows[0]) == list(sweep.COLUMNS)
    assert {(row["seq_len"], row["mode"]) for row in rows} == {(t, m) for t in ("4", "6") for m in ("infer", "train")}
    for row in rows:
        for column in ("ext_median_ms", "torch_median_ms", "speedup"):
            value = float(row[column])
            assert math.isfinite(value) and value > 0, (column, row)
        assert float(row["max_abs_diff"]) <= 1e-5

    document = json.loads(paths["json"].read_text())
    assert {"environment", "settings", "columns", "results"} <= set(document)
    for key in ("platform", "cpu_model", "cpu_count", "torch_version", "torch_num_threads", "nn_lstm_backend",
                "lstm_ext_version", "lstm_ext_compiled_backends", "memory_method"):
        assert key in document["environment"], key
    assert len(document["results"]) == len(rows)
    for result in document["results"]:
        assert set(result) == set(sweep.COLUMNS)
        assert result["speedup"] > 0
        if result["mode"] == "train" and sweep.cpu_peak_memory_supported():
            assert result["ext_peak_mem_mib"] >= 0 and result["torch_peak_mem_mib"] >= 0

    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_refuses_to_time_disagreeing_implementations(sweep, tmp_path, monkeypatch):
    # A wrong result must stop the sweep before anything is timed or written.
    real_steps = sweep.lstm_steps

    def steps_with_a_wrong_ext(modules, x, mode):
        steps = real_steps(modules, x, mode)
        correct_step = steps["ext"]

        def wrong_step():
            (output, *rest), gradients = correct_step()
            return (output + 1e-2, *rest), gradients

        steps["ext"] = wrong_step
        return steps

    monkeypatch.setattr(sweep, "lstm_steps", steps_with_a_wrong_ext)
    with pytest.raises(sweep.AgreementError, match="disagree"):
        sweep.main(["--seq-lens", "4", "--batches", "2", "--hidden-sizes", "8", "--repeats", "1",
                    "--no-progress", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_gemm_efficiency_writes_throughputs_and_ratios(import_benchmark, tmp_path):
    module = import_benchmark("gemm_efficiency")
    result = module.main(["--seq-len", "3", "--batch", "2", "--hidden-size", "16", "--turns", "2",
                          "--out", str(tmp_path)])
    written = json.loads((tmp_path / "gemm_efficiency.json").read_text())
    assert written["best"] == result["best"] and written["hidden_size"] == 16
    for stat in ("best", "median"):
        gflops = result[stat]["gflops"]
        assert all(value > 0 for value in gflops.values())
        assert math.isclose(result[stat]["lstm_ext_over_mm"], gflops["lstm_ext"] / gflops["torch.mm"])
    with pytest.raises(SystemExit):
        module.parse_args(["--batch", "0"])
