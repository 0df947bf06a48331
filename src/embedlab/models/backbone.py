"""The descriptor model: timm backbone → GeM → bias-free linear → L2.

This is the ISC 2021 drip-training descriptor (docs/originals/drip.md): the timm
classifier head is removed, features are GeM-pooled with a learnable
exponent, projected without bias to the embedding size and L2-normalised.
"""

from __future__ import annotations

import dataclasses
import difflib

import timm
import torch
import torch.nn.functional as F
from torch import nn

from embedlab.data.transforms import model_input
from embedlab.models.pretrained import load_backbone_weights


def create_backbone(name: str, **kwargs) -> nn.Module:
    """The timm model ``name`` without weights (they are loaded from files, never downloaded). A name timm does
    not know, a typo or a hub id (``hf-hub:...``, fetched over the network) is refused naming it."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"backbone {name!r} is not a timm model{hint}; timm.list_models() lists them")
    return timm.create_model(name, pretrained=False, **kwargs)


class GeM(nn.Module):
    """Generalised-mean pooling with a learnable exponent p."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pool in fp32: x**p overflows fp16/bf16 for p around 3 and large activations.
        pooled = x.float().clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1))
        return pooled.pow(1.0 / self.p)


@dataclasses.dataclass(frozen=True)
class DescriptorSpec:
    """Everything needed to rebuild a descriptor model from its weights."""

    backbone: str
    embedding_dim: int = 256
    gem_p: float = 3.0
    img_size: int = 160


class DescriptorModel(nn.Module):
    def __init__(self, spec: DescriptorSpec, pretrained: str | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.body = create_backbone(spec.backbone, num_classes=0, global_pool="")
        if pretrained:
            load_backbone_weights(self.body, pretrained)
        self.pool = GeM(spec.gem_p)
        self.proj = nn.Linear(self.body.num_features, spec.embedding_dim, bias=False)
        self.channels_last = False

    @property
    def descriptor_dim(self) -> int:
        return self.spec.embedding_dim

    def use_channels_last(self, enabled: bool = True) -> "DescriptorModel":
        """NHWC convolutions: about 1.5-2x faster on CPU (oneDNN) and on tensor cores."""
        self.channels_last = enabled
        self.body.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (normalised here, on the model's device) or normalised float images → descriptors."""
        images = model_input(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.pool(self.body(images))
        return F.normalize(self.proj(features.to(self.proj.weight.dtype)).float(), dim=-1)


class BackboneFeatures(nn.Module):
    """A pretrained backbone's own GeM-pooled features, L2-normalised: the descriptor a model starts from
    (drip's ImageNet start, ``models/drip/pretrained``), with no projection to learn."""

    def __init__(self, backbone: str, weights: str | None, img_size: int, gem_p: float = 3.0) -> None:
        super().__init__()
        self.body = create_backbone(backbone, num_classes=0, global_pool="")
        if weights:
            load_backbone_weights(self.body, weights)
        self.pool = GeM(gem_p)
        self.spec = DescriptorSpec(backbone, self.body.num_features, gem_p, img_size)

    @property
    def descriptor_dim(self) -> int:
        return self.spec.embedding_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.pool(self.body(model_input(images))).float(), dim=-1)
