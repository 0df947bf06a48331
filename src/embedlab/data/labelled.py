"""Labelled image files as a training dataset: (image tensor, label)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from embedlab.data.path_table import PathTable
from embedlab.data.transforms import to_uint8
from embedlab.images import check_on_bad_image, load_or_skip


class LabelledImages(Dataset):
    """(uint8 image tensor [3, size, size], label) for (path, label) rows (the model normalises the pixels).

    ``rows``: objects with ``.path`` and ``.label`` (e.g. a face data set's
    rows) or (path, label) tuples; relative paths are
    read under ``root``. ``labels`` feeds a :class:`~embedlab.data.samplers.PKSampler`.
    ``augment`` (PIL -> PIL) runs before the resize. With ``on_bad_image="skip"``
    an unreadable image gives None (use ``collate_skipping_bad``).

    ``train_transform`` (image, rng, size -> image of size × size): applied to
    items ``(draw, index)`` (a :class:`~embedlab.data.samplers.PKSampler` with
    ``draws``), its rng seeded by ``(seed, draw)``: the same image for any
    loader worker count.
    """

    def __init__(self, rows: Sequence[Any], img_size: int, root: str | Path | None = None,
                 on_bad_image: str = "fail", bad_log: Path | None = None,
                 augment: Callable[[Image.Image], Image.Image] | None = None,
                 train_transform: Callable[[Image.Image, np.random.Generator, int], Image.Image] | None = None,
                 seed: int = 0) -> None:
        pairs = [(r[0], r[1]) if isinstance(r, (tuple, list)) else (r.path, r.label) for r in rows]
        base = Path(root) if root is not None else None
        # Arrays, not lists of objects: worker memory stays flat in the data size (data/path_table.py).
        self.paths = PathTable(base / p if base is not None else Path(p) for p, _ in pairs)
        self.labels = np.fromiter((int(label) for _, label in pairs), np.int64, len(pairs))
        self.img_size = img_size
        self.on_bad_image = check_on_bad_image(on_bad_image)
        self.bad_log, self.augment = bad_log, augment
        self.train_transform, self.seed = train_transform, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int | tuple[int, int]):
        draw, index = item if isinstance(item, tuple) else (None, item)
        img = load_or_skip(self.paths[index], self.on_bad_image, self.bad_log, at_least=self.img_size)
        if img is None:
            return None
        if self.augment is not None:
            img = self.augment(img).convert("RGB")
        if draw is not None and self.train_transform is not None:
            img = self.train_transform(img, np.random.default_rng([self.seed, draw]), self.img_size)
        return to_uint8(img, self.img_size), int(self.labels[index])
