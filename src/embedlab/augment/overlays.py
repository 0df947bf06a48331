"""Compositing with other images: opacity, overlay onto, overlay image.

The other image comes from ``ctx`` (the overlay pool, or a synthetic gradient
when there is none). Outputs keep the input size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from embedlab.augment.context import AugContext
from embedlab.augment.registry import Magnitude, draw, register, side


def _paste_position(rng: np.random.Generator, outer: tuple[int, int], inner: tuple[int, int]) -> tuple[int, int]:
    """A random top-left corner; an inner image larger than outer may start off-canvas."""
    (ow, oh), (iw, ih) = outer, inner
    x = int(rng.integers(min(0, ow - iw), max(0, ow - iw) + 1))
    y = int(rng.integers(min(0, oh - ih), max(0, oh - ih) + 1))
    return x, y


def _paste(base: Image.Image, top: Image.Image, xy: tuple[int, int], opacity: float) -> None:
    if opacity >= 1.0:
        base.paste(top, xy)
    else:
        base.paste(top, xy, Image.new("L", top.size, round(255 * max(0.0, opacity))))


@register("opacity")
def opacity(
    img: Image.Image, rng: np.random.Generator, ctx: AugContext, level: Magnitude = (0.2, 1.0)
) -> Image.Image:
    """Make the image translucent over another full-frame image: ``level`` 1
    is the image alone, 0 the other image alone."""
    background = ctx.other_image(rng, img.size)
    return Image.blend(background, img, min(1.0, max(0.0, draw(rng, level))))


@register("overlay_onto_image")
def overlay_onto_image(
    img: Image.Image,
    rng: np.random.Generator,
    ctx: AugContext,
    scale: Magnitude = (0.4, 0.8),
    opacity: Magnitude = 1.0,
) -> Image.Image:
    """Paste the image, shrunk to ``scale`` of the frame (aspect kept), at a
    random place onto another image stretched to the original size. Small
    scales are an "underlay" (the copy is a detail of a new picture)."""
    background = ctx.other_image(rng, img.size).copy()
    s = draw(rng, scale)
    new = (max(1, round(img.width * s)), max(1, round(img.height * s)))
    small = img.resize(new, Image.BILINEAR)
    _paste(background, small, _paste_position(rng, background.size, small.size), draw(rng, opacity))
    return background


@register("overlay_image")
def overlay_image(
    img: Image.Image,
    rng: np.random.Generator,
    ctx: AugContext,
    scale: Magnitude = (0.2, 0.5),
    opacity: Magnitude = (0.5, 1.0),
) -> Image.Image:
    """Paste another image on top of ours, its longer side ``scale`` of our
    shorter side (above 1 it covers everything), at a random place."""
    other = ctx.other_image(rng)
    s = draw(rng, scale) * side(img) / max(other.size)
    other = other.resize((max(1, round(other.width * s)), max(1, round(other.height * s))), Image.BILINEAR)
    out = img.copy()
    _paste(out, other, _paste_position(rng, out.size, other.size), draw(rng, opacity))
    return out
