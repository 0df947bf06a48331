"""Quality ops: blur, sharpen, JPEG, pixelization, pixel shuffling."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from embedlab.augment._albu import fblur, fpixel
from embedlab.augment.context import AugContext
from embedlab.augment.registry import Magnitude, draw, draw_int, register, side


@register("blur")
def blur(
    img: Image.Image, rng: np.random.Generator, ctx: AugContext, sigma: Magnitude = (0.002, 0.01)
) -> Image.Image:
    """Gaussian blur; ``sigma`` is a fraction of the shorter side
    (σ 2 px at 256 px is 0.0078)."""
    s = draw(rng, sigma) * side(img)
    if s < 0.1:  # a kernel this narrow is the identity
        return img.copy()
    kernel = fblur().create_gaussian_kernel_1d(s)
    return Image.fromarray(fpixel().separable_convolve(np.asarray(img), kernel), "RGB")


@register("sharpen")
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


@register("pixelization")
def pixelization(
    img: Image.Image, rng: np.random.Generator, ctx: AugContext, ratio: Magnitude = (0.1, 1.0)
) -> Image.Image:
    """AugLy's pixelization: shrink by ``ratio`` then enlarge back with
    nearest neighbour (smaller ratio, bigger blocks). Same size."""
    r = min(1.0, max(draw(rng, ratio), 1.0 / side(img)))
    w, h = img.size
    small = img.resize((max(1, round(w * r)), max(1, round(h * r))), Image.BILINEAR)
    return small.resize((w, h), Image.NEAREST)


@register("shuffle_pixels")
def shuffle_pixels(
    img: Image.Image, rng: np.random.Generator, ctx: AugContext, fraction: Magnitude = (0.0, 0.4)
) -> Image.Image:
    """AugLy's shuffle_pixels: a random ``fraction`` of the pixels trade
    places among themselves."""
    f = draw(rng, fraction)
    arr = np.array(img)
    flat = arr.reshape(-1, 3)
    idx = np.flatnonzero(rng.random(flat.shape[0]) < f)
    flat[idx] = flat[rng.permutation(idx)]
    return Image.fromarray(arr, "RGB")
