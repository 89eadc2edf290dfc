"""The gate activations against float64: sigmoid and tanh as the forward op computes them in float32 (on
the CPU in SIMD lanes with an inline exp, csrc/cpu/vector_exp.h, and a scalar tail with expf/tanhf).

The op keeps the activated gates for the backward, so with zero recurrent weights, no bias and a
one-column input through weights of one, the kept gates are sigmoid (i, f, o) and tanh (g) of the
input's values, exactly as the kernels computed them."""

import torch

forward_op = torch.ops.lstm_ext.lstm_layer_forward

# Units per row: 16 covers whole vectors of 8 (AVX2) and 16 (AVX-512); 3 more take the scalar tail.
UNITS = 19


def activations(values: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmoid, tanh) of float32 `values` [N] as the op computes them, each [N, UNITS]."""
    n = values.numel()
    x = values.reshape(1, n, 1).to(device)
    weight_ih = torch.ones(4 * UNITS, 1, device=device)
    weight_hh = torch.zeros(4 * UNITS, UNITS, device=device)
    state = torch.zeros(n, UNITS, device=device)
    gates = forward_op(x, None, weight_ih, weight_hh, None, None, None, state, state, False, True)[3]
    i, f, g, o = gates.reshape(n, 4, UNITS).unbind(1)
    # The three sigmoid gates are one computation.
    torch.testing.assert_close(f, i, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(o, i, rtol=0, atol=0, equal_nan=True)
    return i.cpu(), g.cpu()


def ulps_from(actual: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """|actual - reference| in units of the last place of the float32 nearest the reference (normal range)."""
    exponent = torch.frexp(reference.float())[1].double()
    return (actual.double() - reference).abs() / torch.pow(2.0, exponent - 24)


def test_sigmoid_within_three_ulp_where_it_is_a_normal_float(device):
    # From sigmoid(-87) ~ 1.6e-38 (just above the smallest normal float) to where it rounds to 1.
    values = torch.linspace(-87, 20, 1 << 17, dtype=torch.float64).float()
    sigmoid, _ = activations(values, device)
    reference = torch.sigmoid(values.double())[:, None].expand_as(sigmoid)
    worst = ulps_from(sigmoid, reference).max().item()
    assert worst <= 3, f"sigmoid is {worst:.2f} ulp from float64's"


def test_tanh_within_2e_7_absolute(device):
    # 2 / (1 + exp(-2x)) - 1 loses relative accuracy near 0 by cancellation, not absolute accuracy.
    values = torch.linspace(-20, 20, 1 << 17, dtype=torch.float64).float()
    _, tanh = activations(values, device)
    reference = torch.tanh(values.double())[:, None].expand_as(tanh)
    worst = (tanh.double() - reference).abs().max().item()
    assert worst <= 2e-7, f"tanh is {worst:.3g} from float64's"


def test_saturation_infinities_and_nan(device):
    inf, nan = float("inf"), float("nan")
    values = torch.tensor([-inf, -1e4, -104.5, -89.0, 89.0, 104.5, 1e4, inf, nan])
    sigmoid, tanh = activations(values, device)
    expected_sigmoid = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, nan])
    expected_tanh = torch.tensor([-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, nan])
    # Below -88.7 exp(-x) overflows to inf and sigmoid is 0 where float64 has a denormal: as with expf.
    torch.testing.assert_close(sigmoid, expected_sigmoid[:, None].expand_as(sigmoid), rtol=0, atol=1e-38,
                               equal_nan=True)
    torch.testing.assert_close(tanh, expected_tanh[:, None].expand_as(tanh), rtol=0, atol=0, equal_nan=True)

