"""LSTMFunction: the differentiable entry over the ops, one layer and one direction.

The same setup_context/backward pair is also registered as the autograd formula of the op
torch.ops.lstm_ext.lstm_layer_forward, so the op is differentiable when called directly and
torch.library.opcheck finds it registered; there is one backward, not two. Arguments and results are
handled by name through the ops' own descriptions (_ops.ForwardArgs, _ops.BackwardArgs ...).
"""

from __future__ import annotations

import torch

from . import _ops, composite
from ._ops import BackwardArgs, BackwardResults, ForwardArgs, ForwardResults


def _call_below_autograd(op, args):
    """op(*args) from inside an autograd formula, where gradients are already taken care of. Eager calls
    skip the op's own autograd kernel (a Python round trip of ~25 us that only redispatches when grad mode
    is off); under torch.compile the plain call is traced."""
    if torch.compiler.is_compiling():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


_AUTOCAST_KEYS = (torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)
                  | torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCUDA))
_NON_DIFFERENTIABLE = [i for i, name in enumerate(ForwardResults._fields) if name not in _ops.DIFFERENTIABLE_RESULTS]
# Each forward argument's default (None where it has none), and where its gradient is among the backward's results.
_ARGUMENT_DEFAULTS = [ForwardArgs._field_defaults.get(name) for name in ForwardArgs._fields]
_GRAD_POSITION = [BackwardResults._fields.index(_ops.GRAD_OF[name]) if name in _ops.GRAD_OF else None
                  for name in ForwardArgs._fields]
assert BackwardArgs._fields[:4] == ("grad_output", "grad_h_n", "grad_c_n", "grad_cells")
assert BackwardArgs._fields[4:-1] == ForwardArgs._fields + ForwardResults._fields


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(*[output[i] for i in _NON_DIFFERENTIABLE])
    ctx.set_materialize_grads(False)  # absent grads stay None: no [T, B, 4H] of zeros for gates
    # The arguments with their tensors taken out (saved for the backward instead), and where those were.
    ctx.tensor_positions = [i for i, value in enumerate(inputs) if isinstance(value, torch.Tensor)]
    ctx.arguments = [None if isinstance(value, torch.Tensor) else value for value in inputs]
    ctx.save_for_backward(*[inputs[i] for i in ctx.tensor_positions], *output)


def _saved(ctx):
    """The forward's arguments (all of them, defaults for those it was not given) and results, as the
    context kept them."""
    saved = ctx.saved_tensors
    values = ctx.arguments + _ARGUMENT_DEFAULTS[len(ctx.arguments):]
    for i, tensor in zip(ctx.tensor_positions, saved):
        values[i] = tensor
    return ForwardArgs._make(values), ForwardResults._make(saved[len(ctx.tensor_positions):])


def _backward(ctx, *grads):
    grads = ForwardResults._make(grads)
    args, results = _saved(ctx)
    if not args.training:
        raise RuntimeError(
            "lstm_ext: backward through lstm_layer_forward called with training=False, which keeps "
            "nothing for the backward; call it with training=True (LSTMFunction does). A model recorded "
            "by torch.export or torch.jit.trace in eval() mode runs this inference op: record it in "
            "train() mode (dropout 0 for eval numbers) to differentiate it"
        )
    if torch.is_grad_enabled():  # create_graph: the gradients must be differentiable themselves
        return _differentiable_backward(ctx, args, grads)
    grad_output = grads.output if grads.output is not None else torch.zeros_like(results.output)
    grad_h_n = grads.h_n if grads.h_n is not None else torch.zeros_like(args.h0)
    grad_c_n = grads.c_n if grads.c_n is not None else torch.zeros_like(args.c0)
    computed = _call_below_autograd(_ops.lstm_layer_backward, (grad_output, grad_h_n, grad_c_n, grads.cells, *args,
                                                               *results, ctx.needs_input_grad[0]))
    # One gradient per argument the forward was given (LSTMFunction.apply may leave the variants' out).
    return tuple(computed[grad] if grad is not None and needed and args[i] is not None else None
                 for i, (grad, needed) in enumerate(zip(_GRAD_POSITION, ctx.needs_input_grad)))


def _differentiable_backward(ctx, args, grads):
    """The gradients as a graph of their own (create_graph=True): the layer recomputed in differentiable ops
    (composite.layer), then autograd through it. The first-order backward keeps the fused op."""
    given = len(ctx.needs_input_grad)  # the arguments the forward was given, the variants' maybe not
    needs = [i < given and ctx.needs_input_grad[i] and isinstance(value, torch.Tensor) for i, value in enumerate(args)]
    if not any(needs):
        return (None,) * given
    with torch.enable_grad():
        # Differentiated at aliases of the inputs made here: through the inputs themselves the gradient would
        # also take every path that joins them upstream (h0 computed from the same weights, hx = (s, s)).
        # Through the aliases, the second derivative still reaches the inputs.
        inputs = [t.view_as(t) if need else t for t, need in zip(args, needs)]
        wanted = [t for t, need in zip(inputs, needs) if need]
        outputs = composite.layer(*inputs)  # (output, h_n, c_n, cells): _ops.DIFFERENTIABLE_RESULTS
        present = [(o, getattr(grads, name)) for o, name in zip(outputs, _ops.DIFFERENTIABLE_RESULTS)
                   if getattr(grads, name) is not None]
        computed = iter(torch.autograd.grad([o for o, _ in present], wanted, [g for _, g in present],
                                            create_graph=True, allow_unused=True))
    return tuple(next(computed) if need else None for need in needs)[:given]


def _backward_op_not_differentiable(ctx, *grads):
    raise RuntimeError(
        "lstm_ext: lstm_layer_backward is not differentiable itself; for second derivatives differentiate "
        "through lstm_layer_forward (or LSTMFunction), whose backward under create_graph=True is differentiable"
    )


def _setup_nothing(ctx, inputs, output):
    pass


torch.library.register_autograd("lstm_ext::lstm_layer_forward", _backward, setup_context=_setup_context)
torch.library.register_autograd(
    "lstm_ext::lstm_layer_backward", _backward_op_not_differentiable, setup_context=_setup_nothing
)


class LSTMFunction(torch.autograd.Function):
    """One LSTM layer in one direction over a whole sequence, differentiable, on the fused ops.

    ``LSTMFunction.apply(input, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, h0, c0,
    reverse, training, weight_peephole=None, layer_norm_weight_ih=None, layer_norm_weight_hh=None,
    layer_norm_weight_c=None, layer_norm_bias_c=None, recurrent_mask=None, zoneout_cell_mask=None,
    zoneout_hidden_mask=None, zoneout_cell=0.0, zoneout_hidden=0.0)``

    with input ``[T, B, I]`` (time-major; ``batch_sizes`` None) or the packed rows ``[N, I]`` of a
    PackedSequence with its ``batch_sizes``, weights as in ``nn.LSTM`` (``[4H, I]``, ``[4H, P]``, biases
    ``[4H]`` or both ``None``, ``weight_hr`` ``[P, H]`` or ``None`` for P = H), ``h0`` ``[B, P]``, ``c0``
    ``[B, H]``. The cell's variants (README, "Variants"): ``weight_peephole`` ``[3H]`` (i, f, o); the four
    layer-norm parameters ``[4H]``, ``[4H]``, ``[H]``, ``[H]`` (all or none); ``recurrent_mask`` ``[B, P]``
    multiplying h_{t-1} in the recurrent product; zoneout masks laid out like ``output`` with H features (1
    keeps the previous value), or the rates used where a mask is absent.

    Returns ``(output [T, B, P] or [N, P], h_n [B, P], c_n [B, H], gates, cells, normalized, row_stats,
    unprojected)``: h_n and c_n are each sequence's last state; ``cells`` every step's c_t (differentiable);
    the others are the activations kept for the backward (non-differentiable; empty when ``training`` is
    False, and then no backward is possible). ``reverse=True`` runs the sequence last step first, as the
    backward direction of a bidirectional LSTM does.
    """

    # forward(ctx, ...) with the context set up inside, not a separate setup_context: Function.apply binds
    # the arguments with inspect.signature on every call when setup_context is defined (~35 us, as much as
    # a small layer's whole forward).
    @staticmethod
    def forward(ctx, input, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, h0, c0, reverse,
                training, weight_peephole=None, layer_norm_weight_ih=None, layer_norm_weight_hh=None,
                layer_norm_weight_c=None, layer_norm_bias_c=None, recurrent_mask=None, zoneout_cell_mask=None,
                zoneout_hidden_mask=None, zoneout_cell=0.0, zoneout_hidden=0.0):
        inputs = (input, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, h0, c0, reverse, training,
                  weight_peephole, layer_norm_weight_ih, layer_norm_weight_hh, layer_norm_weight_c, layer_norm_bias_c,
                  recurrent_mask, zoneout_cell_mask, zoneout_hidden_mask, zoneout_cell, zoneout_hidden)
        inputs = _ops.without_variants(inputs)  # the op fills in its defaults faster than Python passes them
        if torch._C._is_any_autocast_enabled():
            # The op's autocast kernel would cast what the context saves uncast: the Function runs in the
            # inputs' dtypes (the module routes autocast through the op itself).
            with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_KEYS):
                output = _call_below_autograd(_ops.lstm_layer_forward, inputs)
        else:
            output = _call_below_autograd(_ops.lstm_layer_forward, inputs)
        _setup_context(ctx, inputs, output)
        return output

    backward = staticmethod(_backward)
