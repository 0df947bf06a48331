"""LightningModule of the GeM trainer (ISC 2021 "bag of tricks", docs/originals/gem.md).

GemNet (backbone with last stride 1 → GeM → projector → BN neck) plus a
bias-free classifier on the neck feature. Loss: ce_weight·CE (label
smoothing) on the classifier logits + triplet_weight·soft batch-hard triplet
on the GeM feature, + kd_weight·distillation of the neck into the
descriptor-track head when the model has one. Adam with a warm-up / flat / cosine schedule stepped per
iteration.

The classifier is the only part that grows with the class count, so it is
the part that is split: over ``classifier_devices`` GPUs of one process
(:class:`ShardedLinear`), or one shard per DDP rank (the logits never leave
their rank; the softmax is reduced across ranks). Checkpoints always hold the
whole ``classifier.weight`` and its whole optimizer state, so a run resumes
on any number of devices or ranks. The exported descriptor model has no
classifier at all.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch

from embedlab.models.gem_net import GemNet, GemNetSpec
from embedlab.models.losses import combine_gem_loss, gem_loss, similarity_distillation, soft_batch_hard_triplet
from embedlab.models.lr_schedule import WarmupFlatCosine
from embedlab.models.sharded_classifier import (
    DistributedShardedCrossEntropy,
    ShardedLinear,
    exclude_shards_from_ddp,
)
from embedlab.models.sharded_state import HeadLayout, load_sliced, save_whole

CLASSIFIER_KEY = "classifier.weight"


class GemModule(pl.LightningModule):
    def __init__(
        self,
        spec: dict[str, Any],
        n_classes: int,
        ce_weight: float = 10.0,
        triplet_weight: float = 1.0,
        label_smoothing: float = 0.1,
        lr: float = 3.5e-4,
        weight_decay: float = 0.0,
        warmup_epochs: float = 5,
        flat_epochs: float = 5,
        epochs: int = 25,
        iters_per_epoch: int = 8000,
        classifier_devices: int = 1,
        pretrained: str | None = None,
        channels_last: bool = False,
        classifier_init: str = "normal",
        kd_weight: float = 1.0,
        kd_temperature: float = 2.0,
        kd_scale: float = 20.0,
        head_lr_mult: float = 1.0,
    ) -> None:
        super().__init__()
        # Plain types only: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["pretrained", "channels_last"])
        self.model = GemNet(GemNetSpec(**spec), pretrained=pretrained).use_channels_last(channels_last)
        self.n_classes = n_classes
        self.classifier = ShardedLinear(self.model.spec.proj_dim, n_classes, self._classifier_devices(),
                                        init=classifier_init)

    def _classifier_devices(self) -> list[torch.device] | int:
        wanted = int(self.hparams.classifier_devices)
        if wanted > 1 and torch.cuda.device_count() >= wanted:
            return [torch.device("cuda", i) for i in range(wanted)]
        return 1  # one shard that moves with the module

    @property
    def distributed_classifier(self) -> bool:
        return isinstance(self.classifier, DistributedShardedCrossEntropy)

    def setup(self, stage: str) -> None:
        """Under DDP: one classifier shard per rank, kept out of DDP's broadcast and gradient sync."""
        if self._trainer is None or self.trainer.world_size <= 1 or self.distributed_classifier:
            return
        full = self.classifier.full_weight()  # the same on every rank (same seed): shards of one init
        self.classifier = DistributedShardedCrossEntropy(self.model.spec.proj_dim, self.n_classes,
                                                         self.hparams.label_smoothing)
        self.classifier.load_full_weight(full)
        exclude_shards_from_ddp(self)

    def _head_layout(self) -> HeadLayout:
        """The classifier as blocks of rows: one per rank under DDP, else one per device of this process."""
        if self.distributed_classifier:
            return HeadLayout(CLASSIFIER_KEY, [CLASSIFIER_KEY], [(self.classifier.shard_offset,
                                                                  self.classifier.weight.shape[0])],
                              axis=0, n_classes=self.n_classes, ranks=self.trainer.world_size)
        return HeadLayout(CLASSIFIER_KEY, [f"classifier.shards.{i}" for i in range(len(self.classifier.sizes))],
                          list(zip(self.classifier.offsets, self.classifier.sizes)), axis=0, n_classes=self.n_classes,
                          ranks=1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The classifier and its optimizer state saved whole, whatever the split (models/sharded_state.py)."""
        save_whole(checkpoint, self._head_layout(), list(self.classifier.parameters()))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The checkpoint's whole classifier and its optimizer state → this module's blocks (any device or
        rank count)."""
        load_sliced(checkpoint, self._head_layout())

    def training_step(self, batch, batch_idx: int):
        if batch is None:  # every image of the batch was unreadable and skipped
            return None
        images, labels = batch
        gem_feature, neck = self.model.features(images)
        hp = self.hparams
        if self.distributed_classifier:  # CE over every rank's classes; triplet within this rank's batch
            loss, parts = combine_gem_loss(self.classifier(neck, labels), soft_batch_hard_triplet(gem_feature, labels),
                                           hp.ce_weight, hp.triplet_weight)
        else:
            loss, parts = gem_loss(self.classifier(neck), labels, gem_feature, hp.ce_weight, hp.triplet_weight,
                                   hp.label_smoothing)
        n = len(labels)
        if self.model.descriptor_head is not None:  # the 256-d head learns from the neck, which it leaves alone
            kd = similarity_distillation(self.model.head_feature(neck.detach()), neck, hp.kd_temperature,
                                         hp.kd_scale)
            loss = loss + hp.kd_weight * kd
            self.log("train_kd", kd.detach(), on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("train_ce", parts["ce"], on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("train_triplet", parts["triplet"], on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("gem_p", self.model.pool.p.detach())

    def configure_optimizers(self):
        hp = self.hparams
        # Two groups: the (pretrained) backbone at lr; the layers that start from random weights (projector,
        # neck, heads, classifier) at lr × head_lr_mult, so that a short run moves them without wrecking the body.
        # The BN neck's bias stays frozen (not in either group).
        body = [p for p in self.model.body.parameters() if p.requires_grad]
        body_ids = {id(p) for p in body}
        fresh = [p for p in self.parameters() if p.requires_grad and id(p) not in body_ids]
        optimizer = torch.optim.Adam([{"params": body}, {"params": fresh, "lr": hp.lr * hp.head_lr_mult}],
                                     lr=hp.lr, weight_decay=hp.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupFlatCosine(
            hp.warmup_epochs, hp.flat_epochs, hp.epochs, steps_per_epoch=max(1, int(hp.iters_per_epoch))))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def iterations_per_epoch(n_images: int, batch_size: int, configured: int | None) -> int:
    """``configured`` iterations, or enough batches to show every image about once."""
    return int(configured) if configured else max(1, math.ceil(n_images / batch_size))
