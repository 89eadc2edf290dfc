"""LSTMFunction: the differentiable entry over the ops, one layer and one direction.

The same setup_context/backward pair is also registered as the autograd formula of the op
torch.ops.lstm_ext.lstm_layer_forward, so the op is differentiable when called directly and
torch.library.opcheck finds it registered; there is one backward, not two.
"""

from __future__ import annotations

import torch

from . import _ops, composite


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


def _setup_context(ctx, inputs, output):
    input, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, h0, c0, reverse, training = inputs
    layer_output, _h_n, _c_n, gates, cells, unprojected = output
    ctx.mark_non_differentiable(gates, cells, unprojected)
    ctx.set_materialize_grads(False)  # absent grads stay None: no [T, B, 4H] of zeros for gates
    ctx.reverse = reverse
    ctx.training = training
    ctx.has_bias = bias_ih is not None
    ctx.save_for_backward(input, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, h0, c0, layer_output,
                          gates, cells, unprojected)


def _backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_gates, _grad_cells, _grad_unprojected):
    if not ctx.training:
        raise RuntimeError(
            "lstm_ext: backward through lstm_layer_forward called with training=False, which keeps "
            "nothing for the backward; call it with training=True (LSTMFunction does). A model recorded "
            "by torch.export or torch.jit.trace in eval() mode runs this inference op: record it in "
            "train() mode (dropout 0 for eval numbers) to differentiate it"
        )
    (input, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, h0, c0, layer_output, gates, cells,
     unprojected) = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph: the gradients must be differentiable themselves
        return _differentiable_backward(ctx, (input, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                                              h0, c0), (grad_output, grad_h_n, grad_c_n))
    if grad_output is None:
        grad_output = torch.zeros_like(layer_output)
    if grad_h_n is None:
        grad_h_n = torch.zeros_like(h0)
    if grad_c_n is None:
        grad_c_n = torch.zeros_like(c0)
    args = (grad_output, grad_h_n, grad_c_n, input, batch_sizes, weight_ih, weight_hh, weight_hr, h0, c0, layer_output,
            gates, cells, unprojected, ctx.reverse, ctx.has_bias, ctx.needs_input_grad[0])
    grads = _call_below_autograd(_ops.lstm_layer_backward, args)
    grad_input, grad_weight_ih, grad_weight_hh, grad_bias, grad_weight_hr, grad_h0, grad_c0 = grads
    grad_bias_ih = grad_bias if ctx.has_bias and ctx.needs_input_grad[4] else None
    grad_bias_hh = grad_bias if ctx.has_bias and ctx.needs_input_grad[5] else None
    grad_weight_hr = grad_weight_hr if weight_hr is not None else None
    return (grad_input, None, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh, grad_weight_hr, grad_h0,
            grad_c0, None, None)


def _differentiable_backward(ctx, inputs, grads):
    """The gradients as a graph of their own (create_graph=True): the layer recomputed in differentiable ops
    (composite.layer), then autograd through it. The first-order backward keeps the fused op."""
    needs = [ctx.needs_input_grad[i] for i in range(len(inputs))]
    if not any(needs):
        return (None,) * (len(inputs) + 2)
    with torch.enable_grad():
        # Differentiated at aliases of the inputs made here: through the inputs themselves the gradient would
        # also take every path that joins them upstream (h0 computed from the same weights, hx = (s, s)).
        # Through the aliases, the second derivative still reaches the inputs.
        inputs = [t.view_as(t) if need else t for t, need in zip(inputs, needs)]
        wanted = [t for t, need in zip(inputs, needs) if need]
        outputs = composite.layer(*inputs, ctx.reverse)
        present = [(o, g) for o, g in zip(outputs, grads) if g is not None]
        computed = iter(torch.autograd.grad([o for o, _ in present], wanted, [g for _, g in present],
                                            create_graph=True, allow_unused=True))
    return tuple(next(computed) if need else None for need in needs) + (None, None)


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
    reverse, training)`` with input ``[T, B, I]`` (time-major; ``batch_sizes`` None) or the packed rows
    ``[N, I]`` of a PackedSequence with its ``batch_sizes``, weights as in ``nn.LSTM`` (``[4H, I]``,
    ``[4H, P]``, biases ``[4H]`` or both ``None``, ``weight_hr`` ``[P, H]`` or ``None`` for P = H),
    ``h0`` ``[B, P]``, ``c0`` ``[B, H]``, returns
    ``(output [T, B, P] or [N, P], h_n [B, P], c_n [B, H], gates, cells, unprojected)``: h_n and c_n are
    each sequence's last state. ``gates``, ``cells`` and ``unprojected`` are the
    activations kept for the backward (non-differentiable; empty when ``training`` is False, and then
    no backward is possible). ``reverse=True`` runs the sequence last step first, as the backward
    direction of a bidirectional LSTM does.
    """

    # forward(ctx, ...) with the context set up inside, not a separate setup_context: Function.apply binds
    # the arguments with inspect.signature on every call when setup_context is defined (~35 us, as much as
    # a small layer's whole forward).
    @staticmethod
    def forward(ctx, input, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, h0, c0, reverse,
                training):
        inputs = (input, batch_sizes, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, h0, c0, reverse, training)
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
