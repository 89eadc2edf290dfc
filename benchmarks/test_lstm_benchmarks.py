"""pytest-benchmark suite: lstm_ext vs nn.LSTM over sequence length × batch size, for the bare LSTM and
for the sentiment classifier, inference and training step.

Each comparison group holds the two implementations of one point (model, mode, device, T, B), so
pytest-benchmark prints them side by side. The grid is deliberately small, to finish in a few minutes
on two cores; benchmarks/sweep.py covers the full grid. Before a step is timed, its result is checked
against the other implementation's: a fast wrong answer is not a result.
"""

import pytest
import torch

from lstm_workloads import (IMPLEMENTATION_LABELS, IMPLEMENTATIONS, MODES, assert_results_agree,
                            classifier_models_import_error, classifier_pair, classifier_steps, lstm_input,
                            lstm_pair, lstm_steps, token_batch)

SEQ_LENS = [16, 128]
BATCHES = [1, 32]
HIDDEN_SIZE = 128  # and input / embedding size
VOCAB_SIZE = 1000
DTYPE = torch.float32

# Short, repeatable runs: one warm-up call (first-call allocations and oneDNN primitive creation stay out
# of the timings), at least 5 rounds, at most about half a second of rounds per benchmark.
pytestmark = pytest.mark.benchmark(min_rounds=5, max_time=0.5, warmup=True, warmup_iterations=1,
                                   disable_gc=True)

implementations = pytest.mark.parametrize("implementation", IMPLEMENTATIONS,
                                          ids=[IMPLEMENTATION_LABELS[i] for i in IMPLEMENTATIONS])
modes = pytest.mark.parametrize("mode", MODES)
seq_lens = pytest.mark.parametrize("seq_len", SEQ_LENS, ids=[f"T{t}" for t in SEQ_LENS])
batches = pytest.mark.parametrize("batch", BATCHES, ids=[f"B{b}" for b in BATCHES])


def group_name(model: str, mode: str, device: torch.device, seq_len: int, batch: int) -> str:
    # Padded numbers, so that pytest-benchmark's alphabetical group order is the numeric one.
    return f"{model} {mode} {device.type} T={seq_len:>4} B={batch:>3} H={HIDDEN_SIZE}"


@implementations
@batches
@seq_lens
@modes
def test_lstm(run_benchmark, device, mode, seq_len, batch, implementation):
    modules = lstm_pair(HIDDEN_SIZE, HIDDEN_SIZE, device=device, dtype=DTYPE)
    steps = lstm_steps(modules, lstm_input(seq_len, batch, HIDDEN_SIZE, device=device, dtype=DTYPE), mode)
    assert_results_agree(steps["ext"](), steps["torch"](), DTYPE)
    run_benchmark(steps[implementation], device, group_name("lstm", mode, device, seq_len, batch))


@implementations
@batches
@seq_lens
@modes
def test_sentiment_classifier(run_benchmark, device, mode, seq_len, batch, implementation):
    reason = classifier_models_import_error()
    if reason:
        pytest.skip(reason)
    models = classifier_pair(VOCAB_SIZE, HIDDEN_SIZE, HIDDEN_SIZE, device=device, dtype=DTYPE)
    tokens, lengths, labels = token_batch(seq_len, batch, VOCAB_SIZE, device=device)
    steps = classifier_steps(models, tokens, lengths, labels, mode)
    assert_results_agree(steps["ext"](), steps["torch"](), DTYPE)
    run_benchmark(steps[implementation], device, group_name("classifier", mode, device, seq_len, batch))
