"""Class centroids for ``build_w_matrix`` (docs/originals/drip.md).

Each centroid is the mean of the embeddings of the class's reference view
and ``n_augmentations`` query augmentations, L2-normalised. Written into the
ArcFace kernel, it lets a step with more classes start from a loss near the
previous step's instead of from a random head. Under DDP each rank embeds a
block of every view and the sums are all-reduced.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from embedlab.data.collate import collate_skipping_bad
from embedlab.models.backbone import DescriptorModel
from embedlab.models.eval_mode import eval_mode


@torch.no_grad()
def class_centroids(
    model: DescriptorModel,
    views: list[Dataset],
    n_classes: int,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    rank: int = 0,
    ranks: int = 1,
    titles: Sequence[str] | None = None,
) -> torch.Tensor:
    """W [embedding_dim, n_classes]: normalised mean embedding over ``views``.

    ``views`` are datasets of (image tensor, class index): the reference view
    and each fixed-seed augmentation. A class whose image was skipped as
    unreadable keeps a zero column. ``dtype``: the forward passes under
    autocast (bf16 / fp16 on a GPU: several times faster at 7.5M passes);
    the sums stay fp32. ``rank`` of ``ranks`` (an initialised process group,
    every rank calling): this rank embeds its contiguous block of each view,
    and the sums are all-reduced, so every rank returns the whole W.
    """
    device = torch.device(device)
    model.to(device)
    sums = torch.zeros(n_classes, model.spec.embedding_dim)
    with eval_mode(model):
        for number, view in enumerate(views):
            share = Subset(view, range(len(view) * rank // ranks, len(view) * (rank + 1) // ranks))
            loader = DataLoader(share, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skipping_bad)
            title = f"W matrix: {titles[number]}" if titles else "W matrix"  # which view this bar embeds
            for batch in tqdm(loader, desc=title, unit="batch", leave=False):
                if batch is None:
                    continue
                images, labels = batch
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    embeddings = model(images.to(device, non_blocking=True))
                sums.index_add_(0, labels, embeddings.float().cpu())
    if ranks > 1:
        # NCCL reduces device tensors only (gloo: CPU ones); 1.5M × 256 fp32 is 1.5 GB, once per step.
        on_device = sums.to(device)
        dist.all_reduce(on_device)
        sums = on_device.cpu()
    return F.normalize(sums, dim=1).T.contiguous()
