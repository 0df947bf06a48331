"""LightningModule of the GeM trainer (ISC 2021 "bag of tricks", docs/originals/gem.md).

GemNet (backbone with last stride 1 → GeM → projector → BN neck) plus a
bias-free classifier on the neck feature. Loss: ce_weight·CE (label
smoothing) on the classifier logits + triplet_weight·soft batch-hard triplet
on the GeM feature. Adam with a warm-up / flat / cosine schedule stepped per
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
import torch.distributed as dist

from embedlab.models.gem_net import GemNet, GemNetSpec
from embedlab.models.losses import combine_gem_loss, gem_loss, soft_batch_hard_triplet
from embedlab.models.lr_schedule import WarmupFlatCosine
from embedlab.models.sharded_classifier import (
    DistributedShardedCrossEntropy,
    ShardedLinear,
    exclude_shards_from_ddp,
    shard_sizes,
)

CLASSIFIER_KEY = "classifier.weight"
CLASSIFIER_OPTIMIZER_KEY = "classifier_optimizer_states"  # per optimizer: its classifier state, whole


def _per_row(value: Any) -> bool:
    """An optimizer state entry with one row per class (Adam's moments), not a scalar (its step)."""
    return torch.is_tensor(value) and value.dim() >= 1


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
    ) -> None:
        super().__init__()
        # Plain types only: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["pretrained", "channels_last"])
        self.model = GemNet(GemNetSpec(**spec), pretrained=pretrained).use_channels_last(channels_last)
        self.n_classes = n_classes
        self.classifier = ShardedLinear(self.model.spec.proj_dim, n_classes, self._classifier_devices())

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

    def _classifier_rows(self) -> list[tuple[int, int]]:
        """(first class, classes) of each classifier parameter this process holds, in parameter order."""
        if self.distributed_classifier:
            return [(self.classifier.shard_offset, self.classifier.weight.shape[0])]
        return list(zip(self.classifier.offsets, self.classifier.sizes))

    def _whole(self, local: list[torch.Tensor]) -> torch.Tensor:
        """The [n_classes, ...] tensor whose rows this process holds as ``local`` (one per classifier
        parameter), on the CPU. Under DDP every rank must call it (a collective)."""
        if not self.distributed_classifier:
            return torch.cat([t.detach().cpu() for t in local])
        (rows,) = local
        rows = rows.detach()
        sizes = shard_sizes(self.n_classes, self.trainer.world_size)
        padded = rows.new_zeros(max(sizes), *rows.shape[1:])
        padded[: rows.shape[0]] = rows
        gathered = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(gathered, padded)  # every rank saves (Lightning writes rank 0's file)
        return torch.cat([g[:n] for g, n in zip(gathered, sizes)]).cpu()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The classifier and its optimizer state saved whole, whatever the sharding: a run resumes on any
        number of ranks or devices (the optimizer's per-parameter state would otherwise hold rank 0's shard)."""
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("classifier.")]:
            del state[key]
        state[CLASSIFIER_KEY] = self._whole(list(self.classifier.parameters()))
        n_local = len(self._classifier_rows())
        for optimizer_state in checkpoint.get("optimizer_states", []):
            group = optimizer_state["param_groups"][-1]  # the classifier's parameters come last (registered last)
            held = [optimizer_state["state"].pop(i, None) for i in group["params"][-n_local:]]
            group["params"] = group["params"][:-n_local]
            whole = {}
            if all(held):  # Adam's step and its two moments per parameter (none before the first step)
                whole = {k: self._whole([h[k] for h in held]) if _per_row(v) else v for k, v in held[0].items()}
            checkpoint.setdefault(CLASSIFIER_OPTIMIZER_KEY, []).append(whole)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The checkpoint's whole classifier and its optimizer state → this module's shards (any device or
        rank count)."""
        state = checkpoint["state_dict"]
        full = state.pop(CLASSIFIER_KEY)
        rows = self._classifier_rows()
        if self.distributed_classifier:
            offset, size = rows[0]
            state[CLASSIFIER_KEY] = full[offset:offset + size]
        else:
            for i, (offset, size) in enumerate(rows):
                state[f"classifier.shards.{i}"] = full[offset:offset + size]
        for optimizer_state, whole in zip(checkpoint.get("optimizer_states", []),
                                          checkpoint.pop(CLASSIFIER_OPTIMIZER_KEY, [])):
            group = optimizer_state["param_groups"][-1]
            first = sum(len(g["params"]) for g in optimizer_state["param_groups"])
            for j, (offset, size) in enumerate(rows):
                group["params"].append(first + j)
                if whole:
                    optimizer_state["state"][first + j] = {k: v[offset:offset + size] if _per_row(v) else v
                                                           for k, v in whole.items()}

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
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("train_ce", parts["ce"], on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("train_triplet", parts["triplet"], on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("gem_p", self.model.pool.p.detach())

    def configure_optimizers(self):
        hp = self.hparams
        trainable = [p for p in self.parameters() if p.requires_grad]  # the BN neck's bias stays frozen
        optimizer = torch.optim.Adam(trainable, lr=hp.lr, weight_decay=hp.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupFlatCosine(
            hp.warmup_epochs, hp.flat_epochs, hp.epochs, steps_per_epoch=max(1, int(hp.iters_per_epoch))))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def iterations_per_epoch(n_images: int, batch_size: int, configured: int | None) -> int:
    """``configured`` iterations, or enough batches to show every image about once."""
    return int(configured) if configured else max(1, math.ceil(n_images / batch_size))
