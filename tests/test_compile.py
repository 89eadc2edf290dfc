"""torch.compile(fullgraph=True) of models using lstm_ext: no graph break (nn.LSTM breaks the graph),
training and inference, padded and packed input, with the eager results."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_ext


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = lstm_ext.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        output, (h_n, c_n) = self.lstm(x)
        return self.head(output), h_n, c_n


def train_step(model, x):
    out, h_n, c_n = model(x)
    loss = out.square().mean() + h_n.sum() + c_n.mean()
    loss.backward()
    return [out.detach(), loss.detach()] + [p.grad.clone() for p in model.parameters()]


def test_compiled_model_trains_and_infers_like_eager(device):
    # The default backend (inductor), fullgraph: a graph break would raise.
    model = Tagger().to(device=device, dtype=torch.float64)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(3, 5, 4, device=device, dtype=torch.float64)

    model.zero_grad()
    expected = train_step(model, x)
    model.zero_grad()
    actual = train_step(compiled, x)
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)

    with torch.inference_mode():
        for e, a in zip(model(x), compiled(x)):
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


def test_compiled_packed_sequence(device):
    lstm = lstm_ext.LSTM(4, 6, bidirectional=True).to(device=device, dtype=torch.float64)

    # Packing itself is outside (dynamo does not trace pack_padded_sequence); the PackedSequence goes in.
    def last_states(packed):
        output, (h_n, c_n) = lstm(packed)
        return output.data, h_n

    compiled = torch.compile(last_states, fullgraph=True, backend="aot_eager")
    padded = torch.randn(5, 3, 4, device=device, dtype=torch.float64, requires_grad=True)
    packed = pack_padded_sequence(padded, torch.tensor([2, 5, 3]), enforce_sorted=False)
    expected = last_states(packed)
    actual = compiled(packed)
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)
    (grad_expected,) = torch.autograd.grad(expected[1].sum(), padded, retain_graph=True)  # packing is shared
    (grad_actual,) = torch.autograd.grad(actual[1].sum(), padded)
    torch.testing.assert_close(grad_actual, grad_expected, rtol=1e-9, atol=1e-9)


def test_compiled_cell_and_function(device):
    cell = lstm_ext.LSTMCell(3, 5).to(device)
    x = torch.randn(2, 3, device=device)
    compiled = torch.compile(cell, fullgraph=True, backend="aot_eager")
    for e, a in zip(cell(x), compiled(x)):
        torch.testing.assert_close(a, e)


def test_nn_lstm_breaks_the_graph():
    # Why this matters: torch.compile refuses to trace nn.LSTM in one graph.
    compiled = torch.compile(nn.LSTM(4, 6), fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="(?i)rnn|lstm"):
        compiled(torch.randn(5, 3, 4))
