"""The compiled ops (torch.ops.lstm_ext.*), their argument descriptions and their fake kernels, so that
FakeTensor tracing (torch.compile, torch.export) knows their output shapes without running them.

The ops' arguments are described once, in C++ (csrc/layer_op_args.h); here they are read back from the
registered schemas as named tuples (ForwardArgs, ForwardResults, BackwardArgs, BackwardResults), which the
fake kernels, autograd and the tests use instead of spelling the arguments out again.
"""

from __future__ import annotations

from collections import namedtuple

import torch

from . import _library

_C = _library.load()

# The overloads themselves: calling the packet resolves the overload on every call, a microsecond and more.
lstm_layer_forward = torch.ops.lstm_ext.lstm_layer_forward.default
lstm_layer_backward = torch.ops.lstm_ext.lstm_layer_backward.default
_bernoulli_mask = torch.ops.lstm_ext.bernoulli_mask.default


def _arguments_tuple(name: str, schema) -> type:
    defaults = [a.default_value for a in schema.arguments if a.has_default_value()]
    return namedtuple(name, [a.name for a in schema.arguments], defaults=defaults)


def _returns_tuple(name: str, schema) -> type:
    return namedtuple(name, [r.name for r in schema.returns])


ForwardArgs = _arguments_tuple("ForwardArgs", lstm_layer_forward._schema)
ForwardResults = _returns_tuple("ForwardResults", lstm_layer_forward._schema)
BackwardArgs = _arguments_tuple("BackwardArgs", lstm_layer_backward._schema)
BackwardResults = _returns_tuple("BackwardResults", lstm_layer_backward._schema)
# The forward's tensor arguments that have a gradient, and its name among the backward's results (the two
# biases share grad_bias). The masks and batch_sizes have none.
GRAD_OF = {"input": "grad_input", "weight_ih": "grad_weight_ih", "weight_hh": "grad_weight_hh",
           "bias_ih": "grad_bias", "bias_hh": "grad_bias", "weight_hr": "grad_weight_hr", "h0": "grad_h0",
           "c0": "grad_c0", **{name: "grad_" + name for name in ForwardArgs._fields
                               if name.startswith(("weight_peephole", "layer_norm_"))}}
# The forward's results that are differentiable: output, h_n, c_n and the cell states.
DIFFERENTIABLE_RESULTS = ("output", "h_n", "c_n", "cells")
# The forward's leading arguments without a default: nn.LSTM's cell's. A call without the variants passes
# only these, and the op fills in the rest (faster than passing them from Python).
PLAIN_ARGS = sum(1 for a in lstm_layer_forward._schema.arguments if not a.has_default_value())
assert all(a.has_default_value() and a.default_value in (None, 0.0)
           for a in lstm_layer_forward._schema.arguments[PLAIN_ARGS:])


def without_variants(args: tuple) -> tuple:
    """The forward's arguments, cut to the first PLAIN_ARGS where every later one has its default (None, or
    a rate of 0): what the op is given for nn.LSTM's cell."""
    if all(v is None or (type(v) is float and v == 0.0) for v in args[PLAIN_ARGS:]):
        return args[:PLAIN_ARGS]
    return args


def compiled_backends() -> tuple[str, ...]:
    """The devices lstm_ext was compiled for: ("cpu",) or ("cpu", "cuda")."""
    return ("cpu", "cuda") if _C.WITH_CUDA else ("cpu",)


def cpu_kernels() -> str:
    """The instruction-set build of the CPU kernels this process runs: "avx512", "avx2" or "baseline".
    lstm_ext follows ATen's choice (``torch.backends.cpu.get_cpu_capability()``), so the environment
    variable ATEN_CPU_CAPABILITY (set before torch is imported) caps both."""
    return _C.CPU_KERNELS


def cuda_recurrence() -> str:
    """Which time loop lstm_ext's CUDA passes run, as $LSTM_EXT_CUDA_RECURRENCE selects it now (it is read
    at every call): "auto" (also when unset or empty: the persistent kernels where they run the pass and
    fit, else the alternating loop), "persistent" (those kernels or a RuntimeError that says why not) or
    "alternating" (a GEMM and a pointwise kernel per step). Another value raises RuntimeError. The parser
    is the CUDA backend's own."""
    return torch.ops.lstm_ext_testing.cuda_recurrence()


def empty_cache() -> None:
    """Returns the CPU buffers lstm_ext keeps for reuse to the system (as ``torch.cuda.empty_cache()``
    does for CUDA's). Buffers of 32 MiB and more (a long sequence's gates, cells, outputs and their
    gradients) are kept when freed, up to 1 GiB, so that the next call finds them already in memory."""
    _C.empty_cpu_cache()


def cpu_cache_bytes() -> int:
    """Bytes of freed CPU buffers lstm_ext keeps for reuse (see empty_cache)."""
    return _C.cpu_cache_bytes()


@torch.library.register_fake("lstm_ext::lstm_layer_forward")
def _lstm_layer_forward_fake(*args, **kwargs):
    a = ForwardArgs(*args, **kwargs)
    expected_dim = 3 if a.batch_sizes is None else 2
    torch._check(a.input.dim() == expected_dim,
                 lambda: f"lstm_layer_forward: input must be {expected_dim}-D, got {a.input.dim()}-D")
    hidden = a.c0.shape[1]
    per_step = a.input.shape[:-1]  # (T, B) padded, (N,) packed
    layer_norm = a.layer_norm_weight_hh is not None

    def kept(shape, keep=True):  # an empty [0] of its own where nothing is kept
        return a.input.new_empty(shape) if a.training and keep else a.input.new_empty((0,))

    return tuple(ForwardResults(
        output=a.input.new_empty((*per_step, a.h0.shape[1])),
        h_n=a.h0.new_empty(a.h0.shape),
        c_n=a.c0.new_empty(a.c0.shape),
        unprojected=kept((*per_step, hidden), a.weight_hr is not None),
        gates=kept((*per_step, 4 * hidden)),
        cells=kept((*per_step, hidden)),
        normalized=kept((2, *per_step, 4 * hidden), layer_norm),
        row_stats=kept((*per_step, 4), layer_norm),
    ))


@torch.library.register_fake("lstm_ext::lstm_layer_backward")
def _lstm_layer_backward_fake(*args, **kwargs):
    a = BackwardArgs(*args, **kwargs)

    def like(t, present=True):
        return torch.empty_like(t, memory_format=torch.contiguous_format) if present and t is not None \
            else a.input.new_empty((0,))

    hidden = a.c0.shape[1]
    return tuple(BackwardResults(
        grad_input=like(a.input, a.need_grad_input),
        grad_weight_ih=like(a.weight_ih),
        grad_weight_hh=like(a.weight_hh),
        grad_bias=a.input.new_empty((4 * hidden,)) if a.bias_ih is not None else a.input.new_empty((0,)),
        grad_weight_hr=like(a.weight_hr),
        grad_h0=like(a.h0),
        grad_c0=like(a.c0),
        grad_weight_peephole=like(a.weight_peephole),
        grad_layer_norm_weight_ih=like(a.layer_norm_weight_ih),
        grad_layer_norm_weight_hh=like(a.layer_norm_weight_hh),
        grad_layer_norm_weight_c=like(a.layer_norm_weight_c),
        grad_layer_norm_bias_c=like(a.layer_norm_bias_c),
    ))


@torch.library.register_fake("lstm_ext::bernoulli_mask")
def _bernoulli_mask_fake(seed, size, p, dtype):
    return torch.empty(size, dtype=dtype)


def bernoulli_mask(size, p: float, *, dtype: torch.dtype, device) -> torch.Tensor:
    """A mask of 1 with probability ``p`` and 0 otherwise, drawn from torch's default generator of the
    device. On the CPU one value of the generator seeds lstm_ext's counter-based draw
    (csrc/cpu/bernoulli_mask.cpp), several times faster than ``bernoulli_``'s; elsewhere ``bernoulli_``."""
    device = torch.device(device)
    if device.type != "cpu":
        return torch.empty(size, dtype=dtype, device=device).bernoulli_(p)
    seed = torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64)  # not random_(): torch.compile traces randint
    return _bernoulli_mask(seed, list(size), p, dtype)
