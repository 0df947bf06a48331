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


REID_PAD = 10  # pixels of black border before the random crop (the GeM original's re-id transform)


def reid_train_transform(img: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """The GeM original's training transform: resize to size × size, horizontal flip (p 0.5), pad 10 px,
    random crop back to size × size."""
    img = resize_square(img, size)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    padded = Image.new("RGB", (size + 2 * REID_PAD, size + 2 * REID_PAD))
    padded.paste(img, (REID_PAD, REID_PAD))
    x, y = (int(v) for v in rng.integers(0, 2 * REID_PAD + 1, size=2))
    return padded.crop((x, y, x + size, y + size))
