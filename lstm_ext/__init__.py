"""lstm_ext: a fused LSTM for PyTorch, a drop-in for torch.nn.LSTM.

    from lstm_ext import LSTM      # instead of torch.nn.LSTM

The fused forward and backward kernels are registered as torch.ops.lstm_ext.*; LSTMFunction is their
differentiable entry, lstm() the functional form (VariantMasks the masks of its variants), LSTM the module.
convert(model) puts lstm_ext's modules in place of every nn.LSTM / nn.LSTMCell of a model (same Parameter
objects), to_torch(model) the reverse.
"""

from ._version import __version__
from ._ops import bernoulli_mask, compiled_backends, cpu_cache_bytes, cpu_kernels, cuda_recurrence, empty_cache
from .autograd import LSTMFunction
from .converters import convert, to_torch
from .functional import VariantMasks, lstm, lstm_cell
from .modules import LSTM, LSTMCell

__all__ = ["LSTM", "LSTMCell", "LSTMFunction", "lstm", "lstm_cell", "VariantMasks", "convert", "to_torch",
           "bernoulli_mask", "compiled_backends", "cpu_kernels", "cpu_cache_bytes", "cuda_recurrence", "empty_cache",
           "__version__"]
