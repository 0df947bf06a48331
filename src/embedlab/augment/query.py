"""The drip stage's query augmenter: the catalogue scaled by an intensity I.

:data:`QUERY_TABLE` is the whole policy as data. Rows run in order; each row
fires independently with its probability. Probabilities follow the ISC 2021
drip-training code (docs/originals/drip.md); magnitudes are ours and grow with I
(lengths are fractions of the shorter side; ranges are drawn uniformly).
"blur/sharpen" and "overlay image / onto another image" are two rows each,
each at 0.1·I. JPEG deliberately differs from the original, whose quality I·U(10, 50) got
*worse* as I fell: here quality drops from U(60, 95) at I=0 to U(10, 50) at I=1.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
from PIL import Image

from embedlab.augment._albu import fblur, fpixel
from embedlab.augment.catalogue import get_transform
from embedlab.augment.context import AugContext
from embedlab.augment.fonts import FontBank
from embedlab.augment.pool import OverlayPool

Row = tuple[str, Callable[[float], float], Callable[[float], dict[str, Any]]]

# fmt: off
QUERY_TABLE: tuple[Row, ...] = (
    # name                 probability(I)       magnitudes(I)
    ("crop",               lambda i: 0.10 * i,  lambda i: {"keep": (1 - 0.5 * i, 1 - 0.1 * i)}),
    ("rotate",             lambda i: 0.10 * i,  lambda i: {"angle": (-180 * i, 180 * i)}),  # a range I·360° wide
    ("perspective",        lambda i: 0.10 * i,  lambda i: {"sigma": 30 * i / 384}),  # σ=30·I px at 384 px
    ("scale",              lambda i: 0.10,      lambda i: {"factor": (0.8 - 0.5 * i, 1.2 + 0.3 * i)}),
    ("pad",                lambda i: 0.05 * i,  lambda i: {"frac": (0.01, 0.01 + 0.2 * i)}),
    ("hflip",              lambda i: 0.50,      lambda i: {}),
    ("vflip",              lambda i: 0.10,      lambda i: {}),
    ("overlay_onto_image", lambda i: 0.10 * i,  lambda i: {"scale": (1 - 0.6 * i, 1 - 0.2 * i)}),
    ("overlay_image",      lambda i: 0.10 * i,  lambda i: {"scale": (0.1 + 0.1 * i, 0.2 + 0.5 * i),
                                                            "opacity": (1 - 0.5 * i, 1.0)}),
    ("opacity",            lambda i: 0.05 * i,  lambda i: {"level": (1 - 0.6 * i, 1 - 0.1 * i)}),
    ("grayscale",          lambda i: 0.10 * i,  lambda i: {}),
    ("color_jitter",       lambda i: 0.20,      lambda i: {"brightness": 0.2 + 0.3 * i, "contrast": 0.2 + 0.3 * i,
                                                            "saturation": 0.2 + 0.3 * i, "hue": 0.02 + 0.1 * i}),
    ("channel_invert",     lambda i: 0.05 * i,  lambda i: {}),
    ("channel_swap",       lambda i: 0.05 * i,  lambda i: {}),
    ("channel_shift",      lambda i: 0.05 * i,  lambda i: {"shift": (0.05, 0.05 + 0.25 * i)}),
    ("stripes",            lambda i: 0.10 * i,  lambda i: {"width": (0.01, 0.01 + 0.05 * i),
                                                            "density": (0.1, 0.2 + 0.5 * i),
                                                            "opacity": (0.2 + 0.3 * i, 0.5 + 0.5 * i)}),
    ("emoji",              lambda i: 0.10 * i,  lambda i: {"size": (0.1, 0.15 + 0.35 * i), "opacity": (0.6, 1.0)}),
    ("text",               lambda i: 0.10 * i,  lambda i: {"size": (0.06, 0.08 + 0.17 * i),
                                                            "n_chars": (3, 4 + 16 * i), "opacity": (0.5, 1.0)}),
    ("meme",               lambda i: 0.10 * i,  lambda i: {"caption": (0.1 + 0.05 * i, 0.15 + 0.25 * i)}),
    ("screenshot",         lambda i: 0.05 * i,  lambda i: {"bar": (0.08, 0.1 + 0.1 * i),
                                                            "border": (0.0, 0.01 + 0.06 * i)}),
    ("blur",               lambda i: 0.10 * i,  lambda i: {"sigma": (0.002, 0.002 + 0.01 * i)}),
    ("sharpen",            lambda i: 0.10 * i,  lambda i: {"alpha": (0.1, 0.2 + 0.6 * i)}),
    ("pixelization",       lambda i: 0.10 * i,  lambda i: {"ratio": (1 - 0.85 * i, 1 - 0.4 * i)}),
    ("shuffle_pixels",     lambda i: 0.10,      lambda i: {"fraction": (0.0, 0.05 + 0.25 * i)}),
    ("jpeg",               lambda i: 0.10,      lambda i: {"quality": (round(60 - 50 * i), round(95 - 45 * i))}),
)
# fmt: on


class QueryAug(NamedTuple):
    name: str
    probability: float
    kwargs: dict[str, Any]


def check_intensity(intensity: float, name: str = "qry_augs_intensity") -> float:
    """``intensity`` as a float, or a ValueError (naming the setting ``name``) unless it lies in [0, 1]."""
    try:
        value = float(intensity)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {intensity!r}") from None
    if isinstance(intensity, bool) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {intensity!r}")
    return value


def query_augmentation_table(intensity: float) -> list[QueryAug]:
    """The policy at ``intensity``: (name, probability, kwargs) in run order."""
    i = check_intensity(intensity)
    return [QueryAug(name, float(p(i)), kw(i)) for name, p, kw in QUERY_TABLE]


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def format_query_table(intensity: float) -> str:
    """The policy as a Markdown table (for docs and run artifacts)."""
    rows = query_augmentation_table(intensity)
    lines = [f"| op (I={float(intensity):g}) | p | magnitudes |", "|---|---|---|"]
    for name, p, kw in rows:
        mags = ", ".join(f"{k}={_fmt(v)}" for k, v in kw.items()) or "-"
        lines.append(f"| {name} | {p:.3f} | {mags} |")
    return "\n".join(lines)


class QueryAugmenter:
    """Applies :data:`QUERY_TABLE` at a fixed intensity to PIL images.

    ``aug(img, rng)`` returns a new RGB image of any size (the caller resizes
    to the model input). The same rng state gives the same bytes.
    """

    def __init__(
        self,
        intensity: float,
        pool: OverlayPool | None = None,
        fonts: FontBank | Sequence[str | os.PathLike] | None = None,
    ) -> None:
        self.intensity = check_intensity(intensity)
        self.table = query_augmentation_table(self.intensity)
        bank = fonts if isinstance(fonts, FontBank) else FontBank(fonts)
        self.ctx = AugContext(pool=pool, fonts=bank)
        # Import albumentations now, in the parent, so forked DataLoader workers inherit it.
        fpixel(), fblur()
        # Rows that can never fire are dropped once, not re-tested per image.
        self._steps = [
            (get_transform(r.name), r.name, r.probability, r.kwargs) for r in self.table if r.probability > 0
        ]

    @classmethod
    def from_paths(
        cls,
        intensity: float,
        paths: Sequence[str | os.PathLike],
        max_side: int = 256,
        cache_size: int = 512,
        fonts: FontBank | Sequence[str | os.PathLike] | None = None,
    ) -> QueryAugmenter:
        """An augmenter whose overlay pool is ``paths`` (e.g. the training images)."""
        return cls(intensity, OverlayPool(paths, max_side=max_side, cache_size=cache_size), fonts)

    def __call__(
        self, img: Image.Image, rng: np.random.Generator | int, trace: list[str] | None = None
    ) -> Image.Image:
        """Augment ``img``; names of the ops that fired are appended to ``trace``."""
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        out = img if img.mode == "RGB" else img.convert("RGB")
        fire = rng.random(len(self._steps))
        for u, (fn, name, p, kwargs) in zip(fire, self._steps):
            if u < p:
                out = fn(out, rng, self.ctx, **kwargs)
                if trace is not None:
                    trace.append(name)
        return out if out is not img else img.copy()

    def __repr__(self) -> str:
        return f"QueryAugmenter(intensity={self.intensity:g}, pool={self.ctx.pool!r}, fonts={self.ctx.fonts!r})"
