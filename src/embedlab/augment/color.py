"""Colour ops: grayscale, jitter, brightness, colorize, channel tricks."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance

from embedlab.augment._albu import fpixel
from embedlab.augment.context import AugContext
from embedlab.augment.registry import Magnitude, draw, random_color, register


def _rgb(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), "RGB")


@register("grayscale")
def grayscale(img: Image.Image, rng: np.random.Generator, ctx: AugContext) -> Image.Image:
    """Luma (ITU-R 601) copied to the three channels."""
    return img.convert("L").convert("RGB")


@register("color_jitter", neutral={"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0})
def color_jitter(
    img: Image.Image,
    rng: np.random.Generator,
    ctx: AugContext,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
) -> Image.Image:
    """torchvision's ColorJitter: factors in [1-x, 1+x], hue shift in
    [-hue, hue] (of a full turn), applied in random order."""
    arr = np.asarray(img)
    factors = [
        max(0.0, rng.uniform(1 - brightness, 1 + brightness)),
        max(0.0, rng.uniform(1 - contrast, 1 + contrast)),
        max(0.0, rng.uniform(1 - saturation, 1 + saturation)),
        rng.uniform(-hue, hue),
    ]
    ops = [
        lambda a, f: fpixel().adjust_brightness_torchvision(a, np.float32(f)),
        fpixel().adjust_contrast_torchvision,
        fpixel().adjust_saturation_torchvision,
        fpixel().adjust_hue_torchvision,
    ]
    for i in rng.permutation(4):
        arr = ops[i](arr, float(factors[i]))
    return _rgb(arr)


@register("brightness", neutral={"factor": 1.0})
def brightness(
    img: Image.Image, rng: np.random.Generator, ctx: AugContext, factor: Magnitude = (0.5, 1.5)
) -> Image.Image:
    """Multiply brightness by ``factor`` (<1 darker)."""
    return ImageEnhance.Brightness(img).enhance(draw(rng, factor))


@register("colorize")
def colorize(img: Image.Image, rng: np.random.Generator, ctx: AugContext) -> Image.Image:
    """PIL ``ImageOps.colorize``: the luma mapped from one random colour
    (shadows) to another (highlights)."""
    black, white = random_color(rng), random_color(rng)
    gray = img.convert("L")
    # ImageOps.colorize's own lookup table, applied per channel to the 1-byte luma
    # (the same bytes, 2.5x faster than its lookup on an RGB copy of the luma).
    return Image.merge("RGB", [
        gray.point([black[c] + i * (white[c] - black[c]) // 255 for i in range(255)] + [white[c]]) for c in range(3)
    ])


@register("channel_invert")
def channel_invert(img: Image.Image, rng: np.random.Generator, ctx: AugContext) -> Image.Image:
    """Invert a random non-empty subset of the channels."""
    mask = rng.random(3) < 0.5
    if not mask.any():
        mask[int(rng.integers(3))] = True
    arr = np.array(img)
    arr[..., mask] = 255 - arr[..., mask]
    return _rgb(arr)


@register("channel_swap")
def channel_swap(img: Image.Image, rng: np.random.Generator, ctx: AugContext) -> Image.Image:
    """Permute the channels (never the identity)."""
    perms = [[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]]
    return _rgb(fpixel().channel_shuffle(np.asarray(img), perms[int(rng.integers(len(perms)))]))


@register("channel_shift", neutral={"shift": 0.0})
def channel_shift(
    img: Image.Image, rng: np.random.Generator, ctx: AugContext, shift: Magnitude = (0.0, 0.2)
) -> Image.Image:
    """Add a per-channel offset of ±``shift``·255 (a colour cast)."""
    offsets = np.array([draw(rng, shift) for _ in range(3)]) * rng.choice([-1.0, 1.0], size=3)
    arr = np.asarray(img).astype(np.int16) + np.round(offsets * 255).astype(np.int16)
    return _rgb(np.clip(arr, 0, 255))
