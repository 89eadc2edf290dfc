"""Smoke test of benchmarks/variants.py at a tiny size: the files it writes, every row of the table, the
agreement check that stops it, and its plain-PyTorch loops against nn.LSTM and against each other.

Timings are not checked beyond being positive and consistent with the ratios written next to them.
"""

import csv
import json
import math

import pytest
import torch

import lstm_ext

TINY = ["--seq-len", "5", "--batch", "3", "--hidden-size", "8", "--input-size", "6", "--repeats", "2",
        "--warmup-time", "0", "--min-run-time", "0.001"]
VARIANT_ROWS = ["lstm_ext forget_bias=1.0", "lstm_ext return_cell_states=True", "lstm_ext recurrent_dropout=0.25",
                "lstm_ext zoneout=0.1", "lstm_ext layer_norm=True", "lstm_ext peephole=True",
                "lstm_ext all of the above"]
LOOP_ROWS = ["loop cell states (nn.LSTMCell)", "loop recurrent dropout (nn.LSTMCell)", "loop zoneout (nn.LSTMCell)",
             "loop layer norm (F.linear + F.layer_norm)", "loop peephole (F.linear)",
             "loop all variants (F.linear + F.layer_norm)"]


@pytest.fixture
def variants(import_benchmark):
    return import_benchmark("variants")


def read_results(paths):
    with open(paths["csv"], newline="") as file:
        rows = list(csv.DictReader(line for line in file if not line.startswith("#")))
    document = json.loads(paths["json"].read_text())
    return rows, document, {result["name"]: result for result in document["results"]}


def test_variants_benchmark_writes_every_row_to_csv_and_json(variants, tmp_path):
    paths = variants.main([*TINY, "--out", str(tmp_path)])
    assert paths == {kind: tmp_path / f"variants.{kind}" for kind in ("csv", "json")}

    rows, document, results = read_results(paths)
    assert list(rows[0]) == list(variants.COLUMNS)
    assert [row["name"] for row in rows] == ["nn.LSTM", "lstm_ext", *VARIANT_ROWS, *LOOP_ROWS]
    assert {"environment", "settings", "columns", "results"} <= set(document)
    assert document["settings"]["seq_len"] == 5 and document["settings"]["hidden_size"] == 8
    assert document["environment"]["cpu_model"]
    assert list(results) == [row["name"] for row in rows]
    plain_ms = results["lstm_ext"]["median_ms"]
    assert results["lstm_ext"]["ratio_to_plain_ext"] == 1.0
    assert document["settings"]["check_dtype"] == "float64"
    assert results["lstm_ext"]["checked_against"] == "nn.LSTM" and results["lstm_ext"]["max_abs_diff"] <= 1e-9

    for name, result in results.items():
        assert set(result) == set(variants.COLUMNS), name
        assert result["available"] is True and result["note"] is None, name
        assert math.isfinite(result["median_ms"]) and 0 < result["min_ms"] <= result["median_ms"], name
        assert result["repeats"] == 2, name
        assert math.isclose(result["ratio_to_plain_ext"], result["median_ms"] / plain_ms), name
        assert math.isclose(result["min_ratio_to_plain_ext"], result["min_ms"] / results["lstm_ext"]["min_ms"]), name
    for name in VARIANT_ROWS:
        result = results[name]
        assert result["target_ratio"] == (None if name.endswith("all of the above") else
                                          1.5 if "layer_norm" in name else 1.25), name
        assert result["checked_against"] and result["max_abs_diff"] <= 1e-9, name
        assert result["max_grad_rel_diff"] <= 1e-9, name
        assert result["meets_target"] == (None if result["target_ratio"] is None else
                                          result["ratio_to_plain_ext"] <= result["target_ratio"]), name
        if result["loop_name"]:
            loop_ms = results[result["loop_name"]]["median_ms"]
            assert math.isclose(result["speedup_over_loop"], loop_ms / result["median_ms"]), name
    assert results["lstm_ext forget_bias=1.0"]["loop_name"] is None  # an initialisation: no loop of its own
    assert results["lstm_ext zoneout=0.1"]["checked_against"] == "loop zoneout (nn.LSTMCell), lstm_ext's masks"


class PreVariantsLSTM(lstm_ext.LSTM):
    """lstm_ext.LSTM as it was before the variants: nn.LSTM's arguments only."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size,
                         device, dtype)

    def forward(self, input, hx=None):
        return super().forward(input, hx)


def test_variants_an_lstm_ext_without_them_cannot_take_are_not_available(variants, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lstm_ext, "LSTM", PreVariantsLSTM)
    _, _, results = read_results(variants.main([*TINY, "--out", str(tmp_path)]))
    table = capsys.readouterr().out.splitlines()
    for name in VARIANT_ROWS:
        assert any(line.startswith(name) and line.endswith("not available") for line in table), name
    for name in VARIANT_ROWS:
        result = results[name]
        assert not result["available"] and result["median_ms"] is None and result["speedup_over_loop"] is None
        assert result["note"].startswith("not available: ") and "unexpected keyword argument" in result["note"]
    assert "'return_cell_states'" in results["lstm_ext return_cell_states=True"]["note"]
    for name in ["nn.LSTM", "lstm_ext", *LOOP_ROWS]:  # the loops still run, on stand-in weights
        assert results[name]["available"] and results[name]["median_ms"] > 0, name


def test_a_disagreeing_row_stops_the_benchmark_before_anything_is_written(variants, tmp_path, monkeypatch):
    real_ext_forward = variants.ext_forward

    def wrong_ext_forward(module, cell_states):
        forward = real_ext_forward(module, cell_states)

        def wrong(x):
            output, *rest = forward(x)
            return (output + 1e-2, *rest)

        return wrong

    monkeypatch.setattr(variants, "ext_forward", wrong_ext_forward)
    with pytest.raises(variants.AgreementError, match="lstm_ext and nn.LSTM disagree"):
        variants.main([*TINY, "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def loop_pair(variants, rates, seed=0):
    """A CellLoop and a ManualLoop with the same weights, from nn.LSTM's (float64)."""
    torch.manual_seed(seed)
    reference = torch.nn.LSTM(6, 8, dtype=torch.float64)
    weights = reference.state_dict()
    cell_loop = variants.CellLoop(6, 8, **rates).double().load_from(weights)
    manual_loop = variants.ManualLoop(6, 8, **rates).double().load_from(weights)
    return reference, cell_loop, manual_loop


def test_both_loops_without_variants_compute_nn_lstm(variants):
    reference, cell_loop, manual_loop = loop_pair(variants, {})
    x = torch.randn(5, 3, 6, dtype=torch.float64)
    expected_output, (expected_h, expected_c) = reference(x)
    for loop in (cell_loop, manual_loop):
        output, (h_n, c_n), cells = loop(x)
        torch.testing.assert_close(output, expected_output, rtol=0, atol=1e-12)
        torch.testing.assert_close((h_n, c_n), (expected_h, expected_c), rtol=0, atol=1e-12)
        torch.testing.assert_close(cells[-1], expected_c[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("rates", [{"recurrent_dropout": 0.25}, {"zoneout": 0.3},
                                   {"recurrent_dropout": 0.5, "zoneout": 0.2}])
def test_the_two_loops_agree_on_dropout_and_zoneout_with_the_same_masks(variants, rates):
    _, cell_loop, manual_loop = loop_pair(variants, rates)
    x = torch.randn(5, 3, 6, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    masks = variants.LoopMasks(
        recurrent=torch.bernoulli(torch.full((3, 8), 0.5, dtype=torch.float64), generator=generator) * 2,
        cell=torch.bernoulli(torch.full((5, 3, 8), 0.4, dtype=torch.float64), generator=generator),
        hidden=torch.bernoulli(torch.full((5, 3, 8), 0.4, dtype=torch.float64), generator=generator))
    by_cell, by_manual = cell_loop(x, masks), manual_loop(x, masks)
    torch.testing.assert_close(by_manual, by_cell, rtol=0, atol=1e-12)
    # The masks act: without them (eval: no dropout, zoneout by its rate) the result differs.
    assert not torch.allclose(cell_loop.eval()(x)[0], by_cell[0])
    if "zoneout" in rates:  # a kept unit holds its previous value exactly
        kept = masks.cell[1:].bool()
        assert torch.equal(by_cell[2][1:][kept], by_cell[2][:-1][kept])


def test_loops_draw_fresh_masks_per_step_and_one_recurrent_mask_per_sequence(variants, monkeypatch):
    draws = []
    real_recurrent, real_zoneout = variants.draw_recurrent_mask, variants.draw_zoneout_mask
    monkeypatch.setattr(variants, "draw_recurrent_mask",
                        lambda *args: draws.append("recurrent") or real_recurrent(*args))
    monkeypatch.setattr(variants, "draw_zoneout_mask", lambda *args: draws.append("zoneout") or real_zoneout(*args))
    for loop in loop_pair(variants, {"recurrent_dropout": 0.25, "zoneout": 0.1})[1:]:
        draws.clear()
        loop(torch.randn(5, 3, 6, dtype=torch.float64))
        assert draws == ["recurrent"] + ["zoneout"] * 2 * 5
