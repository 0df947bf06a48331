"""Image → tensor conversion shared by training and embedding."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255.0
_STD = np.asarray(IMAGENET_STD, dtype=np.float32) * 255.0


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Resize to size×size (the ISC models see whole images, aspect ignored)."""
    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.BILINEAR)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image → ImageNet-normalised float tensor [3, H, W]."""
    array = (np.asarray(img.convert("RGB"), dtype=np.float32) - _MEAN) / _STD
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
