"""The one stage lifecycle and runtime section: results do not depend on speed settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from embedlab.augment import OverlayPool, QueryAugmenter
from embedlab.config import DripConfig, Params, RuntimeConfig
from embedlab.data.drip import ClassImages, QueryViews
from embedlab.data.samplers import EpochIndices
from embedlab.images import list_images
from embedlab.stages.drip import step_loader


def _epoch_batches(tiny_demo: Path, workers: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    images = ClassImages(list_images(tiny_demo / "disc" / "training")[:10], aug_size=64, on_bad_image="fail")
    views = QueryViews(images, QueryAugmenter(1.0, OverlayPool.from_paths(images.paths)), 48, seed=5)
    sampler = EpochIndices(len(views), seed=5)
    sampler.set_epoch(epoch)  # what Lightning's fit loop does at every epoch
    params = Params(runtime=RuntimeConfig(device="cpu", num_workers=workers))
    return list(step_loader(views, DripConfig(batch_size=4), params, sampler))


def test_ranks_share_each_epochs_order_in_equal_parts():
    """Under DDP each rank draws its share of the one-rank order: together every item, each as many batches."""
    whole = [i for _, i in EpochIndices(7, seed=5)]
    for ranks in (2, 3):
        shares = [list(EpochIndices(7, seed=5, num_replicas=ranks, rank=r)) for r in range(ranks)]
        assert {len(share) for share in shares} == {-(-7 // ranks)}  # padded from the order's start
        assert {i for share in shares for _, i in share} == set(whole)
        assert [share[0][1] for share in shares] == whole[:ranks]  # interleaved: rank r takes items r, r + ranks...
    later = EpochIndices(7, seed=5, num_replicas=2, rank=1)
    later.set_epoch(4)
    assert {e for e, _ in later} == {4}
    with pytest.raises(ValueError, match="rank 2 outside 0..1"):
        EpochIndices(7, seed=5, num_replicas=2, rank=2)


@pytest.mark.parametrize("epoch", [0, 3])
def test_drip_training_views_are_the_same_for_any_worker_count(tiny_demo, epoch):
    """Each view is seeded by (seed, epoch, index): two workers make exactly the in-process views."""
    inline = _epoch_batches(tiny_demo, 0, epoch)
    parallel = _epoch_batches(tiny_demo, 2, epoch)
    assert len(inline) == len(parallel) == 3
    for (a, la), (b, lb) in zip(inline, parallel):
        assert torch.equal(la, lb) and torch.equal(a, b)


def test_drip_epochs_draw_new_views_and_a_new_order(tiny_demo):
    first, later = _epoch_batches(tiny_demo, 0, 0), _epoch_batches(tiny_demo, 0, 1)
    order = lambda batches: torch.cat([labels for _, labels in batches]).tolist()  # noqa: E731
    assert sorted(order(first)) == sorted(order(later)) == list(range(10)) and order(first) != order(later)
    by_class = lambda batches: {int(c): img for imgs, labels in batches for img, c in zip(imgs, labels)}  # noqa: E731
    assert not torch.equal(by_class(first)[0], by_class(later)[0])
