"""The LSTM variants (peephole, layer_norm, recurrent dropout, zoneout, forget_bias, proj_size, cell states)
against tests/variant_reference.py, an independent per-step reference differentiated by autograd.

float64 throughout: values and every gradient (input, states, every parameter) to 1e-9. The functional form
gets explicit masks; the modules are checked by drawing the same masks from the same seed (sample_masks).
The first section checks the reference itself against torch.nn.LSTM."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import lstm_ext
import variant_reference as ref
from variant_reference import LayerMasks, LayerWeights

F64 = torch.float64
TOL = dict(rtol=1e-9, atol=1e-9)
REFERENCE_TOL = dict(rtol=1e-12, atol=1e-12)
T, B, I, H = 4, 3, 3, 4  # small: the reference is a Python loop and the suite runs on two cores
LENGTHS = (3, 4, 2)  # packed input, unsorted (enforce_sorted=False); B sequences, as padded input has


def assert_all_close(actual: dict, expected: dict, **tol):
    assert actual.keys() == expected.keys()
    for key in expected:
        a, e = actual[key], expected[key]
        assert a is not None and e is not None, key
        assert a.shape == e.shape, f"{key}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        torch.testing.assert_close(a, e, **(tol or TOL), msg=lambda m, key=key: f"{key}: {m}")


def weighted_loss(tensors, seed=1):
    """A loss with fixed, distinct weights per value, so that every gradient path is exercised."""
    gen = torch.Generator().manual_seed(seed)
    loss = 0
    for t in tensors:
        loss = loss + (t * torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)).sum()
    return loss


def values_and_grads(outputs: dict, leaves: dict) -> dict:
    """outputs and the gradient of their weighted loss for each leaf (keyed 'grad <name>')."""
    loss = weighted_loss(list(outputs.values()))
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {**{k: v.detach() for k, v in outputs.items()}, **{f"grad {k}": g for k, g in zip(leaves, grads)}}


# --- Random problems for the functional form ------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layout:
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    packed: bool = False
    proj_size: int = 0
    bias: bool = True


@dataclasses.dataclass(frozen=True)
class Variant:
    peephole: bool = False
    layer_norm: bool = False
    recurrent_dropout: float = 0.0
    zoneout: tuple[float, float] = (0.0, 0.0)


LAYOUTS = {
    "padded": Layout(),
    "packed_bidir": Layout(bidirectional=True, packed=True),
    "batch_first_2layers_bidir": Layout(num_layers=2, bidirectional=True, batch_first=True),
    "packed_2layers": Layout(num_layers=2, packed=True),
    "no_bias_bidir": Layout(bidirectional=True, bias=False),
}
PROJ_LAYOUTS = {
    "proj": Layout(proj_size=2),
    "proj_packed_2layers_bidir": Layout(num_layers=2, bidirectional=True, packed=True, proj_size=3),
}
VARIANTS = {
    "plain": Variant(),
    "peephole": Variant(peephole=True),
    "layer_norm": Variant(layer_norm=True),
    "recurrent_dropout": Variant(recurrent_dropout=0.4),
    "zoneout_cell": Variant(zoneout=(0.3, 0.0)),
    "zoneout_hidden": Variant(zoneout=(0.0, 0.4)),
    "zoneout": Variant(zoneout=(0.3, 0.4)),
    "peephole_layer_norm": Variant(peephole=True, layer_norm=True),
    "recurrent_zoneout": Variant(recurrent_dropout=0.3, zoneout=(0.5, 0.2)),
    "zoneout_peephole_layer_norm": Variant(peephole=True, layer_norm=True, zoneout=(0.4, 0.3)),
    "all": Variant(peephole=True, layer_norm=True, recurrent_dropout=0.3, zoneout=(0.3, 0.4)),
}
PROJ_VARIANTS = {name: v for name, v in VARIANTS.items() if v.zoneout == (0.0, 0.0)}  # zoneout: see below


@dataclasses.dataclass
class Problem:
    layout: Layout
    variant: Variant
    x: torch.Tensor  # padded ([T, B, I] or [B, T, I]) or packed rows
    batch_sizes: torch.Tensor | None
    hx: tuple[torch.Tensor, torch.Tensor]
    layers: list[LayerWeights]
    recurrent_masks: list[torch.Tensor] | None
    zoneout_masks: list[tuple[torch.Tensor | None, torch.Tensor | None]] | None

    def leaves(self) -> dict:
        flat = ref.join_flat_weights(self.layers)
        return {"input": self.x, "h0": self.hx[0], "c0": self.hx[1], **{f"flat_weights[{i}]": w for i, w in enumerate(flat)}}

    def reference_masks(self, zoneout_rates=None) -> list[LayerMasks]:
        rates = self.variant.zoneout if zoneout_rates is None else zoneout_rates
        return ref.masks_from_variant_masks((self.recurrent_masks, self.zoneout_masks), len(self.layers), rates)


def make_problem(layout: Layout, variant: Variant, device, seed=0, with_masks=True, sizes=(T, B, I, H),
                 lengths=LENGTHS) -> Problem:
    """Random weights (layer norm's away from ones / zeros), input, states and masks (with_masks) on device;
    sizes (T, B, I, H), lengths those of a packed input (unsorted)."""
    gen = torch.Generator().manual_seed(seed)
    T, B, I, H = sizes

    def randn(*shape, scale=1.0, requires_grad=True):
        t = (torch.randn(shape, generator=gen, dtype=F64) * scale).to(device)
        return t.requires_grad_(requires_grad)

    D = 2 if layout.bidirectional else 1
    P = layout.proj_size or H
    layers = []
    for k in range(layout.num_layers):
        for _ in range(D):
            w = LayerWeights(randn(4 * H, I if k == 0 else P * D, scale=0.5), randn(4 * H, P, scale=0.5))
            if layout.bias:
                w.bias_ih, w.bias_hh = randn(4 * H, scale=0.5), randn(4 * H, scale=0.5)
            if layout.proj_size:
                w.weight_hr = randn(P, H, scale=0.5)
            if variant.peephole:
                w.weight_peephole = randn(3 * H, scale=0.5)
            if variant.layer_norm:  # away from ones / zeros, so that each gets a gradient of its own
                w.layer_norm = tuple((c + randn(n, scale=0.3).detach()).requires_grad_(True)
                                     for c, n in ((1.0, 4 * H), (1.0, 4 * H), (1.0, H), (0.0, H)))
            layers.append(w)
    batch_sizes = None
    if layout.packed:
        padded = randn(max(lengths), len(lengths), I, requires_grad=False)
        packed = pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=False)
        x, batch_sizes, batch = packed.data.detach().clone().requires_grad_(True), packed.batch_sizes, len(lengths)
    else:
        x, batch = randn(*((B, T, I) if layout.batch_first else (T, B, I))), B
    hx = (randn(layout.num_layers * D, batch, P), randn(layout.num_layers * D, batch, H))
    recurrent_masks = zoneout_masks = None
    if with_masks and variant.recurrent_dropout > 0:
        keep = 1 - variant.recurrent_dropout
        recurrent_masks = [(torch.rand((batch, P), generator=gen, dtype=F64) < keep).to(F64).div(keep).to(device)
                           for _ in layers]
    if with_masks and variant.zoneout != (0.0, 0.0):
        def zoneout_mask(rate):
            if rate == 0:
                return None
            return (torch.rand((*x.shape[:-1], H), generator=gen, dtype=F64) < rate).to(F64).to(device)
        zoneout_masks = [(zoneout_mask(variant.zoneout[0]), zoneout_mask(variant.zoneout[1])) for _ in layers]
    return Problem(layout, variant, x, batch_sizes, hx, layers, recurrent_masks, zoneout_masks)


def run_api(problem: Problem, training=True, pass_masks=True):
    lay, var = problem.layout, problem.variant
    kwargs = {}
    if pass_masks:
        kwargs = dict(recurrent_dropout_masks=problem.recurrent_masks, zoneout_masks=problem.zoneout_masks)
    output, (h_n, c_n), cells = lstm_ext.lstm(
        problem.x, problem.hx, ref.join_flat_weights(problem.layers), lay.bias, lay.num_layers, 0.0, training,
        lay.bidirectional, lay.batch_first, problem.batch_sizes, peephole=var.peephole, layer_norm=var.layer_norm,
        recurrent_dropout=var.recurrent_dropout, zoneout=var.zoneout, return_cell_states=True, **kwargs)
    return values_and_grads({"output": output, "h_n": h_n, "c_n": c_n, "cell_states": cells}, problem.leaves())


def run_reference(problem: Problem, masks: list[LayerMasks]):
    lay = problem.layout
    output, (h_n, c_n), cells = ref.lstm(problem.x, problem.hx, problem.layers, lay.num_layers, lay.bidirectional,
                                         lay.batch_first, problem.batch_sizes, masks, return_cell_states=True)
    return values_and_grads({"output": output, "h_n": h_n, "c_n": c_n, "cell_states": cells}, problem.leaves())


# === The reference itself ===========================================================================

REFERENCE_CONFIGS = {  # nn.LSTM keyword arguments, input kind
    "padded": (dict(), "padded"),
    "packed_unsorted": (dict(), "packed"),
    "bidir_2layers": (dict(num_layers=2, bidirectional=True), "padded"),
    "packed_bidir_2layers": (dict(num_layers=2, bidirectional=True), "packed"),
    "proj": (dict(proj_size=2), "padded"),
    "packed_bidir_proj_2layers": (dict(num_layers=2, bidirectional=True, proj_size=3), "packed"),
    "batch_first_no_bias": (dict(batch_first=True, bias=False), "padded"),
}


def module_input(kind, batch_first, device, seed=2, sorted=False):
    gen = torch.Generator().manual_seed(seed)
    if kind == "packed":
        lengths = sorted_(LENGTHS) if sorted else LENGTHS
        padded = torch.randn(max(lengths), len(lengths), I, generator=gen, dtype=F64).to(device)
        return pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=sorted)
    shape = (B, T, I) if batch_first else (T, B, I)
    return torch.randn(shape, generator=gen, dtype=F64).to(device)


def sorted_(lengths):
    return sorted(lengths, reverse=True)


def module_states(num_layers, bidirectional, proj_size, device, batch=B, seed=3):
    gen = torch.Generator().manual_seed(seed)
    L = num_layers * (2 if bidirectional else 1)
    return (torch.randn(L, batch, proj_size or H, generator=gen, dtype=F64).to(device),
            torch.randn(L, batch, H, generator=gen, dtype=F64).to(device))


def module_leaves(x, hx, params: dict):
    """Fresh leaves for an input (tensor or PackedSequence), states and the given parameters."""
    if isinstance(x, PackedSequence):
        data = x.data.detach().clone().requires_grad_(True)
        x = PackedSequence(data, x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    else:
        data = x = x.detach().clone().requires_grad_(True)
    hx = None if hx is None else tuple(s.detach().clone().requires_grad_(True) for s in hx)
    leaves = {"input": data, **({} if hx is None else {"h0": hx[0], "c0": hx[1]}), **params}
    return x, hx, leaves


def outputs_dict(output, h_n, c_n, cells=None):
    data = (lambda t: t.data if isinstance(t, PackedSequence) else t)
    result = {"output": data(output), "h_n": h_n, "c_n": c_n}
    if cells is not None:
        result["cell_states"] = data(cells)
    return result


@pytest.mark.parametrize("config", REFERENCE_CONFIGS)
def test_reference_plain_equals_nn_lstm(device, config):
    kwargs, kind = REFERENCE_CONFIGS[config]
    lstm = nn.LSTM(I, H, dtype=F64, device=device, **kwargs)
    x, hx, leaves = module_leaves(module_input(kind, lstm.batch_first, device),
                                  module_states(lstm.num_layers, lstm.bidirectional, lstm.proj_size, device),
                                  dict(lstm.named_parameters()))
    expected = values_and_grads(outputs_dict(*_flatten(lstm(x, hx))), leaves)
    actual = values_and_grads(outputs_dict(*_flatten(ref.module_forward(
        dict(lstm.named_parameters()), x, hx, num_layers=lstm.num_layers, bidirectional=lstm.bidirectional,
        batch_first=lstm.batch_first, hidden_size=H, proj_size=lstm.proj_size))), leaves)
    assert_all_close(actual, expected, **REFERENCE_TOL)


def _flatten(result):
    output, (h_n, c_n), *cells = result
    return (output, h_n, c_n, *cells)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_reference_cell_states_are_nn_lstm_cells_of_each_prefix(device, num_layers):
    # nn.LSTM gives no cell states; its c_n over each prefix of the sequence is the last layer's c_t.
    lstm = nn.LSTM(I, H, num_layers, dtype=F64, device=device)
    x = module_input("padded", False, device)
    hx = module_states(num_layers, False, 0, device, batch=B)
    *_, cells = ref.module_forward(dict(lstm.named_parameters()), x, hx, num_layers=num_layers, hidden_size=H,
                                   return_cell_states=True)
    for t in range(T):
        torch.testing.assert_close(cells[t], lstm(x[:t + 1], hx)[1][1][-1], **REFERENCE_TOL)


def test_reference_cell_step_equals_nn_lstm_cell(device):
    cell = nn.LSTMCell(I, H, dtype=F64, device=device)
    x, h, c = (torch.randn(B, n, dtype=F64, device=device) for n in (I, H, H))
    w = LayerWeights(cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    for a, e in zip(ref.cell_step(x, h, c, w), cell(x, (h, c))):
        torch.testing.assert_close(a, e, **REFERENCE_TOL)


@pytest.mark.parametrize("kwargs", [dict(), dict(num_layers=2, bidirectional=True, proj_size=2)], ids=["one", "bidir_proj"])
def test_reference_init_is_nn_lstm_init_plus_forget_bias(kwargs):
    torch.manual_seed(5)
    expected = nn.LSTM(I, H, dtype=F64, **kwargs)
    torch.manual_seed(5)
    plain = ref.init_parameters(I, H, dtype=F64, **kwargs)
    torch.manual_seed(5)
    shifted = ref.init_parameters(I, H, dtype=F64, forget_bias=1.5, **kwargs)
    assert list(plain) == [n for n, _ in expected.named_parameters()]
    for name, p in expected.named_parameters():
        assert torch.equal(plain[name], p.detach()), name
        if name.startswith("bias_ih"):
            torch.testing.assert_close(shifted[name][H:2 * H] - p.detach()[H:2 * H], torch.full((H,), 1.5, dtype=F64))
            assert torch.equal(shifted[name][:H], p.detach()[:H]) and torch.equal(shifted[name][2 * H:], p.detach()[2 * H:])
        else:
            assert torch.equal(shifted[name], p.detach()), name
    # forget_bias changes nothing but the init: the shifted parameters loaded into nn.LSTM give its result.
    expected.load_state_dict(shifted)
    x = module_input("padded", False, "cpu")
    got = ref.module_forward(shifted, x, num_layers=expected.num_layers, bidirectional=expected.bidirectional,
                             hidden_size=H, proj_size=expected.proj_size)
    for a, e in zip(_flatten(got), _flatten(expected(x))):
        torch.testing.assert_close(a, e, **REFERENCE_TOL)


def test_reference_init_draws_peepholes_after_nn_lstm():
    torch.manual_seed(7)
    params = ref.init_parameters(I, H, 2, bidirectional=True, peephole=True, layer_norm=True, dtype=F64)
    torch.manual_seed(7)
    nn.LSTM(I, H, 2, bidirectional=True, dtype=F64)
    bound = 1 / math.sqrt(H)
    for s in ("_l0", "_l0_reverse", "_l1", "_l1_reverse"):
        assert torch.equal(params[f"weight_peephole{s}"], torch.empty(3 * H, dtype=F64).uniform_(-bound, bound))
        assert torch.equal(params[f"layer_norm_weight_ih{s}"], torch.ones(4 * H, dtype=F64))
        assert torch.equal(params[f"layer_norm_bias_c{s}"], torch.zeros(H, dtype=F64))


def _reference_plain_and(problem_variant, masks_fn, device, layout=LAYOUTS["packed_bidir"]):
    """The reference with the plain variant and with masks_fn(problem) on the same problem."""
    problem = make_problem(layout, problem_variant, device, with_masks=False)
    plain = run_reference(problem, [LayerMasks()] * len(problem.layers))
    return problem, plain, run_reference(problem, masks_fn(problem))


def test_reference_layer_norm_with_identity_affine_differs_from_plain(device):
    problem = make_problem(LAYOUTS["padded"], Variant(layer_norm=True), device)
    for w in problem.layers:
        w.layer_norm = tuple(torch.full_like(g, float(i < 3)).requires_grad_(True) for i, g in enumerate(w.layer_norm))
    normalized = run_reference(problem, [LayerMasks()])
    for w in problem.layers:
        w.layer_norm = None
    plain = run_reference(problem, [LayerMasks()])
    assert (normalized["output"] - plain["output"]).abs().max() > 1e-2


def test_reference_zero_peepholes_equal_plain(device):
    problem = make_problem(LAYOUTS["packed_bidir"], Variant(peephole=True), device)
    for w in problem.layers:
        w.weight_peephole = torch.zeros_like(w.weight_peephole).requires_grad_(True)
    with_zero_peepholes = run_reference(problem, [LayerMasks()] * 2)
    for w in problem.layers:
        w.weight_peephole = None
    plain = run_reference(problem, [LayerMasks()] * 2)
    shared = ["output", "h_n", "c_n", "cell_states", "grad input", "grad h0", "grad c0"]  # flat indices shift
    assert_all_close({k: with_zero_peepholes[k] for k in shared}, {k: plain[k] for k in shared}, **REFERENCE_TOL)


@pytest.mark.parametrize("layout", ["padded", "packed_bidir"])
def test_reference_zoneout_masks_of_zeros_equal_plain_and_of_ones_keep_the_state(device, layout):
    problem = make_problem(LAYOUTS[layout], Variant(), device)
    rows = (*problem.x.shape[:-1], H)
    count = len(problem.layers)
    plain = run_reference(problem, [LayerMasks()] * count)
    zeros = torch.zeros(rows, dtype=F64, device=device)
    assert_all_close(run_reference(problem, [LayerMasks(None, zeros, zeros)] * count), plain, **REFERENCE_TOL)

    ones = torch.ones(rows, dtype=F64, device=device)
    output, (h_n, c_n), cells = ref.lstm(problem.x, problem.hx, problem.layers, 1, problem.layout.bidirectional,
                                         False, problem.batch_sizes, [LayerMasks(None, ones, ones)] * count, True)
    assert torch.equal(h_n, problem.hx[0]) and torch.equal(c_n, problem.hx[1])
    D = count
    for t, rows_of_step in _step_rows_index(problem):
        for d in range(D):
            torch.testing.assert_close(output[rows_of_step][..., d * H:(d + 1) * H], problem.hx[0][d][:_live(rows_of_step)], rtol=0, atol=0)
            torch.testing.assert_close(cells[rows_of_step][..., d * H:(d + 1) * H], problem.hx[1][d][:_live(rows_of_step)], rtol=0, atol=0)


def _step_rows_index(problem):
    """(t, index of that step's rows in the output) for padded ([T, B]) or packed rows."""
    if problem.batch_sizes is None:
        return [(t, (t,)) for t in range(problem.x.shape[0])]
    start, result = 0, []
    for t, n in enumerate(problem.batch_sizes.tolist()):
        result.append((t, slice(start, start + n)))
        start += n
    return result


def _live(index):
    return None if isinstance(index, tuple) else index.stop - index.start


def test_reference_recurrent_mask_of_ones_equals_plain(device):
    problem, plain, ones = _reference_plain_and(
        Variant(), lambda p: [LayerMasks(torch.ones_like(p.hx[0][0]))] * len(p.layers), device)
    assert_all_close(ones, plain, **REFERENCE_TOL)
    _, _, dropped = _reference_plain_and(
        Variant(), lambda p: [LayerMasks(torch.zeros_like(p.hx[0][0]))] * len(p.layers), device)
    assert (dropped["output"] - plain["output"]).abs().max() > 1e-3  # the mask is applied at all


# === The functional form against the reference =====================================================

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_functional_equals_reference(device, variant, layout):
    problem = make_problem(LAYOUTS[layout], VARIANTS[variant], device)
    assert_all_close(run_api(problem), run_reference(problem, problem.reference_masks()))


@pytest.mark.parametrize("layout", PROJ_LAYOUTS)
@pytest.mark.parametrize("variant", PROJ_VARIANTS)
def test_functional_with_projection_equals_reference(device, variant, layout):
    problem = make_problem(PROJ_LAYOUTS[layout], PROJ_VARIANTS[variant], device)
    assert_all_close(run_api(problem), run_reference(problem, problem.reference_masks()))


def test_functional_layer_norm_over_many_rows_equals_reference(device):
    """Rows of the sequence past the CPU's 64-row blocks of layer norm weight terms (three blocks and a part
    of a fourth), packed so that the steps have different rows."""
    lengths = (40, 37, 33, 40, 21, 30)
    problem = make_problem(LAYOUTS["packed_bidir"], Variant(layer_norm=True, peephole=True), device,
                           sizes=(40, len(lengths), 3, 5), lengths=lengths)
    assert sum(lengths) > 3 * 64
    assert_all_close(run_api(problem), run_reference(problem, problem.reference_masks()))


@pytest.mark.parametrize("layout", ["padded", "packed_bidir", "batch_first_2layers_bidir"])
def test_functional_eval_uses_zoneout_rates_and_no_recurrent_dropout(device, layout):
    problem = make_problem(LAYOUTS[layout], VARIANTS["all"], device, with_masks=False)
    masks = [LayerMasks(None, *problem.variant.zoneout)] * len(problem.layers)
    assert_all_close(run_api(problem, training=False, pass_masks=False), run_reference(problem, masks))


@pytest.mark.parametrize("layout", ["padded", "packed_bidir"])
def test_functional_given_masks_are_used_in_eval_too(device, layout):
    problem = make_problem(LAYOUTS[layout], VARIANTS["all"], device)
    assert_all_close(run_api(problem, training=False), run_reference(problem, problem.reference_masks()))


def test_functional_missing_zoneout_mask_uses_the_rate(device):
    # Training with the hidden masks left out: the hidden zoneout is the expectation, the cell's the mask.
    problem = make_problem(LAYOUTS["packed_bidir"], VARIANTS["zoneout"], device)
    problem.zoneout_masks = [(cell, None) for cell, _ in problem.zoneout_masks]
    assert_all_close(run_api(problem), run_reference(problem, problem.reference_masks()))


def test_functional_zoneout_with_projection_is_not_implemented():
    problem = make_problem(PROJ_LAYOUTS["proj"], Variant(), "cpu")
    problem.variant = Variant(zoneout=(0.2, 0.2))
    with pytest.raises(NotImplementedError, match=r"zoneout.*proj_size"):
        run_api(problem, pass_masks=False)


def test_functional_default_keywords_are_bitwise_the_plain_call():
    problem = make_problem(LAYOUTS["packed_bidir"], Variant(), "cpu")
    args = (problem.x, problem.hx, ref.join_flat_weights(problem.layers), True, 1, 0.0, True, True, False,
            problem.batch_sizes)
    plain_output, (plain_h, plain_c) = lstm_ext.lstm(*args)
    output, (h_n, c_n) = lstm_ext.lstm(*args, peephole=False, layer_norm=False, recurrent_dropout=0.0,
                                       recurrent_dropout_masks=None, zoneout=0.0, zoneout_masks=None,
                                       return_cell_states=False)
    for a, e in ((output, plain_output), (h_n, plain_h), (c_n, plain_c)):
        assert torch.equal(a, e)


# --- gradcheck of the op route ----------------------------------------------------------------------

GRADCHECK_LAYOUTS = {"packed": Layout(packed=True), "packed_bidir": Layout(bidirectional=True, packed=True),
                     "proj": Layout(proj_size=2)}
# Each variant alone over packed rows; all at once in both directions; the projection with what it allows.
GRADCHECK_CASES = [(v, "packed") for v in ("peephole", "layer_norm", "recurrent_dropout", "zoneout", "all")]
GRADCHECK_CASES += [("all", "packed_bidir"), ("peephole_layer_norm", "proj"), ("recurrent_dropout", "proj")]


@pytest.mark.parametrize("variant, layout", GRADCHECK_CASES)
def test_gradcheck(device, variant, layout):
    var, lay = VARIANTS[variant], GRADCHECK_LAYOUTS[layout]
    problem = make_problem(lay, var, device, sizes=(3, 2, 1, 3), lengths=(2, 3))
    leaves = list(problem.leaves().values())

    def f(x, h0, c0, *flat):
        output, (h_n, c_n), cells = lstm_ext.lstm(
            x, (h0, c0), flat, lay.bias, lay.num_layers, 0.0, True, lay.bidirectional, lay.batch_first,
            problem.batch_sizes, peephole=var.peephole, layer_norm=var.layer_norm,
            recurrent_dropout=var.recurrent_dropout, recurrent_dropout_masks=problem.recurrent_masks,
            zoneout=var.zoneout, zoneout_masks=problem.zoneout_masks, return_cell_states=True)
        return output, h_n, c_n, cells

    # Full mode (every element) for all variants over the smallest layout, fast mode (random projections) else.
    assert torch.autograd.gradcheck(f, leaves, fast_mode=(variant, layout) != ("all", "packed"))


# --- torch.library.opcheck of the ops the functional form calls -----------------------------------

class RecordOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every lstm_ext op call (op, args, kwargs), below autograd, as the functional form makes it.
    The backward op is not differentiable by design (test_ops), so its arguments are kept without
    requires_grad, as test_ops opchecks it; the forward's keep theirs."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace.startswith("lstm_ext"):
            keep_grad = "backward" not in func.name()
            self.calls.append((func, _snapshot(args, keep_grad), _snapshot(kwargs, keep_grad)))
        return func(*args, **kwargs)


def _snapshot(value, keep_grad):
    """A copy of an op argument, tensors cloned (with their requires_grad where keep_grad)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(keep_grad and value.requires_grad)
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(v, keep_grad) for v in value)
    if isinstance(value, dict):
        return {k: _snapshot(v, keep_grad) for k, v in value.items()}
    return value


OPCHECK_CASES = {  # opcheck traces each call several ways: few, small calls
    "all_packed": (Layout(packed=True), VARIANTS["all"]),
    "all_allowed_proj_reverse": (Layout(bidirectional=True, proj_size=2),
                                 Variant(peephole=True, layer_norm=True, recurrent_dropout=0.3)),
}


@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck_recorded_op_calls(device, case):
    problem = make_problem(*OPCHECK_CASES[case], device, sizes=(3, 2, 2, 3), lengths=(2, 3))
    recorder = RecordOps()
    with recorder:
        run_api(problem)  # forward and backward
    names = [str(func) for func, _, _ in recorder.calls]
    assert any("forward" in n for n in names) and any("backward" in n for n in names), names
    for func, args, kwargs in recorder.calls:
        torch.library.opcheck(func, args, kwargs)


# --- The CUDA kernels through the emulated launch ----------------------------------------------------

@pytest.fixture
def emulated_lstm(monkeypatch):
    """lstm_ext.lstm with every (layer, direction) run through the CUDA kernels on the CPU (the emulated
    launch: 3 blocks of 64 threads, so rows wrap over the blocks and units over the threads), forward and
    backward; it checks that both emulated ops were called."""
    import lstm_ext._ops as ops

    launch = dict(threads_per_block=64, max_blocks=3, force_64bit_index=False, reverse_launch_order=False)
    forward = torch.ops.lstm_ext_testing.emulated_cuda_layer_forward.default
    backward = torch.ops.lstm_ext_testing.emulated_cuda_layer_backward.default
    calls = {"forward": 0, "backward": 0}

    def counted(name, op):
        def call(*args):
            calls[name] += 1
            return op(*args, **launch)
        return call

    monkeypatch.setattr(ops, "lstm_layer_forward", counted("forward", forward))
    monkeypatch.setattr(ops, "lstm_layer_backward", counted("backward", backward))
    yield lstm_ext.lstm
    assert calls["forward"] > 0 and calls["backward"] > 0, calls


@pytest.mark.parametrize("layout", ["padded", "packed_bidir"])
@pytest.mark.parametrize("variant", ["peephole", "layer_norm", "recurrent_zoneout", "all"])
def test_emulated_cuda_equals_reference(emulated_lstm, variant, layout):
    problem = make_problem(LAYOUTS[layout], VARIANTS[variant], "cpu")
    lay, var = problem.layout, problem.variant
    output, (h_n, c_n), cells = emulated_lstm(
        problem.x, problem.hx, ref.join_flat_weights(problem.layers), lay.bias, lay.num_layers, 0.0, True,
        lay.bidirectional, lay.batch_first, problem.batch_sizes, peephole=var.peephole, layer_norm=var.layer_norm,
        recurrent_dropout=var.recurrent_dropout, recurrent_dropout_masks=problem.recurrent_masks,
        zoneout=var.zoneout, zoneout_masks=problem.zoneout_masks, return_cell_states=True)
    actual = values_and_grads({"output": output, "h_n": h_n, "c_n": c_n, "cell_states": cells}, problem.leaves())
    assert_all_close(actual, run_reference(problem, problem.reference_masks()))


# === The module ===================================================================================

ALL_VARIANTS = dict(peephole=True, layer_norm=True, recurrent_dropout=0.3, zoneout=(0.3, 0.4), forget_bias=1.0)
MODULE_CONFIGS = {  # lstm_ext.LSTM keyword arguments, input kind ("padded", "packed", "packed_sorted"), hx
    "padded_all": (dict(ALL_VARIANTS), "padded", True),
    "padded_all_no_state": (dict(ALL_VARIANTS), "padded", False),
    "packed_unsorted_bidir_2layers_all": (dict(ALL_VARIANTS, num_layers=2, bidirectional=True), "packed", True),
    "packed_sorted_zoneout_float": (dict(zoneout=0.25, peephole=True), "packed_sorted", True),
    "batch_first_bidir_all": (dict(ALL_VARIANTS, bidirectional=True, batch_first=True), "padded", True),
    "batch_first_recurrent_dropout": (dict(recurrent_dropout=0.5, batch_first=True, num_layers=2), "padded", False),
    "proj_allowed_variants": (dict(peephole=True, layer_norm=True, recurrent_dropout=0.3, forget_bias=1.0,
                                   proj_size=2, bidirectional=True), "packed", True),
}


def _rates(zoneout):
    return (zoneout, zoneout) if isinstance(zoneout, (int, float)) else tuple(zoneout)


def make_module(kwargs, device, seed=11):
    torch.manual_seed(seed)
    return lstm_ext.LSTM(I, H, dtype=F64, device=device, **kwargs)


def module_case(config, device):
    kwargs, kind, given_state = MODULE_CONFIGS[config]
    module = make_module(kwargs, device)
    x = module_input("packed" if kind.startswith("packed") else kind, module.batch_first, device,
                     sorted=kind == "packed_sorted")
    hx = module_states(module.num_layers, module.bidirectional, module.proj_size, device) if given_state else None
    return module, x, hx


def reference_of_module(module, x, hx, variant_masks, zoneout_rates):
    return ref.module_forward(dict(module.named_parameters()), x, hx, num_layers=module.num_layers,
                              bidirectional=module.bidirectional, batch_first=module.batch_first, hidden_size=H,
                              proj_size=module.proj_size, variant_masks=variant_masks,
                              zoneout_rates=zoneout_rates, return_cell_states=True)


@pytest.mark.parametrize("config", MODULE_CONFIGS)
def test_module_training_equals_reference_with_the_same_masks(device, config):
    module, x, hx = module_case(config, device)
    x, hx, leaves = module_leaves(x, hx, dict(module.named_parameters()))
    torch.manual_seed(21)
    actual = values_and_grads(outputs_dict(*_flatten(module(x, hx, return_cell_states=True))), leaves)
    torch.manual_seed(21)
    masks = module.sample_masks(x)
    assert isinstance(masks, lstm_ext.VariantMasks)
    rates = _rates(MODULE_CONFIGS[config][0].get("zoneout", 0.0))
    expected = values_and_grads(outputs_dict(*_flatten(reference_of_module(module, x, hx, masks, rates))), leaves)
    assert_all_close(actual, expected)
    if isinstance(x, PackedSequence):
        _, _, cells = module(x, hx, return_cell_states=True)
        assert isinstance(cells, PackedSequence) and torch.equal(cells.batch_sizes, x.batch_sizes)
        for a, e in ((cells.sorted_indices, x.sorted_indices), (cells.unsorted_indices, x.unsorted_indices)):
            assert (a is None and e is None) or torch.equal(a, e)


@pytest.mark.parametrize("config", MODULE_CONFIGS)
def test_module_eval_equals_reference_expectation(device, config):
    module, x, hx = module_case(config, device)
    module.eval()
    x, hx, leaves = module_leaves(x, hx, dict(module.named_parameters()))
    rates = _rates(MODULE_CONFIGS[config][0].get("zoneout", 0.0))
    actual = values_and_grads(outputs_dict(*_flatten(module(x, hx, return_cell_states=True))), leaves)
    expected = values_and_grads(outputs_dict(*_flatten(reference_of_module(module, x, hx, None, rates))), leaves)
    assert_all_close(actual, expected)


def test_module_without_cell_states_returns_nn_lstm_structure(device):
    module, x, hx = module_case("padded_all", device)
    result = module(x, hx)
    assert len(result) == 2 and len(result[1]) == 2


def test_module_eval_recurrent_dropout_does_nothing(device):
    dropped = make_module(dict(recurrent_dropout=0.5, num_layers=2), device).eval()
    plain = make_module(dict(num_layers=2), device).eval()
    plain.load_state_dict(dropped.state_dict())
    x = module_input("padded", False, device)
    for a, e in zip(_flatten(dropped(x)), _flatten(plain(x))):
        torch.testing.assert_close(a, e, **TOL)


def test_module_variants_off_are_bitwise_the_plain_module(device):
    off = make_module(dict(forget_bias=0.0, recurrent_dropout=0.0, zoneout=0.0, layer_norm=False, peephole=False,
                           bidirectional=True), device)
    plain = make_module(dict(bidirectional=True), device)
    for (name, p), (_, q) in zip(off.named_parameters(), plain.named_parameters()):
        assert torch.equal(p, q), name
    x = module_input("packed", False, device)
    for a, e in zip(_flatten(off(x)), _flatten(plain(x))):
        a, e = (a.data, e.data) if isinstance(a, PackedSequence) else (a, e)
        assert torch.equal(a, e)


@pytest.mark.parametrize("kind", ["padded", "packed", "batch_first"])
def test_sample_masks_shapes_values_and_draw_order(device, kind):
    """Per (layer, direction): the recurrent mask [B, P] of 0 and 1/(1-p), then the zoneout cell and hidden
    masks of 0 and 1 in the input's row layout, each drawn by lstm_ext.bernoulli_mask from the default generator."""
    p, rates = 0.3, (0.2, 0.6)
    module = make_module(dict(recurrent_dropout=p, zoneout=rates, num_layers=2, bidirectional=True,
                              batch_first=kind == "batch_first"), device)
    x = module_input("packed" if kind == "packed" else "padded", module.batch_first, device)
    data = x.data if isinstance(x, PackedSequence) else x
    batch = len(LENGTHS) if kind == "packed" else B
    torch.manual_seed(4)
    recurrent, zoneout = module.sample_masks(x)
    torch.manual_seed(4)
    assert len(recurrent) == len(zoneout) == 4
    for index in range(4):
        expected_recurrent = lstm_ext.bernoulli_mask((batch, H), 1 - p, dtype=F64, device=device) / (1 - p)
        expected_cell = lstm_ext.bernoulli_mask((*data.shape[:-1], H), rates[0], dtype=F64, device=device)
        expected_hidden = lstm_ext.bernoulli_mask((*data.shape[:-1], H), rates[1], dtype=F64, device=device)
        assert torch.equal(recurrent[index], expected_recurrent), index
        assert torch.equal(zoneout[index][0], expected_cell), index
        assert torch.equal(zoneout[index][1], expected_hidden), index
    assert set(torch.cat([m.flatten() for m in recurrent]).tolist()) == {0.0, 1 / (1 - p)}


def _splitmix64_words(seed: int, count: int) -> list[int]:
    """The first `count` 32-bit words of the splitmix64 stream from `seed`, low half of each output first."""
    mask64, words = (1 << 64) - 1, []
    for k in range((count + 1) // 2):
        z = (seed + (k + 1) * 0x9E3779B97F4A7C15) & mask64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask64
        z ^= z >> 31
        words += [z & 0xFFFFFFFF, z >> 32]
    return words[:count]


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_bernoulli_mask_is_the_documented_draw(p):
    """On the CPU: one int64 value of the default generator (randint over int64) seeds a splitmix64 stream;
    value i is 1 where the stream's i-th 32-bit word is below p * 2^32."""
    torch.manual_seed(5)
    mask = lstm_ext.bernoulli_mask((3, 7), p, dtype=F64, device="cpu")
    torch.manual_seed(5)
    seed = int(torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64)) % 2**64
    expected = [1.0 if w < round(p * 2**32) else 0.0 for w in _splitmix64_words(seed, 21)]
    assert mask.flatten().tolist() == expected
    assert mask.shape == (3, 7) and mask.dtype == F64


def test_bernoulli_mask_rates_threads_and_generator():
    n = 1 << 20
    for p in (0.1, 0.5, 0.9):
        torch.manual_seed(0)
        mask = lstm_ext.bernoulli_mask((n,), p, dtype=torch.float32, device="cpu")
        assert set(mask.unique().tolist()) == {0.0, 1.0}
        assert abs(mask.mean().item() - p) < 5 * (p * (1 - p) / n) ** 0.5, p
        both = (mask[0::2] * mask[1::2]).mean().item()  # the two words of one output are independent
        assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / (n // 2)) ** 0.5, p
    assert lstm_ext.bernoulli_mask((1000,), 0.0, dtype=torch.float32, device="cpu").sum() == 0
    assert lstm_ext.bernoulli_mask((1000,), 1.0, dtype=torch.float32, device="cpu").sum() == 1000
    # The same seed gives the same mask for any number of threads; the draw takes one value of the generator.
    threads = torch.get_num_threads()
    try:
        masks = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            torch.manual_seed(3)
            masks.append(lstm_ext.bernoulli_mask((n + 1,), 0.3, dtype=torch.bfloat16, device="cpu"))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(m, masks[0]) for m in masks) and masks[0].dtype == torch.bfloat16
    torch.manual_seed(3)
    lstm_ext.bernoulli_mask((n,), 0.3, dtype=torch.float32, device="cpu")
    after = torch.rand(1)
    torch.manual_seed(3)
    torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64)
    assert torch.equal(after, torch.rand(1))
    assert not torch.equal(masks[0], lstm_ext.bernoulli_mask((n + 1,), 0.3, dtype=torch.bfloat16, device="cpu"))


def test_bernoulli_mask_op_checks_and_errors():
    seed = torch.tensor(7, dtype=torch.int64)
    torch.library.opcheck(torch.ops.lstm_ext.bernoulli_mask.default, (seed, [4, 3], 0.25, torch.float32))
    with pytest.raises(RuntimeError, match=r"expected p in \[0, 1\], got 1.5"):
        torch.ops.lstm_ext.bernoulli_mask(seed, [2], 1.5, torch.float32)
    with pytest.raises(RuntimeError, match="expected seed to be one int64 value on the CPU, got a Float tensor"):
        torch.ops.lstm_ext.bernoulli_mask(torch.tensor(1.0), [2], 0.5, torch.float32)


def test_sample_masks_draws_only_for_rates_above_zero():
    module = make_module(dict(zoneout=(0.0, 0.3)), "cpu")
    torch.manual_seed(4)
    recurrent, zoneout = module.sample_masks(module_input("padded", False, "cpu"))
    after = torch.rand(1)
    torch.manual_seed(4)
    expected_hidden = lstm_ext.bernoulli_mask((T, B, H), 0.3, dtype=F64, device="cpu")
    assert recurrent is None or all(m is None for m in recurrent)
    assert zoneout[0][0] is None and torch.equal(zoneout[0][1], expected_hidden)
    assert torch.equal(after, torch.rand(1))  # one draw only, for the one rate above zero


# --- Parameters and their init --------------------------------------------------------------------

PARAMETER_CONFIGS = {
    "peephole_layer_norm_forget_bias": dict(peephole=True, layer_norm=True, forget_bias=1.0),
    "bidir_2layers_all": dict(peephole=True, layer_norm=True, forget_bias=-0.5, num_layers=2, bidirectional=True),
    "proj": dict(peephole=True, layer_norm=True, forget_bias=2.0, proj_size=2, bidirectional=True),
}


@pytest.mark.parametrize("config", PARAMETER_CONFIGS)
def test_module_parameters_and_init(config):
    kwargs = PARAMETER_CONFIGS[config]
    module = make_module(kwargs, "cpu", seed=13)
    nn_kwargs = {k: v for k, v in kwargs.items() if k in ("num_layers", "bidirectional", "proj_size")}
    torch.manual_seed(13)
    expected = ref.init_parameters(I, H, dtype=F64, peephole=kwargs.get("peephole", False),
                                   layer_norm=kwargs.get("layer_norm", False),
                                   forget_bias=kwargs.get("forget_bias", 0.0), **nn_kwargs)
    actual = dict(module.named_parameters())
    nn_names = [n for n, _ in nn.LSTM(I, H, **nn_kwargs).named_parameters()]
    assert list(actual)[:len(nn_names)] == nn_names  # nn.LSTM's names, in nn's order, first
    assert sorted(actual) == sorted(expected)
    peephole_names = [n for n in actual if n.startswith("weight_peephole")]
    assert peephole_names == [n for n in expected if n.startswith("weight_peephole")]  # the init's draw order
    for name, value in expected.items():
        assert actual[name].shape == value.shape, name
        torch.testing.assert_close(actual[name].detach(), value, rtol=0, atol=1e-15, msg=name)


def test_forget_bias_init_and_state_dict_loads_into_nn_lstm():
    torch.manual_seed(17)
    expected = nn.LSTM(I, H, 2, bidirectional=True, dtype=F64)
    module = make_module(dict(forget_bias=1.0, num_layers=2, bidirectional=True), "cpu", seed=17)
    for name, p in expected.named_parameters():
        q = getattr(module, name).detach()
        if name.startswith("bias_ih"):
            torch.testing.assert_close(q[H:2 * H] - p.detach()[H:2 * H], torch.ones(H, dtype=F64), rtol=0, atol=1e-15)
            q = torch.cat([q[:H], p.detach()[H:2 * H], q[2 * H:]])
        assert torch.equal(q, p.detach()), name
    expected.load_state_dict(module.state_dict())
    x = module_input("packed", False, "cpu")
    for a, e in zip(_flatten(module(x)), _flatten(expected(x))):
        a, e = (a.data, e.data) if isinstance(a, PackedSequence) else (a, e)
        torch.testing.assert_close(a, e, **TOL)


@pytest.mark.parametrize("cls", ["LSTM", "LSTMCell"])
def test_forget_bias_requires_bias(cls):
    with pytest.raises(ValueError, match=r"forget_bias.*bias=False|bias=False.*forget_bias"):
        getattr(lstm_ext, cls)(I, H, bias=False, forget_bias=1.0)


def test_module_zoneout_with_projection_is_not_implemented():
    with pytest.raises(NotImplementedError, match=r"zoneout.*proj_size"):
        module = lstm_ext.LSTM(I, H, proj_size=2, zoneout=0.1)
        module(torch.randn(T, B, I))


# --- torch.compile ------------------------------------------------------------------------------------

def test_compiled_module_with_variants_trains_in_one_graph_like_eager(device, dynamo_graphs):
    # fullgraph: a graph break raises. The masks are drawn inside the graph from the default generator, so the
    # same seed gives eager's masks. New inputs of the same shapes reuse the graph.
    module = make_module(dict(ALL_VARIANTS), device)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")

    def train_step(model, x):
        output, (h_n, c_n), cells = model(x, return_cell_states=True)
        loss = output.square().mean() + h_n.sum() + c_n.mean() + cells.sin().sum()
        return [loss.detach(), *torch.autograd.grad(loss, list(module.parameters()))]

    inputs = [module_input("padded", False, device, seed=s) for s in range(3)]  # all alive: no id reused
    for seed, x in enumerate(inputs):
        torch.manual_seed(seed)
        expected = train_step(module, x)
        torch.manual_seed(seed)
        actual = train_step(compiled, x)
        for e, a in zip(expected, actual):
            torch.testing.assert_close(a, e, **TOL)
    assert dynamo_graphs() == 1


# === LSTMCell ========================================================================================

CELL_VARIANTS = {
    "peephole": Variant(peephole=True),
    "layer_norm": Variant(layer_norm=True),
    "recurrent_dropout": Variant(recurrent_dropout=0.4),
    "zoneout": Variant(zoneout=(0.3, 0.5)),
    "all": Variant(peephole=True, layer_norm=True, recurrent_dropout=0.3, zoneout=(0.3, 0.5)),
}


def cell_problem(variant: Variant, device, seed=0):
    problem = make_problem(Layout(), variant, device, seed=seed, with_masks=False)
    gen = torch.Generator().manual_seed(seed + 100)
    x = problem.x[0].detach().clone().requires_grad_(True)
    h, c = (s[0].detach().clone().requires_grad_(True) for s in problem.hx)
    recurrent = zoneout_masks = None
    if variant.recurrent_dropout:
        keep = 1 - variant.recurrent_dropout
        recurrent = (torch.rand(B, H, generator=gen, dtype=F64) < keep).to(F64).div(keep).to(device)
    if variant.zoneout != (0.0, 0.0):
        zoneout_masks = tuple((torch.rand(B, H, generator=gen, dtype=F64) < r).to(F64).to(device) for r in variant.zoneout)
    return x, (h, c), problem.layers[0], recurrent, zoneout_masks


@pytest.mark.parametrize("variant", CELL_VARIANTS)
@pytest.mark.parametrize("training", [True, False])
def test_lstm_cell_function_equals_reference_step(device, variant, training):
    var = CELL_VARIANTS[variant]
    x, (h, c), w, recurrent, zoneout_masks = cell_problem(var, device)
    leaves = {"input": x, "h": h, "c": c, **{f"flat_weights[{i}]": t for i, t in enumerate(ref.join_flat_weights([w]))}}
    actual_h, actual_c = lstm_ext.lstm_cell(x, (h, c), w.weight_ih, w.weight_hh, w.bias_ih, w.bias_hh,
                                            training=training, weight_peephole=w.weight_peephole,
                                            layer_norm_weights=w.layer_norm, recurrent_mask=recurrent,
                                            zoneout=var.zoneout, zoneout_masks=zoneout_masks)
    masks = (zoneout_masks or (0.0, 0.0))
    expected_h, expected_c = ref.cell_step(x, h, c, w, recurrent, *masks)
    assert_all_close(values_and_grads({"h": actual_h, "c": actual_c}, leaves),
                     values_and_grads({"h": expected_h, "c": expected_c}, leaves))


def test_lstm_cell_function_without_zoneout_masks_uses_the_rates(device):
    var = CELL_VARIANTS["zoneout"]
    x, (h, c), w, _, _ = cell_problem(var, device)
    actual = lstm_ext.lstm_cell(x, (h, c), w.weight_ih, w.weight_hh, w.bias_ih, w.bias_hh, training=False,
                                zoneout=var.zoneout)
    for a, e in zip(actual, ref.cell_step(x, h, c, w, None, *var.zoneout)):
        torch.testing.assert_close(a, e, **TOL)


CELL_MODULE_KWARGS = dict(peephole=True, layer_norm=True, recurrent_dropout=0.3, zoneout=(0.3, 0.5), forget_bias=1.0)


def cell_layer_weights(cell) -> LayerWeights:
    ln = None
    if cell.layer_norm:
        ln = (cell.layer_norm_weight_ih, cell.layer_norm_weight_hh, cell.layer_norm_weight_c, cell.layer_norm_bias_c)
    return LayerWeights(cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, None,
                        getattr(cell, "weight_peephole", None), ln)


def test_lstm_cell_module_parameters_and_init():
    torch.manual_seed(19)
    cell = lstm_ext.LSTMCell(I, H, dtype=F64, **CELL_MODULE_KWARGS)
    torch.manual_seed(19)
    expected = dict(nn.LSTMCell(I, H, dtype=F64).named_parameters())
    bound = 1 / math.sqrt(H)
    expected = {n: p.detach().clone() for n, p in expected.items()}
    expected["weight_peephole"] = torch.empty(3 * H, dtype=F64).uniform_(-bound, bound)
    expected["bias_ih"][H:2 * H] += 1.0
    expected.update(layer_norm_weight_ih=torch.ones(4 * H, dtype=F64), layer_norm_weight_hh=torch.ones(4 * H, dtype=F64),
                    layer_norm_weight_c=torch.ones(H, dtype=F64), layer_norm_bias_c=torch.zeros(H, dtype=F64))
    actual = dict(cell.named_parameters())
    assert list(actual)[:4] == ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    assert sorted(actual) == sorted(expected)
    for name, value in expected.items():
        torch.testing.assert_close(actual[name].detach(), value, rtol=0, atol=1e-15, msg=name)


def test_lstm_cell_module_eval_equals_reference_expectation(device):
    torch.manual_seed(19)
    cell = lstm_ext.LSTMCell(I, H, dtype=F64, device=device, **CELL_MODULE_KWARGS).eval()
    x, (h, c), *_ = cell_problem(Variant(), device)
    leaves = {"input": x, "h": h, "c": c, **dict(cell.named_parameters())}
    actual = dict(zip("hc", cell(x, (h, c))))
    expected = dict(zip("hc", ref.cell_step(x, h, c, cell_layer_weights(cell), None, 0.3, 0.5)))
    assert_all_close(values_and_grads(actual, leaves), values_and_grads(expected, leaves))


def test_lstm_cell_module_training_draws_fresh_masks_per_call(device):
    """Two calls in training, each drawing its masks (the order of sample_masks for one step: recurrent
    [B, H] scaled, then zoneout cell, then hidden) from the default generator over the caller's hx."""
    torch.manual_seed(19)
    cell = lstm_ext.LSTMCell(I, H, dtype=F64, device=device, **CELL_MODULE_KWARGS)
    x, (h, c), *_ = cell_problem(Variant(), device)
    leaves = {"input": x, "h": h, "c": c, **dict(cell.named_parameters())}
    torch.manual_seed(23)
    state = cell(x, (h, c))
    state = cell(x * 0.5, state)
    actual = dict(zip("hc", state))
    torch.manual_seed(23)
    state = (h, c)
    for step_input in (x, x * 0.5):
        recurrent = lstm_ext.bernoulli_mask((B, H), 0.7, dtype=F64, device=device) / 0.7
        cell_mask = lstm_ext.bernoulli_mask((B, H), 0.3, dtype=F64, device=device)
        hidden_mask = lstm_ext.bernoulli_mask((B, H), 0.5, dtype=F64, device=device)
        state = ref.cell_step(step_input, *state, cell_layer_weights(cell), recurrent, cell_mask, hidden_mask)
    expected = dict(zip("hc", state))
    assert_all_close(values_and_grads(actual, leaves), values_and_grads(expected, leaves))
