"""Compares lstm_ext.LSTM with torch.nn.LSTM on one configuration: outputs, final states and the
gradients of the input, the states and every parameter. Used by the equivalence and property tests."""

from __future__ import annotations

import dataclasses

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import lstm_ext

# float64 to 1e-9; float32 to 1e-4 relative (absolute 1e-5 floor for values near zero).
TOLERANCES = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=1e-4, atol=1e-5)}


@dataclasses.dataclass(frozen=True)
class Config:
    seq_len: int = 5
    batch: int = 3
    input_size: int = 4
    hidden_size: int = 6
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    given_state: bool = False
    unbatched: bool = False
    lengths: tuple[int, ...] | None = None  # packed input: each sequence's length (any order); batch = len
    proj_size: int = 0


def make_pair(cfg: Config, dtype, device, load_into="ext"):
    """An nn.LSTM and an lstm_ext.LSTM holding the same weights. load_into="ext" copies nn.LSTM's state
    dict into lstm_ext.LSTM, "torch" the other way round."""
    kwargs = dict(num_layers=cfg.num_layers, bias=cfg.bias, batch_first=cfg.batch_first,
                  bidirectional=cfg.bidirectional, proj_size=cfg.proj_size, dtype=dtype, device=device)
    ref = torch.nn.LSTM(cfg.input_size, cfg.hidden_size, **kwargs)
    ext = lstm_ext.LSTM(cfg.input_size, cfg.hidden_size, **kwargs)
    if load_into == "ext":
        ext.load_state_dict(ref.state_dict())
    else:
        ref.load_state_dict(ext.state_dict())
    return ref, ext


def make_inputs(cfg: Config, dtype, device):
    """(x, hx): x a tensor, or a PackedSequence (enforce_sorted=False) when cfg.lengths is set."""
    d = 2 if cfg.bidirectional else 1
    if cfg.lengths is not None:
        cfg = dataclasses.replace(cfg, seq_len=max(cfg.lengths), batch=len(cfg.lengths), unbatched=False)
    shape = (cfg.batch, cfg.seq_len, cfg.input_size) if cfg.batch_first else (cfg.seq_len, cfg.batch, cfg.input_size)
    if cfg.unbatched:
        shape = (cfg.seq_len, cfg.input_size)
    x = torch.randn(shape, dtype=dtype, device=device)
    if cfg.lengths is not None:
        x = pack_padded_sequence(x, torch.tensor(cfg.lengths), batch_first=cfg.batch_first, enforce_sorted=False)
    if not cfg.given_state:
        return x, None
    batch = () if cfg.unbatched else (cfg.batch,)
    h_shape = (cfg.num_layers * d, *batch, cfg.proj_size or cfg.hidden_size)
    c_shape = (cfg.num_layers * d, *batch, cfg.hidden_size)
    return x, (torch.randn(h_shape, dtype=dtype, device=device), torch.randn(c_shape, dtype=dtype, device=device))


def run_with_grads(module, x, hx):
    """Forward and backward of a loss that touches output, h_n and c_n; returns values and gradients."""
    if isinstance(x, PackedSequence):
        data = x.data.detach().clone().requires_grad_(True)
        leaves = [data]
        x = PackedSequence(data, x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    else:
        x = x.detach().clone().requires_grad_(True)
        leaves = [x]
    if hx is not None:
        hx = tuple(s.detach().clone().requires_grad_(True) for s in hx)
        leaves += list(hx)
    output, (h_n, c_n) = module(x, hx)
    if isinstance(output, PackedSequence):
        output = output.data
    # Fixed, distinct weights per output so that every gradient path is exercised.
    gen = torch.Generator().manual_seed(1)
    w_out = torch.randn(output.shape, generator=gen, dtype=output.dtype).to(output.device)
    w_h = torch.randn(h_n.shape, generator=gen, dtype=h_n.dtype).to(h_n.device)
    w_c = torch.randn(c_n.shape, generator=gen, dtype=c_n.dtype).to(c_n.device)
    loss = (output * w_out).sum() + (h_n * w_h).sum() + (c_n * w_c).sum()
    params = dict(module.named_parameters())
    grads = torch.autograd.grad(loss, leaves + list(params.values()))
    names = ["input", "h0", "c0"][:len(leaves)] + [f"grad {n}" for n in params]
    return {"output": output, "h_n": h_n, "c_n": c_n, **dict(zip(names, grads))}


def assert_equal_to_nn_lstm(cfg: Config, dtype, device, load_into="ext"):
    ref, ext = make_pair(cfg, dtype, device, load_into)
    x, hx = make_inputs(cfg, dtype, device)
    expected = run_with_grads(ref, x, hx)
    actual = run_with_grads(ext, x, hx)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert actual[key].shape == expected[key].shape, key
        assert actual[key].dtype == expected[key].dtype, key
        torch.testing.assert_close(actual[key], expected[key], **TOLERANCES[dtype], msg=lambda m: f"{key}: {m}")
