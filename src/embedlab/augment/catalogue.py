"""The augmentation catalogue: importing this module registers every op.

One module per family; each op is ``fn(img, rng, ctx, **magnitudes)`` (see
:mod:`embedlab.augment.registry` for the shared conventions).

=====================  =====================================================
family                 ops
=====================  =====================================================
geometric              random_resized_crop, crop, scale, resize, rotate,
                       perspective, pad, hflip, vflip
color                  grayscale, color_jitter, brightness, colorize,
                       channel_invert, channel_swap, channel_shift
degrade                blur, sharpen, jpeg, pixelization, shuffle_pixels
overlays               opacity, overlay_onto_image, overlay_image, underlay,
                       paste_into, overlay
graphics               stripes, emoji, text
framing                meme, screenshot
=====================  =====================================================
"""

from __future__ import annotations

from embedlab.augment import color, degrade, framing, geometric, graphics, overlays  # noqa: F401
from embedlab.augment.registry import REGISTRY, get_transform, transform_names

__all__ = ["REGISTRY", "get_transform", "transform_names"]
