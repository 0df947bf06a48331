"""Framing ops: the image inside a meme layout or an app screenshot."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from embedlab.augment.context import AugContext
from embedlab.augment.fonts import MIN_FONT_PX, load_font
from embedlab.augment.graphics import random_text
from embedlab.augment.registry import Magnitude, draw, random_color, register
from embedlab.resize import resize_image


def _fit_font(
    ctx: AugContext, rng: np.random.Generator, text: str, height: float, width: float
) -> ImageFont.FreeTypeFont:
    """A random font ``height`` px high, shrunk once so ``text`` fits ``width``."""
    font = ctx.fonts.font(rng, height)
    length = font.getlength(text)
    if length > width:
        # Same face at the size that fits, through the cache (font_variant re-parses the file).
        font = load_font(str(font.path), max(MIN_FONT_PX, int(font.size * width / length)))
    return font


@register("meme")
def meme(
    img: Image.Image,
    rng: np.random.Generator,
    ctx: AugContext,
    caption: Magnitude = (0.15, 0.3),
    n_chars: Magnitude = (8, 24),
) -> Image.Image:
    """AugLy's meme_format: a caption band ``caption`` of the height on top
    (mostly white, black text). The output is taller than the input."""
    w, h = img.size
    band = max(8, round(draw(rng, caption) * h))
    bg = (255, 255, 255) if rng.random() < 0.7 else random_color(rng)
    ink = (0, 0, 0) if sum(bg) > 380 else (255, 255, 255)
    s = random_text(rng, int(round(draw(rng, n_chars))), words=True)
    font = _fit_font(ctx, rng, s, 0.55 * band, 0.92 * w)
    out = Image.new("RGB", (w, h + band), bg)
    out.paste(img, (0, band))
    ImageDraw.Draw(out).text((w / 2, band / 2), s, fill=ink, font=font, anchor="mm")
    return out


@register("screenshot")
def screenshot(
    img: Image.Image,
    rng: np.random.Generator,
    ctx: AugContext,
    bar: Magnitude = (0.08, 0.18),
    border: Magnitude = (0.0, 0.05),
) -> Image.Image:
    """A phone/app screenshot: status and title bars (``bar`` of the height
    each), a navigation bar, side ``border``s, the image fitted in between.
    The output keeps the input size."""
    w, h = img.size
    dark = rng.random() < 0.5
    theme = (18, 18, 18) if dark else (250, 250, 250)
    ink = (230, 230, 230) if dark else (30, 30, 30)
    accent = random_color(rng)
    top, bottom = round(draw(rng, bar) * h), round(draw(rng, bar) * h * 0.7)
    margin = round(draw(rng, border) * w)
    out = Image.new("RGB", (w, h), theme)
    d = ImageDraw.Draw(out)
    # Status line (clock, battery) then a title bar in the app's colour.
    top = max(top, 6)  # room for a status line and a title bar even on a tiny image
    status = max(2, top // 3)
    d.rectangle((0, status, w, top), fill=accent)
    clock = ctx.fonts.font(rng, status * 0.8)
    d.text((margin + 2, 0), f"{int(rng.integers(24)):02d}:{int(rng.integers(60)):02d}", fill=ink, font=clock)
    d.rectangle((w - 3 * status, status // 4, w - status, status - status // 4), outline=ink)
    caption = random_text(rng, 10, words=True)
    title = _fit_font(ctx, rng, caption, (top - status) * 0.6, w * 0.8)
    d.text((margin + 4, (status + top) / 2), caption, fill=(255, 255, 255), font=title, anchor="lm")
    # Navigation bar: back, home, recent.
    if bottom >= 4:
        cy, r = h - bottom / 2, bottom / 4
        for cx, shape in ((w / 4, 0), (w / 2, 1), (3 * w / 4, 2)):
            box = (cx - r, cy - r, cx + r, cy + r)
            if shape == 0:
                d.polygon([(cx + r, cy - r), (cx + r, cy + r), (cx - r, cy)], outline=ink)
            elif shape == 1:
                d.ellipse(box, outline=ink)
            else:
                d.rectangle(box, outline=ink)
    # The photo, aspect kept, centred in the content area.
    cw, ch = max(1, w - 2 * margin), max(1, h - top - bottom)
    f = min(cw / w, ch / h)
    photo = resize_image(img, (max(1, round(w * f)), max(1, round(h * f))))
    out.paste(photo, (margin + (cw - photo.width) // 2, top + (ch - photo.height) // 2))
    return out
