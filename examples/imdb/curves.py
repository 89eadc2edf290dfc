"""The training curves of train.py: a PNG of the loss and the validation accuracy per epoch, and the same
numbers for TensorBoard (--tensorboard), when the tensorboard package is installed.

A history is {"epoch": [1, 2, ...], "train_loss": [...], "val_accuracy": [...]}, a value per epoch.
"""

from __future__ import annotations

import json

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

HISTORY_KEYS = ("epoch", "train_loss", "val_accuracy")
# The PNG's text chunk that holds the history it was drawn from, as JSON.
PNG_HISTORY_KEY = "Description"


def empty_history() -> dict:
    return {key: [] for key in HISTORY_KEYS}


def plot_training_curves(history: dict, path, title: str) -> None:
    """Two panels, training loss and validation accuracy against the epoch, written as a PNG to ``path``.

    The history drawn goes into the PNG's metadata too (text chunk "Description", JSON), so the file
    says which numbers it shows.
    """
    figure = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(figure)  # the Agg canvas: no display, no global pyplot state
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for axes, key, label, color in ((loss_axes, "train_loss", "training loss (cross-entropy)", "tab:blue"),
                                    (accuracy_axes, "val_accuracy", "validation accuracy", "tab:green")):
        axes.plot(history["epoch"], history[key], marker="o", color=color)
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(True, alpha=0.3)
    figure.suptitle(title, fontsize="medium")
    figure.tight_layout()
    figure.savefig(path, dpi=100, metadata={PNG_HISTORY_KEY: json.dumps(history)})


class TensorBoardLog:
    """Per-epoch scalars in a TensorBoard log folder; does nothing, after saying why, without tensorboard.

    Scalars: train/loss and validation/accuracy at each epoch, test/<metric> at the best epoch.
    """

    def __init__(self, log_dir):
        self.writer = None
        if log_dir is None:
            return
        try:
            # torch.utils.tensorboard needs the separate tensorboard package, and says so in an ImportError.
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            print(f"note: --tensorboard {log_dir}: not logging, the tensorboard package is not installed "
                  f"(pip install tensorboard); training goes on ({error})")
            return
        self.writer = SummaryWriter(log_dir)
        self.log_dir = log_dir

    def log_epoch(self, epoch: int, train_loss: float, val_accuracy: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss", train_loss, epoch)
            self.writer.add_scalar("validation/accuracy", val_accuracy, epoch)
            self.writer.flush()  # a running tensorboard shows each epoch as it ends

    def log_test(self, best_epoch: int, metrics: dict) -> None:
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"test/{name}", value, best_epoch)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            print(f"wrote TensorBoard logs to {self.log_dir}")
