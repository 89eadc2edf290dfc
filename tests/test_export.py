"""torch.export (and AOTInductor) and TorchScript tracing of models holding lstm_ext modules: an eval()
model exports with the inference op even under grad mode; the saved program loads and runs in a fresh
process that imports lstm_ext; torch.jit.trace passes its own check, saves and loads."""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import lstm_ext


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = lstm_ext.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.cell = lstm_ext.LSTMCell(12, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        output, _ = self.lstm(x)
        h, _ = self.cell(output[:, -1])
        return self.head(h)


def layer_calls(graph_module):
    return [node for node in graph_module.graph.nodes
            if node.op == "call_function" and "lstm_layer_forward" in str(node.target)]


def run_in_fresh_process(code):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_exported_eval_model_uses_the_inference_op():
    model = Tagger().eval()
    x = torch.randn(2, 5, 4)
    exported = torch.export.export(model, (x,))  # grad mode is on, the parameters require grad
    calls = layer_calls(exported.graph_module)
    assert len(calls) == 5  # 2 layers x 2 directions + the cell
    assert all(call.args[-1] is False for call in calls), [call.args[-1] for call in calls]
    torch.testing.assert_close(exported.module()(x), model(x))


def test_exported_training_model_keeps_the_activations():
    model = Tagger().train()
    exported = torch.export.export(model, (torch.randn(2, 5, 4),))
    calls = layer_calls(exported.graph_module)
    assert calls and all(call.args[-1] is True for call in calls)


def test_exported_program_runs_in_a_fresh_process(tmp_path):
    model = Tagger().eval()
    x = torch.randn(3, 7, 4)
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    torch.export.save(exported, tmp_path / "tagger.pt2")
    x2 = torch.randn(5, 7, 4)
    torch.save({"x": x2, "expected": model(x2).detach()}, tmp_path / "io.pt")
    run_in_fresh_process(f"""
        import torch, lstm_ext
        program = torch.export.load({str(tmp_path / "tagger.pt2")!r})
        io = torch.load({str(tmp_path / "io.pt")!r})
        torch.testing.assert_close(program.module()(io["x"]), io["expected"], rtol=0, atol=0)
    """)


@pytest.mark.slow
def test_aot_inductor_package_runs_in_a_fresh_process(tmp_path):
    model = Tagger().eval()
    x = torch.randn(2, 5, 4)
    with torch.no_grad():
        exported = torch.export.export(model, (x,))
        package = torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp_path / "tagger.pt2"))
        torch.save({"x": x, "expected": model(x)}, tmp_path / "io.pt")
    run_in_fresh_process(f"""
        import torch, lstm_ext
        runner = torch._inductor.aoti_load_package({package!r})
        io = torch.load({str(tmp_path / "io.pt")!r})
        with torch.no_grad():
            torch.testing.assert_close(runner(io["x"]), io["expected"], rtol=1e-6, atol=1e-6)
    """)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_jit_trace_checks_saves_and_loads(tmp_path, training):
    model = Tagger().train(training)
    for module in model.modules():
        if isinstance(module, lstm_ext.LSTM):
            module.dropout = 0.0  # the trace check reruns the model: dropout would differ between runs
    x = torch.randn(2, 5, 4)
    traced = torch.jit.trace(model, (x,))  # check_trace=True: runs it again and compares graphs and values
    layer_ops = [n for n in traced.inlined_graph.nodes() if n.kind() == "lstm_ext::lstm_layer_forward"]
    assert len(layer_ops) == 5
    torch.testing.assert_close(traced(x), model(x))
    traced.save(str(tmp_path / "traced.pt"))
    loaded = torch.jit.load(str(tmp_path / "traced.pt"))
    torch.testing.assert_close(loaded(x), model(x))
    if training:  # the trace stays differentiable
        loaded(x).sum().backward()
        assert all(p.grad is not None for p in loaded.parameters())
