#!/usr/bin/env python
"""How close lstm_ext's forward comes to the GEMM throughput torch.mm reaches on this machine.

    python benchmarks/gemm_efficiency.py                          # T=100, B=64, I=H=512 (fastrnns' shape)
    python benchmarks/gemm_efficiency.py --seq-len 50 --batch 32 --hidden-size 256 --out results/eff

An LSTM forward is two GEMMs' worth of arithmetic: 2·T·B·(I+H)·4H FLOPs (the input projection and the
per-step recurrent products; the pointwise work is not counted). Its throughput is compared with
torch.mm's on the input projection alone, [T·B, I] x [I, 4H] into a preallocated output: one large
GEMM, the best case for the BLAS. All three (lstm_ext and nn.LSTM inference forwards, torch.mm) run in
this process in turns, so that a change in the machine's load hits them alike; the fastest of the
turns is reported (the medians too), and efficiency = LSTM GFLOP/s / torch.mm GFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lstm_ext  # noqa: E402
from sweep import describe_environment  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=512, help="H; the input size is the same")
    parser.add_argument("--turns", type=int, default=15, help="timed calls of each, taken in turns")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write gemm_efficiency.json here")
    args = parser.parse_args(argv)
    for name in ("seq_len", "batch", "hidden_size", "turns"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def measure(seq_len: int, batch: int, hidden: int, turns: int) -> dict:
    torch.manual_seed(0)
    ext = lstm_ext.LSTM(hidden, hidden).eval()
    ref = torch.nn.LSTM(hidden, hidden).eval()
    ref.load_state_dict(ext.state_dict())
    x = torch.randn(seq_len, batch, hidden)
    a = torch.randn(seq_len * batch, hidden)
    w = torch.randn(4 * hidden, hidden)
    out = torch.empty(seq_len * batch, 4 * hidden)
    calls = {"lstm_ext": lambda: ext(x), "nn.LSTM": lambda: ref(x), "torch.mm": lambda: torch.mm(a, w.t(), out=out)}
    seconds = {name: [] for name in calls}
    with torch.inference_mode():
        torch.testing.assert_close(ext(x)[0], ref(x)[0], rtol=1e-4, atol=1e-5)
        for call in calls.values():  # warm-up: thread wake-up, oneDNN primitive creation
            call()
        for _ in range(turns):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                seconds[name].append(time.perf_counter() - start)
    flops = {"lstm_ext": 2 * seq_len * batch * 2 * hidden * 4 * hidden}
    flops["nn.LSTM"] = flops["lstm_ext"]
    flops["torch.mm"] = 2 * seq_len * batch * hidden * 4 * hidden
    result = {"seq_len": seq_len, "batch": batch, "input_size": hidden, "hidden_size": hidden, "turns": turns}
    for stat, pick in (("best", min), ("median", statistics.median)):
        gflops = {name: flops[name] / pick(seconds[name]) / 1e9 for name in calls}
        result[stat] = {
            "ms": {name: pick(seconds[name]) * 1e3 for name in calls},
            "gflops": gflops,
            "lstm_ext_over_mm": gflops["lstm_ext"] / gflops["torch.mm"],
            "nn_lstm_over_mm": gflops["nn.LSTM"] / gflops["torch.mm"],
        }
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = measure(args.seq_len, args.batch, args.hidden_size, args.turns)
    result["environment"] = describe_environment(torch.device("cpu"), torch.float32)
    print(f"T={args.seq_len} B={args.batch} I=H={args.hidden_size}, {torch.get_num_threads()} threads, "
          f"{args.turns} turns (GFLOP/s; efficiency = / torch.mm)")
    for stat in ("best", "median"):
        r = result[stat]
        print(f"  {stat:6}  lstm_ext {r['gflops']['lstm_ext']:6.1f} ({r['lstm_ext_over_mm']:.2f})   "
              f"nn.LSTM {r['gflops']['nn.LSTM']:6.1f} ({r['nn_lstm_over_mm']:.2f})   "
              f"torch.mm {r['gflops']['torch.mm']:6.1f}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "gemm_efficiency.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
