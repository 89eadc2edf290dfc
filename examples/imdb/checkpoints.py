"""Writing and reading the checkpoints of train.py: atomic writes, and loads that fail with a clear error.

A checkpoint is a dict of tensors and plain values (loadable with ``weights_only=True``):

    model_config, model_state, vocab, args, epoch, val_accuracy      best.pt and last.pt
    optimizer_state, scheduler_state, rng_states, best, ...          last.pt only: what --resume needs
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from lstm_ext.models import SentimentClassifier

MODEL_KEYS = ("model_config", "model_state", "vocab", "args")
# lstm_ext.LSTM's variant options and their defaults; a model_config holds those of its model that differ.
LSTM_VARIANT_OPTIONS = {"forget_bias": 0.0, "recurrent_dropout": 0.0, "zoneout": 0.0, "layer_norm": False,
                        "peephole": False}
TRAINING_STATE_KEYS = ("epoch", "optimizer_state", "scheduler_state", "rng_states", "best")


class CheckpointError(RuntimeError):
    """A file that is not a usable checkpoint of this example; the message names the file and the problem."""


def save_atomically(obj, path) -> None:
    """torch.save to a temporary file in the same folder, then a rename over ``path``.

    The rename is atomic, so ``path`` always holds either the previous checkpoint or the new one, never
    a partly written file, however the process ends.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # In the same folder, so the rename stays within one file system; the pid keeps writers apart.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path, training_state: bool = False) -> dict:
    """The checkpoint at ``path``; with ``training_state``, one that --resume can continue from (last.pt)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive, whose index is at its very end
        raise CheckpointError(f"{path} is not a checkpoint: not the zip archive torch.save writes "
                              "(a truncated checkpoint, or another kind of file)")
    try:
        # weights_only: tensors and plain values only, so loading a file cannot run code from it.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch reports both cases below with several exception types
        # The archive's checksums tell a damaged file from one that holds what weights_only refuses.
        damage = _zip_damage(path)
        if damage:
            raise CheckpointError(f"{path} is a damaged checkpoint: {damage}") from error
        if isinstance(error, pickle.UnpicklingError):
            raise CheckpointError(f"{path} is not a checkpoint of train.py: it holds Python objects besides "
                                  "tensors and plain values (a whole pickled model?), and loading those could "
                                  "run code from the file") from error
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint: {reason}") from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint of train.py")
    required = MODEL_KEYS + (TRAINING_STATE_KEYS if training_state else ())
    missing = [key for key in required if key not in checkpoint]
    if missing:
        what = "a checkpoint to resume from (last.pt)" if training_state and all(
            key in checkpoint for key in MODEL_KEYS) else "a checkpoint of train.py"
        raise CheckpointError(f"{path} is not {what}: it has no {', '.join(missing)} "
                              f"(its keys: {', '.join(map(str, list(checkpoint)[:10])) or 'none'})")
    return checkpoint


def _zip_damage(path) -> str | None:
    """What is wrong with a zip archive's index or contents, or None when every checksum matches."""
    try:
        with zipfile.ZipFile(path) as archive:
            member = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        return f"its zip index is unreadable ({error})"
    return f"{member} fails its checksum" if member else None


def build_model(checkpoint: dict, path, lstm_options: dict | None = None, **overrides) -> SentimentClassifier:
    """The checkpoint's model with its weights, on the CPU.

    ``overrides`` change options that leave the weights as they are: ``lstm`` (the same parameters run
    on either LSTM) and ``dropout``; None values are ignored. ``lstm_options``, when given, are the LSTM
    variant options to build with instead of the checkpoint's (fine-tuning may change the dropouts).
    """
    config = dict(checkpoint["model_config"], **{name: value for name, value in overrides.items() if value is not None})
    if lstm_options is not None:
        config = {name: value for name, value in config.items() if name not in LSTM_VARIANT_OPTIONS}
        config.update(lstm_options)
    variants = {name: config[name] for name in LSTM_VARIANT_OPTIONS if name in config}
    if variants and config.get("lstm") != "fused":
        raise CheckpointError(f"{path}: the model uses lstm_ext.LSTM's variants "
                              f"({', '.join(f'{name}={value}' for name, value in variants.items())}), which "
                              f"torch.nn.LSTM does not have: run it with the fused LSTM (--lstm fused)")
    try:
        model = SentimentClassifier(**config)
        model.load_state_dict(checkpoint["model_state"])
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: its weights do not fit the model it describes ({config}): "
                              f"{str(error).strip().splitlines()[0]}") from error
    return model
