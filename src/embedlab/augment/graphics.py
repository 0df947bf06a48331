"""Drawn overlays: stripes, emoji-like stickers and text.

Stickers are drawn with PIL primitives (faces, hearts, stars, suns), so no
emoji font or image set is needed.
"""

from __future__ import annotations

import math
import string

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from embedlab.augment.context import AugContext
from embedlab.augment.registry import Magnitude, draw, draw_int, random_color, register, side

_CHARS = string.ascii_letters + string.digits + "!?#@&%$*+-=:;.,'\""
_LETTERS = string.ascii_lowercase


def random_text(rng: np.random.Generator, n_chars: int, words: bool = False) -> str:
    """Random characters, or lowercase words separated by spaces when ``words``."""
    alphabet = _LETTERS if words else _CHARS
    chars = [alphabet[i] for i in rng.integers(len(alphabet), size=max(1, n_chars))]
    if words:  # roughly one space every five letters
        for i in range(3, len(chars) - 1, 5):
            chars[i] = " "
    return "".join(chars)


def _blend_mask(img: Image.Image, mask: np.ndarray, color: tuple[int, int, int]) -> Image.Image:
    """out = img·(1-mask) + color·mask, mask in [0, 1] of shape (h, w) (OpenCV: one pass, rounded)."""
    arr = np.asarray(img)
    solid = np.empty_like(arr)
    solid[:] = color
    return Image.fromarray(cv2.blendLinear(arr, solid, 1.0 - mask, mask), "RGB")


def _mod_below(u: np.ndarray, period: float, width: float) -> np.ndarray:
    """``u mod period < width`` (u float32, changed in place): floor arithmetic, 15× numpy's float mod."""
    q = u * np.float32(1.0 / period)
    np.floor(q, out=q)
    q *= np.float32(period)
    u -= q
    return u < width


@register("stripes", neutral={"opacity": 0.0})
def stripes(
    img: Image.Image,
    rng: np.random.Generator,
    ctx: AugContext,
    width: Magnitude = (0.01, 0.05),
    density: Magnitude = (0.2, 0.6),
    angle: Magnitude = (-90.0, 90.0),
    opacity: Magnitude = (0.3, 1.0),
    dashed: float = 0.3,
) -> Image.Image:
    """AugLy's overlay_stripes: parallel lines ``width`` (of the side) wide
    covering ``density`` of the image at ``angle``; dashed with probability
    ``dashed``."""
    w, h = img.size
    lw = max(1.0, draw(rng, width) * side(img))
    period = lw / min(0.95, max(0.05, draw(rng, density)))
    theta = math.radians(draw(rng, angle))
    alpha = draw(rng, opacity)
    color = random_color(rng)
    is_dashed = rng.random() < dashed
    x = np.arange(w, dtype=np.float32)[None, :]
    y = np.arange(h, dtype=np.float32)[:, None]
    u = x * np.float32(math.cos(theta)) + y * np.float32(math.sin(theta))
    u += np.float32(rng.uniform(0, period))
    mask = _mod_below(u, period, lw)
    if is_dashed:
        mask &= _mod_below(y * np.float32(math.cos(theta)) - x * np.float32(math.sin(theta)), 4 * lw, 2.5 * lw)
    return _blend_mask(img, mask.astype(np.float32) * np.float32(alpha), color)


def _face(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    outline = (40, 30, 20, 255)
    d.ellipse((0, 0, s - 1, s - 1), fill=(255, 204, 40, 255), outline=outline, width=max(1, s // 24))
    e = max(1, s // 10)
    for cx in (0.33 * s, 0.67 * s):
        d.ellipse((cx - e, 0.38 * s - e, cx + e, 0.38 * s + e), fill=outline)
    mood = int(rng.integers(3))
    box = (0.25 * s, 0.45 * s, 0.75 * s, 0.8 * s) if mood == 0 else (0.25 * s, 0.65 * s, 0.75 * s, 0.95 * s)
    if mood == 2:  # surprised
        d.ellipse((0.42 * s, 0.62 * s, 0.58 * s, 0.82 * s), fill=outline)
    else:
        d.arc(box, 20 if mood == 0 else 200, 160 if mood == 0 else 340, fill=outline, width=max(1, s // 14))


def _heart(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    c = random_color(rng) + (255,)
    r = s / 4
    d.ellipse((0, 0, 2 * r, 2 * r), fill=c)
    d.ellipse((s - 2 * r, 0, s, 2 * r), fill=c)
    d.polygon([(0.02 * s, 1.25 * r), (s * 0.98, 1.25 * r), (s / 2, s - 1)], fill=c)


def _star(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    c = random_color(rng) + (255,)
    pts = []
    for k in range(10):
        r = s / 2 if k % 2 == 0 else s / 5
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((s / 2 + r * math.cos(a), s / 2 + r * math.sin(a)))
    d.polygon(pts, fill=c, outline=(0, 0, 0, 255))


def _sun(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    petal, core = random_color(rng) + (255,), random_color(rng) + (255,)
    for k in range(8):
        a = k * math.pi / 4
        cx, cy = s / 2 + 0.3 * s * math.cos(a), s / 2 + 0.3 * s * math.sin(a)
        d.ellipse((cx - s / 6, cy - s / 6, cx + s / 6, cy + s / 6), fill=petal)
    d.ellipse((0.3 * s, 0.3 * s, 0.7 * s, 0.7 * s), fill=core)


_STICKERS = (_face, _heart, _star, _sun)


@register("emoji", neutral={"opacity": 0.0})
def emoji(
    img: Image.Image,
    rng: np.random.Generator,
    ctx: AugContext,
    size: Magnitude = (0.15, 0.3),
    opacity: Magnitude = (0.6, 1.0),
) -> Image.Image:
    """An emoji-like sticker (face, heart, star, sun) ``size`` of the side wide,
    at a random place, with ``opacity``."""
    s = max(4, round(draw(rng, size) * side(img)))
    sticker = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    _STICKERS[int(rng.integers(len(_STICKERS)))](ImageDraw.Draw(sticker), s, rng)
    a = draw(rng, opacity)
    mask = sticker.getchannel("A")
    if a < 1.0:
        mask = mask.point(lambda v: round(v * a))
    x = int(rng.integers(0, max(1, img.width - s + 1)))
    y = int(rng.integers(0, max(1, img.height - s + 1)))
    out = img.copy()
    out.paste(sticker.convert("RGB"), (x, y), mask)
    return out


@register("text", neutral={"opacity": 0.0})
def text(
    img: Image.Image,
    rng: np.random.Generator,
    ctx: AugContext,
    size: Magnitude = (0.08, 0.2),
    n_chars: Magnitude = (3, 12),
    opacity: Magnitude = (0.5, 1.0),
    content: str | None = None,
) -> Image.Image:
    """AugLy's overlay_text: a random string (or ``content``) in a random
    DejaVu font ``size`` of the side high, random colour and place; text
    running off the right edge is cut, as in AugLy."""
    font = ctx.fonts.font(rng, draw(rng, size) * side(img))
    s = content if content is not None else random_text(rng, draw_int(rng, n_chars))
    x = int(rng.integers(0, max(1, int(img.width * 0.8))))
    y = int(rng.integers(0, max(1, int(img.height - font.size))))
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).text((x, y), _visible_prefix(font, s, img.width - x), fill=round(255 * draw(rng, opacity)),
                              font=font)
    out = img.copy()
    box = mask.getbbox()
    if box is not None:  # paste only where the text is: the same pixels, less work
        out.paste(random_color(rng), box, mask.crop(box))
    else:
        random_color(rng)  # keep the rng stream of an empty draw
    return out


def _visible_prefix(font: ImageFont.FreeTypeFont, s: str, room: float) -> str:
    """The part of ``s`` that can reach into ``room`` pixels: rendering the
    characters far past the right edge (most of a large font's text) costs
    time and changes no pixel. A margin of one font size covers overhangs."""
    limit = room + font.size
    if len(s) < 2 or font.getlength(s) <= limit:
        return s
    lo, hi = 1, len(s)  # the shortest prefix whose advance passes the limit (getlength grows with the prefix)
    while lo < hi:
        mid = (lo + hi) // 2
        if font.getlength(s[:mid]) > limit:
            hi = mid
        else:
            lo = mid + 1
    return s[:lo]
