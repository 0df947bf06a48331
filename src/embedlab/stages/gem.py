"""GeM stage: train the "bag of tricks" GeM model on one generated training set.

    embedlab gem --recipe big [--start imagenet --epochs 4 --iters 20 --lr 3.5e-4]
    mlflow run . -e gem_stage -P recipe=big -P start=imagenet --env-manager local

Reads ``data/augmented/<recipe>`` (``embedlab augment``), trains GemNet from
one of params.yaml's ``gem_starts`` (pretrained weights) into
``models/gem/<start>/<recipe>`` (dvc.yaml: every start × every set), with
a P×K sampler (gem.p identities × gem.k instances per batch), evaluates on
the DISC query/reference sets like the drip stage and exports the
descriptor model without its classifier. With ``runtime.devices`` > 1 it
trains under DDP, the classifier split into one shard per rank. Start,
resume and re-evaluation follow :mod:`embedlab.stages.lifecycle`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Sequence

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor
from torch.utils.data import DataLoader

from embedlab.const import BEFORE, DESCRIPTOR_MODEL, EVAL, PR_CURVE_CSV, PR_CURVE_HEADER, SKIPPED_IMAGES
from embedlab.config import GemConfig, Params
from embedlab.data.augmented import AugmentedSet
from embedlab.data.transforms import reid_train_transform
from embedlab.data.collate import collate_skipping_bad
from embedlab.data.samplers import PKSampler
from embedlab.devices import runtime_loader_options, training_shard
from embedlab.images import count_bad_images
from embedlab.models.gem_module import GemModule, iterations_per_epoch
from embedlab.models.gem_net import GemNetSpec, NeckDescriptor
from embedlab.evaluation.disc_model import evaluate_descriptor_model, scoring_data
from embedlab.run_inputs import DataInput
from embedlab.stages.lifecycle import TrainingStage, run_stage

NECK = "neck"  # the folder and metric prefix of the neck feature's scores


@dataclasses.dataclass
class GemRequest(TrainingStage):
    """Which generated set one GeM run trains on, and where its outputs go."""

    recipe: str
    data_dir: Path
    cfg: GemConfig | None = None  # None: params.yaml's gem section
    start: str = "base"  # the gem_starts entry cfg's weights come from
    models_root: Path = Path("models/gem")
    reports_root: Path = Path("reports/gem")
    plots_root: Path = Path("reports/plots")

    command: ClassVar[str] = "gem"
    section: ClassVar[str] = "gem"
    export_name: ClassVar[str] = DESCRIPTOR_MODEL

    @property
    def run_name(self) -> str:
        return f"{self.start}/{self.recipe}"

    @property
    def plot_name(self) -> str:
        return f"{self.command}_{self.start}_{self.recipe}"

    def setup(self, params: Params) -> None:
        self.cfg = self.cfg or params.gem
        self.dataset = AugmentedSet(self.data_dir, self.cfg.img_size, params.data.on_bad_image,
                                    bad_log=self.out_dir / SKIPPED_IMAGES,
                                    train_transform=reid_train_transform if self.cfg.train_transforms else None,
                                    seed=params.seed)
        self.iters = iterations_per_epoch(len(self.dataset), self.cfg.p * self.cfg.k, self.cfg.iters)

    def tags(self) -> dict[str, str]:
        return {"embedlab.gem_recipe": self.recipe, "embedlab.gem_start": self.start}

    def settings(self, params: Params) -> Any:
        return [self.cfg, self.start, self.recipe, params.data.on_bad_image]

    def inputs(self, params: Params) -> list[Path | None]:
        return [self.data_dir / "manifest.json"]  # the generated set's parameters and counts

    def config(self, params: Params) -> GemConfig:
        return self.cfg

    def extra_params(self, params: Params) -> dict[str, Any]:
        return {"gem.n_classes": self.dataset.n_classes, "gem.n_images": len(self.dataset),
                "gem.batch_size": self.cfg.p * self.cfg.k, "gem.iters_per_epoch": self.iters,
                "gem.data": str(self.data_dir), "gem.start": self.start}

    def training_data(self, params: Params) -> list[DataInput]:
        return [DataInput(f"augmented/{self.recipe}", self.data_dir,
                          {"images": len(self.dataset), "classes": self.dataset.n_classes})]

    def evaluation_data(self, params: Params) -> list[DataInput]:
        return scoring_data(params, any(self.evaluates(params)))

    def build(self, params: Params, fresh: bool) -> GemModule:
        cfg = self.cfg
        return GemModule(
            _spec(cfg), self.dataset.n_classes, cfg.ce_weight, cfg.triplet_weight, cfg.label_smoothing, cfg.lr,
            cfg.weight_decay, cfg.warmup_epochs, cfg.flat_epochs, cfg.epochs, self.iters,
            params.runtime.classifier_devices, pretrained=cfg.pretrained if fresh else None,
            channels_last=params.runtime.channels_last, classifier_init=cfg.classifier_init,
            kd_weight=cfg.kd_weight, kd_temperature=cfg.kd_temperature, kd_scale=cfg.kd_scale,
            head_lr_mult=cfg.head_lr_mult,
        )

    def loaders(self, params: Params) -> tuple[DataLoader, None]:
        return train_loader(self.dataset, self.cfg, params, self.iters), None

    def callbacks(self, params: Params, run_id: str | None) -> list[pl.Callback]:
        return [LearningRateMonitor(logging_interval="epoch")]

    def trainer_options(self, params: Params) -> dict[str, Any]:
        return {"max_epochs": self.cfg.epochs,
                "limit_train_batches": self.iters, "limit_val_batches": 0, "log_every_n_steps": 10}

    def evaluates(self, params: Params) -> tuple[bool, bool]:
        return self.cfg.evaluate, self.cfg.evaluate and self.cfg.evaluate_before

    def evaluate(self, module: GemModule, params: Params, folder: Path, prefix: str) -> dict:
        """Scores on DISC; "before": the pretrained body with an untrained projector. A trained model with
        the descriptor-track head also scores its neck feature (``neck_*``): what the head costs or gains."""
        scores = evaluate_descriptor_model(module.model, params, folder, prefix=prefix)
        if module.model.descriptor_head is not None and prefix != BEFORE:
            scores.update(evaluate_descriptor_model(NeckDescriptor(module.model), params, folder / NECK,
                                                    prefix=f"{prefix}{NECK}_"))
        return scores

    def describe(self, history) -> dict[str, Any]:
        return {"step": self.mlflow_run_name, "n_classes": self.dataset.n_classes,
                "skipped_training_images": count_bad_images(self.dataset.bad_log)}

    def finish(self, module, params: Params, summary: dict) -> dict[str, Path]:
        return {"skipped": self.dataset.bad_log}

    def curves(self) -> dict[str, tuple[Path, str]]:
        return {"pr_curve": (self.out_dir / EVAL / PR_CURVE_CSV, PR_CURVE_HEADER)}


def plan_gem(params: Params, recipe: str | None = None, data_dir: str | Path | None = None,
             cfg: GemConfig | None = None, start: str | None = None) -> GemRequest:
    """A GeM run on ``recipe`` (default: the first of pipeline.gem) from ``start`` (default: the first of
    pipeline.gem_starts): ``cfg`` (default: the gem section) with that start's backbone and weights."""
    recipe = recipe or params.pipeline.gem[0]
    if not recipe or "/" in recipe or recipe.startswith("."):
        raise ValueError(f"gem: recipe {recipe!r} must be a plain name (a folder under {params.augment.out})")
    start, weights = params.gem_start(start)
    return GemRequest(recipe, Path(data_dir) if data_dir else Path(params.augment.out) / recipe,
                      weights.apply(cfg or params.gem), start)


def _spec(cfg: GemConfig) -> dict:
    """The model spec as checkpoints store it (with its ``kind``, so loaders know the class)."""
    return dataclasses.asdict(GemNetSpec(
        backbone=cfg.backbone, img_size=cfg.img_size, gem_p=cfg.gem_p, proj_hidden=cfg.proj_hidden,
        proj_dim=cfg.proj_dim, last_stride_1=cfg.last_stride_1, waveblock=cfg.waveblock,
        descriptor_dim=cfg.descriptor_dim))


def train_loader(dataset: AugmentedSet, cfg: GemConfig, params: Params, iters: int) -> DataLoader:
    """P×K batches of ``dataset``: each DDP rank gets whole batches of one shared draw (a
    DistributedSampler would split identities)."""
    rank, ranks = training_shard(params.runtime)
    sampler = PKSampler(dataset.labels, cfg.p, cfg.k, seed=params.seed, length=iters, num_replicas=ranks, rank=rank,
                        draws=dataset.train_transform is not None)
    return DataLoader(dataset, batch_size=cfg.p * cfg.k, sampler=sampler, collate_fn=collate_skipping_bad,
                      drop_last=True, **runtime_loader_options(params.runtime))


def run_gem(params: Params, request: GemRequest, callbacks: Sequence[pl.Callback] = ()) -> dict:
    """Train on ``request.data_dir``, evaluate, log everything; returns the run's metrics."""
    return run_stage(request, params, callbacks)
