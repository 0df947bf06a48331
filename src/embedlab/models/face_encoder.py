"""The face encoder of the deepfake-robust face recognition stage (docs/originals/face_encoder.md).

A timm Vision Transformer whose CLS token is the face embedding (the
original: ViT-B/16 DINO, 768-d, 224 px). ``normalize_embeddings`` is part
of the model: when set, the embedding is L2-normalised inside ``forward``,
so both training phases and every consumer see the same vectors (the
original silently pre-trained on raw and fine-tuned on normalised ones).
Verification scores are cosine similarities either way.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from embedlab.data.transforms import model_input
from embedlab.models.backbone import create_backbone
from embedlab.models.pretrained import load_backbone_weights

FACE_ENCODER_KIND = "face_encoder"


@dataclasses.dataclass(frozen=True)
class FaceEncoderSpec:
    """Everything needed to rebuild a face encoder from its weights (JSON via ``dataclasses.asdict``)."""

    backbone: str = "vit_base_patch16_224"
    img_size: int = 224
    patch_size: int | None = None  # None: the backbone's own (a small demo image wants smaller patches)
    depth: int | None = None  # None: the backbone's own number of blocks
    normalize_embeddings: bool = True
    kind: str = FACE_ENCODER_KIND

    def __post_init__(self) -> None:
        if self.kind != FACE_ENCODER_KIND:
            raise ValueError(f"FaceEncoderSpec.kind must be {FACE_ENCODER_KIND!r}, got {self.kind!r}")


class FaceEncoder(nn.Module):
    def __init__(self, spec: FaceEncoderSpec, pretrained: str | None = None) -> None:
        super().__init__()
        self.spec = spec
        extra = {k: v for k, v in (("patch_size", spec.patch_size), ("depth", spec.depth)) if v is not None}
        try:
            self.body = create_backbone(spec.backbone, num_classes=0, global_pool="token", img_size=spec.img_size,
                                        **extra)
        except TypeError as exc:
            raise ValueError(f"{spec.backbone}: not a timm Vision Transformer with a CLS token ({exc})") from exc
        if pretrained:
            # DINO / timm ViT files: the position embedding must fit img_size / patch_size.
            load_backbone_weights(self.body, pretrained)
        self.channels_last = False

    @property
    def descriptor_dim(self) -> int:
        return self.body.num_features

    def use_channels_last(self, enabled: bool = True) -> "FaceEncoder":
        """Kept for the shared embedding path; only the patch embedding is a convolution."""
        self.channels_last = enabled
        return self

    def raw_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The CLS embedding before any normalisation (what ONNX face models output); ``images`` uint8
        pixels (normalised here) or normalised float."""
        return self.body(model_input(images)).float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embedding = self.raw_embedding(images)
        return F.normalize(embedding, dim=-1) if self.spec.normalize_embeddings else embedding
