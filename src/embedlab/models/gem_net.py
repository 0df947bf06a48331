"""The GeM trainer's network (docs/originals/gem.md): backbone → GeM → projector → BN neck.

ISC 2021 descriptor track, 3rd place ("bag of tricks"): a ResNet-50 with the
last stride set to 1, "Waveblock" feature masking after layer2 and layer3
during training, GeM pooling (p=3, learnable), a projector
2048→4096 (BN, LeakyReLU 0.2)→8192 and a BN neck whose bias is frozen (the
re-ID "strong baseline" BNNeck). Training uses both outputs of ``features``:
the soft batch-hard triplet on the GeM feature, the cross-entropy on the neck
feature. ``forward`` is the descriptor: the L2-normalised neck feature.

There is no classifier in here: it lives in the training module
(``sharded_classifier``), so it is never exported with the descriptor.

Last stride 1 for other backbones: only timm ResNets can be changed after
creation the original way (stride 1, no dilation). Every other backbone is
created with timm's ``output_stride=16``, which sets the last stage's stride
to 1 and dilates its convolutions by 2: the same doubled final map, the
receptive field the pretrained weights were trained with, and the same
tensors, so pretrained weights load unchanged.

The descriptor-track head (``descriptor_dim`` > 0): 8192 → BN → LeakyReLU
→ Linear → 256 → BN on the neck feature, as the original; its output is then
the descriptor (256-d: 30 times less storage than 8192-d per reference). It
learns by distillation from the neck feature (``models/losses.py``,
``similarity_distillation``) on a detached copy of it, so the 8192-d model
trains exactly as without the head.

Waveblock placement: on the outputs of the two stages before the last one
in timm's ``feature_info`` (``layer2``/``layer3`` for ResNets, reductions 8
and 16; ``blocks.2``/``blocks.4`` for MobileNetV2), as forward hooks. Hooks
keep the backbone's module tree, hence its state-dict keys, untouched, so
pretrained and exported weights load by name.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from timm.models.resnet import ResNet
from torch import nn

from embedlab.data.transforms import model_input
from embedlab.models.backbone import GeM, create_backbone
from embedlab.models.pretrained import load_backbone_weights

GEM_NET_KIND = "gem_net"


@dataclasses.dataclass(frozen=True)
class GemNetSpec:
    """Everything needed to rebuild a GemNet from its weights (JSON via ``dataclasses.asdict``)."""

    backbone: str
    img_size: int = 256
    gem_p: float = 3.0
    proj_hidden: int = 4096
    proj_dim: int = 8192
    last_stride_1: bool = True
    waveblock: bool = True
    waveblock_ratio: float = 0.3
    waveblock_gain: float = 1.5
    descriptor_dim: int = 0  # > 0: the descriptor-track head's size (the original: 256); 0: the neck feature
    kind: str = GEM_NET_KIND  # tells the exporter/loader this from a DescriptorModel's spec

    def __post_init__(self) -> None:
        if self.kind != GEM_NET_KIND:
            raise ValueError(f"GemNetSpec.kind must be {GEM_NET_KIND!r}, got {self.kind!r}")
        if not 0.0 <= self.waveblock_ratio <= 1.0:
            raise ValueError(f"waveblock_ratio must be in [0, 1], got {self.waveblock_ratio}")
        if self.descriptor_dim < 0:
            raise ValueError(f"descriptor_dim must be 0 (none) or positive, got {self.descriptor_dim}")


def is_resnet(body: nn.Module) -> bool:
    return isinstance(body, ResNet)


def set_last_stride_1(body: nn.Module) -> None:
    """Make a timm ResNet's layer4 keep its input resolution (stride 1, no dilation), in place.

    Sets the strided convolution of layer4's first block and its downsample
    path to stride 1; an average-pooling downsample (``avg_down`` ResNets such
    as resnet50d) becomes an identity, as timm builds it for stride 1. Other
    backbones: create them with ``output_stride=16`` instead (``GemNet`` does).
    """
    if not is_resnet(body):
        raise ValueError(
            f"set_last_stride_1 needs a timm ResNet, got {type(body).__name__}; "
            "create other backbones with timm.create_model(..., output_stride=16)"
        )
    block = body.layer4[0]
    for name, module in list(block.named_modules()):
        if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
            module.stride = (1, 1)
        elif isinstance(module, nn.AvgPool2d) and module.stride not in (1, (1, 1)):
            parent_name, _, child = name.rpartition(".")
            block.get_submodule(parent_name).register_module(child, nn.Identity())
    if hasattr(block, "stride"):
        block.stride = 1  # informational in timm's blocks
    leftover = [name for name, module in block.named_modules() if not list(module.children())
                and getattr(module, "stride", 1) not in (1, (1, 1))]
    if leftover:  # e.g. anti-aliased (blur-pool) ResNets
        raise ValueError(f"{type(body).__name__}.layer4[0]: cannot set the stride of {leftover} to 1 "
                         "(set gem.last_stride_1: false for this backbone)")
    if getattr(body, "feature_info", None):
        body.feature_info[-1]["reduction"] //= 2


class Waveblock(nn.Module):
    """In training, multiply a feature map by ``gain`` outside one random horizontal band.

    The band is ``round(ratio·H)`` rows, drawn once per call for the whole
    batch (as the original) from torch's default generator, so Lightning's
    ``seed_everything`` makes it reproducible. Identity in eval.
    """

    def __init__(self, ratio: float = 0.3, gain: float = 1.5) -> None:
        super().__init__()
        self.ratio, self.gain = ratio, gain

    def mask(self, height: int) -> torch.Tensor:
        """The [H] row factors: ``gain`` everywhere, 1 inside the band.

        Tensor ops only (no ``.item()``): under torch.compile a Python start
        row would break the graph and recompile it for every band position.
        """
        band = round(self.ratio * height)
        start = torch.randint(0, height - band + 1, ())
        rows = torch.arange(height)
        inside = (rows >= start) & (rows < start + band)
        return torch.where(inside, 1.0, float(self.gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        rows = self.mask(x.shape[-2]).to(device=x.device, dtype=x.dtype)
        return x * rows[:, None]

    def hook(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        """As a forward hook on a stage. A bound method, so deepcopy and pickle carry it to the copy."""
        return self(output)

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, gain={self.gain}"


def waveblock_stages(body: nn.Module) -> list[str]:
    """Names of the modules Waveblock follows: the two stages before the last one."""
    info = getattr(body, "feature_info", None)
    if not info or len(info) < 3:
        raise ValueError(f"{type(body).__name__}: no timm feature_info with 3+ stages to place Waveblock after")
    return [stage["module"] for stage in info[-3:-1]]


def create_body(spec: GemNetSpec) -> nn.Module:
    """The timm backbone without head or pooling, with the last stride set as the spec says."""
    body = create_backbone(spec.backbone, num_classes=0, global_pool="")
    if spec.last_stride_1:
        if is_resnet(body):
            set_last_stride_1(body)
        else:
            try:
                body = create_backbone(spec.backbone, num_classes=0, global_pool="", output_stride=16)
            except TypeError as exc:
                raise ValueError(f"{spec.backbone}: timm cannot build it with output_stride=16 "
                                 "(set last_stride_1: false)") from exc
    return body


class GemNet(nn.Module):
    def __init__(self, spec: GemNetSpec, pretrained: str | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.body = create_body(spec)
        if pretrained:
            load_backbone_weights(self.body, pretrained)
        self.waveblocks = nn.ModuleList()
        if spec.waveblock:
            for name in waveblock_stages(self.body):
                wave = Waveblock(spec.waveblock_ratio, spec.waveblock_gain)
                self.body.get_submodule(name).register_forward_hook(wave.hook)
                self.waveblocks.append(wave)
        self.pool = GeM(spec.gem_p)
        channels = self.body.num_features
        self.projector = nn.Sequential(
            nn.Linear(channels, spec.proj_hidden),
            nn.BatchNorm1d(spec.proj_hidden),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(spec.proj_hidden, spec.proj_dim),
        )
        self.neck = nn.BatchNorm1d(spec.proj_dim)
        self.neck.bias.requires_grad_(False)
        self.descriptor_head = descriptor_head(spec.proj_dim, spec.descriptor_dim) if spec.descriptor_dim else None
        self.channels_last = False

    @property
    def descriptor_dim(self) -> int:
        return self.spec.descriptor_dim or self.spec.proj_dim

    def use_channels_last(self, enabled: bool = True) -> "GemNet":
        """NHWC convolutions: about 1.5-2x faster on CPU (oneDNN) and on tensor cores."""
        self.channels_last = enabled
        self.body.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        return self

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(GeM feature [B, C] in fp32, neck feature [B, proj_dim]): the triplet's and the CE's inputs.
        ``images``: uint8 pixels (normalised here, on the model's device) or normalised float."""
        images = model_input(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        gem = self.pool(self.body(images))
        first = self.projector[0].weight
        neck = self.neck(self.projector(gem.to(first.dtype)))
        return gem, neck

    def head_feature(self, neck: torch.Tensor) -> torch.Tensor:
        """The descriptor-track head's output for a neck feature (not normalised)."""
        return self.descriptor_head(neck.to(self.descriptor_head[0].weight.dtype))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The descriptor, L2-normalised, fp32: the head's output when there is one, else the neck feature."""
        neck = self.features(images)[1]
        out = self.head_feature(neck) if self.descriptor_head is not None else neck
        return F.normalize(out.float(), dim=-1)


def descriptor_head(in_dim: int, out_dim: int) -> nn.Sequential:
    """The original's descriptor-track head: BN → LeakyReLU(0.2) → Linear → BN."""
    return nn.Sequential(nn.BatchNorm1d(in_dim), nn.LeakyReLU(0.2), nn.Linear(in_dim, out_dim),
                         nn.BatchNorm1d(out_dim))


class NeckDescriptor(nn.Module):
    """A GemNet's neck feature as the descriptor, whatever its head: what the head is distilled from,
    scored beside it (the 8192-d vs 256-d comparison)."""

    def __init__(self, net: GemNet) -> None:
        super().__init__()
        self.net = net
        self.spec = net.spec

    @property
    def descriptor_dim(self) -> int:
        return self.spec.proj_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net.features(images)[1].float(), dim=-1)
