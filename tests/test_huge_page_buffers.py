"""On the CPU, a pass's buffers of 32 MiB and more (gates, gate gradients, outputs) get mappings of their own
in transparent huge pages (csrc/cpu/buffer_cache.h), kept for reuse when freed; from 256 KiB up
(packed weights, a block's gates) mappings of 4 KiB pages, kept alike. Such tensors must
behave like any other: the same numbers as nn.LSTM (also in reused memory that holds an earlier call's
values), outputs that resize and free like ATen's own, and, where the kernel offers huge pages, they are
used. The cache stays within its bound and lstm_ext.empty_cache() gives its memory back."""

import re
import sys

import pytest
import torch

import lstm_ext
from lstm_reference import TOLERANCES, Config, assert_equal_to_nn_lstm, make_inputs, make_pair, run_with_grads

MIN_HUGE_PAGE_BYTES = 32 << 20  # kMinHugePageBytes
MAX_CACHED_BYTES = 1 << 30  # kMaxCachedBytes
MIN_CACHED_BYTES = 256 << 10  # kMinCachedBytes


def gate_bytes(cfg: Config, dtype) -> int:
    return cfg.seq_len * cfg.batch * 4 * cfg.hidden_size * torch.finfo(dtype).bits // 8


def test_training_step_with_huge_page_gates_matches_nn_lstm_float64():
    # The training forward's gates and the backward's gate gradients are each >= 32 MiB here.
    cfg = Config(seq_len=128, batch=128, input_size=8, hidden_size=64, given_state=True)
    assert gate_bytes(cfg, torch.float64) >= MIN_HUGE_PAGE_BYTES
    assert_equal_to_nn_lstm(cfg, torch.float64, "cpu")


def test_training_step_with_huge_page_gates_matches_nn_lstm_float32():
    """As above in float32. A weight gradient here is a float32 sum over 32768 rows: both implementations
    round it differently, so it is held to the normwise bound the benchmarks use (max|diff| <= rtol *
    max|nn.LSTM's|), everything else to the suite's elementwise tolerance."""
    cfg = Config(seq_len=128, batch=256, input_size=8, hidden_size=64, given_state=True)
    assert gate_bytes(cfg, torch.float32) >= MIN_HUGE_PAGE_BYTES
    ref, ext = make_pair(cfg, torch.float32, "cpu")
    x, hx = make_inputs(cfg, torch.float32, "cpu")
    expected, actual = run_with_grads(ref, x, hx), run_with_grads(ext, x, hx)
    tolerance = TOLERANCES[torch.float32]
    for key in expected:
        if key.startswith("grad "):
            error = (actual[key] - expected[key]).abs().max().item()
            assert error <= tolerance["rtol"] * expected[key].abs().max().item(), f"{key}: max|diff| {error}"
        else:
            torch.testing.assert_close(actual[key], expected[key], **tolerance, msg=lambda m, key=key: f"{key}: {m}")


def _thp_mode() -> str | None:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return re.search(r"\[(\w+)\]", f.read()).group(1)
    except OSError:
        return None


def _anon_huge_kib_at(address: int) -> int:
    """AnonHugePages of the mapping that holds `address`, from /proc/self/smaps."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if head:
                inside = int(head.group(1), 16) <= address < int(head.group(2), 16)
            elif inside and line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    raise AssertionError(f"no mapping holds address {address:#x}")


def _large_inference_output():
    """An inference output of exactly 32 MiB ([T * B, H] float32), with the nn.LSTM it must equal."""
    torch.manual_seed(0)
    reference = torch.nn.LSTM(4, 32)
    lstm = lstm_ext.LSTM(4, 32)
    lstm.load_state_dict(reference.state_dict())
    x = torch.randn(1024, 256, 4)
    with torch.inference_mode():
        output, _ = lstm(x)
        expected, _ = reference(x)
    assert output.numel() * output.element_size() == MIN_HUGE_PAGE_BYTES
    return output, expected


def test_huge_page_output_equals_nn_lstm_resizes_and_frees():
    output, expected = _large_inference_output()
    torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-5)
    # Growing the storage goes through the storage's allocator and keeps the values.
    kept = output.clone()
    with torch.inference_mode():
        output.resize_(2 * output.shape[0], *output.shape[1:])
    assert torch.equal(output[: kept.shape[0]], kept)
    with torch.inference_mode():
        output.fill_(1.0)
    assert output.sum().item() == output.numel()
    del output  # freed into the cache; a second one (maybe in the same memory) must come out the same
    again, _ = _large_inference_output()
    assert torch.equal(again, kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="huge pages are requested on Linux only")
def test_large_outputs_are_in_huge_pages_where_the_kernel_offers_them():
    mode = _thp_mode()
    if mode not in ("always", "madvise"):
        pytest.skip(f"transparent huge pages are {mode or 'not available'} on this machine")
    output, _ = _large_inference_output()
    huge_kib = _anon_huge_kib_at(output.data_ptr())
    # Every 2 MiB page of it could be a huge one; fragmentation may deny a few, never most.
    assert huge_kib >= (MIN_HUGE_PAGE_BYTES >> 10) // 2, f"only {huge_kib} KiB of 32 MiB in huge pages"


def _resident_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="large buffers are mapped (and cached) on Linux only")
def test_reused_buffers_give_nn_lstms_numbers_and_the_cache_stays_put():
    # Two training steps on different data: the second one's gates, cells, outputs and gradients are the
    # first one's freed buffers, holding its values. float64, so every result is held to 1e-9.
    lstm_ext.empty_cache()
    cfg = Config(seq_len=128, batch=128, input_size=8, hidden_size=64, given_state=True)
    ref, ext = make_pair(cfg, torch.float64, "cpu")
    cached = []
    for _ in range(2):
        x, hx = make_inputs(cfg, torch.float64, "cpu")
        expected, actual = run_with_grads(ref, x, hx), run_with_grads(ext, x, hx)
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], **TOLERANCES[torch.float64],
                                       msg=lambda m, key=key: f"{key}: {m}")
        del actual
        cached.append(lstm_ext.cpu_cache_bytes())
    assert cached[0] >= 2 * MIN_HUGE_PAGE_BYTES, f"the step's large buffers were not kept: {cached[0]} bytes"
    assert cached[1] == cached[0], f"the second step did not reuse the first one's buffers: {cached}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="large buffers are mapped (and cached) on Linux only")
def test_the_cache_keeps_at_most_its_bound_and_empty_cache_releases_it():
    # Inference outputs of 32, 72, 162, 364 and 820 MiB ([T * 256, 32] float32), each more than twice the
    # one before, so none reuses another: the cache grows past its bound and drops its oldest.
    lstm_ext.empty_cache()
    lstm = lstm_ext.LSTM(1, 32)
    kept, sizes = [], []
    for seq_len in (1024, 2304, 5184, 11648, 26240):
        with torch.inference_mode():
            output, _ = lstm(torch.zeros(seq_len, 256, 1))
        sizes.append(output.numel() * output.element_size())
        del output
        kept.append(lstm_ext.cpu_cache_bytes())
        assert sizes[-1] <= kept[-1] <= MAX_CACHED_BYTES, f"{kept[-1]} bytes cached after a {sizes[-1]}-byte output"
    assert kept[-1] < sum(sizes), "nothing was dropped"
    before = _resident_bytes()
    lstm_ext.empty_cache()
    assert lstm_ext.cpu_cache_bytes() == 0
    released = before - _resident_bytes()
    assert released >= kept[-1] * 0.9, f"empty_cache() released {released} of {kept[-1]} cached bytes"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="buffers are mapped (and cached) on Linux only")
def test_medium_buffers_are_kept_and_reused():
    # H=256: the weights packed for the products, 1 MiB each, and nothing of 32 MiB. Freed, they go into
    # the cache (a later buffer of the same call may take one back) and serve the next call, which must
    # still agree with nn.LSTM and leave the cache as it was.
    lstm_ext.empty_cache()
    cfg = Config(seq_len=16, batch=8, input_size=256, hidden_size=256, given_state=True)
    packed_weight_bytes = 4 * cfg.hidden_size * cfg.input_size * 4
    cached = []
    for _ in range(2):
        assert_equal_to_nn_lstm(cfg, torch.float32, "cpu")
        cached.append(lstm_ext.cpu_cache_bytes())
    assert packed_weight_bytes >= MIN_CACHED_BYTES
    assert cached[0] >= packed_weight_bytes, f"the packed weights were not kept: {cached[0]} bytes cached"
    assert cached[1] == cached[0], f"the second call did not reuse the first one's buffers: {cached}"
    lstm_ext.empty_cache()
    assert lstm_ext.cpu_cache_bytes() == 0
