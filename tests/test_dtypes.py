"""Reduced precision: bfloat16 on the CPU (and float16/bfloat16 on CUDA) are computed in float and
stored in the narrow type; checked against a float32 nn.LSTM holding the same (rounded) weights, and
against the error of nn.LSTM itself in that dtype."""

import pytest
import torch

import lstm_ext

# bfloat16 keeps 8 significant bits (float16 11): rtol is torch.testing's default for bfloat16, atol
# covers values near zero after a few steps of rounded state.
TOLERANCES = {torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2), torch.float16: dict(rtol=1e-3, atol=2e-3)}


def reduced_dtypes(device):
    return [torch.bfloat16] if device.type == "cpu" else [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_reduced_precision_against_float32(device, dtype_name, bidirectional):
    dtype = getattr(torch, dtype_name)
    if dtype not in reduced_dtypes(device):
        pytest.skip(f"{dtype_name} runs on CUDA only")
    ext = lstm_ext.LSTM(16, 32, num_layers=2, bidirectional=bidirectional).to(device=device, dtype=dtype)
    ref32 = torch.nn.LSTM(16, 32, num_layers=2, bidirectional=bidirectional).to(device)
    ref32.load_state_dict({k: v.float() for k, v in ext.state_dict().items()})
    ref_same_dtype = torch.nn.LSTM(16, 32, num_layers=2, bidirectional=bidirectional).to(device=device, dtype=dtype)
    ref_same_dtype.load_state_dict(ext.state_dict())

    x = torch.randn(24, 4, 16, device=device).to(dtype)
    results = {}
    for name, module, inp in [("ext", ext, x), ("ref32", ref32, x.float()), ("ref_same_dtype", ref_same_dtype, x)]:
        inp = inp.clone().requires_grad_(True)
        output, (h_n, c_n) = module(inp)
        (output.float().sum() + c_n.float().sum()).backward()
        assert output.dtype == inp.dtype and h_n.dtype == inp.dtype
        results[name] = [output.float(), h_n.float(), c_n.float(), inp.grad.float()]

    for name, actual, expected, theirs in zip(["output", "h_n", "c_n", "grad_input"], results["ext"], results["ref32"],
                                              results["ref_same_dtype"]):
        torch.testing.assert_close(actual, expected, **TOLERANCES[dtype], msg=lambda m: f"{name}: {m}")
        # And no worse than PyTorch's own LSTM in this dtype, with a margin for rounding order.
        ours, pytorchs = (actual - expected).abs().max(), (theirs - expected).abs().max()
        assert ours <= 2 * pytorchs + 2e-3, f"{name}: error {ours:.2e} vs nn.LSTM's {pytorchs:.2e}"


def test_half_on_cpu_is_a_clear_error():
    ext = lstm_ext.LSTM(4, 6).half()
    with pytest.raises(RuntimeError, match="input must be float32, float64 or bfloat16"):
        ext(torch.randn(3, 2, 4).half())
