"""Image → tensor conversion shared by training and embedding.

Loader workers hand out **uint8** images ([3, H, W], or [N, 3, H, W] batched):
a quarter of float32's bytes through the worker queues, pinned memory and the
host-to-device copy. The models normalise them on their own device
(:func:`model_input`), with the same float32 arithmetic the CPU once did, so
descriptors are bit-identical to a float batch normalised in the workers.

Resizing has Pillow's ``BILINEAR`` look at several times its speed
(:mod:`embedlab.resize`).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from embedlab.resize import reduce_to_planes, resize_array, resize_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MEAN255 = torch.from_numpy(np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255.0).view(1, 3, 1, 1)
_STD255 = torch.from_numpy(np.asarray(IMAGENET_STD, dtype=np.float32) * 255.0).view(1, 3, 1, 1)


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Resize to size×size (the ISC models see whole images, aspect ignored)."""
    if img.size == (size, size):
        return img
    return resize_image(img if img.mode in ("RGB", "L") else img.convert("RGB"), (size, size))


def to_uint8(img: Image.Image, size: int | None = None) -> torch.Tensor:
    """RGB image (resized to size×size when given) → uint8 tensor [3, H, W], normalised later on the device."""
    rgb = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    if size is not None and rgb.shape[:2] != (size, size):
        if size < rgb.shape[0] or size < rgb.shape[1]:
            return reduce_to_planes(rgb, size, size)  # torch's kernel writes the [3, H, W] planes directly
        rgb = resize_array(rgb, (size, size))
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def normalize_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] → ImageNet-normalised float32 on the images' device."""
    mean, std = _MEAN255.to(images.device), _STD255.to(images.device)
    return (images.float() - mean) / std


def model_input(images: torch.Tensor) -> torch.Tensor:
    """What a model's forward starts with: uint8 pixels normalised here, on the model's device; float
    images (already normalised: an ONNX caller's, the decoder's) as they are."""
    return normalize_uint8(images) if images.dtype == torch.uint8 else images


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image → ImageNet-normalised float tensor [3, H, W] (callers outside a model's forward)."""
    return normalize_uint8(to_uint8(img)[None])[0]


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
