"""Geometric ops: crops, scale, resize, rotation, perspective, padding, flips."""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

from embedlab.resize import resize_image
from embedlab.augment.context import AugContext
from embedlab.augment.registry import Magnitude, draw, random_color, register, side


@register("random_resized_crop", neutral={"scale": 1.0})
def random_resized_crop(
    img: Image.Image,
    rng: np.random.Generator,
    ctx: AugContext,
    scale: Magnitude = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    size: int | tuple[int, int] | None = None,
) -> Image.Image:
    """torchvision's RandomResizedCrop: a window of ``scale`` of the area and
    aspect ``ratio``, resized to ``size`` (w, h; default: the input size).
    Resampling: bilinear when enlarging, pixel-area averaging when reducing."""
    w, h = img.size
    out = img.size if size is None else (size, size) if isinstance(size, int) else tuple(size)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        area = draw(rng, scale) * w * h
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return resize_image(img, out, box=(x0, y0, x0 + cw, y0 + ch))
    # Same fallback as torchvision: the central crop with the closest ratio.
    cw, ch = (w, min(h, round(w / ratio[0]))) if w / h < ratio[0] else (min(w, round(h * ratio[1])), h)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return resize_image(img, out, box=(x0, y0, x0 + cw, y0 + ch))


@register("crop", neutral={"keep": 1.0})
def crop(
    img: Image.Image, rng: np.random.Generator, ctx: AugContext, keep: Magnitude = (0.5, 0.9)
) -> Image.Image:
    """Keep a random window; each side's kept fraction is drawn from ``keep``.
    The output is smaller than the input."""
    w, h = img.size
    cw = max(1, round(w * draw(rng, keep)))
    ch = max(1, round(h * draw(rng, keep)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x0, y0, x0 + cw, y0 + ch))


@register("scale", neutral={"factor": 1.0})
def scale(
    img: Image.Image, rng: np.random.Generator, ctx: AugContext, factor: Magnitude = (0.5, 1.5)
) -> Image.Image:
    """Resize by ``factor`` (both sides); downscaling loses detail for good."""
    f = draw(rng, factor)
    new = (max(1, round(img.width * f)), max(1, round(img.height * f)))
    return resize_image(img, new)


@register("resize")
def resize(img: Image.Image, rng: np.random.Generator, ctx: AugContext, size: int = 256) -> Image.Image:
    """Resize to ``size``×``size`` pixels, aspect not kept (torchvision's
    ``Resize((size, size))``). The one op whose magnitude is in pixels: recipes
    close with it to give every image of a set the same size. Bilinear when
    enlarging, pixel-area averaging when reducing (antialiased)."""
    size = max(1, int(size))
    return resize_image(img, (size, size)) if img.size != (size, size) else img.copy()


def _max_valid_rect(w: int, h: int, angle_rad: float) -> tuple[float, float]:
    """Largest axis-aligned rectangle inside a w×h rectangle rotated by angle."""
    long_side, short_side = (w, h) if w >= h else (h, w)
    sin_a, cos_a = abs(math.sin(angle_rad)), abs(math.cos(angle_rad))
    if short_side <= 2.0 * sin_a * cos_a * long_side or abs(sin_a - cos_a) < 1e-10:
        x = 0.5 * short_side
        return (x / sin_a, x / cos_a) if w >= h else (x / cos_a, x / sin_a)
    cos_2a = cos_a * cos_a - sin_a * sin_a
    return (w * cos_a - h * sin_a) / cos_2a, (h * cos_a - w * sin_a) / cos_2a


@register("rotate", neutral={"angle": 0.0})
def rotate(
    img: Image.Image,
    rng: np.random.Generator,
    ctx: AugContext,
    angle: Magnitude = (-30.0, 30.0),
    crop_border: bool = True,
) -> Image.Image:
    """Rotate by ``angle`` degrees (counter-clockwise). The output keeps the
    input size: with ``crop_border`` the largest rectangle free of black corners
    is cut out and resized back; without it the corners stay black."""
    a = draw(rng, angle)
    if not crop_border:  # as Image.rotate(a, BILINEAR), through OpenCV (5x faster)
        w, h = img.size
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), a, 1.0)
        out = cv2.warpAffine(np.asarray(img), matrix, (w, h), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return Image.fromarray(out, "RGB")
    w, h = img.size
    rw, rh = _max_valid_rect(w, h, math.radians(a))
    # One pixel of margin: bilinear edges are partly black (quarter turns are exact).
    m = 0 if a % 90 == 0 else 1
    bw, bh = min(rw, w + h) - 2 * m, min(rh, w + h) - 2 * m  # the kept rectangle, centred on the image
    if bw <= 0 or bh <= 0:  # a sliver of an image: rotate it whole, corners and all
        return img.rotate(a, resample=Image.BILINEAR, expand=True).resize((w, h), Image.BILINEAR)
    # One warp from each output pixel to its place in the input: the rectangle's point, turned back by
    # the angle about the centre (as Pillow's rotate-expand-then-crop-and-resize, interpolated once).
    c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
    sx, sy = bw / w, bh / h
    ox, oy = 0.5 * sx - bw / 2, 0.5 * sy - bh / 2
    matrix = np.array([[c * sx, -s * sy, w / 2 - 0.5 + c * ox - s * oy],
                       [s * sx, c * sy, h / 2 - 0.5 + s * ox + c * oy]])
    out = cv2.warpAffine(np.asarray(img), matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return Image.fromarray(out, img.mode)


@register("perspective", neutral={"sigma": 0.0})
def perspective(
    img: Image.Image, rng: np.random.Generator, ctx: AugContext, sigma: Magnitude = 0.05
) -> Image.Image:
    """AugLy's perspective: each corner moves by N(0, sigma·side); same size,
    black outside the warped image."""
    w, h = img.size
    s = draw(rng, sigma) * side(img)
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    dst = src + rng.normal(0.0, s, size=(4, 2)).astype(np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    out = cv2.warpPerspective(
        np.asarray(img), matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    return Image.fromarray(out, "RGB")


@register("pad", neutral={"frac": 0.0})
def pad(
    img: Image.Image,
    rng: np.random.Generator,
    ctx: AugContext,
    frac: Magnitude = (0.0, 0.1),
    color: tuple[int, int, int] | None = None,
) -> Image.Image:
    """Add borders (each side its own width, a ``frac`` of that side) in one
    colour (random unless given). The output is larger."""
    w, h = img.size
    left, right = (round(w * draw(rng, frac)) for _ in range(2))
    top, bottom = (round(h * draw(rng, frac)) for _ in range(2))
    fill = random_color(rng) if color is None else tuple(color)
    out = Image.new("RGB", (w + left + right, h + top + bottom), fill)
    out.paste(img, (left, top))
    return out


@register("hflip")
def hflip(img: Image.Image, rng: np.random.Generator, ctx: AugContext) -> Image.Image:
    return img.transpose(Image.FLIP_LEFT_RIGHT)


@register("vflip")
def vflip(img: Image.Image, rng: np.random.Generator, ctx: AugContext) -> Image.Image:
    return img.transpose(Image.FLIP_TOP_BOTTOM)
