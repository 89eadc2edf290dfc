"""What only a GPU can show: streams, CUDA graphs, devices mixed up. Skipped where there is no GPU
(every device-parametrized test in the other files also runs on CUDA, against nn.LSTM on cuDNN)."""

import pytest
import torch

import lstm_ext
from conftest import CUDA_READY, CUDA_SKIP_REASON

pytestmark = pytest.mark.skipif(not CUDA_READY, reason=CUDA_SKIP_REASON)


def make_model():
    torch.manual_seed(0)
    return lstm_ext.LSTM(16, 32, num_layers=2, bidirectional=True).cuda()


def forward_backward(model, x):
    output, (h_n, c_n) = model(x)
    (output.square().sum() + c_n.sum()).backward()
    return [output.detach().clone(), x.grad.clone()] + [p.grad.clone() for p in model.parameters()]


def test_side_stream_gives_the_default_stream_results():
    model = make_model()
    x = torch.randn(20, 4, 16, device="cuda", requires_grad=True)
    expected = forward_backward(model, x)
    model.zero_grad()
    x.grad = None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        actual = forward_backward(model, x)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for e, a in zip(expected, actual):
        assert torch.equal(e, a)


def test_cuda_graph_capture_of_forward_and_backward():
    model = make_model()
    static_x = torch.randn(20, 4, 16, device="cuda", requires_grad=True)
    # Warm up on a side stream, as CUDA graph capture requires.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            model.zero_grad(set_to_none=False)
            static_x.grad = None
            forward_backward(model, static_x)
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    model.zero_grad(set_to_none=False)
    static_x.grad = None
    with torch.cuda.graph(graph):
        static_output, (_, static_c) = model(static_x)
        (static_output.square().sum() + static_c.sum()).backward()

    new_x = torch.randn_like(static_x)
    with torch.no_grad():
        static_x.copy_(new_x)
    model.zero_grad(set_to_none=False)
    graph.replay()
    torch.cuda.synchronize()

    eager = make_model()
    x = new_x.clone().requires_grad_(True)
    expected = forward_backward(eager, x)
    torch.testing.assert_close(static_output, expected[0])
    for p, e in zip(model.parameters(), expected[2:]):
        torch.testing.assert_close(p.grad, e)


def test_cpu_input_with_cuda_weights_is_a_clear_error():
    model = make_model()
    with pytest.raises(RuntimeError, match="must be on the device of input"):
        torch.ops.lstm_ext.lstm_layer_forward(
            torch.randn(3, 2, 16), None, model.weight_ih_l0, model.weight_hh_l0, model.bias_ih_l0,
            model.bias_hh_l0, None, torch.zeros(2, 32), torch.zeros(2, 32), False, False)
