"""LightningModule of the triplet stage: a face encoder trained with a triplet loss.

One phase per run (docs/originals/face_encoder.md): pre-training with all triplets of each
P×K batch, then fine-tuning with batch-hard triplets from the pre-trained
weights, at a lower learning rate. Validation embeds the validation images
once per epoch and scores the validation pairs: ``val_eer`` (lower is
better) is what checkpoints, the results table and sweeps look at.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from embedlab.models.face_encoder import FaceEncoder, FaceEncoderSpec
from embedlab.models.triplet import triplet_loss
from embedlab.verification import eer


class TripletModule(pl.LightningModule):
    def __init__(
        self,
        spec: dict[str, Any],
        miner: str = "all",
        margin: float = 0.1,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        pretrained: str | None = None,
        valid_pairs: list[tuple[int, int, int]] | None = None,
    ) -> None:
        super().__init__()
        # Plain types only: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["pretrained", "valid_pairs"])
        self.model = FaceEncoder(FaceEncoderSpec(**spec), pretrained=pretrained)
        # (index of image a, index of image b, same) into the validation image list.
        self.valid_pairs = np.asarray(valid_pairs or [], dtype=np.int64).reshape(-1, 3)
        self._val_embeddings: list[tuple[torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx: int):
        if batch is None:  # every image of the batch was unreadable and skipped
            return None
        images, labels = batch
        loss, info = triplet_loss(self.model(images), labels, self.hparams.miner, self.hparams.margin,
                                  normalize=self.model.spec.normalize_embeddings)
        n = len(labels)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("active_triplets", info["active_fraction"],
                 on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx: int):
        if batch is None:
            return
        images, indices = batch
        self._val_embeddings.append((indices.cpu(), F.normalize(self.model(images).float(), dim=-1).cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val_embeddings or len(self.valid_pairs) == 0:
            return
        indices = torch.cat([i for i, _ in self._val_embeddings])
        vectors = torch.cat([v for _, v in self._val_embeddings])
        self._val_embeddings.clear()
        table = torch.zeros(int(indices.max()) + 1, vectors.shape[1])
        table[indices] = vectors
        a, b, same = (torch.from_numpy(c) for c in self.valid_pairs.T)
        scores = (table[a] * table[b]).sum(dim=1).numpy()
        rate, _ = eer(scores, same.numpy())
        self.log("val_eer", float(rate), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
