"""Lightning callbacks of a trial: per-epoch reports to Optuna's pruner, and a NaN-loss stop.

Our own small callback instead of ``optuna_integration.PyTorchLightningPruningCallback``:
that one subclasses ``lightning.pytorch`` (the unified ``lightning`` package),
which a ``pytorch_lightning`` Trainer rejects, and it cannot flip a metric's
sign. The pruner compares intermediate values in the study's direction, so a
per-epoch metric going the other way (the drip stage's ``val_loss`` while the
study maximises μAP) is reported negated: ``-val_loss``.
"""

from __future__ import annotations

import logging
import math

import optuna
import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


class PruningCallback(pl.Callback):
    """After each training epoch (its validation included): ``trial.report(sign · metric, epoch)``,
    and stop the trial with :class:`optuna.TrialPruned` when the pruner says so."""

    def __init__(self, trial: optuna.Trial, monitor: str, sign: float = 1.0) -> None:
        self.trial, self.monitor, self.sign = trial, monitor, sign
        self._warned = False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self._warned:
                log.warning("pruning: metric %r not logged (have %s); this trial is not pruned",
                            self.monitor, sorted(trainer.callback_metrics))
                self._warned = True
            return
        value = float(value)
        if not math.isfinite(value):
            raise FloatingPointError(f"{self.monitor} is {value} after epoch {trainer.current_epoch}: "
                                     "the trial's settings diverge")
        epoch = trainer.current_epoch
        self.trial.report(self.sign * value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {self.monitor} {value:.4g}")


class FiniteLoss(pl.Callback):
    """End the trial with a clear error as soon as a training loss is NaN or infinite."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss.detach()).all():
            raise FloatingPointError(f"training loss is {float(loss):g} at epoch {trainer.current_epoch}, "
                                     f"batch {batch_idx}: the trial's settings diverge")
