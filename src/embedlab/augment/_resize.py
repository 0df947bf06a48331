"""Fast resizing through OpenCV, for the ops on the recipes' hot path.

Pillow's convolution resampling costs 1–5 ms per 256-px image on a slow core
(more when a 768-px overlay canvas is reduced); this is 3–6× faster with the
same geometry (pixel centres at +0.5 in both libraries):

- enlarging: bilinear interpolation, as Pillow's BILINEAR;
- reducing: Gaussian pyramid halvings (``pyrDown``) while the factor is 2 or
  more, then bilinear for the rest, so nothing aliases (the scheme of Pillow's
  ``reducing_gap=2``; OpenCV's INTER_AREA is slow at non-integer factors).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def _reduce(arr: np.ndarray, tw: int, th: int) -> np.ndarray:
    """Halve (Gaussian pyramid) while both sides stay at least twice the target."""
    while arr.shape[1] >= 2 * tw and arr.shape[0] >= 2 * th and min(arr.shape[:2]) >= 2:
        arr = cv2.pyrDown(arr)
    return arr


def resize_array(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (h, w[, c]) uint8 array resized to ``size`` (w, h)."""
    tw, th = max(1, int(size[0])), max(1, int(size[1]))
    h, w = arr.shape[:2]
    if (tw, th) == (w, h):
        return arr.copy()
    arr = _reduce(np.ascontiguousarray(arr), tw, th)
    if arr.shape[1] >= 2 * tw:  # only the width shrinks that much: halve it alone
        arr = cv2.resize(cv2.GaussianBlur(arr, (5, 1), 0), (arr.shape[1] // 2, arr.shape[0]),
                         interpolation=cv2.INTER_LINEAR)
        return resize_array(arr, (tw, th))
    if arr.shape[0] >= 2 * th:
        arr = cv2.resize(cv2.GaussianBlur(arr, (1, 5), 0), (arr.shape[1], arr.shape[0] // 2),
                         interpolation=cv2.INTER_LINEAR)
        return resize_array(arr, (tw, th))
    return cv2.resize(arr, (tw, th), interpolation=cv2.INTER_LINEAR)


def resize_image(img: Image.Image, size: tuple[int, int], box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """``img`` (or its integer ``box`` (x0, y0, x1, y1)) resized to ``size`` (w, h): a new image."""
    arr = np.asarray(img.crop(box) if box is not None else img)  # crop first: convert only the window
    return Image.fromarray(resize_array(arr, size), img.mode)
