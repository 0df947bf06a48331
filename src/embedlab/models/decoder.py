"""The template -> face decoder and its optional discriminator (docs/originals/decoder.md).

The template (an L2-normalised embedding) enters as a 1×1 image and is
doubled in size by ``[ConvTranspose2d k3 s2 p1 op1, BN, PReLU]`` blocks, then
a ``ConvTranspose2d k4 s2`` overshoots the output by two pixels and a 3×3
convolution without padding lands on it. At 112 px that is the original's
design exactly: 6 blocks 1 -> 64 px, ConvT(k4, s2, p8) -> 114, Conv(k3) -> 112.
Smaller outputs drop the first blocks (64 px: 5 blocks, ConvT p0 -> 66 -> 64).
There is no output activation: targets are normalised to mean 0.5 / std 0.5,
so an image is ``output * 0.5 + 0.5``; :func:`to_uint8` makes it a real one.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

DECODER_KIND = "template_decoder"
# Output channels of the six doubling blocks (the original's), then the final ConvT keeps the last.
VARIANT_CHANNELS = {
    "base": (512, 384, 320, 256, 192, 128),
    "large": (1024, 1024, 512, 512, 256, 256),
}


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    """Everything needed to rebuild a decoder from its weights (JSON via ``dataclasses.asdict``)."""

    template_dim: int = 512
    output_size: int = 112
    variant: str = "base"
    width: float = 1.0  # channel multiplier: 1 is the original; the CPU demo uses fewer channels
    kind: str = DECODER_KIND

    def __post_init__(self) -> None:
        if self.kind != DECODER_KIND:
            raise ValueError(f"DecoderSpec.kind must be {DECODER_KIND!r}, got {self.kind!r}")
        if self.variant not in VARIANT_CHANNELS:
            raise ValueError(f"decoder variant {self.variant!r} is not one of {sorted(VARIANT_CHANNELS)}")
        if self.output_size % 2 or not 8 <= self.output_size <= 128:
            raise ValueError(f"decoder output_size must be even and within [8, 128], got {self.output_size}")
        if not 0 < self.width <= 4:
            raise ValueError(f"decoder width must be in (0, 4], got {self.width}")

    @property
    def n_blocks(self) -> int:
        """Doubling blocks: 2**n < output_size <= 2**(n+1)."""
        return math.ceil(math.log2(self.output_size)) - 1


def _up_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1),
                         nn.BatchNorm2d(c_out), nn.PReLU(c_out))


class TemplateDecoder(nn.Module):
    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        self.spec = spec
        channels = [max(8, round(c * spec.width)) for c in VARIANT_CHANNELS[spec.variant][-spec.n_blocks:]]
        blocks, c_in = [], spec.template_dim
        for c_out in channels:
            blocks.append(_up_block(c_in, c_out))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        base = 2 ** spec.n_blocks
        # (base - 1)·2 − 2p + 4 = output_size + 2, so the unpadded 3×3 conv lands on output_size.
        self.head = nn.Sequential(
            nn.ConvTranspose2d(c_in, c_in, 4, stride=2, padding=(2 * base - spec.output_size) // 2),
            nn.BatchNorm2d(c_in), nn.PReLU(c_in), nn.Conv2d(c_in, 3, 3, padding=0))

    def forward(self, templates: torch.Tensor) -> torch.Tensor:
        if templates.ndim != 2 or templates.shape[1] != self.spec.template_dim:
            raise ValueError(f"decoder: templates must be (batch, {self.spec.template_dim}), "
                             f"got {tuple(templates.shape)}")
        return self.head(self.blocks(templates[:, :, None, None]))


def to_unit_range(output: torch.Tensor) -> torch.Tensor:
    """Decoder output (targets normalised by mean 0.5 / std 0.5) as an image in [0, 1]."""
    return (output * 0.5 + 0.5).clamp(0.0, 1.0)


def to_uint8(output: torch.Tensor) -> torch.Tensor:
    """What a saved image would hold: rounded, clipped 8-bit values (B, 3, H, W)."""
    return (to_unit_range(output.float()) * 255.0).round().to(torch.uint8)


class Discriminator(nn.Module):
    """Real photo or reconstruction: strided conv blocks down to a few pixels, then one logit."""

    def __init__(self, image_size: int, width: int = 64) -> None:
        super().__init__()
        layers, c_in, size = [], 3, image_size
        c_out = width
        while size > 4:
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out) if c_in != 3
                       else nn.Identity(), nn.LeakyReLU(0.2, inplace=True)]
            c_in, c_out, size = c_out, min(c_out * 2, 512), size // 2
        layers += [nn.Flatten(), nn.Linear(c_in * size * size, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).squeeze(1)
