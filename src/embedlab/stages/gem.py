"""GeM stage: train the "bag of tricks" GeM model on one generated training set.

    embedlab gem --recipe big [--epochs 4 --iters 20 --lr 3.5e-4]
    mlflow run . -e gem_stage -P recipe=big --env-manager local

Reads ``data/augmented/<recipe>`` (``embedlab augment``), trains GemNet with
a P×K sampler (gem.p identities × gem.k instances per batch), evaluates on
the DISC query/reference sets like the drip stage and exports the
descriptor model without its classifier. Re-runs follow
:mod:`embedlab.stages.run_state`: the same settings resume or re-evaluate.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import mlflow
import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from torch.utils.data import DataLoader

from embedlab import tracking
from embedlab.config import GEM_RUNTIME_FIELDS, GemConfig, Params, flatten
from embedlab.data.augmented import AugmentedSet
from embedlab.data.drip import collate_skipping_bad
from embedlab.data.samplers import PKSampler
from embedlab.devices import lightning_precision, speed_tags, training_loader_options
from embedlab.images import count_bad_images
from embedlab.models.checkpoints import AtomicCheckpointIO, checkpoint_epoch, export_descriptor_model, read_checkpoint
from embedlab.models.compiled import compiled_trunk
from embedlab.models.gem_module import GemModule, iterations_per_epoch
from embedlab.models.gem_net import GemNetSpec
from embedlab.stages.disc_eval import evaluate_descriptor_model
from embedlab.stages.drip_reports import loss_history, write_reports
from embedlab.stages.run_state import OutputFolders, RunState, fingerprint, open_run_dir, scores_before


@dataclasses.dataclass
class GemRequest(OutputFolders):
    """Which generated set one GeM run trains on, and where its outputs go."""

    recipe: str
    data_dir: Path
    models_root: Path = Path("models/gem")
    reports_root: Path = Path("reports/gem")
    plots_root: Path = Path("reports/plots")

    @property
    def run_name(self) -> str:
        return self.recipe

    @property
    def plot_name(self) -> str:
        return f"gem_{self.recipe}"  # beside the drip steps' plot files


def plan_gem(params: Params, recipe: str | None = None, data_dir: str | Path | None = None) -> GemRequest:
    recipe = recipe or params.gem.recipe
    if not recipe or "/" in recipe or recipe.startswith("."):
        raise ValueError(f"gem: recipe {recipe!r} must be a plain name (a folder under {params.augment.out})")
    return GemRequest(recipe, Path(data_dir) if data_dir else Path(params.augment.out) / recipe)


def gem_fingerprint(params: Params, cfg: GemConfig, request: GemRequest) -> str:
    """Settings that shape the model + the generated set's manifest (its parameters and counts)."""
    model_settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in GEM_RUNTIME_FIELDS}
    settings = [params.seed, model_settings, request.recipe, params.data.on_bad_image, tracking.dvc_data_hash()]
    return fingerprint(settings, [request.data_dir / "manifest.json"])


def _spec(cfg: GemConfig) -> dict:
    """The model spec as checkpoints store it (with its ``kind``, so loaders know the class)."""
    return dataclasses.asdict(GemNetSpec(
        backbone=cfg.backbone, img_size=cfg.img_size, gem_p=cfg.gem_p, proj_hidden=cfg.proj_hidden,
        proj_dim=cfg.proj_dim, last_stride_1=cfg.last_stride_1, waveblock=cfg.waveblock))


def run_gem(params: Params, request: GemRequest, cfg: GemConfig | None = None,
            callbacks: Sequence[pl.Callback] = ()) -> dict:
    """Train on ``request.data_dir``, evaluate, log everything; returns the run's metrics.

    ``callbacks`` join the Trainer's own (a sweep's pruning callback).
    """
    cfg = cfg or params.gem
    out_dir = request.out_dir
    dataset = AugmentedSet(request.data_dir, cfg.img_size, params.data.on_bad_image,
                           bad_log=out_dir / "skipped_images.tsv")
    key = gem_fingerprint(params, cfg, request)
    state, phase = open_run_dir(out_dir, key)
    same = state.fingerprint == key  # the same settings: continue their MLflow run
    last_ckpt = out_dir / "checkpoints" / "last.ckpt"

    iters = iterations_per_epoch(len(dataset), cfg.p * cfg.k, cfg.iters)
    pl.seed_everything(params.seed, workers=True)
    module = GemModule(
        _spec(cfg), dataset.n_classes, cfg.ce_weight, cfg.triplet_weight, cfg.label_smoothing, cfg.lr,
        cfg.weight_decay, cfg.warmup_epochs, cfg.flat_epochs, cfg.epochs, iters, cfg.classifier_devices,
        pretrained=cfg.pretrained if phase == "start" else None, channels_last=cfg.channels_last,
    )
    if tracking.launched_rank() > 0:  # a DDP worker Lightning started: it trains, rank 0 logs
        _fit(module, dataset, cfg, params, iters, out_dir, None, last_ckpt if phase == "resume" else None,
             callbacks)
        return {}
    with tracking.stage_run("gem", f"gem/{request.recipe}", params.tracking.experiment, params.tracking.uri,
                            resume_run_id=state.mlflow_run_id if same else None,
                            tags={"embedlab.gem_recipe": request.recipe, **speed_tags(cfg)}) as run:
        run_id = run.info.run_id
        RunState(key, run_id, complete=False).save(out_dir / "run.json")
        tracking.log_params({
            # Runtime settings stay out: changing them must not clash with a resumed run's params.
            **{f"gem.{k}": v for k, v in flatten(cfg).items() if k.split(".")[0] not in GEM_RUNTIME_FIELDS},
            "gem.n_classes": dataset.n_classes, "gem.n_images": len(dataset), "gem.batch_size": cfg.p * cfg.k,
            "gem.iters_per_epoch": iters, "gem.data": str(request.data_dir), "seed": params.seed,
        })
        before = _evaluate_before(module, request, cfg, params, compute=phase == "start")
        if phase == "evaluate":  # a finished run of the same settings and code: its weights stand
            ckpt = read_checkpoint(last_ckpt)
            module.on_load_checkpoint(ckpt)  # the whole classifier → this module's shards
            module.load_state_dict(ckpt["state_dict"])
        else:
            _fit(module, dataset, cfg, params, iters, out_dir, run_id, last_ckpt if phase == "resume" else None,
                 callbacks)
        history = loss_history(run_id)
        summary = {
            "step": f"gem/{request.recipe}", "n_classes": dataset.n_classes, "epochs": len(history),
            "train_loss": history[-1][1] if history else None,
            "skipped_training_images": count_bad_images(dataset.bad_log), **(before or {}),
        }
        model_path = export_descriptor_model(module.model, out_dir / "descriptor_model.safetensors")
        if cfg.evaluate:
            summary.update(evaluate_descriptor_model(module.model, params, out_dir / "eval"))
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})
        write_reports(request.report_dir, request.plots_root, request.plot_name, out_dir / "eval", summary, history)
        tracking.log_artifacts_if_present({
            "checkpoints": out_dir / "checkpoints", "eval": out_dir / "eval", "reports": request.report_dir,
            "skipped": dataset.bad_log,
        })
        for path in (model_path, model_path.with_suffix(".json")):
            mlflow.log_artifact(str(path), "model")
        RunState(key, run_id, complete=True).save(out_dir / "run.json")
    return summary


def _evaluate_before(module: GemModule, request: GemRequest, cfg: GemConfig, params: Params,
                     compute: bool) -> dict | None:
    """Scores of the starting model (pretrained body, untrained projector)."""
    return scores_before(request.out_dir, compute and cfg.evaluate and cfg.evaluate_before,
                         lambda folder: evaluate_descriptor_model(module.model, params, folder, prefix="before_"))


def _fit(module: GemModule, dataset: AugmentedSet, cfg: GemConfig, params: Params, iters: int, out_dir: Path,
         run_id: str | None, resume_from: Path | None, callbacks: Sequence[pl.Callback] = ()) -> None:
    # Checkpoints hold no RNG state: a resumed run reseeds by the epochs done (see the drip stage).
    done = checkpoint_epoch(resume_from) + 1 if resume_from else 0
    pl.seed_everything(params.seed + done, workers=True)
    loader = train_loader(dataset, cfg, params.seed, iters)
    with compiled_trunk(module.model, cfg.compile):
        _trainer(cfg, out_dir, run_id, iters, callbacks).fit(module, train_dataloaders=loader,
                                                             ckpt_path=str(resume_from) if resume_from else None)


def train_loader(dataset: AugmentedSet, cfg: GemConfig, seed: int, iters: int) -> DataLoader:
    """P×K batches of ``dataset``: each DDP rank gets whole batches of one shared draw (a
    DistributedSampler would split identities)."""
    sampler = PKSampler(dataset.labels, cfg.p, cfg.k, seed=seed, length=iters, num_replicas=cfg.devices,
                        rank=tracking.launched_rank())
    return DataLoader(dataset, batch_size=cfg.p * cfg.k, sampler=sampler, collate_fn=collate_skipping_bad,
                      drop_last=True, **training_loader_options(cfg))


def _trainer(cfg: GemConfig, out_dir: Path, run_id: str | None, iters: int,
             callbacks: Sequence[pl.Callback] = ()) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=cfg.epochs, accelerator="auto", devices=cfg.devices,
        strategy="ddp" if cfg.devices > 1 else "auto", use_distributed_sampler=False,  # P×K batches are per rank
        precision=lightning_precision(cfg.precision), default_root_dir=str(out_dir),
        plugins=[AtomicCheckpointIO()], logger=tracking.epoch_logger(run_id),
        callbacks=[ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="last"),
                   LearningRateMonitor(logging_interval="epoch"), *callbacks],
        limit_train_batches=iters, limit_val_batches=0, log_every_n_steps=10, enable_model_summary=False,
        num_sanity_val_steps=0,
    )
