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
import io
import os
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


# DripConfig fields that change how fast a step runs, not what it learns: left
# out of the resume fingerprint and of the DVC stage's params (dvc.yaml lists
# every other field; a test keeps the two in step).
DRIP_RUNTIME_FIELDS = ("num_workers", "channels_last", "schedule")


@dataclasses.dataclass
class DripConfig:
    """The drip stage: backbone, ArcFace head, optimiser, augmentations."""

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
    stop_train_loss: float = 2.0
    stop_val_loss: float = 1.0
    w_matrix_augmentations: int = 4
    # The head of a step without a parent checkpoint: "centroids" of the starting
    # model's embeddings (as build_w_matrix does), or "random" (the original's first step).
    w_init: str = "centroids"
    channels_last: bool = True  # faster convolutions on CPU and GPU alike
    num_workers: int = 0
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32 on CPU
    limit_train_batches: int | None = None
    evaluate: bool = True  # embed the DISC query/reference sets and score μAP at the end
    evaluate_before: bool = True  # also score the starting model (the table's "μAP before")
    schedule: dict[str, DripStep] = dataclasses.field(default_factory=dict)


    def __post_init__(self) -> None:
        _check_choice("drip.w_init", self.w_init, ("centroids", "random"))
        _check_choice("drip.precision", self.precision, ("auto", "32-true", "bf16-mixed", "16-mixed"))
        if not 0.0 <= float(self.qry_augs_intensity) <= 1.0:
            raise ConfigError(f"drip.qry_augs_intensity must be in [0, 1], got {self.qry_augs_intensity}")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: {value!r} is not one of {list(allowed)}")


@dataclasses.dataclass
class EmbedConfig:
    batch_size: int = 64
    num_workers: int = 0
    on_bad_image: str = "fail"  # fail | skip

    def __post_init__(self) -> None:
        _check_choice("embed.on_bad_image", self.on_bad_image, ("fail", "skip"))


@dataclasses.dataclass
class EvaluateConfig:
    k: int = 10  # neighbours per query in the kNN search


@dataclasses.dataclass
class TrackingConfig:
    experiment: str = "embedlab"
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db


@dataclasses.dataclass
class DataConfig:
    raw: str = "data/raw"
    disc: str = "data/raw/disc"
    imagenet: str = "data/raw/imagenet"
    frm_faces: str = "data/raw/frm_faces"
    on_bad_image: str = "fail"  # fail | skip

    def __post_init__(self) -> None:
        _check_choice("data.on_bad_image", self.on_bad_image, ("fail", "skip"))


@dataclasses.dataclass
class Params:
    seed: int = 0
    profile: str = "demo"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    demo_data: DemoDataConfig = dataclasses.field(default_factory=DemoDataConfig)
    drip: DripConfig = dataclasses.field(default_factory=DripConfig)
    embed: EmbedConfig = dataclasses.field(default_factory=EmbedConfig)
    evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``values``, rejecting unknown keys."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown parameter(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)  # the annotations as types (nested sections, schedules)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = _build(hint, value, f"{where}.{name}")
        elif typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1]):
            item = typing.get_args(hint)[1]
            value = {str(k): _build(item, v, f"{where}.{name}.{k}") for k, v in (value or {}).items()}
        else:
            value = _coerce(value, fields[name].type, f"{where}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


_SCALARS = {"int": int, "float": float, "str": str, "bool": bool}


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


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: parameter file not found (run from the project root)")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read params.yaml and type-check it (sections of later stages pass through untyped)."""
    path = Path(path)
    raw = _read_yaml(path)
    known = {f.name for f in dataclasses.fields(Params)}
    return _build(Params, {k: v for k, v in raw.items() if k in known}, str(path))


def use_profile(path: str | os.PathLike, name: str) -> None:
    """Write profile ``name`` of params.yaml into its top-level values (comments kept).

    A profile's ``schedule`` replaces the current one instead of merging into it.
    The values it overwrites are first kept as the current profile (e.g.
    ``demo``) when params.yaml does not define that one, so a switch can be undone.
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
            if isinstance(value, Mapping) and key != "schedule" and isinstance(target.get(key), Mapping):
                merge(target[key], value)
            else:
                target[key] = copy.deepcopy(value)

    def snapshot(target, overlay):
        return {key: snapshot(target[key], value)
                if isinstance(value, Mapping) and key != "schedule" and isinstance(target.get(key), Mapping)
                else copy.deepcopy(target[key]) for key, value in overlay.items() if key in target}

    current = doc.get("profile", "demo")
    if current != name and current not in profiles:
        doc["profiles"][current] = snapshot(doc, profiles[name])
    merge(doc, profiles[name])
    doc["profile"] = name
    buffer = io.StringIO()
    rt.dump(doc, buffer)
    text = buffer.getvalue()
    _build(Params, {k: v for k, v in (yaml.safe_load(text) or {}).items()
                    if k in {f.name for f in dataclasses.fields(Params)}}, f"{path} (profile {name})")
    write_text_atomic(path, text)


def apply_overrides(cfg: Any, overrides: Mapping[str, Any], where: str = "override") -> Any:
    """Return a copy of dataclass ``cfg`` with ``overrides`` (None values skipped)."""
    values = {k: v for k, v in overrides.items() if v is not None}
    return _build(type(cfg), {**dataclasses.asdict(cfg), **values}, where)


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
