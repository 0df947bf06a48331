"""ArcFace margin head (additive angular margin), bias-free.

Kernel W is [embedding_dim, n_classes] and column-normalised, as in the ISC
2021 drip-training code, so that ``build_w_matrix`` can write class
centroids straight into it. When θ + m would pass π the target logit falls
back to cos θ − m·sin m (the original's rule), keeping it monotonic in θ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def add_margin(target: torch.Tensor, m: float) -> torch.Tensor:
    """cos(θ + m) of target cosines cos θ, or cos θ − m·sin m where θ + m would pass π."""
    sine = (1.0 - target.pow(2)).clamp(min=0.0).sqrt()
    with_margin = target * math.cos(m) - sine * math.sin(m)  # cos(θ + m)
    fallback = target - m * math.sin(m)
    return torch.where(target > math.cos(math.pi - m), with_margin, fallback)


def arcface_logits(cosine: torch.Tensor, labels: torch.Tensor, m: float, s: float) -> torch.Tensor:
    """Scaled logits with the angular margin ``m`` added to each target class."""
    cosine = cosine.float().clamp(-1.0, 1.0)
    target = cosine.gather(1, labels[:, None])
    return s * cosine.scatter(1, labels[:, None], add_margin(target, m))


class ArcFaceHead(nn.Module):
    def __init__(self, embedding_dim: int, n_classes: int, m: float = 0.4, s: float = 40.0) -> None:
        super().__init__()
        self.m, self.s = m, s
        self.weight = nn.Parameter(torch.empty(embedding_dim, n_classes))
        nn.init.xavier_uniform_(self.weight)

    @property
    def n_classes(self) -> int:
        return self.weight.shape[1]

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        # fp32 even under autocast: bf16 rounds cosines near 1 to 1.0 (step 2^-8),
        # where the target gradient vanishes.
        with torch.autocast(embeddings.device.type, enabled=False):
            return F.normalize(embeddings.float(), dim=1) @ F.normalize(self.weight.float(), dim=0)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, m: float | None = None) -> torch.Tensor:
        return arcface_logits(self.cosine(embeddings), labels, self.m if m is None else m, self.s)

    @torch.no_grad()
    def load_centroids(self, centroids: torch.Tensor) -> None:
        """Set W to the given class centroids ([embedding_dim, n_classes])."""
        if centroids.shape != self.weight.shape:
            raise ValueError(f"W matrix shape {tuple(centroids.shape)} != head {tuple(self.weight.shape)}")
        self.weight.copy_(F.normalize(centroids.float(), dim=0))
