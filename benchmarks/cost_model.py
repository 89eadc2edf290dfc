#!/usr/bin/env python
"""A cost model, on paper, of one LSTM layer's recurrence on an H100-class GPU: a PREDICTION, not a measurement.

Three ways to run the T sequential steps of a layer (one layer, one direction, I = H), per step:

- persistent: one cooperative launch per pass; each of ~132 blocks owns H/132 hidden units with their 4 gate
  columns and keeps that W_hh slice in shared memory for all steps. A step reads h_{t-1} (from L2), computes
  its gate columns on the CUDA cores, adds the hoisted input projection, runs the pointwise cell, writes
  h_t/c_t (and the gates in training), then waits at a grid-wide barrier. Backward: dG for its units, a
  barrier, then dh_{t-1} for its units from all of dG and its W_hh column slice.
- alternating (lstm_ext today): per step one cuBLAS GEMM h_{t-1} W_hh^T ([B,H]x[H,4H]) and one pointwise
  kernel, both launched from the host; W_hh comes from L2 (or HBM) every step.
- cudnn: nn.LSTM's cuDNN CUDNN_RNN_ALGO_STANDARD, what PyTorch selects for float32 and bfloat16 at these
  hidden sizes (aten/src/ATen/native/cudnn/RNN.cpp, get_algo: the persistent algorithms only for float16, or
  H <= 192 / 128 for PERSIST_STATIC_SMALL_H), float32 on TF32 tensor cores (torch.backends.cudnn.allow_tf32
  defaults to True).

All three share the work outside the recurrence: the input projection as one GEMM before the loop and, in
training, grad_input and the weight gradients as GEMMs after it; it is added per step, amortized.

    python benchmarks/cost_model.py                         # the README's tables (markdown)
    python benchmarks/cost_model.py --gpu h200 --seq-len 1024
    python benchmarks/cost_model.py --set grid_barrier_us=2.0 --set host_gemm_call_us=4
    python benchmarks/cost_model.py --write-readme          # refresh the generated block in benchmarks/README.md

Every constant is below with where it comes from; "assumption" marks the ones no published figure was found
for. benchmarks/README.md ("Persistent kernel: cost model (a prediction)") explains the formulas.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"
BLOCK_BEGIN = "<!-- cost_model.py output: begin (python benchmarks/cost_model.py --write-readme) -->"
BLOCK_END = "<!-- cost_model.py output: end -->"

PATHS = ("persistent", "alternating", "cudnn")
MODES = ("infer", "train")  # a forward under inference_mode; a training step (forward + backward)
DTYPES = ("float32", "bfloat16")
ELEMENT_BYTES = {"float32": 4, "bfloat16": 2}
GRID_BATCHES = (1, 8, 32, 64)
GRID_HIDDEN = (256, 512, 1024)
DEFAULT_SEQ_LEN = 256
GATES = 4


@dataclasses.dataclass(frozen=True)
class Gpu:
    """Published figures (NVIDIA H100 whitepaper / datasheet), except where the comment says assumption."""
    name: str
    sm_count: int = 132
    fp32_lanes_per_sm: int = 128
    fp32_clock_ghz: float = 1.98  # 132 SMs x 128 lanes x 2 x 1.98 GHz = 66.9 TFLOPS, the datasheet's FP32
    fp32_tflops: float = 66.9
    tf32_tflops: float = 494.7  # dense (the datasheet's 989 is with 2:4 sparsity)
    bf16_tflops: float = 989.4  # dense (1979 with sparsity)
    smem_per_sm_kib: int = 228
    smem_per_block_kib: int = 227  # the most one block may opt into (compute capability 9.0)
    registers_per_sm_kib: int = 256
    l2_mib: int = 50
    hbm_tbs: float = 3.35
    smem_bytes_per_clock: int = 128  # 32 banks x 4 bytes per clock per SM (CUDA programming guide)
    # Assumption: sustained L2 read bandwidth of the whole chip. NVIDIA publishes none; microbenchmarks of
    # H100 (chips and cheese, "Nvidia's H100: Funny L2, and Tons of Bandwidth", 2023, on the PCIe part) put
    # it at several TB/s; 5.5 is taken here.
    l2_tbs: float = 5.5
    # Assumption: what stays in L2 from one step to the next. The L2 is two partitions of 25 MB and data
    # read by SMs of both sides is held in both (same article), so half of the 50 MB is counted.
    l2_resident_mib: float = 25.0


GPUS = {
    "h100": Gpu("H100 SXM5"),
    # Same GH100 die, SM count, clocks and L2; HBM3e 141 GB at 4.8 TB/s (H200 datasheet).
    "h200": Gpu("H200 SXM", hbm_tbs=4.8),
}


@dataclasses.dataclass(frozen=True)
class Assumptions:
    """Everything that is not a datasheet figure. Calibrated ones name their calibration point."""
    # --- persistent kernel ---
    grid_barrier_us: float = 1.0  # a flag/counter barrier over 128-132 co-resident blocks: ~2 L2 atomic round
    #                               trips; cooperative_groups' grid.sync() measures 1-3 us on recent GPUs
    persistent_step_latency_us: float = 0.6  # dependent chain per step after the barrier: load h_{t-1} from L2,
    #                                          reduce, pointwise, store h/c, fence
    persistent_batch_rows_per_thread: int = 8  # register blocking: a thread's rows of the batch (W reuse)
    persistent_gate_columns_per_thread: int = 4  # its gate columns (h reuse): the 4 gates of one unit
    persistent_issue_efficiency: float = 0.85  # scheduling, bank conflicts, in-block split-K reductions
    bf16_conversion_ops_per_element: float = 1.0  # bf16 -> fp32 of each operand read from shared memory
    shared_loads_per_instruction: int = 4  # LDS.128: 4 fp32 (or 8 bf16 counted as 4 issue slots' worth)
    persistent_staging_kib: int = 16  # shared memory beside the W_hh slice: h tiles, reduction scratch
    # A what-if, off in the main tables: bfloat16 products on tensor cores (mma.sync m16n8k16, the batch
    # padded to 16 rows) instead of CUDA-core dot products.
    persistent_tensor_cores: bool = False
    persistent_mma_efficiency: float = 0.5  # of an SM's dense bf16 peak: fragments staged from shared memory
    mma_rows: int = 16
    # --- alternating path (host-launched per step) ---
    host_gemm_call_us: float = 6.5  # ATen addmm_/mm_out + cuBLAS dispatch per step, host side
    host_pointwise_call_us: float = 4.0  # the pointwise op's launch, host side
    #   (together 10.5 us per step: calibrated to FlashRNN's alternating kernels, 10.8 ms for T=1024)
    cublas_kernel_floor_us: float = 2.0  # device time of the smallest cuBLAS GEMM: launch, ramp-up, tail
    pointwise_kernel_floor_us: float = 1.0
    # --- cuBLAS / cuDNN GEMM efficiency ---
    gemm_efficiency_tensor: float = 0.6  # of the dense tensor-core peak, large enough tiles
    gemm_efficiency_fp32: float = 0.7  # of the FP32 peak (SIMT SGEMM)
    tensor_row_tile: int = 64  # a wgmma tile's rows: B < 64 leaves the rest of the tile idle
    fp32_row_tile: int = 32
    skinny_gemm_l2_fraction: float = 0.6  # of L2 bandwidth a [B,H]x[H,4H] GEMM draws (few CTAs per column tile)
    # --- cuDNN standard algorithm, per step: at least this much (calibrated to FlashRNN's nn.LSTM figures) ---
    cudnn_forward_step_floor_us: float = 1.8
    cudnn_backward_step_floor_us: float = 2.6
    # --- the whole call ---
    call_overhead_infer_us: float = 40.0  # Python module, op dispatch, allocations: the same for all three
    call_overhead_train_us: float = 200.0  # ... plus the autograd engine


# --- counts: FLOPs and bytes --------------------------------------------------------------------------

def recurrent_flops(batch: int, hidden: int) -> int:
    """h_{t-1} W_hh^T per step, [B,H] x [H,4H]: 2*B*H*4H. The backward's dG W_hh per step is the same count."""
    return 2 * batch * hidden * GATES * hidden


def projection_flops(batch: int, input_size: int, hidden: int) -> int:
    """x_t W_ih^T per step, hoisted into one GEMM over all T steps."""
    return 2 * batch * input_size * GATES * hidden


def training_hoisted_flops(batch: int, input_size: int, hidden: int) -> int:
    """Per step, outside the recurrence in training: projection, grad_input, dW_ih and dW_hh (4 GEMMs)."""
    return (projection_flops(batch, input_size, hidden)  # forward projection
            + 2 * batch * GATES * hidden * input_size  # grad_input = dG W_ih
            + 2 * GATES * hidden * input_size * batch  # dW_ih = dG^T x
            + 2 * GATES * hidden * hidden * batch)  # dW_hh = dG^T h_{t-1}


def w_hh_bytes(hidden: int, dtype: str) -> int:
    return GATES * hidden * hidden * ELEMENT_BYTES[dtype]


# --- the persistent kernel's geometry ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Geometry:
    blocks: int
    units_per_block: int
    slice_bytes: int  # a block's W_hh slice (forward: 4u rows; backward: u columns of all 4H rows; same size)
    shared_bytes: int  # slice + staging
    fits: bool
    reason: str  # why not, when it does not fit


def persistent_geometry(hidden: int, dtype: str, gpu: Gpu, a: Assumptions) -> Geometry:
    """One block per SM, the units split evenly: u = ceil(H / SMs) units per block, ceil(H / u) blocks."""
    units = math.ceil(hidden / gpu.sm_count)
    blocks = math.ceil(hidden / units)
    slice_bytes = GATES * units * hidden * ELEMENT_BYTES[dtype]
    shared = slice_bytes + a.persistent_staging_kib * 1024
    limit = gpu.smem_per_block_kib * 1024
    if shared > limit:
        return Geometry(blocks, units, slice_bytes, shared, False,
                        f"W_hh slice of {units} units x 4 gates x {hidden} = {slice_bytes / 1024:.0f} KiB "
                        f"+ {a.persistent_staging_kib} KiB staging > {gpu.smem_per_block_kib} KiB shared memory "
                        f"per block")
    return Geometry(blocks, units, slice_bytes, shared, True, "")


def largest_hidden_that_fits(dtype: str, gpu: Gpu, a: Assumptions) -> int:
    hidden = 8
    while persistent_geometry(hidden + 8, dtype, gpu, a).fits:
        hidden += 8
    return hidden


def persistent_flops_per_second(batch: int, gate_columns: int, dtype: str, gpu: Gpu, a: Assumptions) -> float:
    """One SM's rate on the per-block dot products (CUDA cores, float accumulation).

    A thread computes rb x rn outputs (rb batch rows, rn gate columns): per k it loads rb + rn operands from
    shared memory for rb * rn FMAs. The SM is limited by whichever runs out first: shared-memory bytes per
    clock, or issue slots (FMAs plus load instructions plus bf16 conversions)."""
    if a.persistent_tensor_cores and dtype == "bfloat16":
        return (gpu.bf16_tflops * 1e12 / gpu.sm_count * a.persistent_mma_efficiency
                * min(1.0, batch / a.mma_rows))
    rb = min(batch, a.persistent_batch_rows_per_thread)
    rn = min(gate_columns, a.persistent_gate_columns_per_thread)
    element = ELEMENT_BYTES[dtype]
    bytes_per_fma = element * (rb + rn) / (rb * rn)
    shared_limited = gpu.smem_bytes_per_clock / bytes_per_fma  # FMAs per clock per SM
    conversions = a.bf16_conversion_ops_per_element * (rb + rn) if dtype == "bfloat16" else 0.0
    issue_share = rb * rn / (rb * rn + (rb + rn) / a.shared_loads_per_instruction + conversions)
    issue_limited = gpu.fp32_lanes_per_sm * issue_share * a.persistent_issue_efficiency
    return 2 * min(shared_limited, issue_limited) * gpu.fp32_clock_ghz * 1e9


@dataclasses.dataclass(frozen=True)
class StepCost:
    """One step of the recurrence on one path: time and what it moved."""
    us: float
    flops: int
    l2_bytes: float
    hbm_bytes: float
    barriers: int
    launches: int
    bound: str  # what sets the time: compute, memory, latency, host, floor


def persistent_step_cost(compute_us: float, l2: float, hbm: float, flops: float, gpu: Gpu,
                         a: Assumptions) -> StepCost:
    """A persistent step: the longer of its product and its L2 + HBM traffic, then one grid barrier and the
    dependent chain around it; bound by whichever of the three is largest."""
    memory_us = (l2 / (gpu.l2_tbs * 1e12) + hbm / (gpu.hbm_tbs * 1e12)) * 1e6
    latency_us = a.grid_barrier_us + a.persistent_step_latency_us
    bound = "compute" if compute_us >= memory_us else "memory"
    if latency_us > max(compute_us, memory_us):
        bound = "latency"
    return StepCost(max(compute_us, memory_us) + latency_us, flops, l2, hbm, 1, 0, bound)


def persistent_forward_step(batch: int, hidden: int, dtype: str, training: bool, gpu: Gpu,
                            a: Assumptions) -> StepCost:
    g = persistent_geometry(hidden, dtype, gpu, a)
    e = ELEMENT_BYTES[dtype]
    flops_per_block = 2 * batch * GATES * g.units_per_block * hidden
    compute_us = flops_per_block / persistent_flops_per_second(batch, GATES * g.units_per_block, dtype, gpu, a) * 1e6
    # Every block reads all of h_{t-1}; h_t and c_t are written once (and the gates, in training).
    l2 = g.blocks * batch * hidden * e + 2 * batch * hidden * e + (GATES * batch * hidden * e if training else 0)
    hbm = GATES * batch * hidden * e  # the hoisted projection's gates of step t, written long before
    return persistent_step_cost(compute_us, l2, hbm, recurrent_flops(batch, hidden), gpu, a)


def persistent_backward_step(batch: int, hidden: int, dtype: str, gpu: Gpu, a: Assumptions) -> StepCost:
    g = persistent_geometry(hidden, dtype, gpu, a)
    e = ELEMENT_BYTES[dtype]
    flops_per_block = 2 * batch * GATES * hidden * g.units_per_block
    compute_us = flops_per_block / persistent_flops_per_second(batch, g.units_per_block, dtype, gpu, a) * 1e6
    # Every block reads all of dG_t; its own units' dG are written once; dh/dc stay in the block.
    l2 = g.blocks * batch * GATES * hidden * e + GATES * batch * hidden * e
    hbm = (GATES + 2) * batch * hidden * e  # the saved gates, c_t and c_{t-1} of this step; dL/dh_t from the output
    return persistent_step_cost(compute_us, l2, hbm, recurrent_flops(batch, hidden), gpu, a)


# --- GEMMs on cuBLAS / cuDNN -------------------------------------------------------------------------

def gemm_math(path: str, dtype: str) -> str:
    """What a path's GEMMs run on: lstm_ext's at::mm in float32 keeps full FP32 (torch.backends.cuda.matmul.
    allow_tf32 defaults to False); cuDNN's RNN gets TF32 (torch.backends.cudnn.allow_tf32 defaults to True)."""
    if dtype == "bfloat16":
        return "bf16"
    return "tf32" if path == "cudnn" else "fp32"


def gemm_us(rows: int, cols: int, depth: int, dtype: str, math_kind: str, gpu: Gpu, a: Assumptions,
            floor_us: float, weight_reused: bool) -> tuple[float, float, float]:
    """(device us, L2 bytes, HBM bytes) of [rows, depth] x [depth, cols] into [rows, cols] (accumulated).
    `weight_reused`: the [depth, cols] operand was read by the previous step too (W_hh in the loop)."""
    flops = 2 * rows * cols * depth
    peak = {"fp32": gpu.fp32_tflops, "tf32": gpu.tf32_tflops, "bf16": gpu.bf16_tflops}[math_kind] * 1e12
    efficiency, tile = ((a.gemm_efficiency_fp32, a.fp32_row_tile) if math_kind == "fp32"
                        else (a.gemm_efficiency_tensor, a.tensor_row_tile))
    compute_us = flops / (peak * efficiency * min(1.0, rows / tile)) * 1e6
    e = ELEMENT_BYTES[dtype]
    weight = depth * cols * e
    activations = (rows * depth + 2 * rows * cols) * e
    in_l2 = weight_reused and weight <= gpu.l2_resident_mib * 2 ** 20
    l2 = weight + activations if in_l2 else activations
    hbm = 0 if in_l2 else weight
    # A skinny product keeps few CTAs per column tile busy: its share of L2 bandwidth grows with the rows.
    skinny = a.skinny_gemm_l2_fraction + (1.0 - a.skinny_gemm_l2_fraction) * min(1.0, rows / tile)
    memory_us = (l2 / (gpu.l2_tbs * 1e12 * skinny) + hbm / (gpu.hbm_tbs * 1e12)) * 1e6
    return max(compute_us, memory_us) + floor_us, l2, hbm


def pointwise_us(batch: int, hidden: int, dtype: str, backward: bool, gpu: Gpu, floor_us: float) -> tuple[float, float]:
    """(device us, bytes): forward reads 4 gates and c, writes h and c; backward reads gates, c_t, c_{t-1},
    dh, dc and writes dG and dc. Counted at L2 speed (the step's own GEMM just wrote the gates)."""
    e = ELEMENT_BYTES[dtype]
    elements = batch * hidden * ((GATES + 2 + 2 + GATES + 1) if backward else (GATES + 1 + 2))
    return max(floor_us, elements * e / (gpu.l2_tbs * 1e12) * 1e6), elements * e


def alternating_step(batch: int, hidden: int, dtype: str, backward: bool, gpu: Gpu, a: Assumptions) -> StepCost:
    """One GEMM and one pointwise launch per step, issued by the host: the step takes the longer of the host's
    two calls and the device's two kernels (the host runs ahead of the device, the queue stays shallow)."""
    rows, cols, depth = (batch, hidden, GATES * hidden) if backward else (batch, GATES * hidden, hidden)
    gemm, l2, hbm = gemm_us(rows, cols, depth, dtype, gemm_math("alternating", dtype), gpu, a,
                            a.cublas_kernel_floor_us, weight_reused=True)
    pointwise, pointwise_bytes = pointwise_us(batch, hidden, dtype, backward, gpu, a.pointwise_kernel_floor_us)
    device_us = gemm + pointwise
    host_us = a.host_gemm_call_us + a.host_pointwise_call_us
    return StepCost(max(device_us, host_us), recurrent_flops(batch, hidden), l2 + pointwise_bytes, hbm, 0, 2,
                    "host" if host_us >= device_us else "device")


def cudnn_step(batch: int, hidden: int, dtype: str, backward: bool, gpu: Gpu, a: Assumptions) -> StepCost:
    """cuDNN's standard algorithm: per step a GEMM and the elementwise work, launched from inside the library;
    at least its calibrated per-step floor (which holds the kernels' fixed costs), more once the GEMM's and the
    elementwise bytes' own time exceeds it."""
    rows, cols, depth = (batch, hidden, GATES * hidden) if backward else (batch, GATES * hidden, hidden)
    # cuDNN keeps float32 weights as float32 and converts for TF32: the bytes are float32's.
    gemm, l2, hbm = gemm_us(rows, cols, depth, dtype, gemm_math("cudnn", dtype), gpu, a, 0.0, weight_reused=True)
    pointwise, pointwise_bytes = pointwise_us(batch, hidden, dtype, backward, gpu, 0.0)
    floor = a.cudnn_backward_step_floor_us if backward else a.cudnn_forward_step_floor_us
    work = gemm + pointwise
    return StepCost(max(floor, work), recurrent_flops(batch, hidden), l2 + pointwise_bytes, hbm, 0, 2,
                    "floor" if floor >= work else "device")


def hoisted_us_per_step(batch: int, hidden: int, dtype: str, seq_len: int, training: bool, path: str, gpu: Gpu,
                        a: Assumptions) -> float:
    """The GEMMs outside the loop (over all T*B rows), per step, plus the call's fixed cost spread over T."""
    math_kind = gemm_math(path, dtype)
    rows, i, h4 = seq_len * batch, hidden, GATES * hidden
    shapes = [(rows, h4, i)]  # projection [TB, I] x [I, 4H]
    if training:
        shapes += [(rows, i, h4),  # grad_input [TB, 4H] x [4H, I]
                   (h4, i, rows),  # dW_ih [4H, TB] x [TB, I]
                   (h4, hidden, rows)]  # dW_hh [4H, TB] x [TB, H]
    total = sum(gemm_us(r, c, d, dtype, math_kind, gpu, a, a.cublas_kernel_floor_us, weight_reused=False)[0]
                for r, c, d in shapes)
    total += a.call_overhead_train_us if training else a.call_overhead_infer_us
    return total / seq_len


# --- a grid point ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Prediction:
    batch: int
    hidden: int
    dtype: str
    mode: str
    seq_len: int
    us_per_step: dict  # path -> predicted us per step (recurrence + hoisted work + call overhead over T)
    hoisted_us: dict  # path -> the part of us_per_step outside the recurrence
    recurrence: dict  # path -> [StepCost forward, StepCost backward or None]
    persistent_supported: bool
    persistent_reason: str

    def ratio(self, path: str, over: str) -> float:
        return self.us_per_step[path] / self.us_per_step[over]


def predict(batch: int, hidden: int, dtype: str, mode: str, seq_len: int = DEFAULT_SEQ_LEN,
            gpu: Gpu = GPUS["h100"], a: Assumptions = Assumptions()) -> Prediction:
    if dtype not in ELEMENT_BYTES:
        raise ValueError(f"dtype must be one of {sorted(ELEMENT_BYTES)}, not {dtype!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    training = mode == "train"
    geometry = persistent_geometry(hidden, dtype, gpu, a)
    recurrence = {
        "persistent": [persistent_forward_step(batch, hidden, dtype, training, gpu, a),
                       persistent_backward_step(batch, hidden, dtype, gpu, a) if training else None],
        "alternating": [alternating_step(batch, hidden, dtype, False, gpu, a),
                        alternating_step(batch, hidden, dtype, True, gpu, a) if training else None],
        "cudnn": [cudnn_step(batch, hidden, dtype, False, gpu, a),
                  cudnn_step(batch, hidden, dtype, True, gpu, a) if training else None],
    }
    hoisted = {path: hoisted_us_per_step(batch, hidden, dtype, seq_len, training, path, gpu, a) for path in PATHS}
    us = {path: forward.us + (backward.us if backward else 0.0) + hoisted[path]
          for path, (forward, backward) in recurrence.items()}
    return Prediction(batch, hidden, dtype, mode, seq_len, us, hoisted, recurrence, geometry.fits, geometry.reason)


def grid(seq_len: int = DEFAULT_SEQ_LEN, gpu: Gpu = GPUS["h100"], a: Assumptions = Assumptions()) -> list[Prediction]:
    """The README's points in the README's order: mode, dtype, H, B."""
    return [predict(b, h, d, m, seq_len, gpu, a) for m in MODES for d in DTYPES for h in GRID_HIDDEN
            for b in GRID_BATCHES]


def crossover_batch(hidden: int, dtype: str, mode: str, over: str, seq_len: int = DEFAULT_SEQ_LEN,
                    gpu: Gpu = GPUS["h100"], a: Assumptions = Assumptions(), largest: int = 512) -> int | None:
    """The smallest batch from which on the persistent kernel is predicted slower than `over` (ratio >= 1),
    None if it never is up to `largest`; 1 if it is slower at every batch."""
    for batch in range(1, largest + 1):
        if predict(batch, hidden, dtype, mode, seq_len, gpu, a).ratio("persistent", over) >= 1.0:
            return batch
    return None


# --- output ------------------------------------------------------------------------------------------

def _us(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _mib(value: float) -> str:
    return f"{value / 2 ** 20:.2f}"


def markdown(seq_len: int = DEFAULT_SEQ_LEN, gpu: Gpu = GPUS["h100"], a: Assumptions = Assumptions()) -> str:
    points = grid(seq_len, gpu, a)
    lines = [f"Predicted for {gpu.name}, T = {seq_len}, one layer, I = H; times in us per step (the call's "
             f"total / T: recurrence + hoisted GEMMs + the call's fixed cost / T). P = persistent, A = alternating, "
             f"C = cuDNN (nn.LSTM). Generated by `python benchmarks/cost_model.py`.", ""]

    lines += ["Per step of the forward recurrence (the backward's is the same FLOPs; its persistent L2 reads "
              "are 4x, all of dG to every block):", "",
              "| dtype | H | B | GFLOP | W_hh MiB | P blocks x units | P smem KiB/block | P L2 MiB | "
              "P barriers | A L2 MiB (W_hh re-read) | A launches |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        if p.mode != "infer":
            continue
        g = persistent_geometry(p.hidden, p.dtype, gpu, a)
        persistent, alternating = p.recurrence["persistent"][0], p.recurrence["alternating"][0]
        lines.append(f"| {p.dtype} | {p.hidden} | {p.batch} | {persistent.flops / 1e9:.4f} | "
                     f"{_mib(w_hh_bytes(p.hidden, p.dtype))} | {g.blocks} x {g.units_per_block} | "
                     f"{g.shared_bytes / 1024:.0f}{'' if g.fits else ' (does not fit)'} | {_mib(persistent.l2_bytes)} | "
                     f"{persistent.barriers} | {_mib(alternating.l2_bytes)} | {alternating.launches} |")
    lines.append("")

    for mode, title in (("infer", "Forward (inference)"), ("train", "Training step (forward + backward)")):
        lines += [f"{title}, predicted us per step:", "",
                  "| dtype | H | B | P | A | C | P / A | P / C | of which hoisted: P, A / C | P bound | A bound | "
                  "C bound |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in points:
            if p.mode != mode:
                continue
            bounds = [("+".join(c.bound for c in p.recurrence[path] if c is not None)) for path in PATHS]
            lines.append(f"| {p.dtype} | {p.hidden} | {p.batch} | {_us(p.us_per_step['persistent'])} | "
                         f"{_us(p.us_per_step['alternating'])} | {_us(p.us_per_step['cudnn'])} | "
                         f"{p.ratio('persistent', 'alternating'):.2f} | {p.ratio('persistent', 'cudnn'):.2f} | "
                         f"{_us(p.hoisted_us['persistent'])} / {_us(p.hoisted_us['cudnn'])} | "
                         f"{bounds[0]} | {bounds[1]} | {bounds[2]} |")
        lines.append("")

    lines += ["Crossover: the smallest batch from which the persistent kernel is predicted slower (ratio >= 1); "
              "'-' = not below 512:", "",
              "| dtype | H | infer: vs A | infer: vs C | train: vs A | train: vs C |", "|---|---|---|---|---|---|"]
    for dtype in DTYPES:
        for hidden in GRID_HIDDEN:
            cells = []
            for mode in MODES:
                for over in ("alternating", "cudnn"):
                    batch = crossover_batch(hidden, dtype, mode, over, seq_len, gpu, a)
                    cells.append("-" if batch is None else str(batch))
            lines.append(f"| {dtype} | {hidden} | " + " | ".join(cells) + " |")
    lines.append("")

    what_if = dataclasses.replace(a, persistent_tensor_cores=True)
    lines += ["What if the persistent kernel's bfloat16 products ran on tensor cores (mma.sync, B padded to "
              f"{a.mma_rows} rows, {a.persistent_mma_efficiency:.0%} of the SM's dense peak); ratios:", "",
              "| H | B | infer: P / A | infer: P / C | train: P / A | train: P / C |", "|---|---|---|---|---|---|"]
    for hidden in GRID_HIDDEN:
        for batch in GRID_BATCHES:
            cells = [f"{predict(batch, hidden, 'bfloat16', mode, seq_len, gpu, what_if).ratio('persistent', over):.2f}"
                     for mode in MODES for over in ("alternating", "cudnn")]
            lines.append(f"| {hidden} | {batch} | " + " | ".join(cells) + " |")
    lines.append("")

    lines += ["Sensitivity of the ratios to the least certain constants (P / A, P / C):", "",
              "| change | infer, bfloat16, H=512, B=8 | train, bfloat16, H=512, B=8 | infer, float32, H=1024, B=32 | "
              "train, float32, H=1024, B=32 |", "|---|---|---|---|---|"]
    for label, changes in SENSITIVITY:
        changed_gpu = dataclasses.replace(gpu, **{k[4:]: v for k, v in changes.items() if k.startswith("gpu_")})
        changed = dataclasses.replace(a, **{k: v for k, v in changes.items() if not k.startswith("gpu_")})
        cells = []
        for mode, dtype, hidden, batch in (("infer", "bfloat16", 512, 8), ("train", "bfloat16", 512, 8),
                                           ("infer", "float32", 1024, 32), ("train", "float32", 1024, 32)):
            p = predict(batch, hidden, dtype, mode, seq_len, changed_gpu, changed)
            cells.append(f"{p.ratio('persistent', 'alternating'):.2f} / {p.ratio('persistent', 'cudnn'):.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")

    lines += ["Shared memory: the largest H whose W_hh slices fit (one block per SM, "
              f"{a.persistent_staging_kib} KiB staging): float32 {largest_hidden_that_fits('float32', gpu, a)}, "
              f"bfloat16 {largest_hidden_that_fits('bfloat16', gpu, a)}.", ""]

    lines += ["Calibration against FlashRNN's H100 figures (B = 16, T = 1024, H = 768; ms per call):", "",
              "| what | measured (FlashRNN paper) | this model |", "|---|---|---|"]
    for label, measured, path, dtype, mode in CALIBRATION:
        predicted = predict(16, 768, dtype, mode, 1024, gpu, a).us_per_step[path] * 1024 / 1000
        lines.append(f"| {label} | {measured:.1f} | {predicted:.1f} |")
    return "\n".join(lines)


# (label, FlashRNN's ms for B=16, T=1024, H=768 on H100, path, dtype, mode). FlashRNN's alternating CUDA
# kernels and Haste are the alternating algorithm (cuBLAS GEMM + pointwise kernel per step); nn.LSTM is cuDNN.
CALIBRATION = (
    ("alternating (FlashRNN cuda), bfloat16, forward", 10.8, "alternating", "bfloat16", "infer"),
    ("alternating (FlashRNN cuda), bfloat16, forward + backward", 26.5, "alternating", "bfloat16", "train"),
    ("nn.LSTM (cuDNN), bfloat16, forward", 2.0, "cudnn", "bfloat16", "infer"),
    ("nn.LSTM (cuDNN), bfloat16, forward + backward", 5.2, "cudnn", "bfloat16", "train"),
    ("Haste (alternating), float32, forward", 18.4, "alternating", "float32", "infer"),
    ("Haste (alternating), float32, forward + backward", 43.9, "alternating", "float32", "train"),
)


# (label, changes): Assumptions fields, or Gpu fields prefixed with "gpu_".
SENSITIVITY = (
    ("as above", {}),
    ("grid barrier 0.5 us (instead of 1.0)", {"grid_barrier_us": 0.5}),
    ("grid barrier 2.0 us", {"grid_barrier_us": 2.0}),
    ("grid barrier 3.0 us", {"grid_barrier_us": 3.0}),
    ("host 5.25 us per alternating step (half)", {"host_gemm_call_us": 3.25, "host_pointwise_call_us": 2.0}),
    ("L2 bandwidth 8 TB/s (instead of 5.5)", {"gpu_l2_tbs": 8.0}),
    ("L2 bandwidth 3.5 TB/s", {"gpu_l2_tbs": 3.5}),
    ("no bf16 conversion cost in the persistent product", {"bf16_conversion_ops_per_element": 0.0}),
)


def readme_block(text: str) -> str:
    """The generated part of README.md's cost-model section (between its two markers)."""
    match = re.search(re.escape(BLOCK_BEGIN) + r"\n(.*?)" + re.escape(BLOCK_END), text, re.S)
    if not match:
        raise ValueError(f"README.md has no block between {BLOCK_BEGIN!r} and {BLOCK_END!r}")
    return match.group(1).removesuffix("\n")


def write_readme(generated: str, path: Path = README) -> None:
    text = path.read_text()
    readme_block(text)  # raises when the markers are missing
    start = text.index(BLOCK_BEGIN) + len(BLOCK_BEGIN) + 1
    end = text.index(BLOCK_END)
    path.write_text(text[:start] + generated + "\n" + text[end:])


def _override(a: Assumptions, gpu: Gpu, setting: str) -> tuple[Assumptions, Gpu]:
    name, equals, value = setting.partition("=")
    for target in (a, gpu):
        fields = {f.name: f for f in dataclasses.fields(target)}
        if equals and name in fields:
            kind = type(getattr(target, name))
            if kind is bool:
                if value.lower() not in ("0", "1", "true", "false"):
                    raise ValueError(f"--set {name} takes 0, 1, true or false; got {value!r}")
                parsed = value.lower() in ("1", "true")
            else:
                parsed = kind(value)
            replaced = dataclasses.replace(target, **{name: parsed})
            return (replaced, gpu) if target is a else (a, replaced)
    names = sorted(f.name for f in dataclasses.fields(a)) + sorted(f.name for f in dataclasses.fields(gpu))
    raise ValueError(f"--set takes NAME=VALUE with NAME one of {', '.join(names)}; got {setting!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The persistent kernel's cost model (a prediction): tables in "
                                                 "markdown, as in benchmarks/README.md.")
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    parser.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a constant of Assumptions or Gpu, e.g. grid_barrier_us=2")
    parser.add_argument("--json", action="store_true", help="the grid's predictions as JSON instead")
    parser.add_argument("--write-readme", action="store_true",
                        help="replace the generated block of benchmarks/README.md with this output")
    args = parser.parse_args(argv)
    a, gpu = Assumptions(), GPUS[args.gpu]
    try:
        for setting in args.set:
            a, gpu = _override(a, gpu, setting)
    except ValueError as error:
        parser.error(str(error))
    if args.json:
        rows = [{"batch": p.batch, "hidden": p.hidden, "dtype": p.dtype, "mode": p.mode, "seq_len": p.seq_len,
                 "us_per_step": p.us_per_step, "persistent_over_alternating": p.ratio("persistent", "alternating"),
                 "persistent_over_cudnn": p.ratio("persistent", "cudnn")} for p in grid(args.seq_len, gpu, a)]
        print(json.dumps({"gpu": gpu.name, "assumptions": dataclasses.asdict(a), "points": rows}, indent=2))
        return 0
    text = markdown(args.seq_len, gpu, a)
    if args.write_readme:
        write_readme(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
