#!/usr/bin/env python
"""Per-call cost of tiny calls, where Python dispatch dominates: lstm_ext against torch.nn side by side.

    python benchmarks/small_calls.py [--repeats 15] [--calls 2000]

Points: the LSTM module's forward at T=1, B=1, H=8 (grad mode on and under no_grad) and LSTMCell at
B=1, H=32 (no_grad and grad mode). Each repeat times --calls calls of lstm_ext, then of torch.nn, in
alternation; the figure is the median per call over the repeats, and the ratio nn / lstm_ext (above 1:
lstm_ext is faster). CPU only.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time

import torch
from torch import nn

import lstm_ext


def _per_call_us(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def points():
    """(name, grad mode, make(impl) -> zero-argument callable) for each point."""
    x_seq = torch.randn(1, 1, 8)
    x_cell = torch.randn(1, 32)
    state = (torch.zeros(1, 32), torch.zeros(1, 32))

    def module(impl):
        m = impl(8, 8)
        return lambda: m(x_seq)

    def cell(impl):
        m = impl(32, 32)
        return lambda: m(x_cell, state)

    return [
        ("LSTM forward T=1 B=1 H=8, grad mode", True, module, (lstm_ext.LSTM, nn.LSTM)),
        ("LSTM forward T=1 B=1 H=8, no_grad", False, module, (lstm_ext.LSTM, nn.LSTM)),
        ("LSTMCell B=1 H=32, no_grad", False, cell, (lstm_ext.LSTMCell, nn.LSTMCell)),
        ("LSTMCell B=1 H=32, grad mode", True, cell, (lstm_ext.LSTMCell, nn.LSTMCell)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, lstm_ext CPU kernels: {lstm_ext.cpu_kernels()}")
    print(f"{'point':40s} {'lstm_ext us':>12s} {'torch.nn us':>12s} {'nn/ext':>7s}")
    for name, grad, make, (ext_impl, nn_impl) in points():
        torch.manual_seed(0)
        ext, ref = make(ext_impl), make(nn_impl)
        with contextlib.nullcontext() if grad else torch.no_grad():
            for fn in (ext, ref):
                _per_call_us(fn, args.calls // 4)  # warm-up
            times = {"ext": [], "nn": []}
            for _ in range(args.repeats):
                times["ext"].append(_per_call_us(ext, args.calls))
                times["nn"].append(_per_call_us(ref, args.calls))
        e, n = statistics.median(times["ext"]), statistics.median(times["nn"])
        print(f"{name:40s} {e:12.1f} {n:12.1f} {n / e:7.2f}")


if __name__ == "__main__":
    main()
