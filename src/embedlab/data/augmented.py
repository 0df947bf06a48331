"""A generated training set (``embedlab augment``) as labelled images.

Layout: an image store of ``<class>_<i>.jpg`` with ``_0`` the anchor, plus
the generator's ``manifest.json`` (:mod:`embedlab.augment.generator`).
Classes are indexed in sorted name order, so the labels of a set are the
same on every machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedlab.data.labelled import LabelledImages
from embedlab.data.shards import store_at


def image_key(class_name: str, index: int) -> str:
    """The store key of image ``index`` of a class (:func:`split_key` inverts it)."""
    return f"{class_name}_{index}"


def split_key(key: str) -> tuple[str, int]:
    """(class, index) of an image key: the class is the key up to its last "_" (class names may hold "_")."""
    name, index = key.rsplit("_", 1)
    return name, int(index)


class AugmentedSet(LabelledImages):
    """(image tensor, class index) for every image of a generated set."""

    def __init__(self, root: str | Path, img_size: int, on_bad_image: str = "fail",
                 bad_log: Path | None = None, train_transform=None, seed: int = 0) -> None:
        self.root = Path(root)
        store = store_at(self.root)
        if not (self.root / "manifest.json").is_file() or store is None:
            raise FileNotFoundError(
                f"{self.root}: not a generated training set (no manifest.json or no image store); "
                f"create it with `embedlab augment --recipe <name>` or `dvc repro augment`"
            )
        keys = np.char.decode(store.keys, "ascii")
        class_of_image = np.array([split_key(key)[0] for key in keys])
        self.classes, labels = np.unique(class_of_image, return_inverse=True)
        self.classes = self.classes.tolist()
        if len(self.classes) < 2:
            raise ValueError(f"{self.root}: {len(self.classes)} class(es); training needs at least 2")
        rows = [(self.root / f"{key}{store.suffix}", int(label)) for key, label in zip(keys, labels)]
        super().__init__(rows, img_size, on_bad_image=on_bad_image, bad_log=bad_log,
                         train_transform=train_transform, seed=seed)

    @property
    def n_classes(self) -> int:
        return len(self.classes)
