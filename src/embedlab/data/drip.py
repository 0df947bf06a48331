"""Drip-training data: classes from several sources, augmented query views.

Each class is one source image (REFERENCE.md §1). Classes are taken by count
from the DISC training set ("facebook"), then ImageNet-like images, then face
frames, in sorted file order so a larger step is a superset of a smaller one.
Training items are augmented query views; validation items pair the plain
reference view with one query view under a fixed seed, so the validation loss
is comparable from epoch to epoch.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from embedlab.data.transforms import resize_square, to_tensor
from embedlab.images import check_on_bad_image, list_images, load_or_skip

log = logging.getLogger(__name__)

Augment = Callable[[Image.Image, np.random.Generator], Image.Image]


@dataclasses.dataclass(frozen=True)
class ClassSource:
    name: str
    folder: Path
    count: int


def select_classes(sources: Sequence[ClassSource]) -> list[Path]:
    """The class images: the first ``count`` images of each source, in order."""
    classes: list[Path] = []
    for source in sources:
        if source.count <= 0:
            continue
        images = list_images(source.folder)
        if len(images) < source.count:
            raise ValueError(
                f"{source.folder}: {source.name} has {len(images)} images, the step asks for {source.count}"
            )
        classes.extend(images[: source.count])
    if not classes:
        raise ValueError("the drip step selects no classes: set n_facebook_samples (or another source) above 0")
    return classes


def draw_seed() -> int:
    """A seed from torch's global generator: seeded by Lightning, advancing every call,
    and re-seeded per DataLoader worker, so augmentations differ across epochs yet
    repeat for the same ``seed``."""
    return int(torch.randint(0, 2**62, ()).item())


class ClassImages:
    """Loads class images at the augmentation size (the original's 384 px copy).

    With ``on_bad_image="skip"`` an unreadable image is left out of its batch
    and recorded in ``bad_log`` (see :func:`embedlab.images.load_or_skip`).
    """

    def __init__(self, paths: Sequence[Path], aug_size: int, on_bad_image: str, bad_log: Path | None = None) -> None:
        self.paths = list(paths)
        self.aug_size = aug_size
        self.on_bad_image = check_on_bad_image(on_bad_image)
        self.bad_log = bad_log

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image | None:
        img = load_or_skip(self.paths[index], self.on_bad_image, self.bad_log)
        return None if img is None else resize_square(img, self.aug_size)


class QueryViews(Dataset):
    """(augmented query view, class index) for training and for W-matrix centroids."""

    def __init__(self, images: ClassImages, augment: Augment, img_size: int, seed_for: Callable[[int], object] | None = None):
        self.images, self.augment, self.img_size = images, augment, img_size
        self.seed_for = seed_for  # fixed per-item seed (anything np.random.default_rng takes); None: fresh draws

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = self.images.load(index)
        if img is None:
            return None
        rng = np.random.default_rng(self.seed_for(index) if self.seed_for else draw_seed())
        view = resize_square(self.augment(img, rng).convert("RGB"), self.img_size)
        return to_tensor(view), index


class ReferenceViews(Dataset):
    """(plain reference view, class index)."""

    def __init__(self, images: ClassImages, img_size: int):
        self.images, self.img_size = images, img_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = self.images.load(index)
        return None if img is None else (to_tensor(resize_square(img, self.img_size)), index)


class ValidationPairs(Dataset):
    """(reference view, query view with a fixed seed, class index) for a class subset."""

    def __init__(self, images: ClassImages, class_ids: Sequence[int], augment: Augment, img_size: int, seed: int):
        self.reference = ReferenceViews(images, img_size)
        self.query = QueryViews(images, augment, img_size, seed_for=lambda i: [seed, 0, i])
        self.class_ids = list(class_ids)

    def __len__(self) -> int:
        return len(self.class_ids)

    def __getitem__(self, index: int):
        class_id = self.class_ids[index]
        reference, query = self.reference[class_id], self.query[class_id]
        if reference is None or query is None:
            return None
        return reference[0], query[0], class_id


def collate_skipping_bad(batch):
    """Default collation after dropping items whose image was skipped as unreadable."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return None
    return torch.utils.data.default_collate(kept)
