"""Quality ops: blur, sharpen, JPEG, pixelization, pixel shuffling."""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
from PIL import Image

from embedlab.augment._albu import fblur, fpixel
from embedlab.resize import resize_array
from embedlab.augment.context import AugContext
from embedlab.augment.registry import Magnitude, draw, draw_int, register, side


@register("blur", neutral={"sigma": 0.0})
def blur(
    img: Image.Image, rng: np.random.Generator, ctx: AugContext, sigma: Magnitude = (0.002, 0.01)
) -> Image.Image:
    """Gaussian blur; ``sigma`` is a fraction of the shorter side
    (σ 2 px at 256 px is 0.0078). From σ ≈ 3.2 px on, the blur is computed at
    a lower resolution (see :func:`_wide_gaussian`)."""
    s = draw(rng, sigma) * side(img)
    if s < 0.1:  # a kernel this narrow is the identity
        return img.copy()
    arr = np.asarray(img)
    wide = _wide_gaussian(arr, s)
    if wide is not None:
        return Image.fromarray(wide, "RGB")
    kernel = fblur().create_gaussian_kernel_1d(s)
    if len(kernel) == 1:  # sigma < 0.29 px: the one-tap kernel [1.0] changes nothing
        return img.copy()
    return Image.fromarray(fpixel().separable_convolve(arr, kernel), "RGB")


def _wide_gaussian(arr: np.ndarray, s: float, rest: float = 1.5) -> np.ndarray | None:
    """A Gaussian blur of σ = ``s`` px at 1/f of the size: area reduction by f,
    the rest of the blur there (at least ``rest`` px), bilinear enlargement.
    The three variances add up to s² (box f²/12, enlargement f²/6). Within
    half a grey level of the direct convolution away from the borders, and
    4-9x faster for σ 4-20 px (the direct kernel is 7σ wide). None when
    ``s`` is too small for f >= 2."""
    h, w = arr.shape[:2]
    f = int(s / math.sqrt(rest * rest + 0.25))
    if f < 2 or min(h, w) // f < 4:
        return None
    sw, sh = round(w / f), round(h / f)
    f = (w / sw + h / sh) / 2  # the factor actually used
    small = cv2.resize(arr, (sw, sh), interpolation=cv2.INTER_AREA)
    kernel = fblur().create_gaussian_kernel_1d(math.sqrt(max(s * s - f * f / 4, 0.0)) / f)
    return cv2.resize(fpixel().separable_convolve(small, kernel), (w, h), interpolation=cv2.INTER_LINEAR)


@register("sharpen", neutral={"alpha": 0.0})
def sharpen(
    img: Image.Image,
    rng: np.random.Generator,
    ctx: AugContext,
    alpha: Magnitude = (0.2, 0.5),
    lightness: Magnitude = (0.5, 1.0),
) -> Image.Image:
    """albumentations' Sharpen kernel: identity blended with a Laplacian
    sharpener by ``alpha`` (0 none, 1 full)."""
    a, light = draw(rng, alpha), draw(rng, lightness)
    identity = np.zeros((3, 3), np.float32)
    identity[1, 1] = 1.0
    effect = np.full((3, 3), -1.0, np.float32)
    effect[1, 1] = 8.0 + light
    kernel = (1.0 - a) * identity + a * effect
    return Image.fromarray(fpixel().convolve(np.asarray(img), kernel), "RGB")


@register("jpeg")
def jpeg(
    img: Image.Image, rng: np.random.Generator, ctx: AugContext, quality: Magnitude = (30, 90)
) -> Image.Image:
    """Re-encode as JPEG at ``quality`` (1..95; lower is worse)."""
    q = min(95, max(1, draw_int(rng, quality)))
    # Pillow rather than cv2: cv2 would treat our RGB as BGR and subsample
    # chroma computed with the wrong luma weights.
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=q)
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


@register("pixelization", neutral={"ratio": 1.0})
def pixelization(
    img: Image.Image, rng: np.random.Generator, ctx: AugContext, ratio: Magnitude = (0.1, 1.0)
) -> Image.Image:
    """AugLy's pixelization: shrink by ``ratio`` then enlarge back with
    nearest neighbour (smaller ratio, bigger blocks). Same size."""
    r = min(1.0, max(draw(rng, ratio), 1.0 / side(img)))
    w, h = img.size
    # Antialiased reduction (embedlab.resize), then nearest-neighbour blocks as Pillow's NEAREST.
    small = resize_array(np.asarray(img), (max(1, round(w * r)), max(1, round(h * r))))
    return Image.fromarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST_EXACT), "RGB")


@register("shuffle_pixels", neutral={"fraction": 0.0})
def shuffle_pixels(
    img: Image.Image, rng: np.random.Generator, ctx: AugContext, fraction: Magnitude = (0.0, 0.4)
) -> Image.Image:
    """AugLy's shuffle_pixels: a random ``fraction`` of the pixels trade
    places among themselves."""
    f = draw(rng, fraction)
    arr = np.array(img)
    flat = arr.view(np.dtype("V3")).reshape(-1)  # one 3-byte item per pixel: faster fancy indexing
    idx = np.flatnonzero(rng.random(flat.shape[0]) < f)
    flat[idx] = flat[rng.permutation(idx)]
    return Image.fromarray(arr, "RGB")
