"""Autocast as nn.LSTM has it: torch.autocast("cpu", torch.bfloat16), and on CUDA float16 and bfloat16,
around Linear -> LSTM / LSTMCell: the op's autocast kernel casts its floating-point inputs to the
autocast dtype; output dtypes as nn.LSTM's, values close to nn.LSTM's under the same autocast, and
float32 gradients for float32 parameters."""

import pytest
import torch
from torch import nn

import lstm_ext


def autocast_dtypes(device):
    return [torch.bfloat16] if device.type == "cpu" else [torch.float16, torch.bfloat16]


class LinearLSTM(nn.Module):
    def __init__(self, lstm_type, cell_type):
        super().__init__()
        self.linear = nn.Linear(5, 8)
        self.lstm = lstm_type(8, 16, num_layers=2, bidirectional=True)
        self.cell = cell_type(8, 16)

    def forward(self, x):
        features = self.linear(x)
        output, (h_n, c_n) = self.lstm(features)
        h, c = self.cell(features[0])
        return output, h_n, c_n, h, c


def models(device):
    torch.manual_seed(0)
    ref = LinearLSTM(nn.LSTM, nn.LSTMCell).to(device)
    ext = LinearLSTM(lstm_ext.LSTM, lstm_ext.LSTMCell).to(device)
    ext.load_state_dict(ref.state_dict())
    return ref, ext


@pytest.mark.parametrize("after_linear", [True, False], ids=["linear-lstm", "float32-input"])
def test_autocast_like_nn_lstm(device, after_linear):
    ref, ext = models(device)
    for dtype in autocast_dtypes(device):
        x = torch.randn(7, 3, 5, device=device)
        features = torch.randn(7, 3, 8, device=device)
        results = {}
        for name, model in (("nn", ref), ("ext", ext)):
            with torch.autocast(device.type, dtype=dtype):
                if after_linear:
                    results[name] = model(x)
                else:  # the LSTMs straight on a float32 input
                    output, (h_n, c_n) = model.lstm(features)
                    results[name] = (output, h_n, c_n)
        for expected, actual in zip(results["nn"], results["ext"]):
            assert actual.dtype == expected.dtype, (dtype, actual.dtype, expected.dtype)
            torch.testing.assert_close(actual.float(), expected.float(), rtol=0.02, atol=0.01)


def test_autocast_gradients_reach_float32_parameters(device):
    ref, ext = models(device)
    x = torch.randn(7, 3, 5, device=device)
    for dtype in autocast_dtypes(device):
        grads = {}
        for name, model in (("nn", ref), ("ext", ext)):
            model.zero_grad()
            with torch.autocast(device.type, dtype=dtype):
                output, h_n, c_n, h, c = model(x)
                loss = output.float().square().mean() + h_n.float().sum() + h.float().sum()
            loss.backward()
            grads[name] = [p.grad for p in model.parameters()]
        for expected, actual in zip(grads["nn"], grads["ext"]):
            assert actual.dtype == torch.float32
            torch.testing.assert_close(actual, expected, rtol=0.1, atol=0.05)


def test_no_autocast_region_keeps_float32(device):
    _, ext = models(device)
    with torch.autocast(device.type, dtype=autocast_dtypes(device)[0], enabled=False):
        assert all(t.dtype == torch.float32 for t in ext(torch.randn(4, 2, 5, device=device)))


def test_autocast_is_registered_on_the_op(device):
    # Called directly, the op casts: the registration is the op's, not a check in the module.
    w_ih, w_hh = torch.randn(16, 3, device=device), torch.randn(16, 4, device=device)
    x, h0 = torch.randn(5, 2, 3, device=device), torch.zeros(2, 4, device=device)
    dtype = autocast_dtypes(device)[0]
    with torch.autocast(device.type, dtype=dtype):
        output, h_n, c_n, *_ = torch.ops.lstm_ext.lstm_layer_forward(x, None, w_ih, w_hh, None, None, None, h0, h0,
                                                                     False, False)
    assert output.dtype == h_n.dtype == c_n.dtype == dtype
    x64 = x.double()
    with torch.autocast(device.type, dtype=dtype):  # float64 is left alone, as ATen's autocast does
        output, *_ = torch.ops.lstm_ext.lstm_layer_forward(x64, None, w_ih.double(), w_hh.double(), None, None, None,
                                                           h0.double(), h0.double(), False, False)
    assert output.dtype == torch.float64


def test_function_under_autocast_runs_in_its_inputs_dtypes(device):
    # LSTMFunction is the plain autograd entry: under autocast it neither casts nor breaks its backward.
    w_ih = torch.randn(16, 3, device=device, requires_grad=True)
    w_hh = torch.randn(16, 4, device=device, requires_grad=True)
    x, h0 = torch.randn(5, 2, 3, device=device), torch.zeros(2, 4, device=device)
    with torch.autocast(device.type, dtype=autocast_dtypes(device)[0]):
        output, *_ = lstm_ext.LSTMFunction.apply(x, None, w_ih, w_hh, None, None, None, h0, h0, False, True)
    assert output.dtype == torch.float32
    output.sum().backward()
    assert w_ih.grad.dtype == w_hh.grad.dtype == torch.float32


def test_cpu_float16_autocast_runs_the_cell_in_float32():
    # CPU autocast to float16 (lstm_ext has no CPU float16 kernels): the op runs uncast, in float32, where
    # nn.LSTMCell returns float32 from float16 products; so float16's tolerance against it.
    ref, ext = nn.LSTMCell(3, 4), lstm_ext.LSTMCell(3, 4)
    ext.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3)
    with torch.autocast("cpu", dtype=torch.float16):
        expected, actual = ref(x), ext(x)
    for e, a in zip(expected, actual):
        assert a.dtype == e.dtype == torch.float32
        torch.testing.assert_close(a, e, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(actual, ext(x))  # exactly the float32 result
