"""lstm_ext.LSTM equals torch.nn.LSTM: outputs, final states and every gradient, over a matrix of
configurations, both directions of state-dict loading, float64 to 1e-9 and float32 to 1e-4."""

import itertools

import pytest
import torch

from lstm_reference import Config, assert_equal_to_nn_lstm

SIZES = [  # (seq_len, batch, input_size, hidden_size): ones, odd sizes, a vector-width multiple
    (1, 1, 1, 1),
    (5, 3, 4, 6),
    (7, 2, 9, 13),
    (3, 5, 16, 32),
]
SHAPES = [  # (num_layers, bidirectional, batch_first)
    (1, False, False),
    (2, False, True),
    (1, True, False),
    (3, True, True),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "L{}{}{}".format(s[0], "bi" if s[1] else "uni", "bf" if s[2] else "tf"))
def test_matches_nn_lstm(device, dtype, sizes, shape):
    T, B, I, H = sizes
    L, bidirectional, batch_first = shape
    assert_equal_to_nn_lstm(Config(T, B, I, H, L, bidirectional, batch_first), dtype, device)


@pytest.mark.parametrize("bias,given_state,unbatched",
                         list(itertools.product([True, False], [True, False], [True, False])))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tf", "bf"])
def test_matches_nn_lstm_options(device, bias, given_state, unbatched, bidirectional, batch_first):
    cfg = Config(seq_len=4, batch=3, input_size=5, hidden_size=7, num_layers=2, bidirectional=bidirectional,
                 batch_first=batch_first, bias=bias, given_state=given_state, unbatched=unbatched)
    assert_equal_to_nn_lstm(cfg, torch.float64, device)


@pytest.mark.parametrize("load_into", ["ext", "torch"])
def test_state_dict_loads_both_ways(device, load_into):
    cfg = Config(seq_len=4, batch=2, input_size=3, hidden_size=5, num_layers=2, bidirectional=True, given_state=True)
    assert_equal_to_nn_lstm(cfg, torch.float64, device, load_into=load_into)


def test_float32_long_sequence(device):
    # Errors compound over steps: a longer float32 run still holds the tolerance.
    assert_equal_to_nn_lstm(Config(seq_len=64, batch=8, input_size=32, hidden_size=48, num_layers=2,
                                   bidirectional=True, given_state=True), torch.float32, device)


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 6, 7, 13])
@pytest.mark.parametrize("input_size,hidden_size", [(21, 27), (40, 40), (517, 131)],
                         ids=["I21H27", "I40H40", "I517H131"])
def test_float32_gemm_block_shapes(device, batch, input_size, hidden_size):
    # The CPU's float32 GEMM takes a step's rows in register blocks whose shape depends on the row count
    # (each thread's share of the batch) and the panel count (4H / 16, a partial last one for H=27); I=21
    # leaves a tail after the 8 x 8 transposes that pack W_ih; I=517 and 4H=524 take k in two blocks (the
    # input projection and the backward's products). Every shape must give nn.LSTM's numbers.
    assert_equal_to_nn_lstm(Config(seq_len=3, batch=batch, input_size=input_size, hidden_size=hidden_size,
                                   given_state=True), torch.float32, device)


PACKED_LENGTHS = [  # unsorted on purpose: enforce_sorted=False, so sorted/unsorted indices are exercised
    (1,),
    (3, 5, 2),
    (4, 4, 4),
    (2, 7, 7, 1, 3, 6),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("lengths", PACKED_LENGTHS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "L{}{}{}".format(s[0], "bi" if s[1] else "uni", "bf" if s[2] else "tf"))
@pytest.mark.parametrize("given_state", [False, True], ids=["zero_state", "given_state"])
def test_packed_sequence_matches_nn_lstm(device, dtype, lengths, shape, given_state):
    L, bidirectional, batch_first = shape
    cfg = Config(input_size=3, hidden_size=5, num_layers=L, bidirectional=bidirectional, batch_first=batch_first,
                 given_state=given_state, lengths=lengths)
    assert_equal_to_nn_lstm(cfg, dtype, device)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "L{}{}{}".format(s[0], "bi" if s[1] else "uni", "bf" if s[2] else "tf"))
@pytest.mark.parametrize("proj_size,lengths", [(1, None), (3, None), (2, (4, 1, 3))], ids=["p1", "p3", "p2_packed"])
@pytest.mark.parametrize("given_state", [False, True], ids=["zero_state", "given_state"])
def test_proj_size_matches_nn_lstm(device, dtype, shape, proj_size, lengths, given_state):
    L, bidirectional, batch_first = shape
    cfg = Config(seq_len=5, batch=3, input_size=4, hidden_size=6, num_layers=L, bidirectional=bidirectional,
                 batch_first=batch_first, given_state=given_state, lengths=lengths, proj_size=proj_size)
    assert_equal_to_nn_lstm(cfg, dtype, device)


def test_proj_size_unbatched_without_bias(device):
    assert_equal_to_nn_lstm(Config(bias=False, unbatched=True, given_state=True, proj_size=2, num_layers=2,
                                   bidirectional=True), torch.float64, device)
