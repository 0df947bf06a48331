"""Typed parameters read from params.yaml (the one source of parameters).

params.yaml holds the demo-scale values plus named ``profiles`` (e.g.
``full``). ``embedlab use-profile full`` writes a profile's values into
params.yaml itself, so that DVC, which only sees the literal values (and
builds one stage per schedule step from them), tracks exactly what runs.
Command-line overrides are checked against the dataclass fields, so a typo
is an error instead of a silently ignored setting.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import io
import math
import os
import re
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A parameter file or override that cannot be used."""


@dataclasses.dataclass
class DemoDataConfig:
    """Size and seed of the embedded demo data set (``embedlab demo-data``)."""

    seed: int = 0
    n_training: int = 240
    n_reference: int = 160
    n_matched_queries: int = 80
    n_distractor_queries: int = 40
    n_imagenet: int = 60
    n_frm_faces: int = 0
    image_size: int = 160  # long side of every written image, in pixels
    jpeg_quality: int = 90
    store: bool = False  # each image folder packed into an image store (params.yaml: true, as import writes)


@dataclasses.dataclass
class FaceDemoConfig:
    """Size and seed of the demo face set (``embedlab demo-data``)."""

    seed: int = 0
    n_persons: int = 48  # persons in train/
    images_per_person: int = 4  # real images per person (>= 2)
    fakes_per_person: int = 2  # a person with fakes gets this many (a fifth of them one less, at least 1)
    fake_share: float = 0.75  # share of the persons that have deepfakes
    n_test_persons: int = 16  # identities seen only in test_public
    n_test_pairs: int = 120  # a third each: genuine, other_person, fake_same_person
    image_size: int = 64  # pixels (square)
    jpeg_quality: int = 90
    # Share of the donor's inner features in a deepfake, drawn per person from [min, max]:
    # near 1 a face swap, near 0.5 a morph.
    fake_blend_min: float = 0.4
    fake_blend_max: float = 0.6
    store: bool = False  # train/images packed into one image store (keys <person>/<i>), as import kryptonite writes


@dataclasses.dataclass
class DripStep:
    """One step of the drip schedule: how many classes from each source."""

    n_facebook_samples: int
    n_imagenet_samples: int = 0
    n_frm_face_samples: int = 0
    batch_size: int | None = None  # None: drip.batch_size
    qry_augs_intensity: float | None = None  # None: drip.qry_augs_intensity
    epochs: int | None = None  # None: drip.epochs
    # Where the step starts: "pretrained" (the drip_init stage's backbone file),
    # another step's name (build_w_matrix from its last.ckpt), or None (drip.pretrained).
    init_from: str | None = None


@dataclasses.dataclass
class RuntimeConfig:
    """How fast and where the stages run, never what they learn (params.yaml's ``runtime``).

    One section for training, embedding and evaluation. It is not part of any
    run's fingerprint, MLflow params or DVC params, by construction: a stage
    reads its model-shaping settings from its own section only. ``auto``
    values follow the hardware: bf16 autocast on a GPU that has it, fp16 on
    older GPUs, fp32 on the CPU; loader workers sized from the cores; pinned
    memory with CUDA. benchmarks/train_throughput.py and embed_throughput.py
    measure what they buy. Precision, compile and GPU JPEG decoding pick other
    kernels, so they may move results in the last digits; the worker count
    does not (each sample's augmentation is seeded by (seed, epoch, index)).
    """

    device: str = "auto"  # auto (the GPU when there is one) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast; fp16 trains with a loss scaler)
    channels_last: bool = True  # faster convolutions on CPU and GPU alike
    compile: bool = False  # torch.compile the backbone (a one-off compile, then faster steps)
    num_workers: int | str = "auto"  # DataLoader workers; auto: all cores but one with a GPU, half (<= 8) on CPU
    pin_memory: bool | str = "auto"  # auto: on with CUDA
    prefetch_factor: int | None = None  # batches each worker prepares ahead; None: torch's default (2)
    decode: str = "auto"  # embedding's JPEG decoding: auto | cpu | gpu (nvJPEG when the model runs there)
    inference_batch_size: int = 64  # images per batch when embedding or scoring (large batches feed a GPU)
    devices: int = 1  # training processes (DDP ranks) per node; the GeM classifier is split over all ranks
    num_nodes: int = 1  # machines of a multi-node run (launched under SLURM or torchrun, docs/multi_gpu.md)
    classifier_devices: int = 1  # one process: the GeM classifier split over this many GPUs
    augment_workers: int = 0  # processes generating augmented sets; 0: all cores

    def __post_init__(self) -> None:
        _check_choice("runtime.precision", self.precision, PRECISIONS)
        _check_choice("runtime.decode", self.decode, ("auto", "cpu", "gpu"))
        if self.num_workers != "auto" and not (isinstance(self.num_workers, int) and self.num_workers >= 0):
            raise ConfigError(f"runtime.num_workers must be a number >= 0 or 'auto', got {self.num_workers!r}")
        if self.pin_memory != "auto" and not isinstance(self.pin_memory, bool):
            raise ConfigError(f"runtime.pin_memory must be true, false or 'auto', got {self.pin_memory!r}")
        # (counts below 1, negative numbers: _check_range, as for every section)
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"runtime.device: {self.device!r} is not a device: auto, cpu, cuda, cuda:N or mps")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclasses.dataclass
class PipelineConfig:
    """What `dvc repro` builds: one stage per entry (dvc.yaml ``foreach``). No model's settings."""

    augment: list[str] = dataclasses.field(default_factory=lambda: ["big"])  # generated sets
    gem: list[str] = dataclasses.field(default_factory=lambda: ["big"])  # GeM runs: each start × each set
    gem_starts: list[str] = dataclasses.field(default_factory=lambda: ["base"])  # names in the gem_starts section

    def __post_init__(self) -> None:
        for name in ("augment", "gem", "gem_starts"):
            value = getattr(self, name)
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"pipeline.{name} must be a non-empty list of names, got {value!r}")
            bad = [v for v in value if not v or "/" in v or v.startswith(".")]
            if bad:  # each name is a folder under models/gem (and part of a DVC stage name)
                raise ConfigError(f"pipeline.{name}: {bad} must be plain names (no '/', not starting with '.')")
        missing = [r for r in self.gem if r not in self.augment]
        if missing:
            raise ConfigError(f"pipeline.gem: {missing} not generated; add them to pipeline.augment")


@dataclasses.dataclass
class DripConfig:
    """The drip stage: backbone, ArcFace head, optimiser, augmentations (one schedule step: DripStep)."""

    backbone: str = "mobilenetv2_100"
    pretrained: str | None = None  # local weights file; None trains from scratch
    img_size: int = 96  # model input (the original: 160)
    aug_size: int = 128  # images are augmented at this size first (the original: 384)
    embedding_dim: int = 256
    gem_p: float = 3.0
    arcface_m: float = 0.4
    arcface_s: float = 40.0
    margin_warmup_epochs: int = 0  # m grows linearly from 0 over these epochs
    lr: float = 1e-3
    weight_decay: float = 0.0
    plateau_factor: float = 0.9
    plateau_patience: int = 2
    grad_clip: float = 1.0
    epochs: int = 3
    batch_size: int = 32
    qry_augs_intensity: float = 0.5
    val_classes: int = 64  # classes whose loss is tracked as validation
    stop_rule: bool = False  # end the stage once train loss < stop_train_loss or val loss < stop_val_loss
    # The next step refuses to start from a step that never met that advance rule (whether it did is logged).
    require_advance_rule: bool = False
    stop_train_loss: float = 2.0
    stop_val_loss: float = 1.0
    w_matrix_augmentations: int = 4
    # Folder of images the query augmentations' overlays and underlays are cut from; None: the source images
    # the step does not train on (the original drew them from outside the classes).
    overlay_pool: str | None = None
    # The head of a step without a parent checkpoint: "centroids" of the starting
    # model's embeddings (as build_w_matrix does), or "random" (the original's first step).
    w_init: str = "centroids"
    limit_train_batches: int | None = None
    # Partial FC: the share of class centres in each training step's softmax (the batch's classes always);
    # 1.0: all. Measured in benchmarks/partial_fc.py; not a default (docs/multi_gpu.md).
    partial_fc: float = 1.0
    evaluate: bool = True  # embed the DISC query/reference sets and score μAP at the end
    evaluate_before: bool = True  # also score the starting model (the table's "μAP before")

    def __post_init__(self) -> None:
        _check_choice("drip.w_init", self.w_init, ("centroids", "random"))
        if not 0.0 < float(self.partial_fc) <= 1.0:
            raise ConfigError(f"drip.partial_fc must be in (0, 1], got {self.partial_fc}")
        if not 0.0 <= float(self.qry_augs_intensity) <= 1.0:
            raise ConfigError(f"drip.qry_augs_intensity must be in [0, 1], got {self.qry_augs_intensity}")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: {value!r} is not one of {list(allowed)}")


@dataclasses.dataclass(frozen=True)
class PostprocessConfig:
    """Descriptor post-processing (:mod:`embedlab.postprocess`); a factor of 0 turns its step off.

    params.yaml's ``evaluate.postprocess`` (scored beside the plain descriptors)
    and ``embedlab postprocess`` use this one type.
    """

    whiten: bool = True
    whiten_dim: int | None = None  # None: the descriptor size (stages cap it at the training descriptors - 1)
    whiten_power: float = 0.5  # 0.5 full whitening, 0 plain PCA, in between partial
    score_norm_factor: float = 2.0  # s' = q·r - factor·mean of the n nearest training scores; 0: off
    score_norm_n: int = 10
    stretch_factor: float = 0.0  # query stretching; 0: off
    stretch_n: int = 5
    # Training-set normalisation (the drip original's, factor 1.8): x' = x + factor·sqrt(mean top-k cosines)·d,
    # d the mean unit direction away from the n nearest training descriptors; 0: off
    train_norm_factor: float = 0.0
    train_norm_n: int = 100
    train_norm_top: int = 3
    weights: tuple[float, ...] | None = None  # ensembles: one weight per model (default: all 1)
    device: str = "auto"  # faiss device for the training-neighbour search: auto | cpu | cuda

    def __post_init__(self) -> None:
        if self.whiten_dim is not None and (not self.whiten or self.whiten_dim < 1):
            raise ConfigError(f"whiten_dim={self.whiten_dim} needs whiten=True and a value >= 1")
        if not self.whiten_power >= 0:
            raise ConfigError(f"whiten_power must be >= 0 (0.5 = full whitening), got {self.whiten_power}")
        for name in ("score_norm_factor", "stretch_factor"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        if self.train_norm_top > self.train_norm_n:
            raise ConfigError(f"train_norm_top ({self.train_norm_top}) cannot exceed train_norm_n ({self.train_norm_n})")
        for name in ("score_norm_n", "stretch_n"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        _check_choice("postprocess device", self.device, ("auto", "cpu", "cuda"))
        if self.weights is not None:
            weights = tuple(float(w) for w in self.weights)
            if not all(math.isfinite(w) and w > 0 for w in weights):
                raise ConfigError(f"ensemble weights must be finite and > 0, got {list(weights)}")
            object.__setattr__(self, "weights", weights)

    @property
    def needs_train(self) -> bool:
        return self.whiten or self.score_norm_factor > 0 or self.stretch_factor > 0 or self.train_norm_factor > 0


@dataclasses.dataclass
class EvaluateConfig:
    k: int = 10  # neighbours per query in the kNN search
    # DISC training images embedded as the post-processing "training set"
    # (whitening, score normalisation); 0 scores the plain descriptors only.
    train_descriptors: int = 0
    # Score on a fixed subset (0: all): this many queries drawn with the seed, and this many references,
    # the chosen queries' matches first. A sweep at DISC21 scale need not embed 1M references per trial.
    queries: int = 0
    references: int = 0
    # Multi-scale test features: the mean of the descriptors at these input sizes (the GeM original:
    # 200, 256, 320, 400); empty: the model's own size.
    scales: list[int] = dataclasses.field(default_factory=list)
    postprocess: PostprocessConfig = dataclasses.field(default_factory=PostprocessConfig)
    # `embedlab ensemble`: trained models (<stage>/<name>) whose descriptors are concatenated.
    ensemble: list[str] = dataclasses.field(default_factory=list)


    def __post_init__(self) -> None:
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 8 for n in self.scales):
            raise ConfigError(f"evaluate.scales must be input sizes in pixels (whole numbers >= 8), got {self.scales}")


@dataclasses.dataclass
class TrackingConfig:
    experiment: str = "embedlab"
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db
    # Training runs log CPU, memory, disk, network (and GPU) use as system/* metrics, sampled every
    # system_metrics_interval seconds (embedlab.system_metrics).
    system_metrics: bool = True
    system_metrics_interval: float = 10.0


@dataclasses.dataclass
class DataConfig:
    raw: str = "data/raw"
    disc: str = "data/raw/disc"
    imagenet: str = "data/raw/imagenet"
    frm_faces: str = "data/raw/frm_faces"
    faces: str = "data/raw/faces"  # the face layout (Kryptonite): train/meta.json, test_public/
    on_bad_image: str = "fail"  # fail | skip
    drip_cache: str | None = "data/cache/drip"  # drip's class images at aug_size (None: decode the originals)

    def __post_init__(self) -> None:
        _check_choice("data.on_bad_image", self.on_bad_image, ("fail", "skip"))


@dataclasses.dataclass
class GemConfig:
    """The GeM trainer (ISC 2021 "bag of tricks"): GemNet, P×K batches, CE + triplet."""

    backbone: str = "resnet50"
    pretrained: str | None = None  # local weights file; None trains from scratch
    img_size: int = 256
    gem_p: float = 3.0
    proj_hidden: int = 4096
    proj_dim: int = 8192
    last_stride_1: bool = True
    waveblock: bool = True
    descriptor_dim: int = 256  # the descriptor-track head (8192 → 256, distilled); 0: the neck feature itself
    kd_weight: float = 1.0  # the head's distillation loss (its gradient reaches the head only)
    kd_temperature: float = 2.0  # the original's T
    kd_scale: float = 20.0  # in-batch cosine similarities × this are the distilled logits
    train_transforms: bool = True  # the original's: flip (p 0.5), pad 10 px, random crop, seeded per draw
    classifier_init: str = "normal"  # normal: N(0, 0.001²), the original's | uniform: nn.Linear's
    ce_weight: float = 10.0
    triplet_weight: float = 1.0
    label_smoothing: float = 0.1
    p: int = 32  # identities per batch
    k: int = 4  # images per identity (the original's num_instances)
    lr: float = 3.5e-4
    head_lr_mult: float = 1.0  # the randomly initialised layers (projector, neck, heads, classifier) at lr × this
    weight_decay: float = 0.0
    warmup_epochs: float = 5
    flat_epochs: float = 5
    epochs: int = 25
    iters: int | None = 8000  # iterations per epoch; None: about one pass over the images
    evaluate: bool = True
    evaluate_before: bool = True

    def __post_init__(self) -> None:
        for name in ("p", "k"):
            if getattr(self, name) < 2:
                raise ConfigError(f"gem.{name} must be at least 2 (a batch needs positives and negatives)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"gem.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _check_choice("gem.classifier_init", self.classifier_init, ("normal", "uniform"))


@dataclasses.dataclass
class GemStart:
    """A GeM run's starting weights (params.yaml ``gem_starts``): the pipeline trains every start on every set,
    as the original trained 3 starts × 11 sets. Unset fields keep the gem section's."""

    backbone: str | None = None  # None: gem.backbone
    pretrained: str | None = None  # None: gem.pretrained
    scratch: bool = False  # random weights (no pretrained file)

    def __post_init__(self) -> None:
        if self.scratch and self.pretrained:
            raise ConfigError(f"a gem start with scratch: true cannot also name pretrained weights ({self.pretrained})")

    def apply(self, gem: GemConfig) -> GemConfig:
        """``gem`` with this start's backbone and weights."""
        pretrained = None if self.scratch else self.pretrained or gem.pretrained
        return dataclasses.replace(gem, backbone=self.backbone or gem.backbone, pretrained=pretrained)


@dataclasses.dataclass
class RobustnessConfig:
    """The robustness query set (``embedlab robustness-set``: references edited by a held-out edit family, plus
    distractors) and the models ``embedlab robustness`` scores on it, per edit kind."""

    out: str = "data/robustness"
    seed: int = 0
    per_kind: int = 1000  # edited references per edit kind
    distractors: int = 5000  # edited training images: queries that match no reference
    jpeg_quality: int = 90
    # <stage>/<name> under models/: a trained model, drip/pretrained (the ImageNet features drip starts
    # from) or baseline/phash; a pattern (gem/*/*) names every run it matches
    members: list[str] = dataclasses.field(default_factory=lambda: ["baseline/phash", "drip/pretrained"])

    def __post_init__(self) -> None:
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"robustness.jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if not self.members or not all(isinstance(m, str) and m for m in self.members):
            raise ConfigError(f"robustness.members must be a non-empty list of <stage>/<name>, got {self.members!r}")


@dataclasses.dataclass
class AugmentConfig:
    """The augmented training sets (``embedlab augment``): sources, sizes, recipes.

    ``base`` (the ``big`` chain) and ``recipes`` are checked against the op
    catalogue by :func:`embedlab.augment.recipes.load_recipes`. Defaults are
    the original's scale (docs/originals/gem.md); params.yaml holds the demo's.
    """

    source: str = "data/raw/disc/training"  # one class per image
    faces: str = "data/raw/frm_faces"  # extra classes of the recipes with `faces: true`
    out: str = "data/augmented"  # a set is written to <out>/<recipe>
    every: int = 10  # keep every n-th source image (sorted by name)
    classes: int = 0  # at most this many source classes; 0: all
    per_class: int = 20  # images per class: the anchor <class>_0 plus per_class - 1 augmentations
    size: int = 256  # pixels (square)
    jpeg_quality: int = 100
    seed: int = 0
    on_bad_image: str = "skip"  # skip (listed in manifest.json) | fail
    base: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    recipes: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_choice("augment.on_bad_image", self.on_bad_image, ("skip", "fail"))
        for name, low in (("every", 1), ("classes", 0), ("per_class", 1), ("size", 8)):
            if getattr(self, name) < low:
                raise ConfigError(f"augment.{name} must be at least {low}, got {getattr(self, name)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"augment.jpeg_quality must be in 1..100, got {self.jpeg_quality}")


@dataclasses.dataclass
class TripletPhase:
    """One phase of the triplet stage: its miner, learning rate, length and starting point."""

    miner: str = "all"  # all: every valid triplet of the batch | hard: batch-hard (Hermans et al.)
    lr: float = 1e-4
    epochs: int = 10
    init_from: str | None = None  # None: triplet.pretrained; "pretrain": that phase's last checkpoint

    def __post_init__(self) -> None:
        _check_choice("triplet phase miner", self.miner, ("all", "hard"))


@dataclasses.dataclass
class TripletConfig:
    """The deepfake-robust face encoder (docs/originals/face_encoder.md): ViT CLS embedding, triplet loss.

    Its two phases are params.yaml's ``triplet_phases`` (:class:`TripletPhase`).
    """

    data_out: str = "data/faces"  # `embedlab face-data` writes the CSVs here
    fake_classes: str = "per_person"  # per_person | per_image: how deepfakes become classes
    valid_fraction: float = 0.2  # persons held out for the validation pairs
    backbone: str = "vit_base_patch16_224"
    pretrained: str | None = None  # local ViT weights (e.g. DINO ViT-B/16); None: from scratch
    img_size: int = 224
    patch_size: int | None = None
    depth: int | None = None
    normalize_embeddings: bool = True  # one setting for both phases (the original mixed them)
    margin: float = 0.1
    p: int = 16  # labels per batch
    k: int = 4  # images per label
    iters: int | None = None  # batches per epoch; None: every label about once
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("triplet.fake_classes", self.fake_classes, ("per_person", "per_image"))
        if self.p < 2 or self.k < 2:
            raise ConfigError(f"triplet: a batch of {self.p} labels x {self.k} instances holds no triplet; "
                              "p and k must be at least 2")


@dataclasses.dataclass
class TemplatesConfig:
    """The decoder's training pairs (``embedlab templates``): face photos and their templates."""

    # The template model: a project encoder (.safetensors / .ckpt) or an ONNX face-recognition
    # model (e.g. insightface buffalo_l w600k_r50.onnx: RGB, (x - 127.5) / 127.5, its own input size).
    model: str = "models/triplet/finetune/encoder.safetensors"
    out: str = "data/templates"  # train.h5 / train.csv, test.h5 / test.csv, manifest.json
    test_fraction: float = 0.1  # persons held out (no person in both splits)
    include_fakes: bool = False  # deepfakes of the face set are photos too, but not of anyone real
    photos: str | None = None  # a photo list of `embedlab import pairs` (None: the face set's photos)

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"templates.test_fraction must be in (0, 1), got {self.test_fraction}")


@dataclasses.dataclass
class DecoderConfig:
    """The template -> face decoder (docs/originals/decoder.md)."""

    # The frozen network of the perceptual loss: a project encoder (other seed or loss than the
    # template model) or an ONNX face model (converted to PyTorch, so gradients flow through it).
    perceptor: str = "models/triplet/pretrain/encoder.safetensors"
    perceptor_layers: int = 4  # intermediate feature maps of the perceptor compared (plus its embedding)
    # ONNX perceptor only: the graph nodes whose outputs are compared, as the file names them or their output
    # tensors (empty: the ends of its last perceptor_layers stages, e.g. an iresnet's layer1-4)
    perceptor_nodes: list[str] = dataclasses.field(default_factory=list)
    resize_to_perceptor: bool = True  # decoder output size != perceptor input: resize (else an error)
    variant: str = "base"  # base (26 MiB at 512-d) | large (92 MiB)
    width: float = 1.0  # channel multiplier (1: the original; the CPU demo uses 0.25)
    output_size: int = 112
    mse_weight: float = 1.0
    laplace_weight: float = 1.0
    perceptual_weight: float = 11.0
    use_discriminator: bool = False
    discr_weight: float = 0.01
    lr: float = 1e-3
    min_lr: float = 1e-5
    restart_epochs: int = 10  # cosine warm restarts: T0 in epochs
    max_grad_norm: float = 10.0
    batch_size: int = 200
    epochs: int = 10
    control_samples: int = 9  # fixed test templates whose original-vs-reconstruction grid is logged
    visualize_every: int = 1024  # training steps between control grids (and one at the end)
    # Kept checkpoints at these training steps (the original's powers of ten), beside last.ckpt and best.ckpt
    save_at_steps: list[int] = dataclasses.field(default_factory=lambda: [100, 1_000, 10_000, 100_000])
    fmr: float = 1e-3  # the threshold: template model's impostor score at this false match rate
    threshold: float | None = None  # explicit threshold instead (e.g. 0.661 for buffalo_l)
    evaluate: bool = True
    evaluate_before: bool = True  # also score the untrained decoder (the table's "before"; sweeps skip it)

    def __post_init__(self) -> None:
        _check_choice("decoder.variant", self.variant, ("base", "large"))
        if self.output_size % 2 or not 8 <= self.output_size <= 128:
            raise ConfigError(f"decoder.output_size must be even and within [8, 128], got {self.output_size}")
        if not 0.0 < self.fmr < 1.0:
            raise ConfigError(f"decoder.fmr must be in (0, 1), got {self.fmr}")
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in self.save_at_steps):
            raise ConfigError(f"decoder.save_at_steps must be training steps (whole numbers >= 1), "
                              f"got {self.save_at_steps}")
        nodes = self.perceptor_nodes
        if not isinstance(nodes, list) or not all(isinstance(n, str) and n for n in nodes):
            raise ConfigError(f"decoder.perceptor_nodes must be a list of ONNX node names, got {nodes!r}")
        for name in ("mse_weight", "laplace_weight", "perceptual_weight", "discr_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"decoder.{name} must be >= 0, got {getattr(self, name)}")


@dataclasses.dataclass
class StageSweep:
    """What one trial of a stage's sweep trains, and the settings the study samples.

    ``space`` maps a setting of the stage to a range or a list: floats
    ``{low, high, log, step}``, ints ``{low, high, step, log}`` (int when the
    setting is an int), anything ``{choices: [...]}``. It is checked against
    the stage's settings by :mod:`embedlab.sweep.space` before any trial.
    """

    epochs: int | None = None  # epochs per trial; None: the stage's own
    space: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # DISC-scored stages (drip, gem): each trial scores on evaluate.queries / references of this size (0: all)
    score_queries: int = 0
    score_references: int = 0


@dataclasses.dataclass
class DripSweep(StageSweep):
    step: str = "s1"  # the step of drip_schedule each trial trains (from that step's parent)


@dataclasses.dataclass
class GemSweep(StageSweep):
    recipe: str | None = None  # the generated set each trial trains on; None: the first of pipeline.gem
    # With `augment_intensity` in the space each trial generates its own set: this small (None: augment's own)
    classes: int | None = None
    per_class: int | None = None


@dataclasses.dataclass
class TripletSweep(StageSweep):
    phase: str = "pretrain"  # pretrain | finetune (from pretrain's checkpoint)


@dataclasses.dataclass
class SweepConfig:
    """Optuna sweeps (``embedlab sweep STAGE``): storage, sampler, pruner, one section per stage."""

    storage: str | None = None  # RDB URL; None: sqlite:///<repo>/optuna.db (postgresql://... to share)
    n_trials: int = 20  # the study's budget, counted over all its workers and restarts
    sampler: str = "tpe"  # tpe | random | qmc | gp (Optuna's samplers of those names)
    sampler_seed: int = 0
    pruner: str = "median"  # median | hyperband | none
    n_startup_trials: int = 2  # median pruner: trials that run to the end before any pruning
    n_warmup_steps: int = 1  # median pruner: epochs of a trial never pruned
    drip_stage: DripSweep = dataclasses.field(default_factory=DripSweep)
    gem_stage: GemSweep = dataclasses.field(default_factory=GemSweep)
    triplet_stage: TripletSweep = dataclasses.field(default_factory=TripletSweep)
    decoder_stage: StageSweep = dataclasses.field(default_factory=StageSweep)

    def __post_init__(self) -> None:
        _check_choice("sweep.pruner", self.pruner, ("median", "hyperband", "none"))
        _check_choice("sweep.sampler", self.sampler, ("tpe", "random", "qmc", "gp"))
        if self.n_trials < 1:
            raise ConfigError(f"sweep.n_trials must be at least 1, got {self.n_trials}")


@dataclasses.dataclass
class Params:
    seed: int = 0
    profile: str = "demo"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    demo_data: DemoDataConfig = dataclasses.field(default_factory=DemoDataConfig)
    demo_faces: FaceDemoConfig = dataclasses.field(default_factory=FaceDemoConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    pipeline: PipelineConfig = dataclasses.field(default_factory=PipelineConfig)
    drip: DripConfig = dataclasses.field(default_factory=DripConfig)
    # One DVC stage per step; a section of its own, so that adding a step changes no other step's params.
    drip_schedule: dict[str, DripStep] = dataclasses.field(default_factory=dict)
    gem: GemConfig = dataclasses.field(default_factory=GemConfig)
    gem_starts: dict[str, GemStart] = dataclasses.field(default_factory=lambda: {"base": GemStart()})
    triplet: TripletConfig = dataclasses.field(default_factory=TripletConfig)
    # The two phases apart from the shared settings: a phase's DVC params do not hold the other's.
    triplet_phases: dict[str, TripletPhase] = dataclasses.field(default_factory=lambda: {
        "pretrain": TripletPhase(),
        "finetune": TripletPhase(miner="hard", lr=1e-6, epochs=3, init_from="pretrain")})
    templates: TemplatesConfig = dataclasses.field(default_factory=TemplatesConfig)
    decoder: DecoderConfig = dataclasses.field(default_factory=DecoderConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)
    robustness: RobustnessConfig = dataclasses.field(default_factory=RobustnessConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    sweep: SweepConfig = dataclasses.field(default_factory=SweepConfig)

    def __post_init__(self) -> None:
        missing = [name for name in self.pipeline.gem_starts if name not in self.gem_starts]
        if missing:
            raise ConfigError(f"pipeline.gem_starts: {missing} not defined in gem_starts (defined: {sorted(self.gem_starts)})")

    def gem_start(self, name: str | None = None) -> tuple[str, GemStart]:
        """A GeM start by name (default: the first of pipeline.gem_starts), and its name."""
        name = name or self.pipeline.gem_starts[0]
        if name not in self.gem_starts:
            raise ConfigError(f"gem start {name!r} not defined in gem_starts (defined: {sorted(self.gem_starts)})")
        return name, self.gem_starts[name]


# Hand-written rather than pydantic / OmegaConf: the rules here are few but unusual (a YAML
# "2e-4" string is a float, as DVC reads it; "no" is not a bool; errors name the file and the
# dotted setting), and pydantic's lax mode accepts "no" as false while its strict mode refuses
# "2e-4": custom validators for both would not be shorter than these two functions.
def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``values``, rejecting unknown keys."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown parameter(s) {unknown}{_did_you_mean(unknown, fields)}; "
                          f"known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)  # the annotations as types (nested sections, schedules)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        sections = typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1])
        if (dataclasses.is_dataclass(hint) or sections) and not isinstance(value, Mapping | None):
            raise ConfigError(f"{where}.{name}: expected a mapping, got {type(value).__name__}")
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = _build(hint, value, f"{where}.{name}")
        elif sections:
            item = typing.get_args(hint)[1]
            value = {str(k): _build(item, v, f"{where}.{name}.{k}") for k, v in (value or {}).items()}
        else:
            value = _check_range(name, _coerce(value, fields[name].type, f"{where}.{name}"), f"{where}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


_SCALARS = {"int": int, "float": float, "str": str, "bool": bool}

# Counts and sizes a run cannot work with at 0 (Lightning reads epochs -1 as "forever", torch fails deep inside
# on a 0-sized batch or image, a 0-d descriptor is no descriptor).
AT_LEAST_ONE = frozenset({
    "epochs", "batch_size", "embedding_dim", "img_size", "aug_size", "image_size", "output_size",
    "inference_batch_size", "devices", "num_nodes", "classifier_devices", "p", "k", "iters", "proj_dim",
    "proj_hidden", "per_class", "size", "every", "patch_size", "depth", "restart_epochs", "visualize_every",
    "n_trials", "prefetch_factor", "score_norm_n", "stretch_n", "limit_train_batches", "whiten_dim", "per_kind",
    "perceptor_layers",
})
POSITIVE = frozenset({"lr", "arcface_s", "gem_p", "width", "fmr", "partial_fc", "kd_temperature", "kd_scale",
                      "head_lr_mult", "system_metrics_interval"})  # > 0
SIGNED = frozenset({"threshold", "whiten_power"})  # any finite number; every other number is >= 0


def _check_range(name: str, value: Any, where: str) -> Any:
    """Refuse a number the setting cannot take, naming it: NaN or infinite anywhere, below 1 for counts and
    sizes, not above 0 for rates and scales, negative elsewhere."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if not math.isfinite(value):
        raise ConfigError(f"{where}: {value} is not a finite number")
    if name in AT_LEAST_ONE and value < 1:
        raise ConfigError(f"{where}: must be at least 1, got {value}")
    if name in POSITIVE and value <= 0:
        raise ConfigError(f"{where}: must be above 0, got {value}")
    if name not in SIGNED and value < 0:
        raise ConfigError(f"{where}: must not be negative, got {value}")
    return value


def _did_you_mean(unknown: list[str], known) -> str:
    guesses = [f"{u!r} → {m[0]!r}" for u in unknown if (m := difflib.get_close_matches(u, list(known), n=1))]
    return f" (did you mean {', '.join(guesses)}?)" if guesses else ""


def _coerce(value: Any, annotation: str, where: str) -> Any:
    """Check a scalar against its field's annotation (e.g. "float | None").

    PyYAML reads ``2e-4`` (no dot) as a string while DVC reads it as a number:
    numeric strings are accepted for float fields; anything else that does not
    fit is an error naming the setting.
    """
    kinds = [k.strip() for k in str(annotation).split("|")]
    if value is None:
        if "None" in kinds:
            return None
        raise ConfigError(f"{where}: a value is required")
    for kind in kinds:
        expected = _SCALARS.get(kind)
        if expected is None:
            continue
        if expected is bool:
            if isinstance(value, bool):
                return value
        elif expected is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                return float(value)
            except ValueError:
                continue
        elif expected is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        elif expected is str and isinstance(value, str):
            return value
    if not any(k in _SCALARS for k in kinds):
        return value  # not a scalar field
    raise ConfigError(f"{where}: {value!r} is not a valid {annotation}")


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a parameter file with both means a mistake."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(f"line {line}: duplicate key {key!r} (first at line {seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: parameter file not found (run from the project root)")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if raw is None:
        raise ConfigError(f"{path}: the parameter file is empty (copy the project's params.yaml)")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


NOT_PARAMS = frozenset({"profiles"})  # read by `embedlab use-profile`, not by the stages


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read params.yaml and type-check it; an unknown section is an error (a typo would run on defaults)."""
    path = Path(path)
    raw = _read_yaml(path)
    known = {f.name for f in dataclasses.fields(Params)}
    unknown = sorted(set(raw) - known - NOT_PARAMS)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}{_did_you_mean(unknown, known)}; "
                          f"known: {sorted(known)}")
    return _build(Params, {k: v for k, v in raw.items() if k in known}, str(path))


REPLACED_BY_PROFILES = frozenset({"drip_schedule", "gem_starts"})  # a profile's list is a whole new one


def use_profile(path: str | os.PathLike, name: str) -> None:
    """Write profile ``name`` of params.yaml into its top-level values (comments kept).

    A profile's ``drip_schedule`` and ``gem_starts`` replace the current ones instead of merging into them.
    The values it overwrites are first kept in every other profile that does not set them (the
    current one, e.g. ``demo``, is created when params.yaml does not define it): each profile is a
    whole state, so any switch can be undone and demo -> demo_full -> full -> demo gives back the demo.
    """
    from ruamel.yaml import YAML  # round-trip: keeps the file's comments and order

    from embedlab.atomic import write_text_atomic

    path = Path(path)
    profiles = _read_yaml(path).get("profiles") or {}
    if name not in profiles:
        raise ConfigError(f"{path}: unknown profile {name!r}; defined: {sorted(profiles)}")
    rt = YAML()
    doc = rt.load(path.read_text())

    def merge(target, overlay):
        for key, value in overlay.items():
            if isinstance(value, Mapping) and key not in REPLACED_BY_PROFILES and isinstance(target.get(key), Mapping):
                merge(target[key], value)
            else:
                target[key] = copy.deepcopy(value)

    def snapshot(target, overlay):
        return {key: snapshot(target[key], value)
                if isinstance(value, Mapping) and key not in REPLACED_BY_PROFILES and isinstance(target.get(key), Mapping)
                else copy.deepcopy(target[key]) for key, value in overlay.items() if key in target}

    def keep_missing(target, kept):
        for key, value in kept.items():
            if key not in target:
                target[key] = value
            elif isinstance(value, Mapping) and key not in REPLACED_BY_PROFILES and isinstance(target[key], Mapping):
                keep_missing(target[key], value)

    current = doc.get("profile", "demo")
    if current != name:
        if doc["profiles"].get(current) is None:
            doc["profiles"][current] = {}
        overwritten = snapshot(doc, profiles[name])
        for other in doc["profiles"]:
            if other != name:
                keep_missing(doc["profiles"][other], copy.deepcopy(overwritten))
    merge(doc, profiles[name])
    doc["profile"] = name
    buffer = io.StringIO()
    rt.dump(doc, buffer)
    text = buffer.getvalue()
    _build(Params, {k: v for k, v in (yaml.safe_load(text) or {}).items()
                    if k in {f.name for f in dataclasses.fields(Params)}}, f"{path} (profile {name})")
    write_text_atomic(path, text)


def apply_overrides(cfg: Any, overrides: Mapping[str, Any], where: str | None = None) -> Any:
    """Return a copy of dataclass ``cfg`` with ``overrides`` (None values skipped); errors name the setting as
    params.yaml spells it (``runtime.devices``) unless ``where`` says otherwise."""
    values = {k: v for k, v in overrides.items() if v is not None}
    return _build(type(cfg), {**dataclasses.asdict(cfg), **values}, where or _section_of(type(cfg)))


def _section_of(cls: type) -> str:
    """The params.yaml section a config class is read from (``RuntimeConfig`` → ``runtime``)."""
    hints = typing.get_type_hints(Params)
    return next((name for name, hint in hints.items() if hint is cls), cls.__name__)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dataclasses/dicts to ``{"a.b": value}`` (for MLflow params)."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
