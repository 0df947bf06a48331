"""Triplet stage: one phase of training the deepfake-robust face encoder.

    embedlab face-data                        # data/faces/{train,valid,valid_pairs}.csv
    embedlab triplet --phase pretrain         # all triplets, lr 1e-4 (the original)
    embedlab triplet --phase finetune         # hard triplets from pretrain's checkpoint, lr 1e-6
    mlflow run . -e triplet_stage -P phase=finetune -P miner=hard -P epochs=3 --env-manager local

Each phase is one MLflow run and one DVC stage. The encoder is scored on the
validation pairs every epoch (``val_eer``) and at the end on the validation
and labelled test pairs: EER overall and, separately, against real-vs-fake
impostors of the same person and against other people. Re-runs follow
:mod:`embedlab.stages.run_state`.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Sequence

import mlflow
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from embedlab import tracking
from embedlab.atomic import write_json_atomic, write_text_atomic
from embedlab.config import TRIPLET_RUNTIME_FIELDS, Params, TripletConfig, TripletPhase, flatten
from embedlab.data.drip import collate_skipping_bad
from embedlab.data.faces import FaceImages, PairImages, read_face_pairs, read_face_rows, read_test_pairs
from embedlab.data.samplers import PKSampler
from embedlab.devices import lightning_precision, speed_tags, training_loader_options
from embedlab.models.checkpoints import (
    AtomicCheckpointIO,
    checkpoint_epoch,
    export_descriptor_model,
    read_checkpoint,
)
from embedlab.models.compiled import compiled_trunk
from embedlab.models.face_encoder import FaceEncoderSpec
from embedlab.models.triplet_module import TripletModule
from embedlab.stages.face_eval import score_pairs
from embedlab.stages.run_state import OutputFolders, RunState, fingerprint, open_run_dir, scores_before

PHASES = ("pretrain", "finetune")
# The headline numbers copied into the summary's "before" and the results table.
HEADLINE = ("valid_eer", "valid_eer_fake_same_person", "valid_eer_other_person", "test_eer", "test_roc_auc")


@dataclasses.dataclass
class TripletRequest(OutputFolders):
    phase: str
    settings: TripletPhase
    init_checkpoint: Path | None = None  # the parent phase's last.ckpt
    models_root: Path = Path("models/triplet")
    reports_root: Path = Path("reports/triplet")
    plots_root: Path = Path("reports/plots")

    @property
    def run_name(self) -> str:
        return self.phase


def plan_phase(params: Params, phase: str, overrides: dict | None = None) -> TripletRequest:
    """Phase ``phase`` of params.yaml's triplet section, with command-line ``overrides`` applied."""
    if phase not in PHASES:
        raise ValueError(f"triplet: phase {phase!r} is not one of {list(PHASES)}")
    settings = getattr(params.triplet, phase)
    # init_from: "" (MLproject's default) keeps params.yaml's; "none" starts from triplet.pretrained.
    values = {k: v for k, v in (overrides or {}).items() if v is not None and not (k == "init_from" and v == "")}
    settings = TripletPhase(**{**dataclasses.asdict(settings), **values})
    parent = None if settings.init_from in (None, "", "none") else settings.init_from
    if parent == phase:
        raise ValueError(f"triplet.{phase}.init_from: a phase cannot start from itself")
    init = None
    if parent:
        init = Path(parent) if parent.endswith(".ckpt") else Path("models/triplet") / parent / "checkpoints" / "last.ckpt"
        if not init.is_file():
            raise FileNotFoundError(f"{init}: checkpoint of triplet.{phase}.init_from={parent!r} not found "
                                    f"(run `embedlab triplet --phase {parent}` first)")
    return TripletRequest(phase, settings, init)


@dataclasses.dataclass
class FaceData:
    """What `embedlab face-data` wrote, read back."""

    root: Path  # the face layout the CSV paths are relative to
    train: list
    valid_pairs: list
    test_pairs: list  # (pair_id, path0, path1, same) with same known
    test_kinds: list[str] | None

    @classmethod
    def load(cls, params: Params) -> "FaceData":
        folder = Path(params.triplet.data_out)
        if not (folder / "labels_info.json").is_file():
            raise FileNotFoundError(f"{folder}: no face data set (labels_info.json); run `embedlab face-data`")
        root = Path(params.data.faces)
        tests = [t for t in read_test_pairs(root / "test_public") if t[3] is not None]
        kinds_file = root / "demo_pairs.csv"  # the demo set records each test pair's kind
        kinds = None
        if kinds_file.is_file():
            with open(kinds_file, newline="") as f:
                by_id = {row["pair_id"]: row["kind"] for row in csv.DictReader(f)}
            kinds = [by_id.get(pair_id) for pair_id, *_ in tests]
            kinds = kinds if all(kinds) else None
        return cls(root, read_face_rows(folder / "train.csv"), read_face_pairs(folder / "valid_pairs.csv"),
                   tests, kinds)


def _spec(cfg: TripletConfig) -> dict:
    """The encoder spec as checkpoints store it (with its ``kind``, so loaders know the class)."""
    return dataclasses.asdict(FaceEncoderSpec(
        backbone=cfg.backbone, img_size=cfg.img_size, patch_size=cfg.patch_size, depth=cfg.depth,
        normalize_embeddings=cfg.normalize_embeddings))


def phase_fingerprint(params: Params, request: TripletRequest) -> str:
    cfg = params.triplet
    model_settings = {k: v for k, v in dataclasses.asdict(cfg).items()
                      if k not in TRIPLET_RUNTIME_FIELDS + PHASES}
    settings = [params.seed, model_settings, request.phase, dataclasses.asdict(request.settings),
                params.data.on_bad_image, tracking.dvc_data_hash()]
    data = Path(cfg.data_out)
    return fingerprint(settings, [data / "train.csv", data / "valid_pairs.csv", request.init_checkpoint])


def evaluate_encoder(model: torch.nn.Module, data: FaceData, params: Params, out_dir: Path, prefix: str = "") -> dict:
    """Validation and test pair metrics (``valid_*``, ``test_*``), ROC curves under ``out_dir``."""
    cfg, bad = params.triplet, params.data.on_bad_image
    common = dict(batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers, on_bad_image=bad)
    metrics = score_pairs(model, data.valid_pairs, [p.same for p in data.valid_pairs],
                          [p.kind for p in data.valid_pairs], root=data.root, out_dir=out_dir / "valid",
                          prefix=f"{prefix}valid_", **common)
    if data.test_pairs:  # read_test_pairs gives full paths
        metrics.update(score_pairs(model, data.test_pairs, [t[3] for t in data.test_pairs], data.test_kinds,
                                   root=None, out_dir=out_dir / "test", prefix=f"{prefix}test_", **common))
    return metrics


def run_triplet(params: Params, request: TripletRequest, callbacks: Sequence[pl.Callback] = ()) -> dict:
    """Train one phase, evaluate it, log everything; returns the phase's metrics.

    ``callbacks`` join the Trainer's own (a sweep's pruning callback).
    """
    cfg, phase = params.triplet, request.settings
    data = FaceData.load(params)
    out_dir = request.out_dir
    key = phase_fingerprint(params, request)
    state, mode = open_run_dir(out_dir, key)
    same = state.fingerprint == key  # the same settings: continue their MLflow run
    last_ckpt = out_dir / "checkpoints" / "last.ckpt"

    pl.seed_everything(params.seed, workers=True)
    valid_images = PairImages(data.valid_pairs, cfg.img_size, root=data.root, on_bad_image=params.data.on_bad_image)
    valid_pairs = [(int(a), int(b), int(p.same)) for a, b, p in
                   zip(valid_images.index_a, valid_images.index_b, data.valid_pairs)]
    module = TripletModule(
        _spec(cfg), phase.miner, cfg.margin, phase.lr, cfg.weight_decay,
        pretrained=cfg.pretrained if mode == "start" and request.init_checkpoint is None else None,
        valid_pairs=valid_pairs,
    )
    if mode == "start" and request.init_checkpoint is not None:
        _load_encoder(module, request.init_checkpoint)

    with tracking.stage_run("triplet", f"triplet/{request.phase}", params.tracking.experiment, params.tracking.uri,
                            resume_run_id=state.mlflow_run_id if same else None,
                            tags={"embedlab.triplet_phase": request.phase, **speed_tags(cfg)}) as run:
        run_id = run.info.run_id
        RunState(key, run_id, complete=False).save(out_dir / "run.json")
        tracking.log_params({
            **{f"triplet.{k}": v for k, v in flatten(cfg).items()
               if not k.startswith(PHASES) and k not in TRIPLET_RUNTIME_FIELDS},
            **{f"triplet.{k}": v for k, v in dataclasses.asdict(phase).items()},
            "triplet.phase": request.phase, "triplet.init_checkpoint": str(request.init_checkpoint or ""),
            "triplet.n_train_images": len(data.train), "triplet.n_valid_pairs": len(data.valid_pairs),
            "seed": params.seed,
        })
        before = _evaluate_before(module, data, params, out_dir, compute=mode == "start")
        if mode == "evaluate":  # a finished run of the same settings and code: its weights stand
            module.load_state_dict(read_checkpoint(last_ckpt)["state_dict"])
        else:
            train = FaceImages([(r.path, r.label) for r in data.train], cfg.img_size, root=data.root,
                               on_bad_image=params.data.on_bad_image)
            _fit(module, train, valid_images, cfg, phase, params, out_dir, run_id,
                 last_ckpt if mode == "resume" else None, callbacks)
        history = tracking.epoch_history(run_id, "val_eer")
        summary = {"phase": request.phase, "miner": phase.miner, "epochs": len(history),
                   "train_loss": history[-1][1] if history else None, **(before or {})}
        encoder = export_descriptor_model(module.model, out_dir / "encoder.safetensors")
        summary.update(evaluate_encoder(module.model, data, params, out_dir / "eval"))
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})
        _write_reports(request, out_dir / "eval", summary, history)
        tracking.log_artifacts_if_present({"checkpoints": out_dir / "checkpoints", "eval": out_dir / "eval",
                                           "reports": request.report_dir})
        for path in (encoder, encoder.with_suffix(".json")):
            mlflow.log_artifact(str(path), "model")
        RunState(key, run_id, complete=True).save(out_dir / "run.json")
    return summary


def _load_encoder(module: TripletModule, checkpoint: Path) -> None:
    """The parent phase's encoder weights (same architecture, else a clear error)."""
    state = {k: v for k, v in read_checkpoint(checkpoint)["state_dict"].items() if k.startswith("model.")}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{checkpoint}: not an encoder of this configuration ({exc})") from exc


def _evaluate_before(module: TripletModule, data: FaceData, params: Params, out_dir: Path,
                     compute: bool) -> dict | None:
    """Scores of the starting encoder (e.g. the pre-trained phase): the headline numbers."""
    def score(folder: Path) -> dict:
        metrics = evaluate_encoder(module.model, data, params, folder, prefix="before_")
        return {k: v for k, v in metrics.items() if k.removeprefix("before_") in HEADLINE}

    return scores_before(out_dir, compute, score)


def _fit(module: TripletModule, train: FaceImages, valid: PairImages, cfg: TripletConfig, phase: TripletPhase,
         params: Params, out_dir: Path, run_id: str, resume_from: Path | None,
         callbacks: Sequence[pl.Callback] = ()) -> None:
    # Checkpoints hold no RNG state: a resumed run reseeds by the epochs done (see the drip stage).
    done = checkpoint_epoch(resume_from) + 1 if resume_from else 0
    pl.seed_everything(params.seed + done, workers=True)
    loader = train_loader(train, cfg, params.seed)
    val_loader = DataLoader(valid, batch_size=cfg.eval_batch_size, collate_fn=collate_skipping_bad,
                            **training_loader_options(cfg, keep_workers=False))
    trainer = pl.Trainer(
        max_epochs=phase.epochs, accelerator="auto", devices=1, precision=lightning_precision(cfg.precision),
        default_root_dir=str(out_dir), plugins=[AtomicCheckpointIO()],
        logger=tracking.epoch_logger(run_id),
        callbacks=[ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best", monitor="val_eer", mode="min"),
                   ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="last"), *callbacks],
        log_every_n_steps=10, enable_model_summary=False, num_sanity_val_steps=0,
    )
    with compiled_trunk(module.model, cfg.compile):
        trainer.fit(module, train_dataloaders=loader, val_dataloaders=val_loader,
                    ckpt_path=str(resume_from) if resume_from else None)


def train_loader(train: FaceImages, cfg: TripletConfig, seed: int) -> DataLoader:
    """P×K batches: ``p`` labels (persons or deepfake classes), ``k`` images each."""
    sampler = PKSampler(train.labels, cfg.p, cfg.k, seed=seed, length=cfg.iters)
    return DataLoader(train, batch_size=cfg.p * cfg.k, sampler=sampler, collate_fn=collate_skipping_bad,
                      drop_last=True, **training_loader_options(cfg))


def _write_reports(request: TripletRequest, eval_dir: Path, summary: dict, history: list) -> None:
    """``metrics.json`` for DVC, the test (else validation) ROC and the history as plot CSVs."""
    write_json_atomic(request.report_dir / "metrics.json", summary)
    roc = next((p for p in (eval_dir / "test" / "roc.csv", eval_dir / "valid" / "roc.csv") if p.is_file()), None)
    write_text_atomic(request.plots_root / "roc" / f"triplet_{request.phase}.csv",
                      roc.read_text() if roc else "fpr,tpr,threshold\n")
    rows = "".join(f"{e},{t},{v}\n" for e, t, v in history)
    write_text_atomic(request.plots_root / "triplet_history" / f"{request.phase}.csv",
                      "epoch,train_loss,val_eer\n" + rows)
