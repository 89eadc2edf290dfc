"""LSTM and LSTMCell: drop-ins for torch.nn.LSTM and torch.nn.LSTMCell on the fused ops.

The constructor takes nn.LSTM's arguments, validates them with nn.LSTM's errors, registers the same
parameters (names, shapes, order) and initialises them the same way from the same random stream, so
``torch.manual_seed(s); lstm_ext.LSTM(...)`` holds the very weights ``nn.LSTM(...)`` would, and state
dicts load both ways. It is deliberately not a subclass of nn.LSTM: torch.compile breaks the graph on
every nn.RNNBase, and this module compiles whole.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .functional import lstm, lstm_cell


class LSTM(nn.Module):
    """A multi-layer LSTM with ``torch.nn.LSTM``'s arguments, parameters and results.

    See ``torch.nn.LSTM`` for the arguments; every one of them has the same meaning here.
    """

    __constants__ = ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                     "bidirectional", "proj_size"]

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None) -> None:
        super().__init__()
        _check_constructor_args(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size)
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
        for layer in range(num_layers):
            layer_input_size = input_size if layer == 0 else real_hidden_size * num_directions
            for direction in range(num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes = [("weight_ih", (gate_size, layer_input_size)), ("weight_hh", (gate_size, real_hidden_size))]
                if bias:
                    shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                if proj_size > 0:
                    shapes += [("weight_hr", (proj_size, hidden_size))]
                for name, shape in shapes:
                    setattr(self, name + suffix, nn.Parameter(torch.empty(shape, **factory_kwargs)))
                    self._flat_weights_names.append(name + suffix)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.LSTM's initialisation: every parameter from U(-1/sqrt(H), 1/sqrt(H)), in registration order."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    @property
    def _flat_weights(self) -> list[Tensor]:
        # Looked up by name at every use, so replaced parameters and torch.func.functional_call work: in
        # _parameters first (a dict lookup; getattr on a module costs a microsecond each), then as an
        # attribute (a parametrized weight is a property).
        params = self._parameters
        return [params[name] if name in params else getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[Tensor]]:
        per_direction = len(self._flat_weights_names) // (self.num_layers * (2 if self.bidirectional else 1))
        weights = self._flat_weights
        return [weights[i:i + per_direction] for i in range(0, len(weights), per_direction)]

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
        return s.format(**self.__dict__)

    def _check_input(self, input: Tensor, weight_dtype: torch.dtype) -> None:
        if input.dtype != weight_dtype and not torch.is_autocast_enabled():
            raise ValueError(
                f"LSTM input dtype ({input.dtype}) does not match weight dtype ({weight_dtype}). "
                f"Convert input: input.to({weight_dtype}), or convert model: model.to({input.dtype})"
            )
        if input.size(-1) != self.input_size:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {input.size(-1)}"
            )

    def forward(self, input: Tensor | PackedSequence, hx: tuple[Tensor, Tensor] | None = None):
        weights = self._flat_weights
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx, weights)

        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        self._check_input(input, weights[0].dtype)
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        batch = input.size(batch_dim)
        if hx is None:
            hx = self._zero_state(batch, input)
        else:
            self._check_state_tuple(hx)
            expected_dim = 3 if is_batched else 2
            if hx[0].dim() != expected_dim or hx[1].dim() != expected_dim:
                raise RuntimeError(
                    f"For {'batched 3-D' if is_batched else 'unbatched 2-D'} input, hx and cx should also be "
                    f"{expected_dim}-D but got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                )
            if not is_batched:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            self._check_states(hx, batch, input)

        output, (h_n, c_n) = lstm(input, hx, weights, self.bias, self.num_layers, self.dropout, self.training,
                                  self.bidirectional, self.batch_first)
        if not is_batched:
            output = output.squeeze(batch_dim)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return output, (h_n, c_n)

    def _forward_packed(self, packed: PackedSequence, hx, weights):
        data, batch_sizes, sorted_indices, unsorted_indices = packed
        if data.dim() != 2:
            raise RuntimeError(f"input must have 2 dimensions, got {data.dim()}")
        self._check_input(data, weights[0].dtype)
        batch = int(batch_sizes[0])
        if hx is None:
            hx = self._zero_state(batch, data)
        else:
            self._check_state_tuple(hx)
            # The states are given in the caller's batch order; the packed rows are sorted by length.
            hx = tuple(_permute_batch(state, sorted_indices) for state in hx)
            self._check_states(hx, batch, data)
        output, (h_n, c_n) = lstm(data, hx, weights, self.bias, self.num_layers, self.dropout, self.training,
                                  self.bidirectional, False, batch_sizes=batch_sizes)
        output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
        return output, (_permute_batch(h_n, unsorted_indices), _permute_batch(c_n, unsorted_indices))

    def _state_shapes(self, batch: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """The shapes of (h_0, c_0): h is proj_size wide when projecting, c always hidden_size."""
        layers = self.num_layers * (2 if self.bidirectional else 1)
        h_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        return (layers, batch, h_size), (layers, batch, self.hidden_size)

    def _zero_state(self, batch: int, input: Tensor) -> tuple[Tensor, Tensor]:
        h_shape, c_shape = self._state_shapes(batch)
        zeros = torch.zeros(c_shape, dtype=input.dtype, device=input.device)
        # The layers only read their initial states, so h_0 and c_0 may share one tensor of zeros.
        return (zeros if h_shape == c_shape else torch.zeros(h_shape, dtype=input.dtype, device=input.device)), zeros

    @staticmethod
    def _check_state_tuple(hx) -> None:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(s, Tensor) for s in hx):
            raise TypeError(f"LSTM: hx must be a tuple (h_0, c_0) of two tensors, got {type(hx).__name__}")

    def _check_states(self, hx, batch: int, input: Tensor) -> None:
        for name, state, expected_shape in zip(("hidden[0]", "hidden[1]"), hx, self._state_shapes(batch)):
            if tuple(state.shape) != expected_shape:  # nn.LSTM's words
                raise RuntimeError(f"Expected {name} size {expected_shape}, got {list(state.shape)}")
            if state.dtype != input.dtype:
                raise ValueError(f"LSTM {name} dtype ({state.dtype}) does not match input dtype ({input.dtype})")
            if state.device != input.device:
                raise ValueError(f"LSTM {name} is on {state.device} but input is on {input.device}")


def _permute_batch(state: Tensor, permutation: Tensor | None) -> Tensor:
    return state if permutation is None else state.index_select(1, permutation)


class LSTMCell(nn.Module):
    """One LSTM step with ``torch.nn.LSTMCell``'s arguments, parameters and results, on the fused op."""

    __constants__ = ["input_size", "hidden_size", "bias"]

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
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
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.LSTMCell's initialisation: every parameter from U(-1/sqrt(H), 1/sqrt(H)), in order."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.bias is not True:
            s += ", bias={bias}"
        return s.format(**self.__dict__)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for index, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{index}] to be 1D or 2D, got {value.dim()}D instead")
        if input.dtype != self.weight_ih.dtype:
            raise ValueError(f"LSTMCell input dtype ({input.dtype}) does not match weight dtype "
                             f"({self.weight_ih.dtype})")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if input.size(1) != self.input_size:  # nn.LSTMCell's words from here on
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}")
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            hx = (zeros, zeros)
        else:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0)) if not is_batched else hx
            for index, state in enumerate(hx):
                if state.size(0) != input.size(0):
                    raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{index} batch size "
                                       f"{state.size(0)}")
                if state.size(1) != self.hidden_size:
                    raise RuntimeError(f"hidden{index} has inconsistent hidden_size: got {state.size(1)}, expected "
                                       f"{self.hidden_size}")
        h, c = lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        if not is_batched:
            h, c = h.squeeze(0), c.squeeze(0)
        return h, c


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
