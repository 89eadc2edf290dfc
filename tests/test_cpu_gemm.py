"""The CPU backend's matrix products on their own, through StepKernels' interface (csrc/step_kernels.h)
as the test ops of csrc/testing/cpu_gemm_testing.cpp expose it, against torch.mm in float64:

- matmul / project: out[:, columns] (+)= a @ op(W), or bias_ih + bias_hh + a @ op(W). In float32 the
  vector builds run csrc/cpu/panel_gemm.h on one of three forms of W that prepare_weight picks from the
  promised use (packed panels, W read in place as panels, W^T's tiles transposed as they are read); the
  baseline build and float64 run BLAS, bfloat16 runs ATen.
- weight_gradients: outs[i] (+)= a[i]^T @ b[i] and column sums (csrc/cpu/weight_grad_gemm.h in float32 on
  the vector builds, ATen otherwise).

Each element must lie within the rounding error bound of the exact product, and, for integer-valued
operands (whose sums float32 holds exactly), equal it. panel_gemm.h and weight_grad_gemm.h promise that
every element is one running sum over k in increasing order whatever the rows, the form of W and the
threads: in their float32 path the results are compared bit for bit across those. The process tests the
build ATen's CPU capability selects; test_gemm_contract_under_every_cpu_build runs this file under the
machine's other builds."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lstm_ext
from test_cpu_variants import CHILD_TIMEOUT_S, TESTS, _capability_env, _variant_under

ROOT = TESTS.parent

matmul_op = torch.ops.lstm_ext_testing.cpu_gemm_matmul.default
project_op = torch.ops.lstm_ext_testing.cpu_gemm_project.default
weight_gradients_op = torch.ops.lstm_ext_testing.cpu_gemm_weight_gradients.default

KERNELS = lstm_ext.cpu_kernels()
# panel_gemm.h's kPanelWidth (two vectors of floats); the baseline build has no panel product.
PANEL_WIDTH = {"avx512": 32, "avx2": 16}.get(KERNELS)
PANEL_PRODUCT = PANEL_WIDTH is not None
NEEDS_PANELS = pytest.mark.skipif(not PANEL_PRODUCT, reason=f"the {KERNELS} build runs float32 through BLAS/ATen, "
                                  "which promise no particular summation order")
# Column ranges below are multiples of this: whole panels in both vector builds.
WIDTH = PANEL_WIDTH or 32
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.float64: 2.0 ** -53, torch.bfloat16: 2.0 ** -8}
# Uses that make prepare_weight choose a form, whatever the thread count (CpuStepKernels::prepare_weight):
# many rows are packed; op(W) = W with whole panels for a few rows is read in place; op(W) = W^T for one
# product of at most 4 rows (one pass of panel_gemm::kTransposedRows) too.
MANY_ROWS_USE = (4096, 1)
FEW_ROWS_USE = (4, 1)


def error_bound(dtype, terms):
    """How far a sum of `terms` rounded terms may lie from the exact sum, per unit of the sum of their
    absolute values: gamma_n = n u / (1 - n u) in any order, fused or not (Higham, Accuracy and Stability
    of Numerical Algorithms, 3.1). bfloat16 (ATen) sums in float32: float32's gamma plus, to first order,
    three roundings to bfloat16 (the bias's sum, the product, the sum with the start)."""
    if dtype == torch.bfloat16:
        return 3 * UNIT_ROUNDOFF[torch.bfloat16] + error_bound(torch.float32, terms)
    nu = terms * UNIT_ROUNDOFF[dtype]
    return nu / (1 - nu)


def assert_within_bound(got, exact, magnitude, terms, what):
    bound = error_bound(got.dtype, terms) * magnitude
    error = (got.double() - exact).abs()
    worst = (error - bound).argmax() if error.numel() else None
    assert error.numel() == 0 or bool((error <= bound).all()), (
        f"{what}: element {tuple(int(i) for i in torch.unravel_index(worst, error.shape))} is off by "
        f"{error.flatten()[worst]:.3g}, over the bound {bound.flatten()[worst]:.3g} of {terms} terms")


def operands(*shapes, dtype, integers):
    """Random tensors: small integers (every sum of these sizes exact in float32), else normal."""
    if integers:
        return [torch.randint(-3, 4, shape).to(dtype) for shape in shapes]
    return [torch.randn(shape, dtype=torch.float64).to(dtype) for shape in shapes]


def weight_of(k, n, transpose, dtype, integers):
    """W with op(W) [k, n]: [n, k] when transpose."""
    (w,) = operands((n, k) if transpose else (k, n), dtype=dtype, integers=integers)
    return w


def op_of(weight, transpose):
    return weight.double().t() if transpose else weight.double()


def run_matmul(a, weight, transpose, accumulate, out=None, columns=None, use=None):
    """out after the op (a fresh NaN-filled out unless given: a product that does not accumulate must not
    read it) and the weight's form."""
    n = weight.shape[0] if transpose else weight.shape[1]
    out = torch.full((a.shape[0], n), float("nan"), dtype=a.dtype) if out is None else out
    begin, end = columns or (0, n)
    use_rows, use_products = use or (a.shape[0], 1)
    form = matmul_op(out, a, weight, transpose, use_rows, use_products, accumulate, begin, end)
    return out, form


def expected_form(dtype, form):
    """The form prepare_weight gives for `form`'s use: the panel forms only in the vector builds' float32."""
    return form if PANEL_PRODUCT and dtype == torch.float32 else "unpacked"


# (m, k, n): rows of a, depth, columns. Rows: 1, the vector builds' blocks of 6 and their remainders,
# row blocks of 96 (97: two, 193: three), none. Depth: panel_gemm's blocks of 512 (513, 1024, 1100: two
# and a remainder), the transposed tiles of 8 (515: and 3), none. Columns: under one panel (7, 37), partial
# last panels (40, 100, 200), whole panels (64, 96, 448: several main blocks of two panels).
SHAPES = [(1, 1, 1), (1, 20, 7), (2, 515, 37), (3, 1100, 200), (5, 33, 40), (7, 64, 64), (13, 513, 100),
          (26, 1100, 200), (97, 40, 96), (193, 128, 448), (300, 1024, 64), (0, 8, 16), (4, 0, 48)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_matmul_matches_torch_mm(m, k, n, transpose, accumulate, dtype):
    for integers in [False, True] if dtype != torch.bfloat16 else [False]:
        (a,) = operands((m, k), dtype=dtype, integers=integers)
        weight = weight_of(k, n, transpose, dtype, integers)
        start = operands((m, n), dtype=dtype, integers=integers)[0] if accumulate else None
        out, _ = run_matmul(a, weight, transpose, accumulate, out=None if start is None else start.clone())
        exact = torch.mm(a.double(), op_of(weight, transpose))
        magnitude = torch.mm(a.double().abs(), op_of(weight, transpose).abs())
        if start is not None:
            exact += start.double()
            magnitude += start.double().abs()
        if integers:
            assert torch.equal(out.double(), exact), f"integer operands: {(out.double() - exact).abs().max()} off"
        else:
            assert_within_bound(out, exact, magnitude, k + 1, "a @ op(W)" + (" + out" if accumulate else ""))


# (form, transpose, use, columns of the product): each form prepare_weight can take, with the uses that
# make it take it; W in place needs whole panels.
FORMS = [("packed", False, MANY_ROWS_USE, 200), ("packed", True, MANY_ROWS_USE, 200),
         ("in_place", False, FEW_ROWS_USE, 192), ("transposed_in_place", True, FEW_ROWS_USE, 200)]
FORM_IDS = ["packed", "packed_transposed", "in_place", "transposed_in_place"]
# Every row count of one and several blocks (as test_cpu_variants' block shapes) and of one to three
# row blocks of 96.
ROW_COUNTS = list(range(1, 27)) + [95, 96, 97, 191, 192, 193]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form,transpose,use,n", FORMS, ids=FORM_IDS)
def test_every_row_count_in_each_form(form, transpose, use, n, dtype):
    """The form is the one the use asks for, and every row count up to the use's rows is exact."""
    k = 70  # the transposed tiles of 8 and a remainder of 6
    rows = [m for m in ROW_COUNTS if m <= use[0]]
    integers = dtype != torch.bfloat16
    weight = weight_of(k, n, transpose, dtype, integers)
    for m in rows:
        (a,) = operands((m, k), dtype=dtype, integers=integers)
        out, got_form = run_matmul(a, weight, transpose, accumulate=False, use=use)
        assert got_form == expected_form(dtype, form), f"{m} rows"
        exact = torch.mm(a.double(), op_of(weight, transpose))
        if integers:
            assert torch.equal(out.double(), exact), f"{m} rows: {(out.double() - exact).abs().max()} off"
        else:
            magnitude = torch.mm(a.double().abs(), op_of(weight, transpose).abs())
            assert_within_bound(out, exact, magnitude, k, f"{m} rows")


@NEEDS_PANELS
def test_forms_cover_every_panel_path():
    """The uses above reach all three forms (and nothing else does in float32), so the tests here run
    each of panel_gemm's paths."""
    seen = set()
    for form, transpose, use, n in FORMS:
        weight = weight_of(70, n, transpose, torch.float32, integers=True)
        (a,) = operands((4, 70), dtype=torch.float32, integers=True)
        seen.add(run_matmul(a, weight, transpose, accumulate=False, use=use)[1])
    assert seen == {"packed", "in_place", "transposed_in_place"}
    # W with a partial last panel cannot be read in place: packed whatever the use.
    weight = weight_of(70, 200, False, torch.float32, integers=True)
    assert run_matmul(a, weight, False, accumulate=False, use=FEW_ROWS_USE)[1] == "packed"


# Column ranges [begin, end) of a product of n columns as a share of split units asks for them: whole
# panels, and (the last gate's) up to n where n ends in a partial panel (not with W in place, which has
# whole panels only).
COLUMN_RANGES = [(192, (0, WIDTH)), (192, (WIDTH, 3 * WIDTH)), (192, (2 * WIDTH, 192)), (200, (4 * WIDTH, 200)),
                 (200, (0, 2 * WIDTH)), (200, (WIDTH, WIDTH))]
SHARE_CASES = [pytest.param(n, columns, *form[:3], id=f"{form_id}-{n}-{columns[0]}-{columns[1]}")
               for form, form_id in zip(FORMS, FORM_IDS) for n, columns in COLUMN_RANGES
               if n % WIDTH == 0 or form[0] != "in_place"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("n,columns,form,transpose,use", SHARE_CASES)
def test_columns_of_a_share(n, columns, form, transpose, use, accumulate, dtype):
    """Only columns [begin, end) change; they hold the product's columns (+ out's)."""
    m, k, (begin, end) = 4, 600, columns
    integers = dtype != torch.bfloat16
    (a,) = operands((m, k), dtype=dtype, integers=integers)
    weight = weight_of(k, n, transpose, dtype, integers)
    (before,) = operands((m, n), dtype=dtype, integers=integers)
    out = before.clone()
    if not accumulate:
        out[:, begin:end] = float("nan")  # must not be read
    out, got_form = run_matmul(a, weight, transpose, accumulate, out=out, columns=columns, use=use)
    assert got_form == expected_form(dtype, form)
    outside = torch.ones(n, dtype=torch.bool)
    outside[begin:end] = False
    assert torch.equal(out[:, outside], before[:, outside]), "columns outside the range changed"
    exact = torch.mm(a.double(), op_of(weight, transpose))[:, begin:end]
    magnitude = torch.mm(a.double().abs(), op_of(weight, transpose).abs())[:, begin:end]
    if accumulate:
        exact += before[:, begin:end].double()
        magnitude += before[:, begin:end].double().abs()
    if integers:
        assert torch.equal(out[:, begin:end].double(), exact)
    else:
        assert_within_bound(out[:, begin:end], exact, magnitude, k + 1, f"columns [{begin}, {end})")


@NEEDS_PANELS
def test_panel_product_refuses_columns_off_panel_edges():
    a, weight = operands((8, 16), (16, 200), dtype=torch.float32, integers=True)
    with pytest.raises(RuntimeError, match="not whole panels"):
        run_matmul(a, weight, False, accumulate=False, columns=(1, 200), use=MANY_ROWS_USE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form,transpose,use,n", FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("m,k", [(1, 1), (3, 515), (4, 70), (4, 0)])
def test_project_starts_from_the_bias(m, k, form, transpose, use, n, dtype):
    """project: columns of (bias_ih + bias_hh) + a @ op(W), the bias the same on every row; without biases,
    a @ op(W)."""
    for integers in [False, True] if dtype != torch.bfloat16 else [False]:
        a, bias_ih, bias_hh = operands((m, k), (n,), (n,), dtype=dtype, integers=integers)
        weight = weight_of(k, n, transpose, dtype, integers)
        product = torch.mm(a.double(), op_of(weight, transpose))
        magnitude = torch.mm(a.double().abs(), op_of(weight, transpose).abs())
        for biases, columns in [((bias_ih, bias_hh), (0, n)), ((bias_ih, bias_hh), (WIDTH, n)), ((None, None), (0, n))]:
            begin, end = columns
            out = torch.full((m, n), float("nan"), dtype=dtype)
            got_form = project_op(out, a, weight, transpose, *use, *biases, begin, end)
            assert got_form == expected_form(dtype, form)
            assert bool(out[:, :begin].isnan().all()), "columns before the range changed"
            exact, bound_of = product[:, begin:end].clone(), magnitude[:, begin:end].clone()
            if biases[0] is not None:
                exact += (bias_ih.double() + bias_hh.double())[begin:end]
                bound_of += (bias_ih.double().abs() + bias_hh.double().abs())[begin:end]
            got = out[:, begin:end]
            if integers:
                assert torch.equal(got.double(), exact), f"biases {biases[0] is not None}, columns {columns}"
            else:
                assert_within_bound(got, exact, bound_of, k + 2, f"project, columns {columns}")


def with_threads(threads, fn):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(saved)


def bits(t):
    return t.view(torch.int32).clone()


@NEEDS_PANELS
@pytest.mark.parametrize("m,k,n", [(4, 600, 96), (4, 70, 200), (2, 515, 37), (3, 1100, 64)])
def test_every_form_gives_the_same_bits(m, k, n):
    """panel_gemm's forms sum the same terms in the same order (W^T read in place: 'the sums are the
    panels''): identical bits from each form, from op(W) given as W or as W^T, run after run, and for
    each row whether computed with the others or alone; project's bias start is the bias summed first
    and accumulated onto."""
    a, bias_ih, bias_hh = operands((m, k), (n,), (n,), dtype=torch.float32, integers=False)
    w = weight_of(k, n, False, torch.float32, integers=False)  # op(W) [k, n]
    weight_t = w.t().contiguous()
    results = {}
    for form, transpose, use, _ in FORMS:
        if n % WIDTH and form == "in_place":
            continue
        weight = weight_t if transpose else w
        for run in range(2):
            out, got_form = run_matmul(a, weight, transpose, accumulate=False, use=use)
            assert got_form == form
            results[f"{form}, transpose={transpose}, run {run}"] = bits(out)
        rows = torch.cat([run_matmul(a[i:i + 1], weight, transpose, accumulate=False, use=use)[0] for i in range(m)])
        results[f"{form}, transpose={transpose}, row by row"] = bits(rows)
        biased = torch.empty(m, n)
        project_op(biased, a, weight, transpose, *use, bias_ih, bias_hh, 0, n)
        onto_bias = (bias_ih + bias_hh).expand(m, n).contiguous()
        run_matmul(a, weight, transpose, accumulate=True, out=onto_bias, use=use)
        assert torch.equal(bits(biased), bits(onto_bias)), f"{form}, transpose={transpose}: project"
    first_name, first = next(iter(results.items()))
    for name, result in results.items():
        assert torch.equal(result, first), f"{name} differs from {first_name}"


@NEEDS_PANELS
@pytest.mark.parametrize("form,transpose,use,n", FORMS[:3], ids=FORM_IDS[:3])
def test_matmul_bits_do_not_depend_on_threads(form, transpose, use, n):
    """The products outside batch chunks split (row block, panel) tasks over the threads; each element is
    still one sum, so 1, 2 and 3 threads give the same bits. (W^T read in place runs on one thread.)"""
    m, k = 193, 300
    if form == "in_place":
        use = (m, 1)  # 193 rows in all, fewer than CpuStepKernels::kMinTotalRowsToPack: still in place
    a, start = operands((m, k), (m, n), dtype=torch.float32, integers=False)
    weight = weight_of(k, n, transpose, torch.float32, integers=False)
    runs = {}
    for threads in [1, 2, 3, 2]:
        def product():
            return run_matmul(a, weight, transpose, accumulate=True, out=start.clone(), use=use)
        out, got_form = with_threads(threads, product)
        assert got_form == form
        runs.setdefault(threads, []).append(bits(out))
    assert torch.equal(runs[2][0], runs[2][1]), "two runs at 2 threads differ"
    assert torch.equal(runs[1][0], runs[2][0]) and torch.equal(runs[1][0], runs[3][0]), "thread counts differ"
    exact = torch.mm(a.double(), op_of(weight, transpose)) + start.double()
    magnitude = torch.mm(a.double().abs(), op_of(weight, transpose).abs()) + start.double().abs()
    assert_within_bound(runs[1][0].view(torch.float32), exact, magnitude, k + 1, "193 rows")


# weight_gradients cases: m (rows of every out) and products (k, n, accumulate). k: weight_grad_gemm's
# depth blocks of 256 (256, 257, 333, 513, 600: the later blocks add to the first's sums also where the
# product does not accumulate), 1, none. n: partial last panels (7, 36, 200), b read in place (64), a
# copied (128, 160, 200). m = 640: 107 blocks of 6 rows for the threads to split.
WEIGHT_GRADIENT_CASES = [
    (36, [(333, 200, False), (333, 36, True)]),
    (64, [(256, 64, False), (257, 160, False), (513, 64, True)]),
    (1, [(1, 7, False)]),
    (7, [(600, 128, False), (0, 16, False), (0, 16, True)]),
    (640, [(100, 200, False), (300, 160, True)]),
]
WEIGHT_GRADIENT_IDS = ["partial_panels", "depth_blocks", "one_row", "no_depth", "many_rows"]


def weight_gradient_operands(m, products, dtype, integers):
    """outs (NaN where not accumulated: must not be read), their values before, a's and b's."""
    outs, befores, a_list, b_list = [], [], [], []
    for k, n, accumulate in products:
        a, b, before = operands((k, m), (k, n), (m, n), dtype=dtype, integers=integers)
        outs.append(before.clone() if accumulate else torch.full((m, n), float("nan"), dtype=dtype))
        befores.append(before)
        a_list.append(a)
        b_list.append(b)
    return outs, befores, a_list, b_list


def run_weight_gradients(outs, a_list, b_list, products, column_sums, summed):
    weight_gradients_op(outs, a_list, b_list, [acc for _, _, acc in products], column_sums, summed)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_sums", [True, False], ids=["column_sums", "no_sums"])
@pytest.mark.parametrize("m,products", WEIGHT_GRADIENT_CASES, ids=WEIGHT_GRADIENT_IDS)
def test_weight_gradients_match_torch_mm(m, products, with_sums, dtype):
    """Each out (+)= a^T @ b, in order, and column_sums = the sums of summed's columns (the bias gradient:
    summed is the first product's a, as the backward's dG)."""
    for integers in [False, True] if dtype != torch.bfloat16 else [False]:
        outs, befores, a_list, b_list = weight_gradient_operands(m, products, dtype, integers)
        summed = a_list[0]
        column_sums = torch.full((m,), float("nan"), dtype=dtype) if with_sums else None
        run_weight_gradients(outs, a_list, b_list, products, column_sums, summed)
        for i, ((k, n, accumulate), out, before, a, b) in enumerate(zip(products, outs, befores, a_list, b_list)):
            exact = torch.mm(a.double().t(), b.double())
            magnitude = torch.mm(a.double().abs().t(), b.double().abs())
            if accumulate:
                exact += before.double()
                magnitude += before.double().abs()
            if integers:
                assert torch.equal(out.double(), exact), f"product {i}: {(out.double() - exact).abs().max()} off"
            else:
                assert_within_bound(out, exact, magnitude, k + 1, f"product {i} (k={k}, n={n})")
        if with_sums:
            exact, magnitude = summed.double().sum(0), summed.double().abs().sum(0)
            if integers:
                assert torch.equal(column_sums.double(), exact)
            else:
                assert_within_bound(column_sums, exact, magnitude, summed.shape[0], "column sums")


@NEEDS_PANELS
@pytest.mark.parametrize("m,products", WEIGHT_GRADIENT_CASES, ids=WEIGHT_GRADIENT_IDS)
def test_weight_gradient_bits_do_not_depend_on_threads(m, products):
    """weight_grad_gemm.h: 'each output element is one running sum over k in increasing order ... whatever
    the number of threads'; the column sums' blocks do not depend on them either. The same bits at 1, 2
    and 3 threads and run after run, and the bits of matmul's panel product of a^T (the same sums)."""
    outs, befores, a_list, b_list = weight_gradient_operands(m, products, torch.float32, integers=False)
    runs = []
    for threads in [1, 2, 3, 2]:
        run_outs = [out.clone() for out in outs]
        sums = torch.empty(m)
        with_threads(threads, lambda: run_weight_gradients(run_outs, a_list, b_list, products, sums, a_list[0]))
        runs.append((threads, [bits(out) for out in run_outs] + [bits(sums)]))
    for threads, results in runs[1:]:
        for i, (got, first) in enumerate(zip(results, runs[0][1])):
            what = f"product {i}" if i < len(products) else "column sums"
            assert torch.equal(got, first), f"{what}: {threads} threads differ from 1"
    for i, ((k, n, accumulate), out, a, b) in enumerate(zip(products, outs, a_list, b_list)):
        by_matmul, _ = run_matmul(a.t().contiguous(), b, False, accumulate, out=out.clone(), use=MANY_ROWS_USE)
        assert torch.equal(bits(by_matmul), runs[0][1][i]), f"product {i}: not matmul's sums of a^T @ b"


def test_fallback_dtypes_are_not_packed():
    """float64 (BLAS) and bfloat16 (ATen) weights stay as they are, whatever the use."""
    for dtype in [torch.float64, torch.bfloat16]:
        for transpose in [False, True]:
            for use in [MANY_ROWS_USE, FEW_ROWS_USE]:
                a, weight = operands((4, 64), (64, 64), dtype=dtype, integers=True)
                assert run_matmul(a, weight, transpose, accumulate=False, use=use)[1] == "unpacked"


@pytest.mark.parametrize("capability", ["avx512", "avx2", "default"])
def test_gemm_contract_under_every_cpu_build(capability):
    """This file under each other build the machine runs (ATEN_CPU_CAPABILITY, as test_cpu_variants)."""
    variant = _variant_under(capability)
    if variant == KERNELS:
        pytest.skip(f"ATEN_CPU_CAPABILITY={capability} runs the {variant} build, which this process tests")
    if capability != "default" and variant != capability:
        pytest.skip(f"this CPU cannot run the {capability} build (ATEN_CPU_CAPABILITY={capability} gives {variant})")
    # From the checkout's root, which `python -m` puts first on sys.path: the child imports this
    # checkout's lstm_ext, not another one installed.
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
                            "not under_every_cpu_build", str(Path(__file__).relative_to(ROOT))],
                           cwd=ROOT, env=_capability_env(capability), capture_output=True, text=True,
                           timeout=CHILD_TIMEOUT_S)
    assert child.returncode == 0, (f"the {variant} build failed the GEMM contract:\n{child.stdout[-6000:]}\n"
                                   f"{child.stderr[-2000:]}")
    assert " passed" in child.stdout.splitlines()[-1], child.stdout[-2000:]
