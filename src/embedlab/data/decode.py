"""Batched JPEG decoding + resizing on any torch device (the GPU decode path of ``embedlab embed``).

Pillow decodes and resizes about 300 images/s per CPU core, too slow to feed
a GPU that embeds thousands of images/s. On the GPU path, loader workers only
read the file bytes; the main process decodes a whole batch with
``torchvision.io.decode_jpeg(..., device="cuda")`` (nvJPEG), resizes on the
GPU and normalises there. The same functions run on the CPU (libjpeg-turbo via
torchvision), which is how the tests check them against the Pillow path.

Which files take the batched path: baseline/progressive JPEG in RGB/YCbCr or
greyscale, without an EXIF rotation (nvJPEG ignores EXIF orientation), with
the end-of-image marker present (a truncated file must fail as it does in
Pillow, not decode to grey). Everything else - PNG, CMYK JPEG, rotated or
truncated files, and any file the batched decoder rejects - is decoded by
Pillow exactly as the CPU path does (:func:`embedlab.images.load_or_skip`).

Differences to the Pillow path, both small: the JPEG decoder (nvJPEG vs
libjpeg-turbo: a few grey levels at most, mostly in chroma upsampling), and
the resize, computed in float32 and rounded once where Pillow rounds to
uint8 after each of its two passes (at most 1 grey level). Both use the
same antialiased bilinear filter (Pillow's ``BILINEAR`` reduction = torch's
``bilinear`` with ``antialias=True``, half-pixel centres).
"""

from __future__ import annotations

import io
import logging
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from embedlab.images import BadImageError, is_upright, read_image_bytes

log = logging.getLogger(__name__)

DECODE_CHOICES = ("auto", "cpu", "gpu")


def resolve_decode(decode: str, device: torch.device) -> torch.device | None:
    """Where the batched decoder runs: ``device`` (a GPU) or None (Pillow in the loader workers).

    ``auto`` decodes on the GPU when the model runs on one; ``gpu`` without a
    CUDA device falls back to Pillow (same output shapes) with a log line.
    """
    if decode not in DECODE_CHOICES:
        raise ValueError(f"decode must be one of {DECODE_CHOICES}, got {decode!r}")
    if decode == "cpu":
        return None
    if device.type == "cuda":
        return device
    if decode == "gpu":
        log.info("decode=gpu but the model runs on %s: decoding with Pillow on the CPU instead", device)
    return None


def gpu_decodable(data: bytes) -> bool:
    """True for JPEG bytes the batched decoder reproduces faithfully (see the module doc)."""
    if len(data) < 4 or data[:3] != b"\xff\xd8\xff" or data[-2:] != b"\xff\xd9":
        return False  # not a JPEG, or truncated (no end-of-image marker)
    try:
        with Image.open(io.BytesIO(data)) as im:  # header only: no pixel decoding here
            if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                return False  # CMYK / YCCK: Pillow's conversion
            return is_upright(im)
    except Exception:  # noqa: BLE001 - any header problem: Pillow reports it properly
        return False


def read_encoded(path: str | os.PathLike) -> torch.Tensor | None:
    """The file's bytes as a uint8 tensor if the batched decoder should take it, else None."""
    try:
        data = read_image_bytes(path)
    except BadImageError:
        return None  # the Pillow path names the problem
    if not gpu_decodable(data):
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, 3, H, W] → uint8 [N, 3, size, size], antialiased bilinear as Pillow's ``BILINEAR``."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _resize_all(decoded: Sequence[torch.Tensor], size: int) -> list[torch.Tensor]:
    """Resize [3, H, W] images, one interpolate call per distinct source size."""
    out: list[torch.Tensor | None] = [None] * len(decoded)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(decoded):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    for members in groups.values():
        resized = resize_uint8(torch.stack([decoded[i] for i in members]), size)
        for j, i in enumerate(members):
            out[i] = resized[j]
    return out  # type: ignore[return-value]


def decode_resize(encoded: Sequence[torch.Tensor], size: int, device: torch.device) -> list[torch.Tensor | None]:
    """Decode JPEG byte tensors on ``device`` and resize to size×size: uint8 [3, size, size] each.

    One batched decoder call; if it fails, each file is retried alone and the
    ones that still fail come back as None (the caller decodes them with Pillow).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if not encoded:
        return []
    try:
        decoded: list[torch.Tensor | None] = list(decode_jpeg(list(encoded), mode=ImageReadMode.RGB, device=device))
    except RuntimeError as exc:
        log.debug("batched JPEG decode failed (%s); decoding one by one", exc)
        decoded = []
        for data in encoded:
            try:
                decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
    ok = [i for i, img in enumerate(decoded) if img is not None and img.ndim == 3 and img.shape[0] == 3]
    resized = _resize_all([decoded[i] for i in ok], size)
    out: list[torch.Tensor | None] = [None] * len(encoded)
    for i, img in zip(ok, resized):
        out[i] = img
    return out
