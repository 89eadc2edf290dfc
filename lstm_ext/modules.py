"""LSTM and LSTMCell: drop-ins for torch.nn.LSTM and torch.nn.LSTMCell on the fused ops.

The constructor takes nn.LSTM's arguments, validates them with nn.LSTM's errors, registers the same
parameters (names, shapes, order) and initialises them the same way from the same random stream, so
``torch.manual_seed(s); lstm_ext.LSTM(...)`` holds the very weights ``nn.LSTM(...)`` would, and state
dicts load both ways. It is deliberately not a subclass of nn.LSTM: torch.compile breaks the graph on
every nn.RNNBase, and this module compiles whole.

Beyond the forward, the modules carry nn.LSTM's (nn.RNNBase's) and nn.LSTMCell's attribute surface
(``mode``, ``all_weights``, ``check_forward_args``, ``flatten_parameters`` ...), raise nn's errors in nn's
order, and work under the tools that special-case torch.nn:

* torch.fx.symbolic_trace keeps each as one ``call_module`` node, as it does torch.nn's own modules
  (``_fx_leaf_call``);
* torch.jit.script compiles them into torch.nn.LSTM's / nn.LSTMCell's TorchScript code (``torch._VF.lstm``,
  on the same parameters), with a warning: TorchScript cannot call lstm_ext's Python layer composition,
  and torch.export keeps lstm_ext's fused kernels (``__prepare_scriptable__``).
"""

import inspect
import math
import numbers
import warnings
import weakref
from typing import Optional, Tuple  # TorchScript reads these in the scripted signatures

import torch
from torch import Tensor, _VF, nn
from torch._jit_internal import _overload_method
from torch.fx import Proxy
from torch.jit import is_scripting as _is_scripting
from torch.nn.utils.rnn import PackedSequence

from .functional import VariantMasks, lstm, lstm_cell, onnx_export, sample_masks

_SCRIPT_WARNING = (
    "torch.jit.script: {name} runs torch.nn.{name}'s TorchScript implementation (torch._VF.{op}) on the same "
    "parameters, not lstm_ext's kernels, which TorchScript cannot call; torch.export (torch.export.export) "
    "keeps lstm_ext's fused kernels"
)


def _keyword_only_for_torchscript(torchscript_forward):
    """Gives TorchScript ``torchscript_forward``'s source to compile in place of the decorated forward's.

    TorchScript compiles a method from its source and cannot compile a keyword-only argument with a default
    (``return_cell_states``); its compiled form is nn.LSTM's forward anyway, which has none. It reads the
    source through ``__wrapped__`` (inspect.getsourcelines unwraps), and the forward's own signature stays
    what inspect.signature, help() and torch.export see (``__signature__``, where inspect stops unwrapping)."""
    def decorate(forward):
        forward.__signature__ = inspect.signature(forward)
        forward.__wrapped__ = torchscript_forward
        return forward
    return decorate


class LSTM(nn.Module):
    """A multi-layer LSTM with ``torch.nn.LSTM``'s arguments, parameters and results, and the variants.

    See ``torch.nn.LSTM`` for the arguments; every one of them has the same meaning here. The attributes
    and helper methods nn.LSTM inherits from nn.RNNBase are here too, with nn.LSTM's values; where
    nn.LSTM keeps a cache of its weights (``_flat_weights``, ``_flat_weight_refs``), this module looks
    them up at every use instead, so the cache's maintenance methods are no-ops (see
    ``_init_flat_weights``).

    The keyword-only variants, all off by default (then the module is nn.LSTM's, bit for bit):

    * ``forget_bias`` (float): added to the forget-gate quarter ``bias_ih_l{k}[H:2H]`` of every layer and
      direction by reset_parameters (an initialisation only; requires bias=True);
    * ``recurrent_dropout`` (p in [0, 1)): in training, one mask ~ Bernoulli(1-p)/(1-p) per layer,
      direction and sequence, ``[B, P]``, on h_{t-1} where it enters the recurrence; nothing in eval;
    * ``zoneout`` (a rate or a pair (cell_rate, hidden_rate) in [0, 1]): in training each unit of c_t / h_t
      keeps its previous value with that probability, fresh masks every step; in eval the expectation;
      not with proj_size > 0;
    * ``layer_norm`` (bool): layer normalisation of the two gate products and of the cell before its tanh,
      with the parameters ``layer_norm_weight_ih_l{k}``, ``layer_norm_weight_hh_l{k}`` ([4H]),
      ``layer_norm_weight_c_l{k}``, ``layer_norm_bias_c_l{k}`` ([H]);
    * ``peephole`` (bool): the cell feeds the input, forget (c_{t-1}) and output (c_t) gates through
      ``weight_peephole_l{k}`` ([3H], blocks i, f, o).

    The variants' parameters are registered after all of nn.LSTM's (``_reverse`` suffix for the reverse
    direction), so nn.LSTM's keep nn's names, order and random initialisation stream. ``_flat_weights``,
    ``_flat_weights_names`` and ``all_weights`` keep nn.LSTM's surface: nn.LSTM's parameters only (tools
    that read them expect nn's layout); the variants' parameters are in ``parameters()`` and the state
    dict. ``forward(..., return_cell_states=True)`` also returns the last layer's cell state of every step.
    """

    __constants__ = ["mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                     "bidirectional", "proj_size"]
    # nn.RNNBase lists all_weights; the other properties are this module's lookups of what nn.LSTM stores.
    __jit_unused_properties__ = ["all_weights", "_all_weights", "_flat_weights", "_flat_weight_refs"]
    mode = "LSTM"  # nn.RNNBase's mode, which nn.LSTM sets to "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, forget_bias: float = 0.0,
                 recurrent_dropout: float = 0.0, zoneout=0.0, layer_norm: bool = False,
                 peephole: bool = False) -> None:
        super().__init__()
        _check_constructor_args(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size)
        _set_variants(self, bias, proj_size, forget_bias, recurrent_dropout, zoneout, layer_norm, peephole)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size

        factory_kwargs = {"device": device, "dtype": dtype}
        num_directions = 2 if bidirectional else 1
        real_hidden_size = proj_size if proj_size > 0 else hidden_size
        gate_size = 4 * hidden_size
        self._flat_weights_names: list[str] = []
        suffixes = [f"_l{layer}" + ("_reverse" if direction == 1 else "")
                    for layer in range(num_layers) for direction in range(num_directions)]
        for index, suffix in enumerate(suffixes):
            layer_input_size = input_size if index < num_directions else real_hidden_size * num_directions
            shapes = [("weight_ih", (gate_size, layer_input_size)), ("weight_hh", (gate_size, real_hidden_size))]
            if bias:
                shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
            if proj_size > 0:
                shapes += [("weight_hr", (proj_size, hidden_size))]
            for name, shape in shapes:
                setattr(self, name + suffix, nn.Parameter(torch.empty(shape, **factory_kwargs)))
                self._flat_weights_names.append(name + suffix)
        # The variants' parameters after all of nn.LSTM's: every peephole, then the layer norms' parameters.
        variant_shapes = []
        if peephole:
            variant_shapes.append([("weight_peephole", (3 * hidden_size,))])
        if layer_norm:
            variant_shapes.append([("layer_norm_weight_ih", (gate_size,)), ("layer_norm_weight_hh", (gate_size,)),
                                   ("layer_norm_weight_c", (hidden_size,)), ("layer_norm_bias_c", (hidden_size,))])
        variant_names: list[list[str]] = [[] for _ in suffixes]
        for shapes in variant_shapes:
            for index, suffix in enumerate(suffixes):
                for name, shape in shapes:
                    setattr(self, name + suffix, nn.Parameter(torch.empty(shape, **factory_kwargs)))
                    variant_names[index].append(name + suffix)
        # lstm()'s flat_weights: per layer and direction nn.LSTM's weights, then that direction's variants'.
        if variant_shapes:
            per_direction = len(self._flat_weights_names) // len(suffixes)
            self._lstm_weights_names = [name for index in range(len(suffixes)) for name in
                                        self._flat_weights_names[index * per_direction:(index + 1) * per_direction]
                                        + variant_names[index]]
        else:
            self._lstm_weights_names = self._flat_weights_names
        self.reset_parameters()

    def _variants_on(self) -> bool:
        """Whether forward passes anything beyond nn.LSTM's arguments (forget_bias is only an initialisation)."""
        zoneout = self.zoneout
        return (self.peephole or self.layer_norm or self.recurrent_dropout > 0
                or (any(zoneout) if isinstance(zoneout, tuple) else zoneout != 0))

    def _inexpressible_variants(self) -> list[str]:
        """The variants torch.nn.LSTM / LSTMCell (and their TorchScript and ONNX forms) do not compute, as
        ``name=value``; forget_bias is not one (it is an initialisation of nn's bias_ih)."""
        variants = []
        if self.peephole:
            variants.append("peephole=True")
        if self.layer_norm:
            variants.append("layer_norm=True")
        if self.recurrent_dropout > 0:
            variants.append(f"recurrent_dropout={self.recurrent_dropout}")
        if any(_zoneout_rates(self)):
            variants.append(f"zoneout={self.zoneout}")
        return variants

    def reset_parameters(self) -> None:
        """nn.LSTM's initialisation, U(-1/sqrt(H), 1/sqrt(H)) over nn.LSTM's parameters in nn's order, then
        over the peepholes in registration order; the layer norms' weights ones and biases zeros; then
        ``forget_bias`` added to the forget-gate quarter of every bias_ih."""
        _reset_parameters(self, [name for name in self._lstm_weights_names if name.startswith("bias_ih")])

    @property
    def _flat_weights(self) -> list[Tensor]:
        # Looked up by name at every use, so replaced parameters and torch.func.functional_call work: in
        # _parameters first (a dict lookup; getattr on a module costs a microsecond each), then as an
        # attribute (a parametrized weight is a property).
        params = self._parameters
        return [params[name] if name in params else getattr(self, name) for name in self._flat_weights_names]

    def _lstm_weights(self, flat_weights: list[Tensor]) -> list[Tensor]:
        """lstm()'s flat_weights: ``flat_weights`` (nn.LSTM's, looked up by forward) when there are no variant
        parameters, else per layer and direction nn's weights followed by that direction's variants'."""
        if self._lstm_weights_names is self._flat_weights_names:
            return flat_weights
        params = self._parameters
        return [params[name] if name in params else getattr(self, name) for name in self._lstm_weights_names]

    @property
    def _all_weights(self) -> list[list[str]]:
        """nn.RNNBase's list of the weight names of each layer and direction."""
        names = self._flat_weights_names
        per_direction = len(names) // (self.num_layers * (2 if self.bidirectional else 1))
        return [names[i:i + per_direction] for i in range(0, len(names), per_direction)]

    @property
    def all_weights(self) -> list[list[Tensor]]:
        per_direction = len(self._flat_weights_names) // (self.num_layers * (2 if self.bidirectional else 1))
        weights = self._flat_weights
        return [weights[i:i + per_direction] for i in range(0, len(weights), per_direction)]

    @property
    def _flat_weight_refs(self) -> list[weakref.ReferenceType]:
        """nn.RNNBase's weak references to the weights of its cache; here, to the current weights."""
        return [weakref.ref(w) for w in self._flat_weights]

    def flatten_parameters(self) -> None:
        """A no-op, there for code written for nn.LSTM (which calls it after ``.cuda()``, or to silence the
        "RNN module weights are not part of single contiguous chunk" warning): lstm_ext reads each weight
        where it is, so there is no flat cuDNN weight buffer to rebuild."""

    def _init_flat_weights(self) -> None:
        """nn.RNNBase rebuilds its cache of the weights (``_flat_weights``) here, then flattens them; this
        module has no cache (it looks the weights up at every use), so only the (no-op) flattening is left."""
        self.flatten_parameters()

    def _update_flat_weights(self) -> None:
        """nn.RNNBase refreshes its weight cache here when ``_weights_have_changed()``; no cache, no-op."""

    def _weights_have_changed(self) -> bool:
        """False: nn.RNNBase says whether its cached weights are stale (a weight replaced since the cache was
        built, as torch.func.functional_call does); this module's weights are looked up at every use, so
        they never are. (nn.LSTM says True from a replacement until its next forward; this says False.)"""
        return False

    # nn.RNNBase's and nn.LSTM's own helpers, the very functions, so that their checks, messages and results
    # are torch's: they read only the constructor's attributes and _flat_weights, which this module has.
    # forward does not call them (it checks the same things inline, in the same order, at less cost).
    check_input = nn.RNNBase.check_input
    get_expected_hidden_size = nn.RNNBase.get_expected_hidden_size
    check_hidden_size = nn.RNNBase.check_hidden_size
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        return s.format(**self.__dict__) + _variants_repr(self)

    # The signatures torch.jit.script compiles forward for (nn.LSTM's); eager calls take the last definition.
    @_overload_method
    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        pass

    @_overload_method
    def forward(self, input: PackedSequence, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[PackedSequence, Tuple[Tensor, Tensor]]:
        pass

    def _torchscript_forward(self, input, hx=None):
        """forward as TorchScript compiles it (nn.LSTM's; see _keyword_only_for_torchscript)."""
        if isinstance(input, PackedSequence):
            return self._scripted_forward_packed(input, hx)
        return self._scripted_forward(input, hx)

    @_keyword_only_for_torchscript(_torchscript_forward)
    def forward(self, input, hx=None, *, return_cell_states=False):
        """input: [T, B, I] ([B, T, I] when batch_first), [T, I] unbatched, or a PackedSequence; hx: None or
        (h_0, c_0). Returns (output, (h_n, c_n)), as nn.LSTM does; with ``return_cell_states``
        (output, (h_n, c_n), cell_states): the last layer's cell state of every step and direction, laid out
        like output (``[T, B, D*H]``, batch_first, unbatched, or a PackedSequence with output's batch sizes
        and indices); with zoneout the zoned-out cell.

        In training, the recurrent-dropout and zoneout masks are drawn by ``self.sample_masks(input)`` (when
        a rate is > 0) before the layers run; in eval zoneout takes its expectation and recurrent dropout
        does nothing."""
        if isinstance(input, Proxy):  # torch.fx.symbolic_trace
            return _fx_leaf_call(self, input, hx, {"return_cell_states": True} if return_cell_states else {})
        weights = self._flat_weights
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx, weights, return_cell_states)

        # nn.LSTM's checks in nn.LSTM's order: the input's dimensions, the states' dimensions, the input's
        # dtype and size, the states' sizes and structure, the states' devices, the weights' device.
        dim = input.dim()
        if dim != 3 and dim != 2:
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {dim}D instead")
        is_batched = dim == 3
        batch_dim = 0 if self.batch_first else 1
        if hx is not None:
            hx = self._batched_states(hx, is_batched)
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        weight = weights[0]
        self._check_input(input, weight)
        batch = input.size(batch_dim)
        if hx is None:
            hx = self._zero_state(batch, input)
        else:
            self._check_states(hx, batch, input, None, weights)
        if input.device != weight.device:
            _raise_parameter_device(input, weight)

        if return_cell_states or self._variants_on():
            result = lstm(input, hx, self._lstm_weights(weights), self.bias, self.num_layers, self.dropout,
                          self.training, self.bidirectional, self.batch_first,
                          **self._lstm_variant_args(input, return_cell_states))
        else:  # nn.LSTM's call
            result = lstm(input, hx, weights, self.bias, self.num_layers, self.dropout, self.training,
                          self.bidirectional, self.batch_first)
        output, (h_n, c_n) = result[0], result[1]
        if not is_batched:
            output = output.squeeze(batch_dim)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        if return_cell_states:
            cell_states = result[2] if is_batched else result[2].squeeze(batch_dim)
            return output, (h_n, c_n), cell_states
        return output, (h_n, c_n)

    def _lstm_variant_args(self, input, return_cell_states: bool) -> dict:
        """lstm()'s variant keywords for this module and call: none at all without variants (nn.LSTM's call);
        the masks drawn by sample_masks in training where a rate is > 0; in eval none (zoneout's rates are
        its expectation, recurrent dropout does nothing)."""
        if not self._variants_on():
            return {"return_cell_states": True} if return_cell_states else {}
        args = {"peephole": self.peephole, "layer_norm": self.layer_norm,
                "recurrent_dropout": self.recurrent_dropout, "zoneout": _zoneout_rates(self),
                "return_cell_states": return_cell_states}
        if self.training and (self.recurrent_dropout > 0 or any(_zoneout_rates(self))):
            masks = self.sample_masks(input)
            args["recurrent_dropout_masks"] = masks.recurrent_dropout_masks
            args["zoneout_masks"] = masks.zoneout_masks
        return args

    def sample_masks(self, input) -> VariantMasks:
        """Draws the recurrent-dropout and zoneout masks a training forward on ``input`` draws (with
        lstm_ext.functional.sample_masks), in the same order from torch's default generator (so
        ``torch.manual_seed(s); masks = lstm.sample_masks(x)`` are the masks of ``torch.manual_seed(s);
        lstm(x)``), as lstm_ext.VariantMasks for lstm_ext.lstm's
        ``recurrent_dropout_masks`` and ``zoneout_masks``: per layer and direction a recurrent mask ``[B, P]``
        (0 or 1/(1-p)), and a (cell, hidden) pair of zoneout masks (1 keeps the previous value), each laid out
        like that layer's rows: ``[T, B, H]`` (``[B, T, H]`` batch_first), ``[N, H]`` for a PackedSequence's
        data (rows and batch in the packed, length-sorted order). A 2-D (unbatched) input gets the masks of
        its batch of one. A field, or a mask of a pair, is None where its rate is 0.

        For tests and truncated backpropagation through time: pass the masks to lstm_ext.lstm with this
        module's weights to run a forward with them, or hold them over several calls."""
        config = (self.num_layers, self.bidirectional, self.batch_first, self.hidden_size, self.proj_size,
                  self.recurrent_dropout, self.zoneout)
        if isinstance(input, PackedSequence):
            # The batch from sorted_indices' length where there is one, as forward's (a read of batch_sizes
            # would break a compiled graph).
            sorted_indices = input.sorted_indices
            batch = sorted_indices.numel() if sorted_indices is not None else None
            return sample_masks(input.data, *config, batch_sizes=input.batch_sizes, batch=batch)
        if input.dim() == 2:  # unbatched: the masks of its batch of one
            input = input.unsqueeze(0 if self.batch_first else 1)
        return sample_masks(input, *config)

    def _batched_states(self, hx: Tuple[Tensor, Tensor], is_batched: bool) -> Tuple[Tensor, Tensor]:
        """nn.LSTM's check of the states' dimensions; unbatched states get their batch dimension. (Eager and
        TorchScript forward both call it.)"""
        if is_batched:
            if hx[0].dim() != 3 or hx[1].dim() != 3:
                raise RuntimeError(f"For batched 3-D input, hx and cx should also be 3-D but got "
                                   f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            return hx
        if hx[0].dim() != 2 or hx[1].dim() != 2:
            raise RuntimeError(f"For unbatched 2-D input, hx and cx should also be 2-D but got "
                               f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
        return hx[0].unsqueeze(1), hx[1].unsqueeze(1)

    def _forward_packed(self, packed: PackedSequence, hx, weights, return_cell_states: bool = False):
        # nn.LSTM leaves a packed input's errors to its kernels; here they get nn.LSTM's words for the same
        # things (check_input's, check_hidden_size's, the devices').
        data, batch_sizes, sorted_indices, unsorted_indices = packed
        onnx = onnx_export()
        if onnx is not None:
            onnx.reject_packed()  # before the packed input's checks, which torch.export cannot trace
        weight = weights[0]
        self._check_input(data, weight, packed=True)
        # The batch from sorted_indices' length where there is one: reading batch_sizes[0] breaks a compiled
        # graph (data-dependent) and costs a microsecond in eager calls.
        batch = sorted_indices.numel() if sorted_indices is not None else int(batch_sizes[0])
        if hx is None:
            hx = self._zero_state(batch, data)
        else:
            # The states are given in the caller's batch order; the packed rows are sorted by length
            # (nn.LSTM's permute_hidden, before any check).
            hx = self.permute_hidden(hx, sorted_indices)
            if torch.compiler.is_compiling():
                # batch_sizes[0] is data to the compiler, which cannot branch on it: the states' batch is
                # checked against it when the graph runs, and their other sizes here.
                torch._check(batch == hx[0].size(1), lambda: "hidden[0] must have the batch of the packed input")
                batch = hx[0].size(1)
            self._check_states(hx, batch, data, batch_sizes, weights)
        if data.device != weight.device:
            _raise_parameter_device(data, weight)
        variants = self._lstm_variant_args(packed, return_cell_states)
        result = lstm(data, hx, self._lstm_weights(weights), self.bias, self.num_layers, self.dropout,
                      self.training, self.bidirectional, False, batch_sizes=batch_sizes, **variants)
        output = PackedSequence(result[0], batch_sizes, sorted_indices, unsorted_indices)
        h_n, c_n = self.permute_hidden(result[1], unsorted_indices)
        if return_cell_states:  # the rows of output's data order, with output's indices
            return output, (h_n, c_n), PackedSequence(result[2], batch_sizes, sorted_indices, unsorted_indices)
        return output, (h_n, c_n)

    def _check_input(self, input: Tensor, weight: Tensor, packed: bool = False) -> None:
        """nn.RNNBase.check_input's checks and words, given the first weight (forward has it at hand)."""
        if input.dtype != weight.dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({weight.dtype}). "
                f"Convert input: input.to({weight.dtype}), or convert model: model.to({input.dtype})"
            )
        if packed and input.dim() != 2:  # padded input is 3-D here by construction
            raise RuntimeError(f"input must have 2 dimensions, got {input.dim()}")
        if input.size(-1) != self.input_size:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {input.size(-1)}"
            )

    def _state_shapes(self, batch: int) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
        """The shapes of (h_0, c_0): h is proj_size wide when projecting, c always hidden_size."""
        layers = self.num_layers * (2 if self.bidirectional else 1)
        h_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        return (layers, batch, h_size), (layers, batch, self.hidden_size)

    def _zero_state(self, batch: int, input: Tensor) -> Tuple[Tensor, Tensor]:
        h_shape, c_shape = self._state_shapes(batch)
        zeros = torch.zeros(c_shape, dtype=input.dtype, device=input.device)
        # The layers only read their initial states, so h_0 and c_0 may share one tensor of zeros.
        return (zeros if h_shape == c_shape else torch.zeros(h_shape, dtype=input.dtype, device=input.device)), zeros

    def _check_states(self, hx, batch: int, input: Tensor, batch_sizes, weights) -> None:
        """The given (h_0, c_0), in nn.LSTM's order: sizes (check_forward_args' words), structure (what
        torch._VF.lstm raises), devices (its words); then dtypes, which nn.LSTM leaves to its kernels."""
        h_shape, c_shape = self._state_shapes(batch)
        h0, c0 = hx[0], hx[1]
        if h0.shape != h_shape:
            raise RuntimeError(f"Expected hidden[0] size {h_shape}, got {list(h0.shape)}")
        if c0.shape != c_shape:
            raise RuntimeError(f"Expected hidden[1] size {c_shape}, got {list(c0.shape)}")
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            self._raise_like_nn(input, hx, batch_sizes, weights)
        device = input.device
        if h0.device != device or c0.device != device:
            raise RuntimeError("Input and hidden tensors are not at the same device, found input tensor at "
                               f"{device} and hidden tensor at {(h0 if h0.device != device else c0).device}")
        if (h0.dtype != input.dtype or c0.dtype != input.dtype) and not torch._C._is_any_autocast_enabled():
            name, state = ("hidden[0]", h0) if h0.dtype != input.dtype else ("hidden[1]", c0)
            raise ValueError(f"LSTM {name} dtype ({state.dtype}) does not match input dtype ({input.dtype})")

    def _raise_like_nn(self, input: Tensor, hx, batch_sizes, weights):
        """Raises what nn.LSTM raises for an hx that is not a pair of tensors (one tensor, three tensors ...):
        torch._VF.lstm's own error, from the call nn.LSTM makes, which refuses it before computing."""
        if batch_sizes is None:
            _VF.lstm(input, hx, weights, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional,
                     self.batch_first)
        else:
            _VF.lstm(input, batch_sizes, hx, weights, self.bias, self.num_layers, self.dropout, self.training,
                     self.bidirectional)
        raise TypeError(f"LSTM: hx must be a tuple (h_0, c_0) of two tensors, got {type(hx).__name__}")

    # ---- torch.jit.script

    def __prepare_scriptable__(self):
        """Called by torch.jit.script on this module before compiling it: forward's TorchScript branch is
        nn.LSTM's forward (torch._VF.lstm), which needs the weights as a list attribute, a snapshot of
        _flat_weights taken here (the same parameter objects). Returns the module itself, so that scripting
        a model leaves the model as it was (torch assigns what this returns into the parent module).
        Refused for a variant nn.LSTM does not compute (any but forget_bias)."""
        _refuse_script(self)
        warnings.warn(_SCRIPT_WARNING.format(name="LSTM", op="lstm"), UserWarning, stacklevel=2)
        self._scripted_flat_weights = self._flat_weights
        return self

    def _scripted_forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]]
                          ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        """nn.LSTM.forward for a padded input, in TorchScript."""
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        if hx is None:
            hx = self._zero_state(input.size(batch_dim), input)
        else:
            hx = self._batched_states(hx, is_batched)
        self.check_forward_args(input, hx, None)
        result = _VF.lstm(input, hx, self._scripted_flat_weights, self.bias, self.num_layers, self.dropout,
                          self.training, self.bidirectional, self.batch_first)
        output = result[0]
        hidden = (result[1], result[2])
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1))
        return output, hidden

    def _scripted_forward_packed(self, input: PackedSequence, hx: Optional[Tuple[Tensor, Tensor]]
                                 ) -> Tuple[PackedSequence, Tuple[Tensor, Tensor]]:
        """nn.LSTM.forward for a PackedSequence, in TorchScript."""
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if hx is None:
            hx = self._zero_state(int(batch_sizes[0]), data)
        else:
            hx = self.permute_hidden(hx, sorted_indices)
        result = _VF.lstm(data, batch_sizes, hx, self._scripted_flat_weights, self.bias, self.num_layers,
                          self.dropout, self.training, self.bidirectional)
        output = PackedSequence(result[0], batch_sizes, sorted_indices, unsorted_indices)
        return output, self.permute_hidden((result[1], result[2]), unsorted_indices)



def _raise_parameter_device(input: Tensor, weight: Tensor):
    # torch._VF.lstm's words (nn.LSTM). Without this, an input on "meta" with weights elsewhere would run
    # the ops' fake kernels and return meta tensors.
    raise RuntimeError("Input and parameter tensors are not at the same device, found input tensor at "
                       f"{input.device} and parameter tensor at {weight.device}")


def _fx_leaf_call(module: nn.Module, input: Proxy, hx, kwargs=None):
    """torch.fx.symbolic_trace: the module as one call_module node, as FX records torch.nn's own modules.

    FX keeps the modules defined in torch.nn as leaves and traces into every other; traced into, forward
    would branch on the symbolic input's shape, which FX cannot follow. So forward, given a Proxy, records
    the call to itself on the tracer, exactly as Tracer.call_module does for a leaf; the GraphModule calls
    the module (the same object) when it runs. A custom Tracer whose is_leaf_module says False for it gets
    the same node: there is nothing below to trace into."""
    tracer = input.tracer
    path = tracer.path_of_module(module)
    if path == "":
        raise torch.fx.proxy.TraceError(
            f"torch.fx.symbolic_trace cannot trace lstm_ext.{type(module).__name__} as the root module (FX "
            "records it as a call_module node of the module that holds it): trace a module holding it, e.g. "
            "torch.fx.symbolic_trace(torch.nn.Sequential(lstm)), or use torch.export"
        )
    return tracer.create_proxy("call_module", path, (input,) if hx is None else (input, hx), kwargs or {})


class LSTMCell(nn.Module):
    """One LSTM step with ``torch.nn.LSTMCell``'s arguments, parameters and results, on the fused op.

    The keyword-only variants are lstm_ext.LSTM's (see there), for one step: ``forget_bias``,
    ``recurrent_dropout`` and ``zoneout`` (masks ``[B, H]`` drawn at every call in training, over the
    caller's hx; in eval recurrent dropout does nothing and zoneout takes its expectation), ``layer_norm``
    (parameters ``layer_norm_weight_ih``, ``layer_norm_weight_hh`` [4H], ``layer_norm_weight_c``,
    ``layer_norm_bias_c`` [H]) and ``peephole`` (``weight_peephole`` [3H], blocks i, f, o). Their
    parameters come after nn.LSTMCell's, and are None when the variant is off.
    """

    __constants__ = ["input_size", "hidden_size", "bias"]

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 forget_bias: float = 0.0, recurrent_dropout: float = 0.0, zoneout=0.0, layer_norm: bool = False,
                 peephole: bool = False) -> None:
        super().__init__()
        _set_variants(self, bias, 0, forget_bias, recurrent_dropout, zoneout, layer_norm, peephole)
        factory_kwargs = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.weight_ih = nn.Parameter(torch.empty((4 * hidden_size, input_size), **factory_kwargs))
        self.weight_hh = nn.Parameter(torch.empty((4 * hidden_size, hidden_size), **factory_kwargs))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size, **factory_kwargs))
            self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size, **factory_kwargs))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        variant_shapes = [("weight_peephole", (3 * hidden_size,), peephole)] + [
            (name, shape, layer_norm) for name, shape in (
                ("layer_norm_weight_ih", (4 * hidden_size,)), ("layer_norm_weight_hh", (4 * hidden_size,)),
                ("layer_norm_weight_c", (hidden_size,)), ("layer_norm_bias_c", (hidden_size,)))]
        for name, shape, on in variant_shapes:
            self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory_kwargs)) if on else None)
        self.reset_parameters()

    _variants_on = LSTM._variants_on
    _inexpressible_variants = LSTM._inexpressible_variants

    def reset_parameters(self) -> None:
        """nn.LSTMCell's initialisation, U(-1/sqrt(H), 1/sqrt(H)) over nn.LSTMCell's parameters in order, then
        over weight_peephole; the layer norm's weights ones and bias zeros; then ``forget_bias`` added to the
        forget-gate quarter of bias_ih."""
        _reset_parameters(self, ["bias_ih"] if self.bias else [])

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.bias is not True:
            s += ", bias={bias}"
        return s.format(**self.__dict__) + _variants_repr(self)

    def _variant_step(self, input: Tensor, hx, weight_ih, weight_hh, bias_ih, bias_hh):
        """lstm_cell() with the variants' keywords; in training with this call's masks [B, H] (the recurrent
        mask, then zoneout's cell and hidden masks, each where its rate is > 0). (Out of forward, whose
        source TorchScript reads: it cannot read ``**``.)"""
        params = self._parameters
        get = lambda name: params[name] if name in params else getattr(self, name)  # noqa: E731
        args = {"weight_peephole": get("weight_peephole") if self.peephole else None,
                "layer_norm_weights": tuple(get(name) for name in (
                    "layer_norm_weight_ih", "layer_norm_weight_hh", "layer_norm_weight_c", "layer_norm_bias_c"))
                if self.layer_norm else None,
                "zoneout": _zoneout_rates(self)}
        if self.training and (self.recurrent_dropout > 0 or any(_zoneout_rates(self))):
            # lstm_ext.functional's draws for a sequence of one step, of one layer and direction
            masks = sample_masks(input.unsqueeze(0), 1, False, False, self.hidden_size, 0, self.recurrent_dropout,
                                 self.zoneout)
            if masks.recurrent_dropout_masks is not None:
                args["recurrent_mask"] = masks.recurrent_dropout_masks[0]
            if masks.zoneout_masks is not None:
                args["zoneout_masks"] = tuple(None if mask is None else mask.squeeze(0)
                                              for mask in masks.zoneout_masks[0])
        return lstm_cell(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, training=self.training, **args)

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[Tensor, Tensor]:
        """input: [B, I] or [I]; hx: None or (h, c), each [B, H] or [H]. Returns (h', c'), as nn.LSTMCell."""
        if _is_scripting():  # TorchScript compiles this branch only (see __prepare_scriptable__)
            return self._scripted_forward(input, hx)
        if isinstance(input, Proxy):  # torch.fx.symbolic_trace
            return _fx_leaf_call(self, input, hx)
        # nn.LSTMCell's own checks first, then the rest in one cheap test; anything amiss is reported with
        # the error nn.LSTMCell raises for it (see _raise_like_nn).
        dim = input.dim()
        if dim != 2 and dim != 1:
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {dim}D instead")
        if hx is not None:
            for index, value in enumerate(hx):  # as nn.LSTMCell: iterates a tensor given as hx by rows
                state_dim = value.dim()
                if state_dim != 2 and state_dim != 1:
                    raise ValueError(f"LSTMCell: Expected hx[{index}] to be 1D or 2D, got {state_dim}D instead")
        is_batched = dim == 2
        if not is_batched:
            input = input.unsqueeze(0)
            if hx is not None:
                hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        params = self._parameters  # a dict lookup each, not nn.Module.__getattr__
        if "weight_ih" in params and "weight_hh" in params and "bias_ih" in params and "bias_hh" in params:
            weight_ih, weight_hh, bias_ih, bias_hh = (params["weight_ih"], params["weight_hh"], params["bias_ih"],
                                                      params["bias_hh"])
        else:  # a parametrized weight is a property
            weight_ih, weight_hh, bias_ih, bias_hh = self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        batch, input_size = input.shape
        # Under autocast the op casts every floating-point argument, so dtypes need not match.
        autocast = torch._C._is_any_autocast_enabled()
        if hx is None:
            if (input_size != self.input_size or input.device != weight_ih.device
                    or input.dtype != weight_ih.dtype and not autocast):
                self._raise_like_nn(input, None)
            zeros = torch.zeros(batch, self.hidden_size, dtype=input.dtype, device=input.device)
            hx = (zeros, zeros)
        else:
            state = (batch, self.hidden_size)
            if (not isinstance(hx, (tuple, list)) or len(hx) != 2 or input_size != self.input_size
                    or hx[0].shape != state or hx[1].shape != state
                    or not autocast and (input.dtype != weight_ih.dtype or hx[0].dtype != input.dtype
                                         or hx[1].dtype != input.dtype)):
                self._raise_like_nn(input, hx)
            device = input.device
            if weight_ih.device != device or hx[0].device != device or hx[1].device != device:
                self._raise_like_nn(input, hx)
        if self._variants_on():
            h, c = self._variant_step(input, hx, weight_ih, weight_hh, bias_ih, bias_hh)
        else:
            h, c = lstm_cell(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, training=self.training)
        if not is_batched:
            h, c = h.squeeze(0), c.squeeze(0)
        return h, c

    def _raise_like_nn(self, input: Tensor, hx):
        """Raises what nn.LSTMCell raises for these arguments (forward found something amiss): the error of
        the call nn.LSTMCell makes, torch._VF.lstm_cell, so type, words and order of the checks are torch's
        (its argument types, its sizes, then the matrix products' dtypes and devices). Where torch accepts
        what lstm_ext refuses (a state of another dtype than the input, which torch computes in mixed
        precision), lstm_ext's error."""
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            hx = (zeros, zeros)
        _VF.lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        for index, state in enumerate(hx):
            if state.dtype != input.dtype or state.device != input.device:
                raise RuntimeError(f"LSTMCell: hx[{index}] must have the dtype and device of input ({input.dtype} "
                                   f"on {input.device}), got {state.dtype} on {state.device}")
        raise RuntimeError(f"LSTMCell: arguments refused: input {input.dtype} {list(input.shape)} on {input.device}, "
                           f"hx {[(s.dtype, list(s.shape), str(s.device)) for s in hx]}")

    # ---- torch.jit.script

    def __prepare_scriptable__(self):
        """Called by torch.jit.script on this module before compiling it: forward's TorchScript branch is
        nn.LSTMCell's forward (torch._VF.lstm_cell) on the same parameters. Returns the module itself, so
        that scripting a model leaves the model as it was. Refused for a variant nn.LSTMCell does not compute
        (any but forget_bias)."""
        _refuse_script(self)
        warnings.warn(_SCRIPT_WARNING.format(name="LSTMCell", op="lstm_cell"), UserWarning, stacklevel=2)
        return self

    def _scripted_forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]]
                          ) -> Tuple[Tensor, Tensor]:
        """nn.LSTMCell.forward, in TorchScript."""
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            hx = (zeros, zeros)
        else:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0)) if not is_batched else hx
        ret = _VF.lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        if not is_batched:
            ret = (ret[0].squeeze(0), ret[1].squeeze(0))
        return ret


def _check_constructor_args(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size) -> None:
    """nn.LSTM's constructor validation, in its order and with its exception types and messages."""
    if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
        raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                         "element being zeroed")
    if dropout > 0 and num_layers == 1:
        warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                      f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                      stacklevel=3)
    if not isinstance(bias, bool):
        raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
    if not isinstance(batch_first, bool):
        raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
    if not isinstance(input_size, int):
        raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
    if input_size <= 0:
        raise ValueError("input_size must be greater than zero")
    if not isinstance(hidden_size, int):
        raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
    if hidden_size <= 0:
        raise ValueError("hidden_size must be greater than zero")
    if not isinstance(num_layers, int):
        raise TypeError(f"num_layers should be of type int, got: {type(num_layers).__name__}")
    if num_layers <= 0:
        raise ValueError("num_layers must be greater than zero")
    if proj_size < 0:
        raise ValueError("proj_size should be a positive integer or zero to disable projections")
    if proj_size >= hidden_size:
        raise ValueError("proj_size has to be smaller than hidden_size")


def _refuse_script(module: nn.Module) -> None:
    variants = module._inexpressible_variants()
    if variants:
        name = type(module).__name__
        raise NotImplementedError(
            f"torch.jit.script: lstm_ext.{name} with {', '.join(variants)} cannot be scripted: TorchScript runs "
            f"torch.nn.{name}'s implementation, which has no such variant (only forget_bias, an initialisation, "
            "is scriptable). Use torch.export (torch.export.export), which keeps lstm_ext's kernels."
        )


def _set_variants(module: nn.Module, bias: bool, proj_size: int, forget_bias, recurrent_dropout, zoneout,
                  layer_norm, peephole) -> None:
    """Validates the variants' arguments and sets them as attributes (LSTM and LSTMCell)."""
    _check_variant_args(bias, proj_size, forget_bias, recurrent_dropout, zoneout, layer_norm, peephole)
    module.forget_bias = float(forget_bias)
    module.recurrent_dropout = float(recurrent_dropout)
    module.zoneout = tuple(float(rate) for rate in zoneout) if isinstance(zoneout, (tuple, list)) else float(zoneout)
    module.layer_norm = layer_norm
    module.peephole = peephole


def _zoneout_rates(module: nn.Module) -> tuple[float, float]:
    """The module's zoneout as (cell_rate, hidden_rate), read at every use (as nn reads dropout)."""
    zoneout = module.zoneout
    return (zoneout[0], zoneout[1]) if isinstance(zoneout, tuple) else (zoneout, zoneout)


def _variants_repr(module: nn.Module) -> str:
    """The non-default variants, for extra_repr."""
    s = ""
    if module.forget_bias != 0:
        s += f", forget_bias={module.forget_bias}"
    if module.recurrent_dropout != 0:
        s += f", recurrent_dropout={module.recurrent_dropout}"
    if any(_zoneout_rates(module)):
        s += f", zoneout={module.zoneout}"
    if module.layer_norm:
        s += ", layer_norm=True"
    if module.peephole:
        s += ", peephole=True"
    return s


def _reset_parameters(module: nn.Module, bias_ih_names: list[str]) -> None:
    """U(-1/sqrt(H), 1/sqrt(H)) over every parameter but the layer norms' in registration order (nn's
    parameters first, then the peepholes), the layer norms' weights ones and biases zeros, then forget_bias
    added to the forget-gate quarter [H:2H] of each of ``bias_ih_names``."""
    hidden = module.hidden_size
    stdv = 1.0 / math.sqrt(hidden) if hidden > 0 else 0
    named = list(module.named_parameters())
    for name, weight in named:
        if "layer_norm_" not in name:
            nn.init.uniform_(weight, -stdv, stdv)
    for name, weight in named:
        if "layer_norm_bias" in name:
            nn.init.zeros_(weight)
        elif "layer_norm_" in name:
            nn.init.ones_(weight)
    if module.forget_bias != 0:
        with torch.no_grad():
            for name in bias_ih_names:
                # the parameter itself: a parametrized bias holds it as its "original"
                bias = module._parameters[name] if name in module._parameters else \
                    module.parametrizations[name].original
                bias[hidden:2 * hidden] += module.forget_bias


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_variant_args(bias, proj_size, forget_bias, recurrent_dropout, zoneout, layer_norm,
                        peephole) -> None:
    """The variants' validation (after nn's arguments', in nn's wording where nn has a like argument: bias's
    type, dropout's range)."""
    for name, value in (("layer_norm", layer_norm), ("peephole", peephole)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    if not _is_real(forget_bias):
        raise TypeError(f"forget_bias should be a real number, got: {type(forget_bias).__name__}")
    if not math.isfinite(forget_bias):
        raise ValueError(f"forget_bias should be a finite number, got {forget_bias}")
    if forget_bias != 0 and not bias:
        raise ValueError(f"forget_bias requires bias=True (it is added to bias_ih), got bias={bias} "
                         f"with forget_bias={forget_bias}")
    if not _is_real(recurrent_dropout) or not 0 <= recurrent_dropout < 1:
        raise ValueError(f"recurrent_dropout should be a number in range [0, 1) representing the "
                         f"probability of an element of the recurrent input being zeroed, got {recurrent_dropout!r}")
    rates = tuple(zoneout) if isinstance(zoneout, (tuple, list)) else (zoneout, zoneout)
    if len(rates) != 2 or not all(_is_real(rate) and 0 <= rate <= 1 for rate in rates):
        raise ValueError(f"zoneout should be a number or a pair (cell_rate, hidden_rate) of numbers in "
                         f"range [0, 1] representing the probability of a unit keeping its previous value, got "
                         f"{zoneout!r}")
    if proj_size > 0 and any(rates):
        raise NotImplementedError(f"zoneout with proj_size > 0 is not implemented, got zoneout={zoneout!r} "
                                  f"and proj_size={proj_size}")
