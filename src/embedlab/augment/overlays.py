"""Compositing with other images: opacity, overlay onto, overlay image,
underlay, overlay.

The other image comes from ``ctx`` (the overlay pool, or a synthetic gradient
when there is none). Outputs keep the input size, except ``underlay`` (the
other image's aspect) and ``overlay`` (``factor`` times larger).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from embedlab.resize import resize_array, resize_image
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


@register("opacity", neutral={"level": 1.0})
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
    small = resize_image(img, new)
    _paste(background, small, _paste_position(rng, background.size, small.size), draw(rng, opacity))
    return background


@register("overlay_image", neutral={"opacity": 0.0})
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
    other = resize_image(other, (max(1, round(other.width * s)), max(1, round(other.height * s))))
    out = img.copy()
    _paste(out, other, _paste_position(rng, out.size, other.size), draw(rng, opacity))
    return out


@register("underlay")
def underlay(
    img: Image.Image, rng: np.random.Generator, ctx: AugContext, scale: Magnitude = (0.04, 0.1)
) -> Image.Image:
    """What the original generator's code does under this name (docs/originals/gem.md): another picture,
    shrunk to ``scale`` of its sides (aspect kept), pasted onto ours at a random place. Our image keeps its
    size and most of its pixels. (Its description reads the other way round: ``paste_into``.)"""
    other = ctx.other_image(rng)
    s = draw(rng, scale)
    patch = resize_image(other, (max(1, min(img.width, round(other.width * s))),
                                 max(1, min(img.height, round(other.height * s)))))
    out = img.copy()
    out.paste(patch, _paste_position(rng, out.size, patch.size))
    return out


@register("paste_into")
def paste_into(
    img: Image.Image, rng: np.random.Generator, ctx: AugContext, area: Magnitude = (0.04, 0.1)
) -> Image.Image:
    """Paste the image into another picture, where it covers ``area`` of that
    picture's area (aspect kept), at a random place: the copy becomes a detail
    of a new image. The other picture keeps its own aspect ratio and gets our
    image's pixel count, so the output is about as large as the input.

    The original's description of its "underlay (paste into another image at
    scale 0.04–0.1)" read as an area fraction (docs/originals/gem.md); its code
    does the reverse (``underlay``). At a few per cent of the frame the copy is
    hard to recognise: a hard positive.
    """
    other = ctx.other_image(rng)
    k = (img.width * img.height / (other.width * other.height)) ** 0.5
    bw, bh = max(1, round(other.width * k)), max(1, round(other.height * k))
    background = resize_image(other, (bw, bh)) if (bw, bh) != other.size else other.copy()
    # Our image at `area` of the background, aspect kept, never larger than the background.
    s = min((min(1.0, max(0.0, draw(rng, area))) * bw * bh / (img.width * img.height)) ** 0.5,
            bw / img.width, bh / img.height)
    small = resize_image(img, (max(1, round(img.width * s)), max(1, round(img.height * s))))
    background.paste(small, _paste_position(rng, background.size, small.size))
    return background


@register("overlay")
def overlay(
    img: Image.Image, rng: np.random.Generator, ctx: AugContext, factor: Magnitude = (2.5, 3.5)
) -> Image.Image:
    """Our reading of the original's "image enlarged 2.5–3.5× onto another base
    image" (docs/originals/gem.md): another picture is resized to ``factor`` times
    our size (both sides) and our image, unchanged, is pasted at a random place
    on it. The output is ``factor`` times larger; after the recipe's closing
    resize our image fills 1/``factor`` of each side."""
    f = max(1.0, draw(rng, factor))
    size = (max(img.width, round(img.width * f)), max(img.height, round(img.height * f)))
    canvas = resize_array(np.asarray(ctx.other_image(rng)), size)  # a new array, also at the same size
    x, y = _paste_position(rng, size, img.size)
    canvas[y : y + img.height, x : x + img.width] = np.asarray(img)
    return Image.fromarray(canvas, "RGB")
