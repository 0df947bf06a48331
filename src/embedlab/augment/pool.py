"""Other images for overlay, underlay and opacity ops.

:class:`OverlayPool` serves small RGB copies of images given as paths (loaded
lazily, kept in a bounded LRU cache) or as in-memory PIL images. When there is
no pool, or an image cannot be read, ops get :func:`synthetic_background`
instead of failing: one broken JPEG must not stop a long training run.
"""

from __future__ import annotations

import io
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from embedlab.images import read_image_bytes
from embedlab.resize import resize_image

log = logging.getLogger(__name__)


def synthetic_background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A linear gradient between two random colours at a random angle."""
    w, h = size
    c0, c1 = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    arr = c0 + t[..., None] * (c1 - c0)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _shrink(img: Image.Image, max_side: int) -> Image.Image:
    img = img.convert("RGB")
    scale = max_side / max(img.size)
    if scale < 1.0:
        new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = resize_image(img, new)
    return img


class OverlayPool:
    """Random small RGB images from paths (lazy, cached) or PIL images.

    Returned images are shared with the cache: ops must not modify them in
    place (none of the catalogue ops do).
    """

    def __init__(
        self,
        sources: Sequence[str | os.PathLike | Image.Image] = (),
        max_side: int = 256,
        cache_size: int = 512,
    ) -> None:
        if max_side < 8:
            raise ValueError(f"max_side must be >= 8, got {max_side}")
        self.max_side = max_side
        self.cache_size = max(0, cache_size)
        self._sources: list[Path | Image.Image] = [
            s if isinstance(s, Image.Image) else Path(s) for s in sources
        ]
        # In-memory images are shrunk once up front: they are already paid for.
        self._sources = [
            _shrink(s, max_side) if isinstance(s, Image.Image) else s for s in self._sources
        ]
        self._cache: OrderedDict[int, Image.Image] = OrderedDict()
        self._broken: set[int] = set()  # unreadable files are not retried

    @property
    def n_failed(self) -> int:
        """How many source files could not be read."""
        return len(self._broken)

    @classmethod
    def from_paths(cls, paths: Sequence[str | os.PathLike], **kwargs: Any) -> OverlayPool:
        return cls(list(paths), **kwargs)

    @classmethod
    def from_images(cls, images: Sequence[Image.Image], **kwargs: Any) -> OverlayPool:
        return cls(list(images), **kwargs)

    def __len__(self) -> int:
        return len(self._sources)

    def sample(self, rng: np.random.Generator) -> Image.Image:
        """A random image of the pool (a synthetic one if empty or unreadable)."""
        if not self._sources:
            return synthetic_background(rng, (self.max_side, self.max_side))
        index = int(rng.integers(len(self._sources)))
        img = self._get(index)
        return img if img is not None else synthetic_background(rng, (self.max_side, self.max_side))

    def _get(self, index: int) -> Image.Image | None:
        src = self._sources[index]
        if isinstance(src, Image.Image):
            return src
        if index in self._broken:
            return None
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        try:
            with Image.open(io.BytesIO(read_image_bytes(src))) as raw:
                raw.draft("RGB", (self.max_side, self.max_side))  # JPEG: decode at reduced scale
                img = _shrink(raw, self.max_side)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            self._broken.add(index)
            if len(self._broken) <= 5:
                log.warning("overlay pool: cannot read %s (%s); using a synthetic image", src, exc)
            return None
        if self.cache_size:
            self._cache[index] = img
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return img

    def __getstate__(self) -> dict[str, Any]:
        # Workers rebuild their own cache; don't ship decoded pixels through pickle.
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        return state

    def __repr__(self) -> str:
        return f"OverlayPool({len(self)} images, max_side={self.max_side})"
