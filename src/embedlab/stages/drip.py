"""Drip stage: one step of ArcFace training with a growing class count.

    embedlab drip --step s2                      # a step of params.yaml's drip_schedule
    embedlab drip --n-facebook-samples 200 --n-imagenet-samples 0 \
        --n-frm-face-samples 0 --batch-size 32 --qry-augs-intensity 0.5 \
        [--build-w-matrix models/drip/<prev>/checkpoints/last.ckpt]

With ``build_w_matrix`` the new model restores every same-shaped weight of
the previous checkpoint, its ArcFace kernel is set to the class centroids
(saved as ``w_matrix.safetensors``, computed across the DDP ranks:
:mod:`embedlab.stages.w_matrix`) and training starts at epoch 0. At the
end the model embeds the DISC query and reference sets and scores μAP.
Start, resume and re-evaluation follow :mod:`embedlab.stages.lifecycle`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Sequence

import mlflow
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor
from torch.utils.data import DataLoader

from embedlab.const import (
    DESCRIPTOR_MODEL,
    EVAL,
    PR_CURVE_CSV,
    PR_CURVE_HEADER,
    SKIPPED_IMAGES,
    last_checkpoint,
)
from embedlab.atomic import write_json_atomic
from embedlab.augment import OverlayPool, QueryAugmenter
from embedlab.config import DripConfig, DripStep, Params
from embedlab.data.classes import ClassSource, select_classes
from embedlab.data.collate import collate_skipping_bad
from embedlab.data.drip import ClassImages, QueryViews, ValidationPairs, class_folders
from embedlab.data.image_cache import build_drip_cache, cache_folder
from embedlab.data.samplers import EpochIndices
from embedlab.devices import runtime_loader_options, training_shard
from embedlab.images import count_bad_images, list_images
from embedlab.models.checkpoints import restore_matching_weights
from embedlab.models.drip_module import DripModule
from embedlab.models.stop_rule import StopRule
from embedlab.evaluation.disc_model import evaluate_descriptor_model, scoring_data
from embedlab.run_inputs import DataInput, first
from embedlab.stages.init_weights import INIT_STEP, initial_weights_path
from embedlab.stages.lifecycle import Monitor, TrainingStage, run_stage
from embedlab.stages.reports import HistoryParent
from embedlab.stages.w_matrix import CentroidInit


log = logging.getLogger(__name__)

DATA_NAMES = {"facebook": "disc21/training", "imagenet": "imagenet", "frm_faces": "frm_faces"}  # MLflow datasets

@dataclasses.dataclass
class DripRequest(TrainingStage):
    """One drip step: its name, class counts and starting point."""

    name: str
    step: DripStep
    build_w_matrix: Path | None = None
    pretrained: Path | str | None = None  # None: drip.pretrained
    models_root: Path = Path("models/drip")
    reports_root: Path = Path("reports/drip")
    plots_root: Path = Path("reports/plots")

    command: ClassVar[str] = "drip"
    section: ClassVar[str] = "drip"
    export_name: ClassVar[str] = DESCRIPTOR_MODEL
    monitor: ClassVar[Monitor] = Monitor("val_loss")
    curve_kind: ClassVar[str] = "pr_curve"

    @property
    def run_name(self) -> str:
        return self.name

    def setup(self, params: Params) -> None:
        """Check the request and read the step's classes; refuse before anything is written."""
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"drip: step name {self.name!r} must be a plain folder name")
        self.cfg = effective_config(params.drip, self.step)
        if self.build_w_matrix is not None:
            parent = Path(self.build_w_matrix)
            if not parent.is_file():
                raise FileNotFoundError(f"{parent}: checkpoint for build_w_matrix not found")
            if self.out_dir.resolve() in parent.resolve().parents:
                raise ValueError(f"{parent}: build_w_matrix lies inside this run's own output folder "
                                 f"{self.out_dir}; name the new step differently (--name)")
            if self.cfg.require_advance_rule:
                check_advance_rule(parent.parent.parent)
        data = params.data
        self.cache_skipped = 0  # source images the cache left out (on_bad_image: skip)
        counts = {"facebook": self.step.n_facebook_samples, "imagenet": self.step.n_imagenet_samples,
                  "frm_faces": self.step.n_frm_face_samples}
        folders = class_folders(data)
        if data.drip_cache:  # read the classes at aug_size from the cache (built here if it is missing)
            wanted = {name: folders[name] for name, count in counts.items() if count}
            built = build_drip_cache(wanted, data.drip_cache, self.cfg.aug_size, data.on_bad_image)
            self.cache_skipped = sum(len(summary["skipped"]) for summary in built.values())
            folders = {name: cache_folder(data.drip_cache, self.cfg.aug_size, name) for name in folders}
        self.class_sources = {name: (folders[name], count) for name, count in counts.items() if count}
        self.classes = [Path(c.path) for c in select_classes([
            ClassSource(folders[name], count, label=name, exact=True) for name, count in counts.items()])]
        if not self.classes:
            raise ValueError("the drip step selects no classes: set n_facebook_samples (or another source) above 0")
        self.images = ClassImages(self.classes, self.cfg.aug_size, data.on_bad_image,
                                  bad_log=self.out_dir / SKIPPED_IMAGES)
        self.overlay_paths = overlay_sources(self.cfg, folders, self.classes)
        self.augment = QueryAugmenter(self.cfg.qry_augs_intensity, OverlayPool.from_paths(self.overlay_paths))

    def tags(self) -> dict[str, str]:
        return {"embedlab.drip_step": self.name}

    def settings(self, params: Params) -> Any:
        return [params.data, self.cfg, self.step, self.name, str(self.pretrained)]

    def inputs(self, params: Params) -> list[Path | None]:
        return [self.build_w_matrix]

    def config(self, params: Params) -> DripConfig:
        return self.cfg

    def extra_params(self, params: Params) -> dict[str, Any]:
        return {
            "drip.step": self.name, "drip.n_classes": len(self.classes),
            "drip.build_w_matrix": str(self.build_w_matrix or ""),
            "drip.start_weights": str(self.pretrained or self.cfg.pretrained or ""),
            # A step's None means "drip.<field>": the effective value is the section's, logged already.
            **{f"drip.{k}": v for k, v in dataclasses.asdict(self.step).items() if v is not None},
        }

    def training_data(self, params: Params) -> list[DataInput]:
        # A class is one image of its source: the first ``count`` in name order (select_classes).
        return [DataInput(DATA_NAMES[name], folder, {"classes": count}, first(count, len(list_images(folder))))
                for name, (folder, count) in self.class_sources.items()]

    def evaluation_data(self, params: Params) -> list[DataInput]:
        return scoring_data(params, any(self.evaluates(params)))

    def build(self, params: Params, fresh: bool) -> DripModule:
        cfg = self.cfg
        spec = {"backbone": cfg.backbone, "embedding_dim": cfg.embedding_dim, "gem_p": cfg.gem_p,
                "img_size": cfg.img_size}
        return DripModule(
            spec, len(self.classes), cfg.arcface_m, cfg.arcface_s, cfg.margin_warmup_epochs, cfg.lr,
            cfg.weight_decay, cfg.plateau_factor, cfg.plateau_patience,
            pretrained=(self.pretrained or cfg.pretrained) if fresh and not self.build_w_matrix else None,
            channels_last=params.runtime.channels_last, partial_fc=cfg.partial_fc,
        )

    def prepare(self, module: DripModule, params: Params) -> None:
        """The parent's weights (DDP gives them to every rank; the W matrix follows when training starts)."""
        if self.build_w_matrix:
            restore_matching_weights(module, self.build_w_matrix, module.model.spec)

    def loaders(self, params: Params) -> tuple[DataLoader, DataLoader]:
        g = torch.Generator().manual_seed(params.seed)
        val_ids = torch.randperm(len(self.classes), generator=g)[: min(self.cfg.val_classes, len(self.classes))]
        train = QueryViews(self.images, self.augment, self.cfg.img_size, params.seed)
        val = ValidationPairs(self.images, val_ids.tolist(), self.augment, self.cfg.img_size, params.seed)
        rank, ranks = training_shard(params.runtime)
        return (step_loader(train, self.cfg, params, EpochIndices(len(train), params.seed, num_replicas=ranks,
                                                                  rank=rank)),
                step_loader(val, self.cfg, params))

    def callbacks(self, params: Params, run_id: str | None) -> list[pl.Callback]:
        stop = [StopRule(self.cfg.stop_train_loss, self.cfg.stop_val_loss)] if self.cfg.stop_rule else []
        centroids = [CentroidInit(self, params)] if self.build_w_matrix or self.cfg.w_init == "centroids" else []
        return [LearningRateMonitor(logging_interval="epoch"), *centroids, *stop]

    def trainer_options(self, params: Params) -> dict[str, Any]:
        return {"max_epochs": self.cfg.epochs, "gradient_clip_val": self.cfg.grad_clip,
                "limit_train_batches": self.cfg.limit_train_batches, "log_every_n_steps": 50}

    def evaluates(self, params: Params) -> tuple[bool, bool]:
        return self.cfg.evaluate, self.cfg.evaluate and self.cfg.evaluate_before

    def evaluate(self, module: DripModule, params: Params, folder: Path, prefix: str) -> dict:
        return evaluate_descriptor_model(module.model, params, folder, prefix=prefix)

    def describe(self, history) -> dict[str, Any]:
        met = any(train < self.cfg.stop_train_loss or val < self.cfg.stop_val_loss for _, train, val in history)
        return {"step": self.name, "n_classes": len(self.classes),
                "val_loss": history[-1][2] if history else None,
                "advance_rule_met": float(met),  # NaN losses compare False: a diverged step never meets it
                "skipped_training_images": count_bad_images(self.images.bad_log) + self.cache_skipped}

    def finish(self, module, params: Params, summary: dict) -> dict[str, Path]:
        mlflow.set_tag("embedlab.advance_rule_met", str(bool(summary["advance_rule_met"])).lower())
        write_json_atomic(self.out_dir / ADVANCE_RULE, {
            "met": bool(summary["advance_rule_met"]), "train_loss_below": self.cfg.stop_train_loss,
            "val_loss_below": self.cfg.stop_val_loss})
        return {"skipped": self.images.bad_log}

    def curves(self) -> dict[str, tuple[Path, str]]:
        return {"pr_curve": (self.out_dir / EVAL / PR_CURVE_CSV, PR_CURVE_HEADER)}

    def history_parent(self) -> HistoryParent | None:
        """The step whose checkpoint this one starts from (``models/drip/<parent>/checkpoints/last.ckpt``). Its
        history CSV (which holds its own parents' rows first) comes before this step's rows, and the epochs go
        on from its last: the chart of the schedule's last step draws every step, one after another."""
        return self.continued_run(self.build_w_matrix, repeat_rows=True)


def plan_scheduled_step(params: Params, name: str) -> DripRequest:
    """A step of drip_schedule, started as its ``init_from`` says."""
    if name not in params.drip_schedule:
        raise ValueError(f"params.yaml: drip_schedule has no step {name!r}; steps: {list(params.drip_schedule)}")
    request = DripRequest(name=name, step=params.drip_schedule[name])
    parent = request.step.init_from
    if parent == INIT_STEP:
        request.pretrained = initial_weights_path(request.models_root)
    elif parent:
        if parent not in params.drip_schedule:
            raise ValueError(f"params.yaml: drip_schedule.{name}.init_from names no step: {parent!r}")
        request.build_w_matrix = last_checkpoint(request.models_root / parent)
    return request




def overlay_sources(cfg: DripConfig, folders: dict[str, Path], classes: list[Path]) -> list[Path]:
    """The images overlays and underlays are cut from: ``drip.overlay_pool``'s, else the source images this step
    does not train on (as the original: a class's image never becomes another class's background)."""
    if cfg.overlay_pool:
        return list_images(cfg.overlay_pool, recursive=True)
    chosen = {str(p) for p in classes}
    outside = [p for folder in folders.values() if Path(folder).exists()
               for p in list_images(folder, allow_empty=True) if str(p) not in chosen]
    if not outside:
        log.warning("drip: every source image is a class of this step, so overlays are cut from the class images; "
                    "set drip.overlay_pool to a folder of other images")
        return list(classes)
    return outside


ADVANCE_RULE = "advance_rule.json"  # in a finished step's folder: whether it met the advance rule


def check_advance_rule(parent_dir: Path) -> None:
    """Refuse to start from a step that never met the advance rule (``drip.require_advance_rule``)."""
    path = parent_dir / ADVANCE_RULE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; the parent step {parent_dir.name} has not finished")
    rule = json.loads(path.read_text())
    if not rule["met"]:
        raise ValueError(f"drip: the parent step {parent_dir.name} never met the advance rule (train loss below "
                         f"{rule['train_loss_below']} or validation loss below {rule['val_loss_below']}, {path}): "
                         "train it longer, or set drip.require_advance_rule: false to go on anyway")


def effective_config(cfg: DripConfig, step: DripStep) -> DripConfig:
    """The stage's settings with the step's own batch size / intensity / epochs applied."""
    overrides = {k: getattr(step, k) for k in ("batch_size", "qry_augs_intensity", "epochs")}
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def step_loader(dataset, cfg: DripConfig, params: Params, sampler: EpochIndices | None = None) -> DataLoader:
    """A training loader (``sampler``: shuffled (epoch, index) items) or a validation loader."""
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate_skipping_bad,
                      drop_last=False, **runtime_loader_options(params.runtime, keep_workers=sampler is not None))


def run_drip(params: Params, request: DripRequest, callbacks: Sequence[pl.Callback] = ()) -> dict:
    """Train one drip step, evaluate it, log everything; returns the step's metrics."""
    return run_stage(request, params, callbacks)
