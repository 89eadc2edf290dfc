"""convert() and to_torch(): swap torch.nn.LSTM / nn.LSTMCell and lstm_ext's modules inside a model.

    model = lstm_ext.convert(model)      # every nn.LSTM and nn.LSTMCell becomes lstm_ext's
    model = lstm_ext.to_torch(model)     # and back, for tools that look for nn.LSTM

The replacement holds the very Parameter objects of the module it replaces (so an optimizer built on
the model keeps working, and tied weights stay tied), hence the same device, dtype and values; it takes
the configuration (sizes, layers, bias, batch_first, dropout, bidirectional, proj_size) and the
training flag. The state dict is unchanged, keys and values. Parametrizations
(torch.nn.utils.parametrize) move with their parameters, the same objects.

What is not converted, with a warning naming it: subclasses of nn.LSTM / nn.LSTMCell (and of
lstm_ext's classes for to_torch), which may have their own forward or attributes that a replacement
would drop. What is refused with an error: a module whose weight is not a registered Parameter (say
pruned with torch.nn.utils.prune, which keeps ``weight_orig`` and a mask behind a forward pre-hook):
undo that first (prune.remove). Hooks registered on a converted module are not carried over (a warning
says so). to_torch refuses a model holding an lstm_ext module with a variant torch.nn.LSTM / LSTMCell does
not compute (peephole, layer_norm, recurrent_dropout, zoneout), naming the module and the variant, before
replacing anything; forget_bias converts (it is only an initialisation of bias_ih, which moves over).
"""

import warnings

from torch import nn
from torch.nn.utils import parametrize

from .modules import LSTM, LSTMCell

__all__ = ["convert", "to_torch"]

_LSTM_ARGS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
              "proj_size")
_CELL_ARGS = ("input_size", "hidden_size", "bias")
_TO_EXT = {nn.LSTM: (LSTM, _LSTM_ARGS), nn.LSTMCell: (LSTMCell, _CELL_ARGS)}
_TO_TORCH = {LSTM: (nn.LSTM, _LSTM_ARGS), LSTMCell: (nn.LSTMCell, _CELL_ARGS)}
_PUBLIC_NAMES = {nn.LSTM: "torch.nn.LSTM", nn.LSTMCell: "torch.nn.LSTMCell", LSTM: "lstm_ext.LSTM",
                 LSTMCell: "lstm_ext.LSTMCell"}


def convert(model: nn.Module) -> nn.Module:
    """Replaces every torch.nn.LSTM and torch.nn.LSTMCell in ``model`` by lstm_ext.LSTM / LSTMCell.

    In place: the modules are replaced where they sit (in any container: Sequential, ModuleList,
    ModuleDict, attributes), and ``model`` is returned, or the replacement when ``model`` itself is an
    nn.LSTM or nn.LSTMCell. A module held in several places is replaced by one module everywhere. See
    the module docstring for what moves over and what is skipped."""
    return _swap(model, _TO_EXT, "lstm_ext.convert")


def to_torch(model: nn.Module) -> nn.Module:
    """The reverse of convert(): every lstm_ext.LSTM / LSTMCell in ``model`` becomes torch.nn.LSTM /
    nn.LSTMCell on the same Parameter objects, for tools that look for torch's classes
    (torch.ao.quantization.quantize_dynamic, torch.nn.utils.prune, TorchScript code that expects them).
    Returns ``model``, or the replacement when ``model`` itself is one."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"lstm_ext.to_torch: expected a torch.nn.Module, got {type(model).__name__}")
    for path, module in model.named_modules(remove_duplicate=False):
        cls = parametrize.type_before_parametrizations(module)
        if cls in _TO_TORCH and (variants := module._inexpressible_variants()):
            where = f"the model's {path!r}" if path else "the model"
            raise ValueError(
                f"lstm_ext.to_torch: {where} is an {_PUBLIC_NAMES[cls]} with {', '.join(variants)}, which "
                f"{_PUBLIC_NAMES[_TO_TORCH[cls][0]]} cannot express; nothing was converted")
    return _swap(model, _TO_TORCH, "lstm_ext.to_torch")


def _swap(model: nn.Module, table, caller: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller}: expected a torch.nn.Module, got {type(model).__name__}")
    replaced: dict[int, nn.Module] = {}  # id of a converted module -> its replacement, so shared stays shared

    def replacement(module: nn.Module) -> nn.Module | None:
        if id(module) not in replaced:
            new = _replacement(module, table, caller)
            if new is None:
                return None
            replaced[id(module)] = new
        return replaced[id(module)]

    if (new := replacement(model)) is not None:
        return new
    # Collected first, replaced after: the walk does not see its own replacements.
    slots = [(parent, name, child) for parent in model.modules() for name, child in parent._modules.items()
             if child is not None]
    for parent, name, child in slots:
        if (new := replacement(child)) is not None:
            setattr(parent, name, new)
    return model


def _replacement(module: nn.Module, table, caller: str) -> nn.Module | None:
    """The module that replaces ``module``, or None when it is not one to replace."""
    cls = parametrize.type_before_parametrizations(module)
    target = table.get(cls)
    if target is None:
        subclass_of = next((base for base in table if issubclass(cls, base)), None)
        if subclass_of is not None:
            warnings.warn(f"{caller}: left {cls.__module__}.{cls.__qualname__} as it is: a subclass of "
                          f"{_PUBLIC_NAMES[subclass_of]} may have its own forward or attributes, which a "
                          "replacement would drop", UserWarning, stacklevel=5)
        return None
    new_cls, arg_names = target
    config = {name: getattr(module, name) for name in arg_names}
    names = _weight_names(module)
    parametrized = set(module.parametrizations) if parametrize.is_parametrized(module) else set()
    for name in names:
        if name not in parametrized and not isinstance(module._parameters.get(name), nn.Parameter):
            raise ValueError(
                f"{caller}: {type(module).__name__}.{name} is not a registered Parameter (pruned with "
                "torch.nn.utils.prune, or replaced by a plain tensor?); undo that first (prune.remove), then convert")
    if any(getattr(module, hooks) for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                                 "_backward_pre_hooks")):
        warnings.warn(f"{caller}: the hooks registered on {type(module).__name__} are not carried over to its "
                      "replacement", UserWarning, stacklevel=5)

    with warnings.catch_warnings():  # nn.LSTM's dropout warning was given when the original was built
        warnings.simplefilter("ignore")
        # On "meta": no memory, no initialisation drawn from the random stream; every parameter is replaced.
        new = new_cls(**config, device="meta")
    for name in names:
        if name in parametrized:
            delattr(new, name)  # re-created by the transfer below, then given the original's parameters
        else:
            setattr(new, name, module._parameters[name])
    if parametrized:
        # The same parametrization modules, and their "original" tensors: the same Parameter objects.
        parametrize.transfer_parametrizations_and_params(module, new)
    new.training = module.training  # not new.train(): the transferred parametrizations keep their own flags
    if isinstance(new, nn.LSTM):
        new._init_flat_weights()  # nn.LSTM caches its weights: rebuilt from the assigned parameters
    return new


def _weight_names(module: nn.Module) -> list[str]:
    if isinstance(module, (nn.LSTM, LSTM)):
        return list(module._flat_weights_names)
    return ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if module.bias else [])
