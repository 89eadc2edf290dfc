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


# --- One graph per call pattern: new tensors of the same shapes must not recompile ---------------------

def test_compiled_module_compiles_once_for_new_inputs(device, dynamo_graphs):
    # The default backend; the id-based dedupe of eager calls once made every new input a new graph.
    model = torch.compile(lstm_ext.LSTM(3, 4, num_layers=2).to(device))
    for _ in range(4):
        model(torch.randn(5, 2, 3, device=device))
    assert dynamo_graphs() == 1
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(5, 2, 3, device=device))
    assert dynamo_graphs() == 2  # grad mode is a guard of its own, as for any compiled module


def test_compiled_training_step_compiles_once(device, dynamo_graphs):
    model = Tagger().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    @torch.compile(backend="aot_eager")
    def step(x):
        out, h_n, c_n = model(x)
        loss = out.square().mean() + h_n.sum() + c_n.mean()
        loss.backward()
        return loss

    inputs = [torch.randn(3, 5, 4, device=device) for _ in range(5)]  # all alive: no id is reused
    for x in inputs:
        step(x)
        optimizer.step()
        optimizer.zero_grad()
    assert dynamo_graphs() == 1


def test_compiled_cell_loop_compiles_once_per_pattern(device, dynamo_graphs):
    cell = lstm_ext.LSTMCell(3, 4).to(device)
    compiled = torch.compile(cell, backend="aot_eager")

    def run_sequence():
        state = compiled(torch.randn(2, 3, device=device))  # zero state, then the cell's own outputs
        for _ in range(4):
            state = compiled(torch.randn(2, 3, device=device), state)
        h, c = torch.zeros(2, 4, device=device), torch.zeros(2, 4, device=device)  # fresh given states
        for _ in range(3):
            h, c = compiled(torch.randn(2, 3, device=device), (h, c))

    run_sequence()
    after_one = dynamo_graphs()
    assert after_one <= 3  # no state; states from the graph (requiring grad); fresh states (not)
    for _ in range(3):
        run_sequence()
    assert dynamo_graphs() == after_one


def test_compiled_dynamic_sequence_lengths(device, dynamo_graphs):
    model = torch.compile(lstm_ext.LSTM(3, 4).to(device), dynamic=True, backend="aot_eager")
    for seq_len in (3, 5, 8, 13, 21):
        model(torch.randn(seq_len, 2, 3, device=device))
    assert dynamo_graphs() <= 2


def test_compiled_packed_sequences_with_same_rows_compile_once(device, dynamo_graphs):
    lstm = lstm_ext.LSTM(3, 4, bidirectional=True).to(device)
    compiled = torch.compile(lstm, backend="aot_eager")
    lengths = torch.tensor([5, 3, 2])
    compiled(pack_padded_sequence(torch.randn(5, 3, 3, device=device), lengths, enforce_sorted=False))
    after_first = dynamo_graphs()
    assert after_first >= 1
    for _ in range(4):
        compiled(pack_padded_sequence(torch.randn(5, 3, 3, device=device), lengths, enforce_sorted=False))
    assert dynamo_graphs() == after_first


def test_compiled_module_takes_packed_input_in_one_graph(device, dynamo_graphs):
    # Called with the PackedSequence itself, as users do (without fullgraph, which would make dynamo capture
    # a read of batch_sizes instead of breaking there): one graph, no break at the batch size.
    lstm = lstm_ext.LSTM(3, 4).to(device)
    compiled = torch.compile(lstm, backend="aot_eager")
    packed = pack_padded_sequence(torch.randn(5, 3, 3, device=device), torch.tensor([2, 5, 3]), enforce_sorted=False)
    output, (h_n, c_n) = compiled(packed)
    expected_output, (expected_h, expected_c) = lstm(packed)
    for a, e in ((output.data, expected_output.data), (h_n, expected_h), (c_n, expected_c)):
        torch.testing.assert_close(a, e)
    assert dynamo_graphs() == 1
