"""The drip schedule's advance rule as a Lightning callback.

The original README advances to the next (larger) step once the training
loss drops below about 2 or the validation loss below about 1; with
``stop_rule`` on, the step ends there instead of running all its epochs.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl

log = logging.getLogger(__name__)


class StopRule(pl.Callback):
    def __init__(self, train_loss_below: float = 2.0, val_loss_below: float = 1.0) -> None:
        self.train_loss_below, self.val_loss_below = train_loss_below, val_loss_below

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        train, val = metrics.get("train_loss_epoch"), metrics.get("val_loss")
        if (train is not None and train < self.train_loss_below) or (val is not None and val < self.val_loss_below):
            log.info("stop rule met (train_loss %s, val_loss %s): ending this step", train, val)
            trainer.should_stop = True
