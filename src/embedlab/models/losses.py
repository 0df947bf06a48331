"""The GeM trainer's loss (docs/originals/gem.md): 10·CE (label smoothing 0.1) + 1·soft batch-hard triplet.

The triplet follows the re-ID "strong baseline"/fast-reid soft-margin form:
for each anchor the farthest positive and the nearest negative in the batch,
on Euclidean distances of the raw (not normalised) GeM features, and
``log(1 + exp(d_ap − d_an))`` averaged over the anchors. The miner is the
face encoder's batch-hard one (``models/triplet.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from embedlab.models.triplet import hard_triplets, triplet_distances

# The batch-hard miner is the encoder's (one implementation); the old name stays for callers.
hardest_pairs = hard_triplets


def soft_batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over anchors of log(1 + exp(d_ap − d_an)), hardest positive and negative per anchor.

    Anchors without another sample of their label, or without a sample of
    another label, are skipped. The chosen distances are recomputed in fp32
    from the features (exact, and the gradient flows through them only).
    """
    anchors, positives, negatives = hard_triplets(features, labels)
    x = features.float()
    d_ap, d_an = triplet_distances(x, anchors, positives, negatives)
    return F.softplus(d_ap - d_an).mean()


def combine_gem_loss(ce: torch.Tensor, triplet: torch.Tensor, ce_weight: float = 10.0,
                     triplet_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ce_weight·CE + triplet_weight·triplet, and the detached parts for logging (also for a sharded CE)."""
    total = ce_weight * ce + triplet_weight * triplet
    return total, {"ce": ce.detach(), "triplet": triplet.detach(), "total": total.detach()}


def gem_loss(logits: torch.Tensor, labels: torch.Tensor, gem_feature: torch.Tensor, ce_weight: float = 10.0,
             triplet_weight: float = 1.0, label_smoothing: float = 0.1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The trainer's loss: label-smoothed CE on the neck logits + soft batch-hard triplet on the GeM feature."""
    ce = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    return combine_gem_loss(ce, soft_batch_hard_triplet(gem_feature, labels), ce_weight, triplet_weight)


def similarity_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0,
                            scale: float = 20.0) -> torch.Tensor:
    """Knowledge distillation of in-batch similarities: T² · KL(teacher ‖ student) per row, averaged.

    Each sample's logits are its cosine similarities to the other samples of
    the batch, times ``scale`` (cosines alone, in [-1, 1], would give nearly
    flat distributions); both are softened by ``temperature`` (the original's
    T = 2) and the T² keeps the gradient's size independent of T (Hinton et
    al.). The teacher is detached: only the student learns. Self-similarities
    are left out (always 1 for both). A descriptor learns what matters for
    retrieval this way: which images are near which, not class logits.
    """
    n = student.shape[0]
    if n < 2:
        return student.sum() * 0.0  # no pair to compare; keeps the graph for DDP
    others = ~torch.eye(n, dtype=torch.bool, device=student.device)

    def log_probs(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.float(), dim=-1)
        return F.log_softmax((x @ x.T)[others].view(n, n - 1) * (scale / temperature), dim=-1)

    return F.kl_div(log_probs(student), log_probs(teacher.detach()), reduction="batchmean",
                    log_target=True) * temperature ** 2
