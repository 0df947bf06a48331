"""LightningModule of a drip step: descriptor model + ArcFace head.

The loss is computed on augmented query views only (docs/originals/drip.md); the
validation loss averages the loss of the plain reference view and of a
query view. The ArcFace kernel gets no weight decay. Under DDP the kernel is
split by class over the ranks (``DistributedArcFace``); checkpoints hold it
whole, so a run resumes on any rank count.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from embedlab.models.arcface import ArcFaceHead
from embedlab.models.backbone import DescriptorModel, DescriptorSpec
from embedlab.models.sharded_classifier import DistributedArcFace, exclude_shards_from_ddp
from embedlab.models.sharded_state import HeadLayout, load_sliced, save_whole

HEAD_KEY = "head.weight"


class DripModule(pl.LightningModule):
    def __init__(
        self,
        spec: dict[str, Any],
        n_classes: int,
        arcface_m: float = 0.4,
        arcface_s: float = 40.0,
        margin_warmup_epochs: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        plateau_factor: float = 0.9,
        plateau_patience: int = 2,
        pretrained: str | None = None,
        channels_last: bool = False,
        partial_fc: float = 1.0,
    ) -> None:
        super().__init__()
        # Plain types only: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["pretrained", "channels_last"])
        self.model = DescriptorModel(DescriptorSpec(**spec), pretrained=pretrained).use_channels_last(channels_last)
        self.head = ArcFaceHead(self.model.spec.embedding_dim, n_classes, m=arcface_m, s=arcface_s,
                                sample_rate=partial_fc)

    def margin(self) -> float:
        """ArcFace m, grown linearly over the warm-up epochs (a from-scratch head
        cannot meet the full margin at once)."""
        warmup = self.hparams.margin_warmup_epochs
        if warmup <= 0:
            return self.hparams.arcface_m
        return self.hparams.arcface_m * min(1.0, (self.current_epoch + 1) / (warmup + 1))

    @property
    def split_head(self) -> bool:
        return isinstance(self.head, DistributedArcFace)

    def setup(self, stage: str) -> None:
        """Under DDP: each rank holds its block of the ArcFace kernel's classes (1.5M × 256 is not replicated
        and all-reduced on every GPU), kept out of DDP's broadcast and gradient sync."""
        if self._trainer is None or self.trainer.world_size <= 1 or self.split_head:
            return
        whole = self.head.weight.detach().clone()
        dist.broadcast(whole, src=0)  # rank 0's kernel: it alone computed the W matrix before training
        self.head = DistributedArcFace(self.model.spec.embedding_dim, self.hparams.n_classes, self.hparams.arcface_m,
                                       self.hparams.arcface_s, sample_rate=self.hparams.partial_fc).to(whole.device)
        self.head.load_full_weight(whole)
        exclude_shards_from_ddp(self)

    def _head_layout(self) -> HeadLayout:
        """The kernel's columns: this rank's block under DDP, else all of them."""
        block, ranks = ((self.head.shard_offset, self.head.n_local), self.trainer.world_size) if self.split_head \
            else ((0, self.head.n_classes), 1)
        return HeadLayout(HEAD_KEY, [HEAD_KEY], [block], axis=1, n_classes=self.hparams.n_classes, ranks=ranks)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The kernel and its optimizer state saved whole, whatever the split (models/sharded_state.py)."""
        save_whole(checkpoint, self._head_layout(), [self.head.weight])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if HEAD_KEY in checkpoint["state_dict"]:  # (a model-only state dict has no head)
            load_sliced(checkpoint, self._head_layout())

    def loss(self, images: torch.Tensor, labels: torch.Tensor, m: float | None = None) -> torch.Tensor:
        return self._loss(self.model(images), labels, m)

    def _loss(self, embeddings: torch.Tensor, labels: torch.Tensor, m: float | None = None) -> torch.Tensor:
        if self.split_head:  # the CE over every rank's classes and the global batch
            return self.head(embeddings, labels, m=m)
        return self.head.loss(embeddings, labels, m=m)

    def _accuracy(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Share of rows whose nearest class centre is their class (no margin; every class, even with
        Partial FC). One more cosine matmul without gradient: about a third of the head's cost."""
        return (self.head.predict(embeddings.detach()) == labels).float().mean()

    def training_step(self, batch, batch_idx: int):
        if batch is None:  # every image of the batch was unreadable and skipped
            return None
        images, labels = batch
        embeddings = self.model(images)
        loss = self._loss(embeddings, labels, m=self.margin())
        self.log("train_loss", loss,
                 on_step=True, on_epoch=True, prog_bar=True, batch_size=len(labels), sync_dist=True)
        self.log("train_acc", self._accuracy(embeddings, labels), on_step=False, on_epoch=True,
                 batch_size=len(labels), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx: int):
        if batch is None:
            return None
        reference, query, labels = batch
        ref_embeddings, query_embeddings = self.model(reference), self.model(query)
        loss = 0.5 * (self._loss(ref_embeddings, labels) + self._loss(query_embeddings, labels))
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=len(labels))
        # The query views: can the model tell which class an edited copy comes from?
        self.log("val_acc", self._accuracy(query_embeddings, labels), on_epoch=True, batch_size=len(labels))
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("arcface_m", self.margin())
        self.log("gem_p", self.model.pool.p.detach())

    def configure_optimizers(self):
        head = [self.head.weight]
        body = [p for name, p in self.named_parameters() if not name.startswith("head.")]
        optimizer = torch.optim.Adam(
            [
                {"params": body, "weight_decay": self.hparams.weight_decay, "name": "body"},
                {"params": head, "weight_decay": 0.0, "name": "head"},
            ],
            lr=self.hparams.lr,
        )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.hparams.plateau_factor, patience=self.hparams.plateau_patience
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}
