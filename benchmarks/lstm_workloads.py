"""What the benchmarks time, shared by the pytest-benchmark suite and sweep.py.

A *step* is a zero-argument function that runs one unit of work and returns what it computed as
``(outputs, gradients)`` (two tuples of tensors; no gradients for inference), so the function that is
timed is the very one checked against nn.LSTM:

- an inference step: a forward under torch.inference_mode, the module in eval mode;
- a training step: gradients reset to None (as ``optimizer.zero_grad()`` does), a forward, a scalar
  loss over the output, and the backward. Every gradient is freshly allocated, as in real training.

Both implementations of a pair are built from the same seed and then given identical weights through
``load_state_dict``, and they are fed the very same input tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lstm_ext

IMPLEMENTATIONS = ("ext", "torch")
IMPLEMENTATION_LABELS = {"ext": "lstm_ext", "torch": "nn.LSTM"}
MODES = ("infer", "train")

# Agreement required before anything is timed. Float32 is the tolerance the test suite holds the fused
# LSTM to; half precision (CUDA only) computes in float but rounds its inputs and outputs.
OUTPUT_TOLERANCES = {
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float64: dict(rtol=1e-9, atol=1e-9),
    torch.float16: dict(rtol=1e-2, atol=1e-3),
    torch.bfloat16: dict(rtol=5e-2, atol=1e-2),
}

StepResult = tuple[tuple[Tensor, ...], tuple[Tensor, ...]]
Step = Callable[[], StepResult]


def cuda_available_for_ext() -> tuple[bool, str]:
    """(usable, reason if not): CUDA needs both a device and an lstm_ext built with its CUDA kernels."""
    if not torch.cuda.is_available():
        return False, "no CUDA device on this machine"
    if "cuda" not in lstm_ext.compiled_backends():
        return False, "lstm_ext was built without CUDA (FORCE_CPU=1 or no toolkit)"
    return True, ""


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for the device's queued work; a no-op on the CPU, where calls are synchronous."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


# --- the bare LSTM -------------------------------------------------------------------------------------

def lstm_pair(input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
              device="cpu", dtype=torch.float32, seed: int = 0) -> dict[str, nn.Module]:
    """{"ext": lstm_ext.LSTM, "torch": nn.LSTM} with the same weights."""
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, device=device, dtype=dtype)
    torch.manual_seed(seed)
    reference = nn.LSTM(input_size, hidden_size, **kwargs)
    fused = lstm_ext.LSTM(input_size, hidden_size, **kwargs)
    fused.load_state_dict(reference.state_dict())
    return {"ext": fused, "torch": reference}


def lstm_input(seq_len: int, batch: int, input_size: int, device="cpu", dtype=torch.float32,
               seed: int = 1) -> Tensor:
    """A time-major [T, B, I] input (nn.LSTM's default layout)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(seq_len, batch, input_size, generator=generator, dtype=dtype).to(device)


def lstm_inference_step(lstm: nn.Module, x: Tensor) -> Step:
    """Returns ((output, h_n, c_n), ())."""
    lstm.eval()

    def step():
        with torch.inference_mode():
            output, (h_n, c_n) = lstm(x)
        return (output, h_n, c_n), ()

    return step


def lstm_training_step(lstm: nn.Module, x: Tensor) -> Step:
    """Returns ((output, h_n, c_n), (input gradient, *parameter gradients)).

    The input requires a gradient, as it does when the LSTM sits behind an embedding or another layer,
    so the step includes computing dX. The loss is a plain sum: the cheapest scalar over the output, so
    the time is the LSTM's and not the loss's.
    """
    lstm.train()
    x = x.detach().requires_grad_(True)

    def step():
        lstm.zero_grad(set_to_none=True)
        x.grad = None
        output, (h_n, c_n) = lstm(x)
        output.sum().backward()
        return (output.detach(), h_n.detach(), c_n.detach()), (x.grad, *(p.grad for p in lstm.parameters()))

    return step


def lstm_steps(modules: dict[str, nn.Module], x: Tensor, mode: str) -> dict[str, Step]:
    """{implementation: its step} for one mode ("infer" or "train"), every step on the same input."""
    make_step = lstm_inference_step if mode == "infer" else lstm_training_step
    return {name: make_step(module, x) for name, module in modules.items()}


# --- the sentiment classifier --------------------------------------------------------------------------

def classifier_models_import_error() -> str | None:
    """None when lstm_ext.models.SentimentClassifier can be imported, else why not."""
    try:
        from lstm_ext.models import SentimentClassifier  # noqa: F401
    except ImportError as error:
        return f"lstm_ext.models.SentimentClassifier is not importable yet ({error})"
    return None


def classifier_pair(vocab_size: int, embed_dim: int, hidden_size: int, device="cpu", dtype=torch.float32,
                    seed: int = 0) -> dict[str, nn.Module]:
    """{"ext": SentimentClassifier on lstm_ext.LSTM, "torch": the same on nn.LSTM}, same weights."""
    from lstm_ext.models import SentimentClassifier

    torch.manual_seed(seed)
    reference = SentimentClassifier(vocab_size, embed_dim, hidden_size, lstm="torch").to(device, dtype)
    fused = SentimentClassifier(vocab_size, embed_dim, hidden_size, lstm="fused").to(device, dtype)
    fused.load_state_dict(reference.state_dict())
    return {"ext": fused, "torch": reference}


def token_batch(seq_len: int, batch: int, vocab_size: int, device="cpu", padding_idx: int = 0,
                seed: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """(tokens [B, T], lengths [B], labels [B]): ragged lengths between T/2 and T, padded with padding_idx.

    The longest sequence has exactly T tokens so the padded width is T. Lengths stay on the CPU, where
    the classifier needs them for packing anyway.
    """
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint((seq_len + 1) // 2, seq_len + 1, (batch,), generator=generator)
    lengths[0] = seq_len
    tokens = torch.randint(1, vocab_size, (batch, seq_len), generator=generator)
    tokens = tokens.masked_fill(torch.arange(seq_len) >= lengths[:, None], padding_idx)
    labels = torch.randint(0, 2, (batch,), generator=generator)
    return tokens.to(device), lengths, labels.to(device)


def classifier_steps(models: dict[str, nn.Module], tokens: Tensor, lengths: Tensor, labels: Tensor,
                     mode: str) -> dict[str, Step]:
    """Inference steps return ((logits,), ()); training steps ((logits, loss), parameter gradients)."""
    steps = {}
    for name, model in models.items():
        if mode == "infer":
            model.eval()

            def step(model=model):
                with torch.inference_mode():
                    return (model(tokens, lengths),), ()
        else:
            model.train()

            def step(model=model):
                model.zero_grad(set_to_none=True)
                logits = model(tokens, lengths)
                loss = F.cross_entropy(logits, labels)
                loss.backward()
                return (logits.detach(), loss.detach()), tuple(p.grad for p in model.parameters())
        steps[name] = step
    return steps


# --- agreement -----------------------------------------------------------------------------------------

def assert_results_agree(fused: StepResult, reference: StepResult, dtype: torch.dtype) -> dict[str, float | None]:
    """Raises AssertionError unless the fused step computed what the nn.LSTM step computed.

    Outputs must agree elementwise within OUTPUT_TOLERANCES. Gradients are held to a normwise bound,
    max|fused - reference| <= rtol * max|reference| per tensor: a weight gradient is a float32 sum over
    all T*B steps, so its rounding error scales with the tensor's magnitude, and elements that are near
    zero only by cancellation would fail any fixed elementwise floor although nothing is wrong.

    Returns {"max_abs_diff": over the outputs, "max_grad_rel_diff": the worst normwise gradient error,
    or None when the step has no gradients}.
    """
    tolerance = OUTPUT_TOLERANCES[dtype]
    (fused_outputs, fused_grads), (reference_outputs, reference_grads) = fused, reference
    max_abs_diff = 0.0
    for index, (actual, expected) in enumerate(zip(fused_outputs, reference_outputs, strict=True)):
        torch.testing.assert_close(actual, expected, **tolerance,
                                   msg=lambda message, index=index: f"output {index}: {message}")
        max_abs_diff = max(max_abs_diff, _max_abs(actual - expected))

    max_grad_rel_diff = None
    for index, (actual, expected) in enumerate(zip(fused_grads, reference_grads, strict=True)):
        if actual is None or expected is None:
            assert actual is None and expected is None, f"gradient {index}: only one implementation computed it"
            continue
        scale = _max_abs(expected)
        relative_error = _max_abs(actual - expected) / scale if scale > 0 else _max_abs(actual)
        if relative_error > tolerance["rtol"]:
            raise AssertionError(f"gradient {index}: max|diff| / max|reference| = {relative_error:.3g} "
                                 f"> {tolerance['rtol']:g}")
        max_grad_rel_diff = max(max_grad_rel_diff or 0.0, relative_error)
    return {"max_abs_diff": max_abs_diff, "max_grad_rel_diff": max_grad_rel_diff}


def _max_abs(tensor: Tensor) -> float:
    return tensor.detach().abs().max().item() if tensor.numel() else 0.0
