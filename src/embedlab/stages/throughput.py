"""Training throughput per epoch, logged as ``speed/train_images_per_s`` beside the run's scores.

Counted over the epoch's training batches, data loading included (what a
user waits for), summed over the ranks under DDP.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch

from embedlab.const import SPEED

TRAIN_IMAGES_PER_S = f"{SPEED}/train_images_per_s"


def batch_size_of(batch: Any) -> int:
    """The number of images of a batch: the length of its first tensor (tuple, list or dict batches)."""
    if isinstance(batch, torch.Tensor):
        return len(batch)
    items = batch.values() if isinstance(batch, dict) else batch
    return next(batch_size_of(item) for item in items if isinstance(item, (torch.Tensor, tuple, list, dict)))


class TrainThroughput(pl.Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.images, self.start = 0, time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.images += batch_size_of(batch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = max(time.perf_counter() - self.start, 1e-9)
        pl_module.log(TRAIN_IMAGES_PER_S, self.images * trainer.world_size / seconds, on_epoch=True,
                      rank_zero_only=True)
