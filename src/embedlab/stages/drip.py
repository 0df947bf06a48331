"""Drip stage: one step of ArcFace training with a growing class count.

    embedlab drip --step s2                      # a step of params.yaml's drip.schedule
    embedlab drip --n-facebook-samples 200 --n-imagenet-samples 0 \
        --n-frm-face-samples 0 --batch-size 32 --qry-augs-intensity 0.5 \
        [--build-w-matrix models/drip/<prev>/checkpoints/last.ckpt]

With ``build_w_matrix`` the new model restores every same-shaped weight of
the previous checkpoint, its ArcFace kernel is set to the class centroids
(saved as ``w_matrix.safetensors``) and training starts at epoch 0. At the
end the model embeds the DISC query and reference sets and scores μAP.

Re-runs (see :mod:`embedlab.stages.run_state`): the same settings resume an
unfinished step into its MLflow run (from ``last.ckpt``, reusing a saved W
matrix) or only re-evaluate a finished one; other settings start afresh.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import mlflow
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from embedlab import tracking
from embedlab.atomic import atomic_path
from embedlab.augment import OverlayPool, QueryAugmenter
from embedlab.config import DRIP_RUNTIME_FIELDS, DripConfig, DripStep, Params, flatten
from embedlab.data.drip import (
    ClassImages,
    ClassSource,
    QueryViews,
    ReferenceViews,
    ValidationPairs,
    collate_skipping_bad,
    select_classes,
)
from embedlab.devices import lightning_precision, loader_workers, speed_tags, torch_device, training_loader_options
from embedlab.images import count_bad_images
from embedlab.models.centroids import class_centroids
from embedlab.models.checkpoints import (
    AtomicCheckpointIO,
    checkpoint_epoch,
    export_descriptor_model,
    read_checkpoint,
    restore_matching_weights,
)
from embedlab.models.compiled import compiled_trunk
from embedlab.models.drip_module import DripModule
from embedlab.models.stop_rule import StopRule
from embedlab.stages.disc_eval import evaluate_descriptor_model
from embedlab.stages.drip_reports import loss_history, write_reports
from embedlab.stages.init_weights import INIT_STEP, initial_weights_path
from embedlab.stages.run_state import OutputFolders, RunState, fingerprint, open_run_dir, scores_before

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DripRequest(OutputFolders):
    """What one drip run trains: its name, class counts and starting point."""

    name: str
    step: DripStep
    build_w_matrix: Path | None = None
    pretrained: Path | str | None = None  # None: drip.pretrained
    models_root: Path = Path("models/drip")
    reports_root: Path = Path("reports/drip")
    plots_root: Path = Path("reports/plots")

    @property
    def run_name(self) -> str:
        return self.name

    def check(self) -> None:
        """Refuse requests whose output folder would clobber something (it may be cleared)."""
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"drip: step name {self.name!r} must be a plain folder name")
        if self.build_w_matrix is not None:
            parent = Path(self.build_w_matrix)
            if not parent.is_file():
                raise FileNotFoundError(f"{parent}: checkpoint for build_w_matrix not found")
            if self.out_dir.resolve() in parent.resolve().parents:
                raise ValueError(f"{parent}: build_w_matrix lies inside this run's own output folder "
                                 f"{self.out_dir}; name the new step differently (--name)")


def plan_scheduled_step(params: Params, name: str) -> DripRequest:
    """A step of drip.schedule, started as its ``init_from`` says."""
    if name not in params.drip.schedule:
        raise ValueError(f"params.yaml: drip.schedule has no step {name!r}; steps: {list(params.drip.schedule)}")
    request = DripRequest(name=name, step=params.drip.schedule[name])
    parent = request.step.init_from
    if parent == INIT_STEP:
        request.pretrained = initial_weights_path(request.models_root)
    elif parent:
        if parent not in params.drip.schedule:
            raise ValueError(f"params.yaml: drip.schedule.{name}.init_from names no step: {parent!r}")
        request.build_w_matrix = request.models_root / parent / "checkpoints" / "last.ckpt"
    return request


def effective_config(cfg: DripConfig, step: DripStep) -> DripConfig:
    """The stage's settings with the step's own batch size / intensity / epochs applied."""
    overrides = {k: getattr(step, k) for k in ("batch_size", "qry_augs_intensity", "epochs")}
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None}, schedule={})


def step_fingerprint(params: Params, cfg: DripConfig, request: DripRequest) -> str:
    """What must match for a re-run to resume or re-evaluate instead of starting afresh."""
    model_settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in DRIP_RUNTIME_FIELDS}
    settings = [params.seed, dataclasses.asdict(params.data), model_settings, dataclasses.asdict(request.step),
                request.name, str(request.pretrained), tracking.dvc_data_hash()]
    return fingerprint(settings, [request.build_w_matrix])


def step_loader(dataset, cfg: DripConfig, train: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=train, collate_fn=collate_skipping_bad,
                      drop_last=False, **training_loader_options(cfg, keep_workers=train))


def init_w_matrix(module: DripModule, request: DripRequest, images: ClassImages, augment, cfg: DripConfig,
                  seed: int) -> Path:
    """Set the ArcFace kernel to class centroids of the current model, saved beside the run.

    A W matrix already saved by an interrupted run of the same settings is
    loaded instead of computed again (at 1M+ classes it is hours of work).
    """
    path = request.out_dir / "w_matrix.safetensors"
    if path.is_file():
        module.head.load_centroids(load_file(str(path))["w"])
        return path
    views = [ReferenceViews(images, cfg.img_size)] + [
        QueryViews(images, augment, cfg.img_size, seed_for=lambda i, a=a: [seed, 1 + a, i])
        for a in range(cfg.w_matrix_augmentations)
    ]
    device = torch_device()
    w = class_centroids(module.model, views, len(images), cfg.batch_size, loader_workers(cfg.num_workers, device),
                        device)
    module.model.cpu()
    module.head.load_centroids(w)
    with atomic_path(path) as tmp:
        save_file({"w": w}, str(tmp))
    return path


def _starting_point(module: DripModule, request: DripRequest, images: ClassImages, augment, cfg: DripConfig,
                    params: Params) -> dict | None:
    """Parent weights, W matrix and the "before" evaluation; each reused when already saved."""
    if request.build_w_matrix:
        restore_matching_weights(module, request.build_w_matrix, module.model.spec)
    if request.build_w_matrix or cfg.w_init == "centroids":
        mlflow.log_artifact(str(init_w_matrix(module, request, images, augment, cfg, params.seed)), "w_matrix")
    return _evaluate_before(module, request, cfg, params, compute=True)


def _evaluate_before(module: DripModule, request: DripRequest, cfg: DripConfig, params: Params,
                     compute: bool) -> dict | None:
    return scores_before(request.out_dir, compute and cfg.evaluate and cfg.evaluate_before,
                         lambda folder: evaluate_descriptor_model(module.model, params, folder, prefix="before_"))


def run_drip(params: Params, request: DripRequest, callbacks: Sequence[pl.Callback] = ()) -> dict:
    """Train one drip step, evaluate it, log everything; returns the step's metrics.

    ``callbacks`` join the Trainer's own (a sweep's pruning callback).
    """
    request.check()
    cfg = effective_config(params.drip, request.step)
    out_dir = request.out_dir
    key = step_fingerprint(params, cfg, request)
    state_file = out_dir / "run.json"
    state, phase = open_run_dir(out_dir, key)
    same = state.fingerprint == key  # the same settings: continue their MLflow run
    last_ckpt = out_dir / "checkpoints" / "last.ckpt"

    data = params.data
    classes = select_classes([
        ClassSource("facebook", Path(data.disc) / "training", request.step.n_facebook_samples),
        ClassSource("imagenet", Path(data.imagenet), request.step.n_imagenet_samples),
        ClassSource("frm_faces", Path(data.frm_faces), request.step.n_frm_face_samples),
    ])
    pl.seed_everything(params.seed, workers=True)
    images = ClassImages(classes, cfg.aug_size, data.on_bad_image, bad_log=out_dir / "skipped_images.tsv")
    augment = QueryAugmenter(cfg.qry_augs_intensity, OverlayPool.from_paths(classes))
    g = torch.Generator().manual_seed(params.seed)
    val_ids = torch.randperm(len(classes), generator=g)[: min(cfg.val_classes, len(classes))].tolist()

    spec = {"backbone": cfg.backbone, "embedding_dim": cfg.embedding_dim, "gem_p": cfg.gem_p, "img_size": cfg.img_size}
    module = DripModule(
        spec, len(classes), cfg.arcface_m, cfg.arcface_s, cfg.margin_warmup_epochs, cfg.lr, cfg.weight_decay,
        cfg.plateau_factor, cfg.plateau_patience,
        pretrained=None if (phase != "start" or request.build_w_matrix) else (request.pretrained or cfg.pretrained),
        channels_last=cfg.channels_last,
    )

    with tracking.stage_run("drip", f"drip/{request.name}", params.tracking.experiment, params.tracking.uri,
                            resume_run_id=state.mlflow_run_id if same else None,
                            tags={"embedlab.drip_step": request.name, **speed_tags(cfg)}) as run:
        run_id = run.info.run_id
        RunState(key, run_id, complete=False).save(state_file)
        tracking.log_params({
            # Runtime settings stay out: changing them must not clash with a resumed run's params.
            **{f"drip.{k}": v for k, v in flatten(cfg).items() if k.split(".")[0] not in DRIP_RUNTIME_FIELDS},
            "drip.step": request.name, "drip.n_classes": len(classes), "seed": params.seed,
            "drip.build_w_matrix": str(request.build_w_matrix or ""),
            "drip.start_weights": str(request.pretrained or cfg.pretrained or ""),
            # A step's None means "drip.<field>": keep the effective value logged above.
            **{f"drip.{k}": v for k, v in dataclasses.asdict(request.step).items() if v is not None},
        })
        if phase == "start":
            before = _starting_point(module, request, images, augment, cfg, params)
        else:
            before = _evaluate_before(module, request, cfg, params, compute=False)
        if phase == "evaluate":  # a finished run of the same settings and code: its weights stand
            module.load_state_dict(read_checkpoint(last_ckpt)["state_dict"])
        else:
            if phase == "resume":
                # Checkpoints hold no RNG state: reseed by the epochs done, or the resumed
                # epochs would replay the first epochs' augmentations and shuffles.
                pl.seed_everything(params.seed + checkpoint_epoch(last_ckpt) + 1, workers=True)
            with compiled_trunk(module.model, cfg.compile):
                _trainer(cfg, out_dir, run_id, callbacks).fit(
                    module,
                    train_dataloaders=step_loader(QueryViews(images, augment, cfg.img_size), cfg, True),
                    val_dataloaders=step_loader(ValidationPairs(images, val_ids, augment, cfg.img_size, params.seed),
                                            cfg, False),
                    ckpt_path=str(last_ckpt) if phase == "resume" else None,
                )
        history = loss_history(run_id)
        summary = {
            "step": request.name, "n_classes": len(classes), "epochs": len(history),
            "train_loss": history[-1][1] if history else None, "val_loss": history[-1][2] if history else None,
            "skipped_training_images": count_bad_images(images.bad_log),
            **(before or {}),
        }
        model_path = export_descriptor_model(module.model, out_dir / "descriptor_model.safetensors")
        if cfg.evaluate:
            summary.update(evaluate_descriptor_model(module.model, params, out_dir / "eval"))
        # val_loss already has its per-epoch history; a final copy would read as one more epoch.
        mlflow.log_metrics({k: v for k, v in summary.items()
                            if isinstance(v, (int, float)) and v is not None and k != "val_loss"})
        write_reports(request.report_dir, request.plots_root, request.name, out_dir / "eval", summary, history)
        tracking.log_artifacts_if_present({
            "checkpoints": out_dir / "checkpoints", "eval": out_dir / "eval", "reports": request.report_dir,
            "skipped": images.bad_log,
        })
        for path in (model_path, model_path.with_suffix(".json")):
            mlflow.log_artifact(str(path), "model")
        RunState(key, run_id, complete=True).save(state_file)
    return summary


def _trainer(cfg: DripConfig, out_dir: Path, run_id: str, callbacks: Sequence[pl.Callback] = ()) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=cfg.epochs, accelerator="auto", devices=1, precision=lightning_precision(cfg.precision),
        gradient_clip_val=cfg.grad_clip, default_root_dir=str(out_dir), plugins=[AtomicCheckpointIO()],
        logger=tracking.epoch_logger(run_id),
        callbacks=[
            # Two callbacks: Lightning 2.6 writes save_last only when the monitored
            # checkpoint improved, but the next step and a resume need the latest weights.
            ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best", monitor="val_loss"),
            ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="last"),
            LearningRateMonitor(logging_interval="epoch"),
            *([StopRule(cfg.stop_train_loss, cfg.stop_val_loss)] if cfg.stop_rule else []),
            *callbacks,
        ],
        limit_train_batches=cfg.limit_train_batches, log_every_n_steps=50, enable_model_summary=False,
        num_sanity_val_steps=0,
    )
