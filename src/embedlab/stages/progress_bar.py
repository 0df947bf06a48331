"""Lightning's training bar titled with the run it trains: "drip/s1: epoch 2/2", not "Epoch 1/1".

Lightning's own title counts epochs from 0 and names no run; its ``v_num`` (the logger's version: a run id's
first characters) is left out. Rich's bar when rich is installed (what Lightning would pick), else tqdm's.
"""

from __future__ import annotations

import importlib.util

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar


def epoch_title(label: str, epoch: int, max_epochs: int | None) -> str:
    """``label: epoch N/M`` of the 0-based ``epoch`` (no ``/M`` when the run has no epoch limit)."""
    return f"{label}: epoch {epoch + 1}" + (f"/{max_epochs}" if max_epochs and max_epochs > 0 else "")


def _without_version(items: dict) -> dict:
    items.pop("v_num", None)
    return items


class _RichTitled(RichProgressBar):
    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def _get_train_description(self, current_epoch: int) -> str:  # the title of Lightning's rich training bar
        return epoch_title(self.label, current_epoch, self.trainer.max_epochs)

    @property
    def validation_description(self) -> str:
        return f"{self.label}: validation"

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        return _without_version(super().get_metrics(trainer, pl_module))


class _TQDMTitled(TQDMProgressBar):
    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def on_train_epoch_start(self, trainer: pl.Trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(epoch_title(self.label, trainer.current_epoch, trainer.max_epochs))

    @property
    def validation_description(self) -> str:
        return f"{self.label}: validation"

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        return _without_version(super().get_metrics(trainer, pl_module))


def titled_progress_bar(label: str) -> pl.Callback:
    """The Trainer's progress bar, its title naming ``label`` (e.g. ``drip/s1``) and the epoch out of all."""
    return (_RichTitled if importlib.util.find_spec("rich") else _TQDMTitled)(label)
