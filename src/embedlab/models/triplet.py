"""Triplet loss with an in-batch miner, for the deepfake-robust face encoder (docs/originals/face_encoder.md).

A triplet is (anchor, positive, negative) batch indices: positive has the
anchor's label (and is not the anchor), negative has another label. Two
miners:

- ``all_triplets``: every valid triplet of the batch (OML's AllTripletsMiner).
- ``hard_triplets``: batch-hard (Hermans et al. 2017, OML's
  HardTripletsMiner): per anchor that has both, the farthest positive and the
  nearest negative, chosen on detached Euclidean distances. The GeM
  trainer's soft triplet (``losses.py``) uses this same miner.

``triplet_loss`` is the mean of relu(d(a,p) − d(a,n) + margin) over the
mined triplets (OML's TripletLossWithMiner, mean reduction), on Euclidean
distances, of L2-normalised embeddings when ``normalize`` is set. Pass the
same ``normalize`` to pre-training and fine-tuning: the original trained one
phase on raw features and the other on normalised ones without saying so.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

#: (anchor, positive, negative) index tensors of equal length.
Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def pair_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Euclidean distance, clamped away from 0 so that its gradient stays finite."""
    return (a - b).pow(2).sum(dim=1).clamp(min=1e-12).sqrt()


def triplet_distances(x: torch.Tensor, a: torch.Tensor, p: torch.Tensor,
                      n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d(a, p), d(a, n)) of the mined triplets' rows of ``x``.

    Rows are taken with ``index_select``, not ``x[a]``: the backward of tensor
    indexing on CPU (``index_put_`` with accumulate) adds the repeated rows'
    gradients in a thread-dependent order, so a run's weights drift in their
    last bits and the same seed ends at another EER; ``index_add_`` adds them
    in index order.
    """
    anchors = x.index_select(0, a)
    return pair_distances(anchors, x.index_select(0, p)), pair_distances(anchors, x.index_select(0, n))


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) boolean [B, B] masks: same label other than self, other label."""
    labels = labels.reshape(-1)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return positive, ~same


def _no_triplets(labels: torch.Tensor) -> ValueError:
    counts = torch.unique(labels, return_counts=True)[1]
    most = int(counts.max()) if counts.numel() else 0
    return ValueError(
        f"triplet loss: no anchor has both a positive and a negative in the batch ({len(labels)} samples, "
        f"{counts.numel()} labels, at most {most} instances of one label): a batch needs >= 2 labels × "
        ">= 2 instances each; sample P labels × K instances (embedlab.data.samplers)")


def all_triplets(labels: torch.Tensor) -> Triplets:
    """Every (anchor, positive, negative) of the batch with anchor ≠ positive, ordered by (a, p, n).

    There are Σ_c n_c·(n_c − 1)·(B − n_c) of them (n_c samples of label c, batch size B).
    Raises ValueError when there is none.
    """
    positive, negative = _masks(labels)
    valid = positive[:, :, None] & negative[:, None, :]
    a, p, n = valid.nonzero(as_tuple=True)
    if a.numel() == 0:
        raise _no_triplets(labels)
    return a, p, n


def hard_triplets(embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
    """Batch-hard: for each anchor that has both, its farthest positive and its nearest negative.

    Chosen on detached fp32 Euclidean distances (no gradient through the
    choice); anchors are in increasing order. Raises ValueError when no
    anchor has both a positive and a negative.
    """
    with torch.no_grad():
        x = embeddings.detach().float()
        # Direct differences, not the |a|²+|b|²−2ab shortcut: exact, so near-ties pick the true extreme.
        dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
        positive, negative = _masks(labels)
        valid = positive.any(dim=1) & negative.any(dim=1)
        if not valid.any():
            raise _no_triplets(labels)
        farthest = dist.masked_fill(~positive, float("-inf")).argmax(dim=1)
        nearest = dist.masked_fill(~negative, float("inf")).argmin(dim=1)
        anchors = valid.nonzero().squeeze(1)
    return anchors, farthest[anchors], nearest[anchors]


MINERS = {"all": lambda embeddings, labels: all_triplets(labels), "hard": hard_triplets}


def triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, miner: Literal["all", "hard"],
                 margin: float = 0.1, *, normalize: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean of relu(d(a, p) − d(a, n) + margin) over the mined triplets, and info for logging.

    ``normalize``: L2-normalise the embeddings first (the miner then sees
    the normalised ones too). Distances are computed in fp32. Info:
    ``n_triplets`` and ``active_fraction`` (share of triplets with loss > 0).
    Raises ValueError on a batch without a valid triplet (< 2 labels, or no
    label with >= 2 instances).
    """
    if miner not in MINERS:
        raise ValueError(f"unknown triplet miner {miner!r}: expected one of {sorted(MINERS)}")
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"embeddings must be [B, D] and labels [B], got {tuple(embeddings.shape)} "
                         f"and {tuple(labels.shape)}")
    x = embeddings.float()
    if normalize:
        x = F.normalize(x, dim=1)
    a, p, n = MINERS[miner](x, labels)
    d_ap, d_an = triplet_distances(x, a, p, n)
    terms = F.relu(d_ap - d_an + margin)
    info = {"n_triplets": int(a.numel()), "active_fraction": float((terms.detach() > 0).float().mean())}
    return terms.mean(), info
