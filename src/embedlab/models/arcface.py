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


def fp32_cosine(embeddings: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Cosines of the rows of ``embeddings`` with the columns of ``kernel`` [dim, classes], in fp32 even under
    autocast: bf16 rounds cosines near 1 to 1.0 (step 2^-8), where the target gradient vanishes."""
    with torch.autocast(embeddings.device.type, enabled=False):
        return F.normalize(embeddings.float(), dim=1) @ F.normalize(kernel.float(), dim=0)


def sample_class_columns(positives: torch.Tensor, n_classes: int, rate: float,
                         generator: torch.Generator) -> torch.Tensor:
    """Partial FC's class centres for one step: every class of the batch (``positives``) and random others, in
    all max(positives, ⌈rate · n_classes⌉) columns, sorted. The softmax runs over these only: at 1.5M classes
    and rate 0.1 a tenth of the head's matmul, logits and gradient."""
    keep = min(n_classes, max(int(positives.numel()), math.ceil(rate * n_classes)))
    draw = torch.rand(n_classes, generator=generator).to(positives.device)
    draw[positives] = 2.0  # above every draw in [0, 1): the batch's classes are always kept
    return draw.topk(keep).indices.sort().values


def columns_of(labels: torch.Tensor, columns: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Each label's position among the sampled ``columns``; -1 for a label not among them."""
    position = torch.full((n_classes,), -1, dtype=torch.long, device=labels.device)
    position[columns] = torch.arange(len(columns), device=labels.device)
    return position[labels]


def arcface_logits(cosine: torch.Tensor, labels: torch.Tensor, m: float, s: float) -> torch.Tensor:
    """Scaled logits with the angular margin ``m`` added to each target class."""
    cosine = cosine.float().clamp(-1.0, 1.0)
    target = cosine.gather(1, labels[:, None])
    return s * cosine.scatter(1, labels[:, None], add_margin(target, m))


class ArcFaceHead(nn.Module):
    """``sample_rate`` < 1: Partial FC in training (:func:`sample_class_columns`); evaluation uses every class."""

    def __init__(self, embedding_dim: int, n_classes: int, m: float = 0.4, s: float = 40.0,
                 sample_rate: float = 1.0) -> None:
        super().__init__()
        self.m, self.s, self.sample_rate = m, s, sample_rate
        self.weight = nn.Parameter(torch.empty(embedding_dim, n_classes))
        nn.init.xavier_uniform_(self.weight)
        self.generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)

    @property
    def n_classes(self) -> int:
        return self.weight.shape[1]

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return fp32_cosine(embeddings, self.weight)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, m: float | None = None) -> torch.Tensor:
        return arcface_logits(self.cosine(embeddings), labels, self.m if m is None else m, self.s)

    @torch.no_grad()
    def predict(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The class whose centre is nearest (highest cosine, no margin), per row."""
        return self.cosine(embeddings).argmax(dim=1)

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor, m: float | None = None) -> torch.Tensor:
        """Mean CE of the ArcFace logits: over every class, or (training, ``sample_rate`` < 1) the sampled ones."""
        m = self.m if m is None else m
        if not (self.training and self.sample_rate < 1.0):
            return F.cross_entropy(arcface_logits(self.cosine(embeddings), labels, m, self.s), labels)
        columns = sample_class_columns(labels.unique(), self.n_classes, self.sample_rate, self.generator)
        cosine = fp32_cosine(embeddings, self.weight[:, columns])
        sampled = columns_of(labels, columns, self.n_classes)
        return F.cross_entropy(arcface_logits(cosine, sampled, m, self.s), sampled)

    @torch.no_grad()
    def load_centroids(self, centroids: torch.Tensor) -> None:
        """Set W to the given class centroids ([embedding_dim, n_classes])."""
        if centroids.shape != self.weight.shape:
            raise ValueError(f"W matrix shape {tuple(centroids.shape)} != head {tuple(self.weight.shape)}")
        self.weight.copy_(F.normalize(centroids.float(), dim=0))
