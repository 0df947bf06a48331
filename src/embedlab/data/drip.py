"""Drip-training data: classes from several sources, augmented query views.

Each class is one source image (docs/originals/drip.md). Classes are taken by count
from the DISC training set ("facebook"), then ImageNet-like images, then face
frames, in sorted file order so a larger step is a superset of a smaller one.
Training items are augmented query views; validation items pair the plain
reference view with one query view under a fixed seed, so the validation loss
is comparable from epoch to epoch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from embedlab.config import DataConfig
from embedlab.data.path_table import path_table
from embedlab.data.transforms import resize_square, to_uint8
from embedlab.images import check_on_bad_image, load_or_skip

log = logging.getLogger(__name__)

Augment = Callable[[Image.Image, np.random.Generator], Image.Image]


def class_folders(data: DataConfig) -> dict[str, Path]:
    """The folders drip takes classes from, in the order it takes them (the step's n_<name>_samples each)."""
    return {"facebook": Path(data.disc) / "training", "imagenet": Path(data.imagenet),
            "frm_faces": Path(data.frm_faces)}


class ClassImages:
    """Loads class images at the augmentation size (the original's 384 px copy).

    With ``on_bad_image="skip"`` an unreadable image is left out of its batch
    and recorded in ``bad_log`` (see :func:`embedlab.images.load_or_skip`).
    """

    def __init__(self, paths: Sequence[Path], aug_size: int, on_bad_image: str, bad_log: Path | None = None) -> None:
        self.paths = path_table(paths)  # worker memory flat in the number of classes
        self.aug_size = aug_size
        self.on_bad_image = check_on_bad_image(on_bad_image)
        self.bad_log = bad_log

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image | None:
        img = load_or_skip(self.paths[index], self.on_bad_image, self.bad_log, at_least=self.aug_size)
        return None if img is None else resize_square(img, self.aug_size)


TRAINING_STREAM = 1000  # training views' seeds: [seed, 1000, epoch, index], apart from the fixed-view streams


class QueryViews(Dataset):
    """(augmented query view, class index) for training, validation and W-matrix centroids.

    Every view's random draws are seeded by where it stands, never by which
    loader worker makes it, so any worker count gives the same data: an item
    ``index`` is the fixed view ``[seed, stream, index]`` (validation,
    centroids); an item ``(epoch, index)`` (from :class:`~embedlab.data.samplers.EpochIndices`)
    is that epoch's training view ``[seed, TRAINING_STREAM, epoch, index]``.
    """

    def __init__(self, images: ClassImages, augment: Augment, img_size: int, seed: int, stream: int = 0):
        self.images, self.augment, self.img_size = images, augment, img_size
        self.seed, self.stream = seed, stream

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int | tuple[int, int]):
        if isinstance(item, tuple):
            epoch, index = item
            key = [self.seed, TRAINING_STREAM, epoch, index]
        else:
            index, key = item, [self.seed, self.stream, item]
        img = self.images.load(index)
        if img is None:
            return None
        return to_uint8(self.augment(img, np.random.default_rng(key)), self.img_size), index


class ReferenceViews(Dataset):
    """(plain reference view, class index)."""

    def __init__(self, images: ClassImages, img_size: int):
        self.images, self.img_size = images, img_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = self.images.load(index)
        return None if img is None else (to_uint8(img, self.img_size), index)


class ValidationPairs(Dataset):
    """(reference view, query view with a fixed seed, class index) for a class subset."""

    def __init__(self, images: ClassImages, class_ids: Sequence[int], augment: Augment, img_size: int, seed: int):
        self.reference = ReferenceViews(images, img_size)
        self.query = QueryViews(images, augment, img_size, seed, stream=0)
        self.class_ids = list(class_ids)

    def __len__(self) -> int:
        return len(self.class_ids)

    def __getitem__(self, index: int):
        class_id = self.class_ids[index]
        reference, query = self.reference[class_id], self.query[class_id]
        if reference is None or query is None:
            return None
        return reference[0], query[0], class_id
