#!/usr/bin/env python
"""Time lstm_ext.LSTM's variants in a training step, side by side with plain lstm_ext, nn.LSTM, and the
per-step loops that write each variant in plain PyTorch today.

    python benchmarks/variants.py                          # CPU float32, T=128, B=32, H=I=256
    python benchmarks/variants.py --repeats 21 --out bench-results/variants

Rows (all of them one layer, unidirectional, time-major input [T, B, I]):

- nn.LSTM and plain lstm_ext.LSTM;
- lstm_ext.LSTM with one variant each: forget_bias=1.0, return_cell_states=True, recurrent_dropout=0.25,
  zoneout=0.1, layer_norm=True, peephole=True; and all of them together;
- the loops a user writes without lstm_ext: nn.LSTMCell over the steps collecting the cell states, with
  recurrent dropout (one mask per sequence on h before the cell), with zoneout (fresh masks per step on c
  and h); and per-step matmul loops (F.linear, F.layer_norm, the gate formulas) for layer norm, peepholes
  and all variants together.

A training step is what benchmarks/lstm_workloads.py times: gradients reset to None, a forward, loss =
output.sum() (+ the cell states' sum where the row returns them), backward; the input requires a
gradient. Every module trains (dropout and zoneout draw their masks in every step).

How it is measured, in one process (the helpers are sweep.py's):

1. agreement: a float64 copy of every lstm_ext row runs a training step against a twin that shares its
   weights: plain and forget_bias against nn.LSTM, each other variant against its loop, fed the very
   masks the copy draws (lstm_ext.LSTM.sample_masks under the same seed); outputs to 1e-9, gradients
   normwise to 1e-9. A disagreement stops the benchmark before anything is timed or written;
2. warm-up, untimed, at least --warmup runs and --warmup-time seconds per row;
3. timing: up to --repeats rounds that run every row once each, in turn, so that drifting machine load
   hits all alike; after --max-time seconds no new round starts once each row has 3 runs; the time per
   step is the median over the runs.

Rows whose arguments the installed lstm_ext does not take yet print "not available" (their loops still
run). Output: a table on stdout and variants.csv, variants.json in --out (default bench-results).
The targets the table reports against (not asserted anywhere): every variant within 1.25x of plain
lstm_ext's time, layer_norm within 1.5x.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# sweep and lstm_workloads live beside this file (see the same line in sweep.py).
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lstm_ext  # noqa: E402
from lstm_workloads import Step, StepResult, assert_results_agree, lstm_input, synchronizer  # noqa: E402
from sweep import (MIN_REPEATS, AgreementError, OtherProcessesCpuMeter, calls_per_run,  # noqa: E402
                   describe_environment, dtype_name, format_ms, time_alternating,
                   utc_now, warm_up, warn_if_distorted)

OUTPUT_STEM = "variants"
DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEFAULTS = dict(seq_len=128, batch=32, hidden_size=256, repeats=11, max_time=300.0)
# The targets of the variants' cost, as ratios to plain lstm_ext's time; reported, never asserted.
TARGET_RATIO = 1.25
TARGET_RATIOS = {"layer_norm": 1.5}
# The agreement check's dtype (see agreement_check).
CHECK_DTYPE = torch.float64


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of configuring the LSTM: lstm_ext.LSTM's constructor options, and whether the forward
    returns the cell states (whose sum then joins the loss)."""

    name: str
    label: str
    options: dict
    cell_states: bool = False

    @property
    def rates(self) -> dict:
        """The options the loops take: recurrent_dropout, zoneout, layer_norm, peephole (forget_bias is init)."""
        return {key: value for key, value in self.options.items() if key != "forget_bias"}


PLAIN = Variant("plain", "plain", {})
VARIANTS = (
    Variant("forget_bias", "forget_bias=1.0", {"forget_bias": 1.0}),
    Variant("cell_states", "return_cell_states=True", {}, cell_states=True),
    Variant("recurrent_dropout", "recurrent_dropout=0.25", {"recurrent_dropout": 0.25}),
    Variant("zoneout", "zoneout=0.1", {"zoneout": 0.1}),
    Variant("layer_norm", "layer_norm=True", {"layer_norm": True}),
    Variant("peephole", "peephole=True", {"peephole": True}),
    Variant("all", "all of the above", {"forget_bias": 1.0, "recurrent_dropout": 0.25, "zoneout": 0.1,
                                        "layer_norm": True, "peephole": True}, cell_states=True),
)
VARIANTS_BY_NAME = {variant.name: variant for variant in (PLAIN, *VARIANTS)}
# The loop each variant is written as without lstm_ext: (row name, kind: "cell" for nn.LSTMCell, "manual"
# for matmuls and the gate formulas). forget_bias only changes the initial bias: it has no loop of its own.
LOOPS = {
    "cell_states": ("loop cell states (nn.LSTMCell)", "cell"),
    "recurrent_dropout": ("loop recurrent dropout (nn.LSTMCell)", "cell"),
    "zoneout": ("loop zoneout (nn.LSTMCell)", "cell"),
    "layer_norm": ("loop layer norm (F.linear + F.layer_norm)", "manual"),
    "peephole": ("loop peephole (F.linear)", "manual"),
    "all": ("loop all variants (F.linear + F.layer_norm)", "manual"),
}

# One row per timed implementation; the CSV columns in order, described in the JSON and the README.
COLUMNS = {
    "name": "the row: nn.LSTM, lstm_ext [variant], or loop <variant> (how it is written)",
    "variant": "plain, forget_bias, cell_states, recurrent_dropout, zoneout, layer_norm, peephole or all",
    "implementation": "nn.LSTM, lstm_ext, or loop (plain PyTorch, a Python loop over the steps)",
    "available": "False where the installed lstm_ext does not take the variant's arguments (nothing timed)",
    "median_ms": "median time of one training step, ms",
    "min_ms": "the fastest run's time of one training step, ms",
    "ratio_to_plain_ext": "median_ms / plain lstm_ext's median_ms (1.0: as fast as plain lstm_ext)",
    "min_ratio_to_plain_ext": "min_ms / plain lstm_ext's min_ms: the fastest runs' ratio, steadier on a busy machine",
    "target_ratio": "lstm_ext variants: the ratio_to_plain_ext aimed at (not asserted); empty for the others",
    "meets_target": "ratio_to_plain_ext <= target_ratio; empty without a target",
    "loop_name": "lstm_ext variants: the row of the loop that writes the variant in plain PyTorch",
    "speedup_over_loop": "lstm_ext variants: the loop's median_ms / this row's (> 1: lstm_ext is faster)",
    "checked_against": "the twin this row's float64 copy was compared with before timing (same weights, masks)",
    "max_abs_diff": "max |this row - its twin| over the outputs of the checked float64 run",
    "max_grad_rel_diff": "the worst gradient's max|diff| / max|twin's gradient| of the checked run",
    "repeats": "timed runs (the median is over these)",
    "calls_per_run": "steps per timed run (a fast step repeats to outlast timer noise)",
    "note": "why a row is not available",
}


# --- the loops ----------------------------------------------------------------------------------------

def draw_recurrent_mask(shape, rate: float, like: Tensor) -> Tensor:
    """Inverted dropout's mask: 0 with probability rate, else 1 / (1 - rate)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(1 - rate).div_(1 - rate)


def draw_zoneout_mask(rate: float, like: Tensor) -> Tensor:
    """1 (keep the previous value) with probability rate, else 0."""
    return torch.empty_like(like).bernoulli_(rate)


def zone_out(previous: Tensor, new: Tensor, keep: Tensor | float) -> Tensor:
    return keep * previous + (1 - keep) * new


def zoneout_step(rate: float, training: bool, masks: LoopMasks | None, t: int, previous: tuple[Tensor, Tensor],
                 new: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """(c_t, h_t) of a loop's step t from (c_{t-1}, h_{t-1}) and the plain update (c~_t, h~_t): zoneout with the
    given masks, fresh ones in training, the expectation in eval; the plain update where rate is 0."""
    (c, h), (c_new, h_new) = previous, new
    if rate == 0:
        return c_new, h_new
    if not training:
        keep_c = keep_h = rate
    elif masks:
        keep_c, keep_h = masks.cell[t], masks.hidden[t]
    else:
        keep_c, keep_h = draw_zoneout_mask(rate, c), draw_zoneout_mask(rate, h)
    return zone_out(c, c_new, keep_c), zone_out(h, h_new, keep_h)


class LoopMasks:
    """The masks a loop uses in place of drawing its own: lstm_ext's, for the agreement check.

    recurrent: [B, H] or None; cell and hidden: [T, B, H] or None (None with a zoneout rate: eval's rate).
    """

    def __init__(self, recurrent: Tensor | None = None, cell: Tensor | None = None, hidden: Tensor | None = None):
        self.recurrent, self.cell, self.hidden = recurrent, cell, hidden

    @classmethod
    def from_variant_masks(cls, masks) -> LoopMasks:
        """From lstm_ext.VariantMasks of a one-layer, one-direction LSTM."""
        recurrent = masks.recurrent_dropout_masks[0] if masks.recurrent_dropout_masks else None
        cell = hidden = None
        if masks.zoneout_masks:
            cell, hidden = masks.zoneout_masks[0]
        return cls(recurrent, cell, hidden)


class CellLoop(nn.Module):
    """nn.LSTMCell over the steps, the way recurrent dropout, zoneout or the cell states are written today.

    Recurrent dropout: one mask per sequence, on h before the cell (the cell's output is not masked).
    Zoneout: fresh masks per step; c_t = d_c * c_{t-1} + (1 - d_c) * c~_t, the same for h.
    """

    def __init__(self, input_size: int, hidden_size: int, recurrent_dropout: float = 0.0, zoneout: float = 0.0):
        super().__init__()
        self.cell = nn.LSTMCell(input_size, hidden_size)
        self.recurrent_dropout, self.zoneout = recurrent_dropout, zoneout

    def forward(self, x: Tensor, masks: LoopMasks | None = None):
        seq_len, batch = x.shape[:2]
        h = c = x.new_zeros(batch, self.cell.hidden_size)
        recurrent_mask = None
        if self.recurrent_dropout > 0 and self.training:
            recurrent_mask = masks.recurrent if masks else draw_recurrent_mask(h.shape, self.recurrent_dropout, h)
        outputs, cells = [], []
        for t in range(seq_len):
            h_new, c_new = self.cell(x[t], (h if recurrent_mask is None else h * recurrent_mask, c))
            c, h = zoneout_step(self.zoneout, self.training, masks, t, (c, h), (c_new, h_new))
            outputs.append(h)
            cells.append(c)
        return torch.stack(outputs), (h.unsqueeze(0), c.unsqueeze(0)), torch.stack(cells)

    def ordered_parameters(self) -> list[nn.Parameter]:
        """In lstm_ext.LSTM's order: weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0."""
        return [self.cell.weight_ih, self.cell.weight_hh, self.cell.bias_ih, self.cell.bias_hh]

    def load_from(self, weights: dict[str, Tensor]) -> CellLoop:
        with torch.no_grad():
            for parameter, name in zip(self.ordered_parameters(), parameter_names(peephole=False, layer_norm=False)):
                parameter.copy_(weights[name])
        return self


class ManualLoop(nn.Module):
    """The variants' formulas step by step with F.linear and F.layer_norm, the way a layer-norm or peephole
    LSTM is written without a fused kernel (gates i, f, g, o as nn.LSTM's):

        G_t = LN(x_t W_ih^T) * gamma_ih + LN((m * h_{t-1}) W_hh^T) * gamma_hh + b_ih + b_hh   (layer_norm)
        G_t = x_t W_ih^T + b_ih + (m * h_{t-1}) W_hh^T + b_hh                                  (otherwise)
        i = sigmoid(G_i + p_i * c_{t-1}), f = sigmoid(G_f + p_f * c_{t-1}), g = tanh(G_g)      (p: peephole)
        c~_t = f * c_{t-1} + i * g;  o = sigmoid(G_o + p_o * c~_t)
        h~_t = o * tanh(LN(c~_t) * gamma_c + beta_c)  (layer_norm; else o * tanh(c~_t))
        c_t, h_t = zoneout of (c_{t-1}, c~_t), (h_{t-1}, h~_t)

    Its parameters carry lstm_ext.LSTM's names (weight_ih_l0, weight_peephole_l0, layer_norm_weight_ih_l0, ...).
    """

    def __init__(self, input_size: int, hidden_size: int, recurrent_dropout: float = 0.0, zoneout: float = 0.0,
                 layer_norm: bool = False, peephole: bool = False):
        super().__init__()
        self.hidden_size = hidden_size
        self.recurrent_dropout, self.zoneout, self.layer_norm, self.peephole = \
            recurrent_dropout, zoneout, layer_norm, peephole
        shapes = {"weight_ih_l0": (4 * hidden_size, input_size), "weight_hh_l0": (4 * hidden_size, hidden_size),
                  "bias_ih_l0": (4 * hidden_size,), "bias_hh_l0": (4 * hidden_size,),
                  "weight_peephole_l0": (3 * hidden_size,),
                  "layer_norm_weight_ih_l0": (4 * hidden_size,), "layer_norm_weight_hh_l0": (4 * hidden_size,),
                  "layer_norm_weight_c_l0": (hidden_size,), "layer_norm_bias_c_l0": (hidden_size,)}
        for name in parameter_names(peephole, layer_norm):
            self.register_parameter(name, nn.Parameter(torch.empty(shapes[name])))

    def forward(self, x: Tensor, masks: LoopMasks | None = None):
        seq_len, batch = x.shape[:2]
        hidden = self.hidden_size
        h = c = x.new_zeros(batch, hidden)
        recurrent_mask = None
        if self.recurrent_dropout > 0 and self.training:
            recurrent_mask = masks.recurrent if masks else draw_recurrent_mask(h.shape, self.recurrent_dropout, h)
        if self.peephole:
            peep_i, peep_f, peep_o = self.weight_peephole_l0.chunk(3)
        outputs, cells = [], []
        for t in range(seq_len):
            h_in = h if recurrent_mask is None else h * recurrent_mask
            if self.layer_norm:
                gates = (F.layer_norm(F.linear(x[t], self.weight_ih_l0), (4 * hidden,), self.layer_norm_weight_ih_l0)
                         + F.layer_norm(F.linear(h_in, self.weight_hh_l0), (4 * hidden,), self.layer_norm_weight_hh_l0)
                         + self.bias_ih_l0 + self.bias_hh_l0)
            else:
                gates = F.linear(x[t], self.weight_ih_l0, self.bias_ih_l0) + F.linear(h_in, self.weight_hh_l0,
                                                                                     self.bias_hh_l0)
            gate_i, gate_f, gate_g, gate_o = gates.chunk(4, 1)
            if self.peephole:
                gate_i, gate_f = gate_i + peep_i * c, gate_f + peep_f * c
            c_new = torch.sigmoid(gate_f) * c + torch.sigmoid(gate_i) * torch.tanh(gate_g)
            if self.peephole:
                gate_o = gate_o + peep_o * c_new
            c_read = F.layer_norm(c_new, (hidden,), self.layer_norm_weight_c_l0, self.layer_norm_bias_c_l0) \
                if self.layer_norm else c_new
            h_new = torch.sigmoid(gate_o) * torch.tanh(c_read)
            c, h = zoneout_step(self.zoneout, self.training, masks, t, (c, h), (c_new, h_new))
            outputs.append(h)
            cells.append(c)
        return torch.stack(outputs), (h.unsqueeze(0), c.unsqueeze(0)), torch.stack(cells)

    def ordered_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def load_from(self, weights: dict[str, Tensor]) -> ManualLoop:
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                parameter.copy_(weights[name])
        return self


def parameter_names(peephole: bool, layer_norm: bool) -> list[str]:
    """A one-layer lstm_ext.LSTM's parameters in its order (nn.LSTM's, then peephole, then layer norm)."""
    names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    if peephole:
        names.append("weight_peephole_l0")
    if layer_norm:
        names += ["layer_norm_weight_ih_l0", "layer_norm_weight_hh_l0", "layer_norm_weight_c_l0",
                  "layer_norm_bias_c_l0"]
    return names


def make_loop(variant: Variant, input_size: int, hidden_size: int) -> CellLoop | ManualLoop:
    _, kind = LOOPS[variant.name]
    if kind == "cell":
        return CellLoop(input_size, hidden_size, **variant.rates)
    return ManualLoop(input_size, hidden_size, **variant.rates)


def stand_in_weights(reference: nn.LSTM, hidden_size: int) -> dict[str, Tensor]:
    """Weights for loops whose lstm_ext variant is not available: nn.LSTM's, and the variants' own
    parameters initialised as lstm_ext does (peepholes uniform +-1/sqrt(H), layer norm ones and zeros)."""
    weights = dict(reference.state_dict())
    bound = 1 / math.sqrt(hidden_size)
    weights["weight_peephole_l0"] = torch.empty(3 * hidden_size).uniform_(-bound, bound)
    for name, size in (("layer_norm_weight_ih_l0", 4 * hidden_size), ("layer_norm_weight_hh_l0", 4 * hidden_size),
                       ("layer_norm_weight_c_l0", hidden_size)):
        weights[name] = torch.ones(size)
    weights["layer_norm_bias_c_l0"] = torch.zeros(hidden_size)
    return weights


# --- training steps -----------------------------------------------------------------------------------

Forward = Callable[[Tensor], tuple]


def training_step(forward: Forward, parameters: Sequence[nn.Parameter], x: Tensor, cell_states: bool) -> Step:
    """A training step over `forward` (returning (output, (h_n, c_n)[, cell_states])): gradients reset to
    None, forward, loss = the sum of the output (and of the cell states when `cell_states`), backward.

    Returns ((output, h_n, c_n[, cell_states]), (input gradient, *parameter gradients)).
    """
    x = x.detach().requires_grad_(True)
    parameters = list(parameters)

    def step() -> StepResult:
        for parameter in parameters:
            parameter.grad = None
        x.grad = None
        output, (h_n, c_n), *rest = forward(x)
        outputs = (output, h_n, c_n)
        loss = output.sum()
        if cell_states:
            outputs += (rest[0],)
            loss = loss + rest[0].sum()
        loss.backward()
        return tuple(t.detach() for t in outputs), (x.grad, *(p.grad for p in parameters))

    return step


def ext_forward(module: nn.Module, cell_states: bool) -> Forward:
    if cell_states:
        return lambda x: module(x, return_cell_states=True)
    return module


def loop_forward(loop: CellLoop | ManualLoop, cell_states: bool, masks: LoopMasks | None = None) -> Forward:
    def forward(x):
        output, state, cells = loop(x, masks)
        return (output, state, cells) if cell_states else (output, state)

    return forward


def not_available_reason(variant: Variant) -> str | None:
    """Why the installed lstm_ext.LSTM cannot run `variant`, or None when it can.

    Only an unknown argument counts (TypeError "unexpected keyword argument"); any other error is a bug
    and propagates.
    """
    try:
        probe = lstm_ext.LSTM(2, 2, **variant.options)
        if variant.cell_states:
            probe(torch.zeros(1, 1, 2), return_cell_states=True)
    except TypeError as error:
        if "unexpected keyword argument" not in str(error):
            raise
        return f"not available: {error}"
    return None


# --- the benchmark ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Row:
    name: str
    variant: Variant
    implementation: str  # "nn.LSTM", "lstm_ext" or "loop"
    step: Step | None = None
    check: Callable[[], tuple[StepResult, StepResult, str]] | None = None  # -> (this result, twin's, twin name)
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class Settings:
    seq_len: int
    batch: int
    input_size: int
    hidden_size: int
    dtype: torch.dtype
    repeats: int
    max_time: float
    warmup: int
    warmup_time: float
    min_run_time: float
    seed: int
    out_dir: Path

    def as_json(self) -> dict:
        return {"device": "cpu", "dtype": dtype_name(self.dtype), "seq_len": self.seq_len, "batch": self.batch,
                "input_size": self.input_size, "hidden_size": self.hidden_size, "num_layers": 1,
                "bidirectional": False, "mode": "train", "repeats": self.repeats, "max_time_s": self.max_time,
                "warmup": self.warmup, "warmup_time_s": self.warmup_time, "min_run_time_s": self.min_run_time,
                "seed": self.seed, "check_dtype": dtype_name(CHECK_DTYPE), "target_ratio": TARGET_RATIO,
                "target_ratios": TARGET_RATIOS}


def build_rows(settings: Settings) -> list[Row]:
    """Every row with its step, and for the lstm_ext rows their agreement check."""
    input_size, hidden_size, dtype = settings.input_size, settings.hidden_size, settings.dtype
    x = lstm_input(settings.seq_len, settings.batch, input_size, dtype=dtype)
    torch.manual_seed(settings.seed)
    reference = nn.LSTM(input_size, hidden_size, dtype=dtype)
    plain = lstm_ext.LSTM(input_size, hidden_size, dtype=dtype)
    plain.load_state_dict(reference.state_dict())

    reference_step = training_step(reference, reference.parameters(), x, cell_states=False)
    plain_step = training_step(ext_forward(plain, False), plain.parameters(), x, cell_states=False)
    rows = [Row("nn.LSTM", PLAIN, "nn.LSTM", reference_step),
            Row("lstm_ext", PLAIN, "lstm_ext", plain_step, check=agreement_check(PLAIN, plain, x, settings))]
    loop_rows = []
    for variant in VARIANTS:
        name = f"lstm_ext {variant.label}"
        reason = not_available_reason(variant)
        module = None
        if reason:
            rows.append(Row(name, variant, "lstm_ext", note=reason))
        else:
            # The same seed as nn.LSTM's: nn's parameters come out the same, the variant's own follow.
            torch.manual_seed(settings.seed)
            module = lstm_ext.LSTM(input_size, hidden_size, dtype=dtype, **variant.options)
            step = training_step(ext_forward(module, variant.cell_states), module.parameters(), x,
                                 variant.cell_states)
            rows.append(Row(name, variant, "lstm_ext", step, check=agreement_check(variant, module, x, settings)))
        if variant.name in LOOPS:
            weights = module.state_dict() if module is not None else stand_in_weights(reference, hidden_size)
            loop = make_loop(variant, input_size, hidden_size).to(dtype).load_from(weights)
            loop_rows.append(Row(LOOPS[variant.name][0], variant, "loop",
                                 training_step(loop_forward(loop, variant.cell_states), loop.ordered_parameters(), x,
                                               variant.cell_states)))
    return rows + loop_rows


def agreement_check(variant: Variant, module: nn.Module, x: Tensor, settings: Settings):
    """The agreement check of an lstm_ext row: a training step of a float64 copy of it against its twin's,
    with the same weights and input, and for dropout and zoneout the masks the copy draws (sample_masks
    under the seed its step then runs at). The twin: nn.LSTM for plain and forget_bias (only an
    initialisation), the variant's loop for the others.

    In float64 rather than the timed dtype: float32 rounding cannot tell a wrong formula from a right one
    here, since two correct float32 evaluations of a layer-normalised recurrence drift apart along the
    sequence (benchmarks/README.md, "Variants benchmark").
    """
    weights = module.state_dict()
    sizes = (settings.input_size, settings.hidden_size)
    copy = lstm_ext.LSTM(*sizes, dtype=CHECK_DTYPE, **variant.options)
    copy.load_state_dict(weights)
    x = x.to(CHECK_DTYPE)
    step = training_step(ext_forward(copy, variant.cell_states), copy.parameters(), x, variant.cell_states)
    if variant.name not in LOOPS:
        twin = nn.LSTM(*sizes, dtype=CHECK_DTYPE)
        twin.load_state_dict(weights)
        twin_step = training_step(twin, twin.parameters(), x, cell_states=False)
        return lambda: (step(), twin_step(), "nn.LSTM")

    loop = make_loop(variant, *sizes).to(CHECK_DTYPE).load_from(weights)
    twin_name = LOOPS[variant.name][0]

    def check():
        masks = None
        if variant.options.get("recurrent_dropout") or variant.options.get("zoneout"):
            torch.manual_seed(settings.seed + 1)
            masks = LoopMasks.from_variant_masks(copy.sample_masks(x))
        torch.manual_seed(settings.seed + 1)
        result = step()
        twin_step = training_step(loop_forward(loop, variant.cell_states, masks), loop.ordered_parameters(), x,
                                  variant.cell_states)
        return result, twin_step(), f"{twin_name}, lstm_ext's masks" if masks else twin_name

    return check


def measure(rows: list[Row], settings: Settings) -> list[dict]:
    """Checks, warms up and times the available rows together; returns one result dict per row."""
    synchronize = synchronizer("cpu")
    agreement, first_run_seconds = {}, {}
    for row in rows:
        if row.check is not None:
            result, twin_result, twin_name = row.check()
            try:
                agreement[row.name] = dict(assert_results_agree(result, twin_result, CHECK_DTYPE),
                                           checked_against=twin_name)
            except AssertionError as error:
                raise AgreementError(f"{row.name} and {twin_name} disagree, so nothing is timed:\n{error}") from None
            del result, twin_result
    for row in rows:
        if row.step is not None:
            start = time.perf_counter()
            row.step()
            first_run_seconds[row.name] = time.perf_counter() - start

    steps = {row.name: row.step for row in rows if row.step is not None}
    last_seconds = warm_up(steps, first_run_seconds, settings.warmup, settings.warmup_time, synchronize)
    calls = calls_per_run(last_seconds, settings.min_run_time)
    seconds = time_alternating(steps, settings.repeats, settings.max_time, calls, synchronize)
    return results_table(rows, seconds, calls, agreement)


def results_table(rows: list[Row], seconds: dict[str, list[float]], calls: int, agreement: dict) -> list[dict]:
    median_ms = {name: 1e3 * statistics.median(runs) for name, runs in seconds.items()}
    plain_ms = median_ms["lstm_ext"]
    plain_min_ms = 1e3 * min(seconds["lstm_ext"])
    loop_names = {row.variant.name: row.name for row in rows if row.implementation == "loop"}
    results = []
    for row in rows:
        ms = median_ms.get(row.name)
        is_variant = row.implementation == "lstm_ext" and row.variant is not PLAIN
        target = TARGET_RATIOS.get(row.variant.name, TARGET_RATIO) if is_variant and row.variant.name != "all" \
            else None
        ratio = None if ms is None else ms / plain_ms
        min_ms = None if ms is None else 1e3 * min(seconds[row.name])
        loop_name = loop_names.get(row.variant.name) if is_variant else None
        loop_ms = median_ms.get(loop_name)
        checked = agreement.get(row.name, {})
        results.append({
            "name": row.name,
            "variant": row.variant.name,
            "implementation": row.implementation,
            "available": ms is not None,
            "median_ms": ms,
            "min_ms": min_ms,
            "ratio_to_plain_ext": ratio,
            "min_ratio_to_plain_ext": None if ms is None else min_ms / plain_min_ms,
            "target_ratio": target,
            "meets_target": None if target is None or ratio is None else ratio <= target,
            "loop_name": loop_name,
            "speedup_over_loop": None if ms is None or loop_ms is None else loop_ms / ms,
            "checked_against": checked.get("checked_against"),
            "max_abs_diff": checked.get("max_abs_diff"),
            "max_grad_rel_diff": checked.get("max_grad_rel_diff"),
            "repeats": len(seconds[row.name]) if ms is not None else 0,
            "calls_per_run": calls if ms is not None else None,
            "note": row.note,
        })
    return results


# --- output -------------------------------------------------------------------------------------------

def print_table(results: list[dict], settings: Settings, environment: dict, file=None) -> None:
    file = file or sys.stdout  # looked up at the call: a test's capture may have replaced it
    print(f"\nlstm_ext variants, training step: cpu {dtype_name(settings.dtype)}, T={settings.seq_len} "
          f"B={settings.batch} I={settings.input_size} H={settings.hidden_size}; {environment['cpu_model']}, "
          f"torch {environment['torch_version']}, {environment['torch_num_threads']} threads, "
          f"nn.LSTM on {environment['nn_lstm_backend']['name']}", file=file)
    print("times: median ms per step; vs lstm_ext = time / plain lstm_ext's (fastest: of the fastest runs); "
          "target: the ratio aimed at; loop/ext = the loop's time / the lstm_ext variant's", file=file)
    header = f"{'row':<44} {'ms':>9} {'vs lstm_ext':>11} {'fastest':>8} {'target':>10} {'loop/ext':>9}"
    print(header, file=file)
    print("-" * len(header), file=file)
    for result in results:
        if not result["available"]:
            print(f"{result['name']:<44} {'not available':>31}", file=file)
            continue
        target = ""
        if result["target_ratio"] is not None:
            target = f"{'<=' if result['meets_target'] else '> '}{result['target_ratio']:.2f}x"
        speedup = "" if result["speedup_over_loop"] is None else f"{result['speedup_over_loop']:.2f}x"
        print(f"{result['name']:<44} {format_ms(result['median_ms']):>9} {result['ratio_to_plain_ext']:>10.2f}x "
              f"{result['min_ratio_to_plain_ext']:>7.2f}x {target:>10} {speedup:>9}", file=file)
    reasons = sorted({result["note"] for result in results if result["note"]})
    for reason in reasons:
        print(f"({reason})", file=file)


def write_csv(path: Path, results: list[dict], environment: dict, settings: dict) -> None:
    """Plain CSV after '#' comment lines (pandas: read_csv(path, comment='#'))."""
    comments = [
        f"lstm_ext variants benchmark, training step, {utc_now()}",
        f"cpu: {environment['cpu_model']}; cpus: {environment['cpu_count']} (usable {environment['usable_cpus']})",
        f"torch {environment['torch_version']}, {environment['torch_num_threads']} threads; "
        f"nn.LSTM backend: {environment['nn_lstm_backend']['name']}",
        f"lstm_ext {environment['lstm_ext_version']}, CPU kernels: {environment['lstm_ext_cpu_kernels']}",
        f"settings: {json.dumps(settings)}",
        f"CPU cores used by other processes during the run (average): "
        f"{environment['other_processes_cpu_cores_during_run']}",
    ]
    with open(path, "w", newline="") as file:
        file.writelines(f"# {comment}\n" for comment in comments)
        writer = csv.DictWriter(file, fieldnames=list(COLUMNS))
        writer.writeheader()
        for result in results:
            writer.writerow({key: "" if value is None else value for key, value in result.items()})


def write_json(path: Path, results: list[dict], environment: dict, settings: dict, arguments: list[str],
               elapsed_s: float) -> None:
    document = {"created_utc": utc_now(), "arguments": arguments, "elapsed_s": round(elapsed_s, 1),
                "environment": environment, "settings": settings, "columns": COLUMNS, "results": results}
    path.write_text(json.dumps(document, indent=2) + "\n")


# --- main ---------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time lstm_ext.LSTM's variants in a training step against "
                                                 "plain lstm_ext, nn.LSTM and plain-PyTorch loops (CPU).")
    parser.add_argument("--seq-len", type=int, default=DEFAULTS["seq_len"], metavar="T")
    parser.add_argument("--batch", type=int, default=DEFAULTS["batch"], metavar="B")
    parser.add_argument("--hidden-size", type=int, default=DEFAULTS["hidden_size"], metavar="H")
    parser.add_argument("--input-size", type=int, metavar="I", help="default: the hidden size")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--repeats", type=int, default=DEFAULTS["repeats"], help="timed runs per row")
    parser.add_argument("--max-time", type=float, default=DEFAULTS["max_time"], metavar="SECONDS",
                        help=f"no new round of timed runs after this many seconds, once each row has "
                             f"{MIN_REPEATS} runs")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per row, at least 1")
    parser.add_argument("--warmup-time", type=float, default=0.2, metavar="SECONDS",
                        help="keep warming up until each row has run this long")
    parser.add_argument("--min-run-time", type=float, default=0.02, metavar="SECONDS",
                        help="a timed run repeats a fast step until it lasts this long")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights and the checked run's masks")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output directory")
    args = parser.parse_args(argv)
    for flag in ("seq_len", "batch", "hidden_size", "input_size", "repeats", "warmup", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Runs the benchmark; returns the paths written, {"csv": ..., "json": ...}."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(arguments)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(seq_len=args.seq_len, batch=args.batch, input_size=args.input_size or args.hidden_size,
                        hidden_size=args.hidden_size, dtype=DTYPES[args.dtype], repeats=args.repeats,
                        max_time=args.max_time, warmup=args.warmup, warmup_time=args.warmup_time,
                        min_run_time=args.min_run_time, seed=args.seed, out_dir=args.out)
    device = torch.device("cpu")
    environment = describe_environment(device, settings.dtype)

    started = time.perf_counter()
    contention = OtherProcessesCpuMeter()
    rows = build_rows(settings)
    print(f"Timing {sum(row.step is not None for row in rows)} of {len(rows)} rows, training step, "
          f"{environment['torch_num_threads']} threads ...", file=sys.stderr)
    results = measure(rows, settings)
    elapsed = time.perf_counter() - started
    others = contention.cores_used_by_others()
    environment["other_processes_cpu_cores_during_run"] = None if others is None else round(others, 2)

    print_table(results, settings, environment)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: settings.out_dir / f"{OUTPUT_STEM}.{kind}" for kind in ("csv", "json")}
    settings_json = settings.as_json()
    write_csv(paths["csv"], results, environment, settings_json)
    write_json(paths["json"], results, environment, settings_json, arguments, elapsed)
    print(f"\n{len(results)} rows in {elapsed:.0f} s; wrote {', '.join(str(p) for p in paths.values())}")
    warn_if_distorted(others, environment, "the run")
    return paths


if __name__ == "__main__":
    try:
        main()
    except AgreementError as error:
        sys.exit(f"variants benchmark stopped: {error}")
