"""The compiled ops (torch.ops.lstm_ext.*) and their fake kernels, so that FakeTensor tracing
(torch.compile, torch.export) knows their output shapes without running them."""

from __future__ import annotations

import torch

from . import _library

_C = _library.load()

# The overloads themselves: calling the packet resolves the overload on every call, a microsecond and more.
lstm_layer_forward = torch.ops.lstm_ext.lstm_layer_forward.default
lstm_layer_backward = torch.ops.lstm_ext.lstm_layer_backward.default


def compiled_backends() -> tuple[str, ...]:
    """The devices lstm_ext was compiled for: ("cpu",) or ("cpu", "cuda")."""
    return ("cpu", "cuda") if _C.WITH_CUDA else ("cpu",)


def cpu_kernels() -> str:
    """The instruction-set build of the CPU kernels this process runs: "avx512", "avx2" or "baseline".
    lstm_ext follows ATen's choice (``torch.backends.cpu.get_cpu_capability()``), so the environment
    variable ATEN_CPU_CAPABILITY (set before torch is imported) caps both."""
    return _C.CPU_KERNELS


def empty_cache() -> None:
    """Returns the CPU buffers lstm_ext keeps for reuse to the system (as ``torch.cuda.empty_cache()``
    does for CUDA's). Buffers of 32 MiB and more (a long sequence's gates, cells, outputs and their
    gradients) are kept when freed, up to 1 GiB, so that the next call finds them already in memory."""
    _C.empty_cpu_cache()


def cpu_cache_bytes() -> int:
    """Bytes of freed CPU buffers lstm_ext keeps for reuse (see empty_cache)."""
    return _C.cpu_cache_bytes()


@torch.library.register_fake("lstm_ext::lstm_layer_forward")
def _lstm_layer_forward_fake(input, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, h0, c0, reverse,
                             training):
    expected_dim = 3 if batch_sizes is None else 2
    torch._check(input.dim() == expected_dim,
                 lambda: f"lstm_layer_forward: input must be {expected_dim}-D, got {input.dim()}-D")
    hidden = c0.shape[1]
    per_step = input.shape[:-1]  # (T, B) padded, (N,) packed
    output = input.new_empty((*per_step, h0.shape[1]))
    h_n = h0.new_empty(h0.shape)
    c_n = c0.new_empty(c0.shape)
    nothing = input.new_empty((0,))
    gates = input.new_empty((*per_step, 4 * hidden)) if training else nothing
    cells = input.new_empty((*per_step, hidden)) if training else nothing.clone()
    unprojected = input.new_empty((*per_step, hidden)) if training and weight_hr is not None else nothing.clone()
    return output, h_n, c_n, gates, cells, unprojected


@torch.library.register_fake("lstm_ext::lstm_layer_backward")
def _lstm_layer_backward_fake(grad_output, grad_h_n, grad_c_n, input, batch_sizes, weight_ih, weight_hh, weight_hr,
                              h0, c0, output, gates, cells, unprojected, reverse, has_bias, need_grad_input):
    hidden = c0.shape[1]
    grad_bias = input.new_empty((4 * hidden,)) if has_bias else input.new_empty((0,))
    grad_weight_hr = input.new_empty((0,)) if weight_hr is None else torch.empty_like(
        weight_hr, memory_format=torch.contiguous_format)
    return (
        torch.empty_like(input, memory_format=torch.contiguous_format) if need_grad_input else input.new_empty((0,)),
        torch.empty_like(weight_ih, memory_format=torch.contiguous_format),
        torch.empty_like(weight_hh, memory_format=torch.contiguous_format),
        grad_bias,
        grad_weight_hr,
        torch.empty_like(h0, memory_format=torch.contiguous_format),
        torch.empty_like(c0, memory_format=torch.contiguous_format),
    )
