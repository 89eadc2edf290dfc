"""Nothing breaks it: repeatable gradients, threads, memory, odd values, and random configurations
checked against nn.LSTM (hypothesis)."""

import gc
import os
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstm_ext
from lstm_reference import Config, assert_equal_to_nn_lstm, make_pair, make_inputs, run_with_grads

# 300 random configurations by default (a few seconds); HYPOTHESIS_EXAMPLES changes it.
PROPERTY_EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "300"))


def test_gradients_are_bitwise_repeatable(device):
    cfg = Config(seq_len=9, batch=5, input_size=7, hidden_size=11, num_layers=2, bidirectional=True,
                 given_state=True, lengths=(9, 4, 7, 1, 9))
    _, ext = make_pair(cfg, torch.float32, device)
    x, hx = make_inputs(cfg, torch.float32, device)
    first = run_with_grads(ext, x, hx)
    for _ in range(3):
        again = run_with_grads(ext, x, hx)
        for key in first:
            assert torch.equal(first[key], again[key]), f"{key} differs between runs"


def test_threads_get_the_results_of_one(device):
    models = [lstm_ext.LSTM(6, 8, num_layers=2, bidirectional=True).to(device) for _ in range(2)]
    inputs = [torch.randn(12, 4, 6, device=device) for _ in range(2)]
    expected = [run_with_grads(m, x, None) for m, x in zip(models, inputs)]
    results = [[None] * 5 for _ in range(2)]
    errors = []

    def work(index):
        try:
            for repeat in range(5):
                results[index][repeat] = run_with_grads(models[index], inputs[index], None)
        except Exception as e:  # reported below: an exception in a thread would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for index in range(2):
        for run in results[index]:
            for key in expected[index]:
                assert torch.equal(run[key], expected[index][key]), key


def _resident_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status on this system")


def test_training_memory_stays_flat():
    model = lstm_ext.LSTM(32, 64, num_layers=2, bidirectional=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(20, 8, 32)

    def step():
        optimizer.zero_grad()
        output, (h_n, c_n) = model(x)
        (output.square().mean() + c_n.mean()).backward()
        optimizer.step()

    for _ in range(200):  # warm up the allocator and caches
        step()
    gc.collect()
    before = _resident_mb()
    for _ in range(2000):
        step()
    gc.collect()
    growth = _resident_mb() - before
    # One step allocates ~1 MB; a leak of a step's buffers per step would add ~2 GB over 2,000 steps.
    assert growth < 20, f"resident memory grew by {growth:.1f} MB over 2,000 training steps"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1e30])
def test_non_finite_and_huge_values_like_nn_lstm(device, value):
    ref, ext = make_pair(Config(input_size=3, hidden_size=4), torch.float64, device)
    x = torch.randn(5, 2, 3, dtype=torch.float64, device=device)
    x[2, 1, 0] = value
    expected, actual = ref(x), ext(x)
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-9, atol=1e-9, equal_nan=True)
    torch.testing.assert_close(actual[1][1], expected[1][1], rtol=1e-9, atol=1e-9, equal_nan=True)


def test_empty_sequence_is_refused_like_nn_lstm(device):
    ref, ext = make_pair(Config(input_size=3, hidden_size=4), torch.float32, device)
    x = torch.randn(0, 2, 3, device=device)
    with pytest.raises(Exception) as expected:
        ref(x)
    with pytest.raises(Exception) as actual:
        ext(x)
    assert type(actual.value) is type(expected.value)
    assert str(actual.value) == str(expected.value)


@st.composite
def configurations(draw):
    lengths = None
    if draw(st.booleans()):
        lengths = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=4)))
    hidden = draw(st.integers(1, 9))
    return Config(
        seq_len=draw(st.integers(1, 6)),
        batch=draw(st.integers(1, 4)),
        input_size=draw(st.integers(1, 7)),
        hidden_size=hidden,
        num_layers=draw(st.integers(1, 3)),
        bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bias=draw(st.booleans()),
        given_state=draw(st.booleans()),
        unbatched=lengths is None and draw(st.booleans()),
        lengths=lengths,
        proj_size=draw(st.integers(0, hidden - 1)) if hidden > 1 and draw(st.booleans()) else 0,
    )


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=configurations(), dtype=st.sampled_from([torch.float64, torch.float32]), seed=st.integers(0, 2**16))
def test_random_configurations_match_nn_lstm(device, cfg, dtype, seed):
    torch.manual_seed(seed)
    assert_equal_to_nn_lstm(cfg, dtype, device)
