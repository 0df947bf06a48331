"""The copy edits that turn demo references into demo queries.

Written with Pillow/numpy and deliberately separate from the training
augmentations (``embedlab.augment``): a model must not be tested on exactly
the transformations it was trained on. Edits are moderate, like real-world
copies (re-posted, captioned, recoloured, pasted into another picture), so an
ImageNet-pretrained model finds a fair share of them, but not all.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageFont, ImageDraw, ImageOps

_WORDS = ("SALE", "wow", "look at this", "#tbt", "LOL", "2021", "copy", "my trip", "omg", "best day",
          "nature", "repost", "follow me", "share!", "new", "photo", "weekend", "hello")


@lru_cache(maxsize=1)
def _font_path() -> str:
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf")


def _crop_zoom(img: Image.Image, rng: np.random.Generator, bg: Callable[[], Image.Image]) -> Image.Image:
    """Keep 60-90 % of each side (a zoomed-in part of the picture)."""
    w, h = img.size
    cw, ch = round(w * rng.uniform(0.6, 0.9)), round(h * rng.uniform(0.6, 0.9))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BICUBIC)


def _rotate(img: Image.Image, rng: np.random.Generator, bg: Callable[[], Image.Image]) -> Image.Image:
    """4-15 degrees either way; the corners are filled with a flat grey."""
    angle = float(rng.uniform(4, 15) * rng.choice([-1, 1]))
    fill = (int(rng.integers(0, 256)),) * 3
    return img.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=fill)


def _flip(img: Image.Image, rng: np.random.Generator, bg: Callable[[], Image.Image]) -> Image.Image:
    return ImageOps.mirror(img) if rng.random() < 0.8 else ImageOps.flip(img)


def _colour(img: Image.Image, rng: np.random.Generator, bg: Callable[[], Image.Image]) -> Image.Image:
    """Brightness, contrast and saturation each scaled by 0.6-1.5."""
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(float(rng.uniform(0.6, 1.5)))
    return img


def _grayscale(img: Image.Image, rng: np.random.Generator, bg: Callable[[], Image.Image]) -> Image.Image:
    return ImageOps.grayscale(img).convert("RGB")


def _blur(img: Image.Image, rng: np.random.Generator, bg: Callable[[], Image.Image]) -> Image.Image:
    """Gaussian blur of 0.6-1.6 % of the long side (about 1-2.5 px at 160 px)."""
    return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.006, 0.016) * max(img.size))))


def _paste(img: Image.Image, rng: np.random.Generator, bg: Callable[[], Image.Image]) -> Image.Image:
    """The copy, at 50-80 % of the size of another photo, pasted into it."""
    base = bg().copy()
    s = rng.uniform(0.5, 0.8) * min(base.size) / min(img.size)
    small = img.resize((max(8, round(img.width * s)), max(8, round(img.height * s))), Image.Resampling.BICUBIC)
    small = small.crop((0, 0, min(small.width, base.width), min(small.height, base.height)))
    x, y = int(rng.integers(0, base.width - small.width + 1)), int(rng.integers(0, base.height - small.height + 1))
    base.paste(small, (x, y))
    return base


def _text(img: Image.Image, rng: np.random.Generator, bg: Callable[[], Image.Image]) -> Image.Image:
    """A caption of 1-2 words, 8-16 % of the height, with an outline."""
    img = img.copy()
    size = max(8, round(img.height * rng.uniform(0.08, 0.16)))
    font = ImageFont.truetype(_font_path(), size)
    words = " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 3))))
    draw = ImageDraw.Draw(img)
    l, t, r, b = draw.textbbox((0, 0), words, font=font)
    x = int(rng.integers(0, max(1, img.width - (r - l)) + 1))
    y = int(rng.integers(0, max(1, img.height - (b - t)) + 1))
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    outline = (0, 0, 0) if sum(colour) > 384 else (255, 255, 255)
    draw.text((x - l, y - t), words, font=font, fill=colour, stroke_width=max(1, size // 12), stroke_fill=outline)
    return img


def _jpeg(img: Image.Image, rng: np.random.Generator, bg: Callable[[], Image.Image]) -> Image.Image:
    """Re-compression at quality 15-45 (blocking and colour bleeding)."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(15, 46)))
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


# Applied in this order (geometry, colour, composition, compression), whatever the draw.
EDITS: dict[str, Callable[[Image.Image, np.random.Generator, Callable[[], Image.Image]], Image.Image]] = {
    "crop_zoom": _crop_zoom,
    "rotate": _rotate,
    "flip": _flip,
    "colour": _colour,
    "grayscale": _grayscale,
    "blur": _blur,
    "paste": _paste,
    "text": _text,
    "jpeg": _jpeg,
}


def edit_query(
    img: Image.Image, rng: np.random.Generator, background: Callable[[], Image.Image]
) -> tuple[Image.Image, list[str]]:
    """Apply 2-4 distinct edits drawn at random; return the copy and the edit names.

    ``background()`` returns another photo for the ``paste`` edit.
    """
    names = list(EDITS)
    picked = set(rng.choice(len(names), size=int(rng.integers(2, 5)), replace=False).tolist())
    chosen = [n for k, n in enumerate(names) if k in picked]
    img = img.convert("RGB")
    for name in chosen:
        img = EDITS[name](img, rng, background)
    return img, chosen
