"""A second, held-out family of copy edits: the robustness query set's (``data/robustness.py``).

Drawn with OpenCV, apart from both the training augmentations
(``embedlab.augment``) and the demo's query edits (``data/demo_edits.py``,
Pillow): other code, other fonts (OpenCV's Hershey vector fonts), other kinds
of change. What a model scores here it did not learn from its own edits.

Each edit takes an RGB uint8 array and a seeded generator and returns an RGB
uint8 array (any size). The kinds are what copies on the web look like:
screenshots of a post, memes, heavy crops, stickers and scribbled text, a
photo of a screen, and several of these at once.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

Edit = Callable[[np.ndarray, np.random.Generator], np.ndarray]

_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX)
_WORDS = ("WHEN YOU", "NOBODY:", "ME IRL", "THIS IS FINE", "MONDAY", "TRUE STORY", "SAME", "BEST DAY EVER",
          "CAN'T EVEN", "LEGEND", "POV", "FOUND THIS", "10/10", "NO WAY", "MOOD")


def _text_size(text: str, font: int, scale: float, thickness: int) -> tuple[int, int]:
    (w, h), base = cv2.getTextSize(text, font, scale, thickness)
    return w, h + base


def _fit_scale(text: str, font: int, width: int, height: int, thickness: int) -> float:
    """The largest font scale at which ``text`` fits in width × height."""
    w, h = _text_size(text, font, 1.0, thickness)
    return max(0.2, min(width / max(w, 1), height / max(h, 1)))


def _outlined_text(img: np.ndarray, text: str, org: tuple[int, int], font: int, scale: float,
                   colour: tuple[int, int, int], outline: tuple[int, int, int], thickness: int) -> None:
    cv2.putText(img, text, org, font, scale, outline, thickness * 3, cv2.LINE_AA)
    cv2.putText(img, text, org, font, scale, colour, thickness, cv2.LINE_AA)


def screenshot(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The picture inside a phone screenshot of a post: status bar, user line, like bar, light or dark UI."""
    h, w = img.shape[:2]
    dark = rng.random() < 0.5
    bg, fg = ((18, 18, 18), (235, 235, 235)) if dark else ((250, 250, 250), (20, 20, 20))
    width = int(w * rng.uniform(1.0, 1.15))
    scale = rng.uniform(0.75, 0.95)
    pic = cv2.resize(img, (int(width * scale), int(width * scale * h / w)), interpolation=cv2.INTER_AREA)
    bar, header, footer = int(0.07 * width), int(0.12 * width), int(0.16 * width)
    canvas = np.full((bar + header + pic.shape[0] + footer, width, 3), bg, np.uint8)
    font = _FONTS[int(rng.integers(len(_FONTS)))]
    thick = max(1, width // 160)
    cv2.putText(canvas, f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}", (width // 20, bar - bar // 4),
                font, _fit_scale("00:00", font, width // 6, bar, thick), fg, thick, cv2.LINE_AA)
    cv2.rectangle(canvas, (width - width // 8, bar // 4), (width - width // 20, bar - bar // 4), fg, thick)
    avatar = (width // 12, bar + header // 2)
    cv2.circle(canvas, avatar, header // 3, tuple(int(c) for c in rng.integers(60, 220, 3)), -1, cv2.LINE_AA)
    cv2.putText(canvas, "user_" + str(int(rng.integers(100, 999))), (avatar[0] + header // 2, avatar[1] + header // 8),
                font, _fit_scale("user_000", font, width // 3, header // 2, thick), fg, thick, cv2.LINE_AA)
    left = (width - pic.shape[1]) // 2
    canvas[bar + header:bar + header + pic.shape[0], left:left + pic.shape[1]] = pic
    y = bar + header + pic.shape[0] + footer // 2
    for i in range(3):  # like, comment, share
        cv2.circle(canvas, (width // 12 + i * width // 8, y), footer // 5, fg, thick, cv2.LINE_AA)
    return canvas


def meme(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A meme: a white caption band above (or captions on the picture, white with a black outline)."""
    h, w = img.shape[:2]
    font = _FONTS[int(rng.integers(len(_FONTS)))]
    thick = max(1, w // 120)
    words = [_WORDS[int(i)] for i in rng.choice(len(_WORDS), 2, replace=False)]
    if rng.random() < 0.5:
        band = int(h * rng.uniform(0.2, 0.35))
        out = np.full((band + h, w, 3), 255, np.uint8)
        out[band:] = img
        scale = _fit_scale(words[0], font, int(w * 0.9), int(band * 0.6), thick)
        tw, th = _text_size(words[0], font, scale, thick)
        cv2.putText(out, words[0], ((w - tw) // 2, (band + th) // 2), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
        return out
    out = img.copy()
    for word, top in zip(words, (True, False)):
        scale = _fit_scale(word, font, int(w * 0.9), int(h * 0.16), thick)
        tw, th = _text_size(word, font, scale, thick)
        y = int(h * 0.05) + th if top else h - int(h * 0.06)
        _outlined_text(out, word, ((w - tw) // 2, y), font, scale, (255, 255, 255), (0, 0, 0), thick)
    return out


def heavy_crop(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A small part of the picture: 20-40 % of its area, off-centre, shown at the original size."""
    h, w = img.shape[:2]
    area = rng.uniform(0.2, 0.4)
    aspect = np.exp(rng.uniform(np.log(0.75), np.log(1.33)))
    cw, ch = min(w, int(round(w * np.sqrt(area * aspect)))), min(h, int(round(h * np.sqrt(area / aspect))))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return cv2.resize(img[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_CUBIC)


def _sticker(out: np.ndarray, rng: np.random.Generator, radius: int) -> None:
    """A smiley sticker: a yellow disc with eyes and a smile (emoji-like, drawn)."""
    h, w = out.shape[:2]
    c = (int(rng.integers(radius, max(radius + 1, w - radius))), int(rng.integers(radius, max(radius + 1, h - radius))))
    cv2.circle(out, c, radius, (255, 205, 40), -1, cv2.LINE_AA)
    cv2.circle(out, c, radius, (120, 80, 0), max(1, radius // 10), cv2.LINE_AA)
    for dx in (-1, 1):
        cv2.circle(out, (c[0] + dx * radius // 3, c[1] - radius // 4), max(1, radius // 7), (60, 40, 0), -1, cv2.LINE_AA)
    cv2.ellipse(out, (c[0], c[1] + radius // 8), (radius // 2, radius // 3), 0, 20, 160, (60, 40, 0),
                max(1, radius // 8), cv2.LINE_AA)


def stickers_and_text(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """2-5 smiley stickers and 1-3 coloured words scribbled over the picture."""
    h, w = img.shape[:2]
    out = img.copy()
    for _ in range(int(rng.integers(2, 6))):
        _sticker(out, rng, max(3, int(min(h, w) * rng.uniform(0.07, 0.15))))
    for _ in range(int(rng.integers(1, 4))):
        word = _WORDS[int(rng.integers(len(_WORDS)))]
        font = _FONTS[int(rng.integers(len(_FONTS)))]
        thick = max(1, w // 100)
        scale = _fit_scale(word, font, int(w * rng.uniform(0.4, 0.8)), int(h * 0.15), thick)
        tw, th = _text_size(word, font, scale, thick)
        org = (int(rng.integers(0, max(1, w - tw))), int(rng.integers(th, max(th + 1, h))))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.putText(out, word, org, font, scale, colour, thick, cv2.LINE_AA)
    return out


def recapture(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A photo of a screen showing the picture: perspective, dark surround, moiré, glare, sensor noise."""
    h, w = img.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    jitter = rng.uniform(0.04, 0.12, (4, 2)) * [w, h] * [[1, 1], [-1, 1], [-1, -1], [1, -1]]
    margin = np.float32([w, h]) * 0.08
    dst = (src * 0.84 + margin + jitter).astype(np.float32)
    warp = cv2.getPerspectiveTransform(src, dst)
    out = cv2.warpPerspective(img, warp, (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=(15, 15, 18))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(2.5, 5.0)
    angle = rng.uniform(0, np.pi)
    moire = 8.0 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    glare_centre = rng.uniform(0, 1, 2) * [w, h]
    glare = 60.0 * np.exp(-(((xx - glare_centre[0]) ** 2 + (yy - glare_centre[1]) ** 2) / (2 * (0.3 * w) ** 2)))
    noise = rng.normal(0, 6.0, (h, w, 3))
    result = out.astype(np.float32) * rng.uniform(0.75, 0.95) + (moire + glare)[..., None] + noise
    return cv2.GaussianBlur(np.clip(result, 0, 255).astype(np.uint8), (3, 3), 0)


def combined(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Several at once, as copies travel: a crop, stickers and text, a meme caption, then harsh JPEG."""
    h, w = img.shape[:2]
    keep = rng.uniform(0.55, 0.8)
    cw, ch = int(w * keep), int(h * keep)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = cv2.resize(img[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_CUBIC)
    out = meme(stickers_and_text(out, rng), rng)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(20, 40))])
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


ROBUST_EDITS: dict[str, Edit] = {
    "screenshot": screenshot,
    "meme": meme,
    "heavy_crop": heavy_crop,
    "stickers_text": stickers_and_text,
    "recapture": recapture,
    "combined": combined,
}
