"""The face encoder's triplet loss and its miners, against brute-force loops and hand computations."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch

from embedlab.models import losses
from embedlab.models.triplet import all_triplets, hard_triplets, triplet_loss


def _distance(x: torch.Tensor, i: int, j: int) -> float:
    return math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(x[i], x[j])))


def _brute_force_hard(x: torch.Tensor, labels: list[int]) -> list[tuple[int, int, int]]:
    triplets = []
    for a in range(len(labels)):
        pos = [j for j in range(len(labels)) if j != a and labels[j] == labels[a]]
        neg = [j for j in range(len(labels)) if labels[j] != labels[a]]
        if pos and neg:
            triplets.append((a, max(pos, key=lambda j: _distance(x, a, j)),
                             min(neg, key=lambda j: _distance(x, a, j))))
    return triplets


def _brute_force_all(labels: list[int]) -> list[tuple[int, int, int]]:
    return [(a, p, n) for a, p, n in itertools.product(range(len(labels)), repeat=3)
            if a != p and labels[a] == labels[p] and labels[n] != labels[a]]


def _as_list(triplets) -> list[tuple[int, int, int]]:
    return list(zip(*(t.tolist() for t in triplets)))


# ---------------------------------------------------------------- miners

@pytest.mark.parametrize("seed", range(5))
def test_hard_miner_matches_a_brute_force_loop(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (24,), generator=g).tolist() + [7]  # label 7: a lone sample, no anchor
    x = torch.randn(len(labels), 8, generator=g)  # continuous: distance ties have probability 0
    assert _as_list(hard_triplets(x, torch.tensor(labels))) == _brute_force_hard(x, labels)


def test_hard_miner_ignores_gradients_and_precision():
    x = torch.randn(16, 8, requires_grad=True)
    labels = torch.arange(16) // 4
    a, p, n = hard_triplets(x.to(torch.bfloat16), labels)
    assert not (a.requires_grad or p.requires_grad or n.requires_grad)
    assert a.tolist() == list(range(16))


def test_gem_soft_triplet_reuses_the_hard_miner():
    assert losses.hardest_pairs is hard_triplets


@pytest.mark.parametrize("labels", [[0, 0, 1, 1], [0, 0, 0, 1, 1, 2], [3, 3, 3, 3, 5, 5, 5, 9, 9, 9, 9, 9, 4]])
def test_all_triplets_are_every_valid_triplet(labels):
    triplets = _as_list(all_triplets(torch.tensor(labels)))
    assert triplets == _brute_force_all(labels)  # same triplets, (a, p, n) order
    # Σ_c n_c (n_c − 1) (B − n_c)
    expected = sum(n * (n - 1) * (len(labels) - n) for n in Counter(labels).values())
    assert len(triplets) == expected


def test_all_triplets_count_of_a_pk_batch():
    p, k = 16, 4  # the original batch: 16 labels × 4 instances
    a, _, _ = all_triplets(torch.arange(p).repeat_interleave(k))
    assert a.numel() == p * k * (k - 1) * (p - 1) * k


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [1, 1, 1], [5]])
def test_no_triplet_is_a_clear_error(labels):
    x = torch.randn(len(labels), 4)
    for miner in ("all", "hard"):
        with pytest.raises(ValueError, match=r"no anchor.*>= 2 labels × >= 2 instances"):
            triplet_loss(x, torch.tensor(labels), miner, normalize=False)


# ---------------------------------------------------------------- loss

# Four 2-D points: x0 (0,0), x1 (1,0) label 0; x2 (0,2), x3 (3,4) label 1.
# d01 = 1, d02 = 2, d03 = 5, d12 = √5, d13 = √20, d23 = √13.
POINTS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
LABELS = torch.tensor([0, 0, 1, 1])


def test_hard_triplet_loss_by_hand():
    # Per anchor, hardest positive and nearest negative: 0: (1, 2); 1: (1, √5); 2: (√13, 2); 3: (√13, √20).
    loss, info = triplet_loss(POINTS, LABELS, "hard", margin=0.1, normalize=False)
    terms = [max(0.0, dp - dn + 0.1) for dp, dn in
             [(1, 2), (1, math.sqrt(5)), (math.sqrt(13), 2), (math.sqrt(13), math.sqrt(20))]]
    assert terms[2] > 0 and terms.count(0.0) == 3
    assert loss.item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    assert info == {"n_triplets": 4, "active_fraction": 0.25}


def test_all_triplet_loss_by_hand():
    # 8 triplets: each anchor, its one positive, each of the two negatives.
    pairs = [(1, 2), (1, 5), (1, math.sqrt(5)), (1, math.sqrt(20)),
             (math.sqrt(13), 2), (math.sqrt(13), math.sqrt(5)), (math.sqrt(13), 5), (math.sqrt(13), math.sqrt(20))]
    margin = 1.5
    terms = [max(0.0, dp - dn + margin) for dp, dn in pairs]
    loss, info = triplet_loss(POINTS, LABELS, "all", margin=margin, normalize=False)
    assert loss.item() == pytest.approx(sum(terms) / 8, rel=1e-6)
    assert info["n_triplets"] == 8
    assert info["active_fraction"] == pytest.approx(sum(t > 0 for t in terms) / 8)


@pytest.mark.parametrize("miner", ["all", "hard"])
def test_normalize_is_the_loss_of_unit_vectors(miner):
    torch.manual_seed(0)
    x = 3 * torch.randn(12, 6)
    labels = torch.arange(12) // 3
    unit = x / x.norm(dim=1, keepdim=True)
    normalised, _ = triplet_loss(x, labels, miner, normalize=True)
    assert normalised.item() == pytest.approx(triplet_loss(unit, labels, miner, normalize=False)[0].item(), rel=1e-5)
    assert normalised.item() != pytest.approx(triplet_loss(x, labels, miner, normalize=False)[0].item(), rel=1e-3)


@pytest.mark.parametrize("normalize", [False, True])
def test_gradient_matches_a_brute_force_loss(normalize):
    torch.manual_seed(1)
    labels = [0, 0, 0, 1, 1, 1, 2, 2, 3]
    base = torch.randn(len(labels), 5)
    x1, x2 = base.clone().requires_grad_(), base.clone().requires_grad_()
    loss, _ = triplet_loss(x1, torch.tensor(labels), "hard", margin=1.0, normalize=normalize)
    y = torch.nn.functional.normalize(x2, dim=1) if normalize else x2
    terms = [torch.relu(torch.dist(y[a], y[p]) - torch.dist(y[a], y[n]) + 1.0)
             for a, p, n in _brute_force_hard(y.detach(), labels)]
    reference = torch.stack(terms).mean()
    loss.backward()
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert x1.grad.abs().sum() > 0
    assert torch.allclose(x1.grad, x2.grad, atol=1e-5)


def test_gradient_is_finite_on_coincident_points():
    x = torch.zeros(4, 3, requires_grad=True)  # every distance 0: sqrt'(0) would be inf
    loss, info = triplet_loss(x, LABELS, "all", margin=0.1, normalize=False)
    loss.backward()
    assert loss.item() == pytest.approx(0.1, abs=1e-5) and info["active_fraction"] == 1.0
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("loss", ["all", "hard", "gem_soft"])
def test_gradient_is_the_same_bits_every_time(loss):
    """A demo-size P×K batch (16 × 4, 192-d; the GeM one 32 × 4, 2048-d): the backward of x[a] on CPU
    added repeated rows in a thread-dependent order, and runs of one seed ended at different EERs."""
    size, dim = (128, 2048) if loss == "gem_soft" else (64, 192)
    base = torch.randn(size, dim, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(size // 4).repeat_interleave(4)

    def gradient() -> torch.Tensor:
        x = base.clone().requires_grad_()
        value = losses.soft_batch_hard_triplet(x, labels) if loss == "gem_soft" else \
            triplet_loss(x, labels, loss, normalize=True)[0]
        value.backward()
        return x.grad

    first = gradient()
    assert all(torch.equal(gradient(), first) for _ in range(5))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown triplet miner"):
        triplet_loss(POINTS, LABELS, "semihard", normalize=False)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        triplet_loss(POINTS, LABELS[:3], "all", normalize=False)
    with pytest.raises(TypeError):
        triplet_loss(POINTS, LABELS, "all")  # normalize must be said explicitly
