"""The transform registry: every catalogue op under a stable name.

A transform is ``fn(img, rng, ctx, **magnitudes) -> PIL.Image``. Conventions
shared by all of them, so that recipes mean the same thing at any size:

- ``img`` is RGB; the result is a new RGB image (inputs are never mutated).
- All randomness comes from ``rng`` (a ``numpy.random.Generator``); the same
  seed gives the same output bytes.
- A magnitude is either a number (used as is) or a ``(low, high)`` range,
  drawn uniformly on every call (see :func:`draw`).
- Lengths are fractions of the image's shorter side, never pixels.
- An op may declare, per magnitude, the *neutral* value at which it changes
  nothing (``rotate``'s angle 0, ``crop``'s keep 1): a recipe's ``intensity``
  scales those magnitudes toward it (:func:`embedlab.augment.recipes.scale_steps`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol, Union

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from embedlab.augment.context import AugContext

Magnitude = Union[float, tuple[float, float]]


class Transform(Protocol):
    def __call__(
        self, img: Image.Image, rng: np.random.Generator, ctx: AugContext, **kwargs: Any
    ) -> Image.Image: ...


REGISTRY: dict[str, Transform] = {}
NEUTRAL: dict[str, dict[str, float]] = {}  # op -> {magnitude: the value at which the op changes nothing}


def register(name: str, neutral: dict[str, float] | None = None) -> Callable[[Transform], Transform]:
    """Decorator: add ``fn`` to :data:`REGISTRY` under ``name``, with its magnitudes' ``neutral`` values."""

    def deco(fn: Transform) -> Transform:
        if name in REGISTRY:
            raise ValueError(f"transform {name!r} is registered twice")
        REGISTRY[name] = fn
        NEUTRAL[name] = dict(neutral or {})
        return fn

    return deco


def get_transform(name: str) -> Transform:
    """The transform called ``name``; a clear error lists the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown transform {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def transform_names() -> list[str]:
    return sorted(REGISTRY)


def draw(rng: np.random.Generator, value: Magnitude) -> float:
    """A number stays itself; a ``(low, high)`` range is drawn uniformly."""
    if isinstance(value, (tuple, list)):
        low, high = value
        if low > high:
            raise ValueError(f"range {value!r} has low > high")
        # Degenerate ranges skip the draw; the rng stream stays deterministic either way.
        return float(low) if low == high else float(rng.uniform(low, high))
    return float(value)


def draw_int(rng: np.random.Generator, value: Magnitude) -> int:
    """Like :func:`draw`, rounded to the nearest integer."""
    return int(round(draw(rng, value)))


def random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def side(img: Image.Image) -> int:
    """The shorter side in pixels: the unit of every length magnitude."""
    return min(img.size)
