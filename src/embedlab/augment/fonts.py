"""Fonts for text, meme and screenshot ops, loaded once per (file, size).

``ImageFont.truetype`` parses the file on every call (about a millisecond), so
fonts are cached process-wide; a :class:`FontBank` itself only holds paths and
therefore pickles cheaply into DataLoader workers.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import ImageFont

# DejaVu covers Latin, Greek and Cyrillic; the "Display" cuts have almost no glyphs.
_DEFAULT_FONT_NAMES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
)
MIN_FONT_PX = 6


def default_font_paths() -> list[Path]:
    """The DejaVu fonts shipped with matplotlib (always installed with it)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = [folder / name for name in _DEFAULT_FONT_NAMES if (folder / name).is_file()]
    if not paths:
        raise FileNotFoundError(f"no DejaVu fonts found in {folder}")
    return paths


@functools.lru_cache(maxsize=1024)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    """A cached ``ImageFont.truetype(path, size)``."""
    return ImageFont.truetype(path, size)


class FontBank:
    """A set of font files; :meth:`font` picks one at a given pixel size."""

    def __init__(self, paths: Sequence[str | os.PathLike] | None = None) -> None:
        chosen = default_font_paths() if paths is None else [Path(p) for p in paths]
        if not chosen:
            raise ValueError("FontBank needs at least one font file")
        for p in chosen:
            if not p.is_file():
                raise FileNotFoundError(f"font file not found: {p}")
        self.paths: list[str] = [str(p) for p in chosen]

    def __len__(self) -> int:
        return len(self.paths)

    def font(self, rng: np.random.Generator, size_px: float) -> ImageFont.FreeTypeFont:
        """A random font of the bank at ``size_px`` (rounded, at least 6 px)."""
        path = self.paths[int(rng.integers(len(self.paths)))]
        return load_font(path, max(MIN_FONT_PX, int(round(size_px))))

    def __repr__(self) -> str:
        return f"FontBank({len(self.paths)} fonts)"
