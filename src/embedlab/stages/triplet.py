"""Triplet stage: one phase of training the deepfake-robust face encoder.

    embedlab face-data                        # data/faces/{train,valid,valid_pairs}.csv
    embedlab triplet --phase pretrain         # all triplets, lr 1e-4 (the original)
    embedlab triplet --phase finetune         # hard triplets from pretrain's checkpoint, lr 1e-6
    mlflow run . -e triplet_stage -P phase=finetune -P miner=hard -P epochs=3 --env-manager local

Each phase is one MLflow run and one DVC stage. The encoder is scored on the
validation pairs every epoch (``val_eer``) and at the end on the validation
and labelled test pairs: EER overall and, separately, against real-vs-fake
impostors of the same person and against other people. Start, resume and
re-evaluation follow :mod:`embedlab.stages.lifecycle`.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from embedlab.const import ENCODER, EVAL, FACE_HEADLINE, ROC_CSV, ROC_HEADER, last_checkpoint
from embedlab.config import Params, TripletConfig, TripletPhase
from embedlab.data.collate import collate_skipping_bad
from embedlab.data.faces import FaceImages, PairImages, read_face_pairs, read_face_rows, read_test_pairs
from embedlab.data.samplers import PKSampler
from embedlab.devices import runtime_loader_options, training_shard
from embedlab.models.checkpoints import read_checkpoint
from embedlab.models.face_encoder import FaceEncoderSpec
from embedlab.models.triplet_module import TripletModule
from embedlab.evaluation.face_pairs import score_pairs
from embedlab.evaluation.pair_pictures import ROC_BY_KIND_PNG, SCORES_PNG
from embedlab.run_inputs import DataInput
from embedlab.stages.lifecycle import Monitor, TrainingStage, run_stage
from embedlab.stages.reports import HistoryParent

PHASES = ("pretrain", "finetune")


@dataclasses.dataclass
class TripletRequest(TrainingStage):
    """One phase of the face encoder: its settings and starting checkpoint."""

    phase: str
    phase_settings: TripletPhase
    init_checkpoint: Path | None = None  # the parent phase's last.ckpt
    models_root: Path = Path("models/triplet")
    reports_root: Path = Path("reports/triplet")
    plots_root: Path = Path("reports/plots")

    command: ClassVar[str] = "triplet"
    section: ClassVar[str] = "triplet"
    export_name: ClassVar[str] = ENCODER
    monitor: ClassVar[Monitor] = Monitor("val_eer")
    history_plot: ClassVar[str] = "triplet_history"

    @property
    def run_name(self) -> str:
        return self.phase

    def setup(self, params: Params) -> None:
        self.data = FaceData.load(params)
        cfg = params.triplet
        self.valid_images = PairImages(self.data.valid_pairs, cfg.img_size, root=self.data.root,
                                       on_bad_image=params.data.on_bad_image)

    def tags(self) -> dict[str, str]:
        return {"embedlab.triplet_phase": self.phase}

    def settings(self, params: Params) -> Any:
        return [params.triplet, self.phase, self.phase_settings, params.data.on_bad_image]

    def inputs(self, params: Params) -> list[Path | None]:
        data = Path(params.triplet.data_out)
        return [data / "train.csv", data / "valid_pairs.csv", self.init_checkpoint]

    def config(self, params: Params) -> TripletConfig:
        return params.triplet

    def extra_params(self, params: Params) -> dict[str, Any]:
        return {**{f"triplet.{k}": v for k, v in dataclasses.asdict(self.phase_settings).items()},
                "triplet.phase": self.phase, "triplet.init_checkpoint": str(self.init_checkpoint or ""),
                "triplet.n_train_images": len(self.data.train), "triplet.n_valid_pairs": len(self.data.valid_pairs)}

    def training_data(self, params: Params) -> list[DataInput]:
        # A list file and the face images it names (face-data splits the persons of <faces>/train).
        train = self.data.train
        return [DataInput("faces/train", Path(params.triplet.data_out) / "train.csv",
                          {"images": len(train), "classes": len({r.label for r in train})},
                          also=(self.data.root / "train",))]

    def evaluation_data(self, params: Params) -> list[DataInput]:
        """The validation pairs (every epoch and at the end) and the labelled test pairs."""
        inputs = [DataInput("faces/valid_pairs", Path(params.triplet.data_out) / "valid_pairs.csv",
                            {"pairs": len(self.data.valid_pairs)}, also=(self.data.root / "train",))]
        if self.data.test_pairs:
            inputs.append(DataInput("faces/test_public", self.data.root / "test_public",
                                    {"pairs": len(self.data.test_pairs)}))
        return inputs

    def build(self, params: Params, fresh: bool) -> TripletModule:
        cfg = params.triplet
        valid_pairs = [(int(a), int(b), int(p.same)) for a, b, p in
                       zip(self.valid_images.index_a, self.valid_images.index_b, self.data.valid_pairs)]
        phase = self.phase_settings
        return TripletModule(_spec(cfg), phase.miner, cfg.margin, phase.lr, cfg.weight_decay,
                             pretrained=cfg.pretrained if fresh and self.init_checkpoint is None else None,
                             valid_pairs=valid_pairs)

    def prepare(self, module: TripletModule, params: Params) -> None:
        if self.init_checkpoint is not None:
            _load_encoder(module, self.init_checkpoint)

    def loaders(self, params: Params) -> tuple[DataLoader, DataLoader]:
        cfg = params.triplet
        train = FaceImages([(r.path, r.label) for r in self.data.train], cfg.img_size, root=self.data.root,
                           on_bad_image=params.data.on_bad_image)
        valid = DataLoader(self.valid_images, batch_size=params.runtime.inference_batch_size,
                           collate_fn=collate_skipping_bad,
                           **runtime_loader_options(params.runtime, keep_workers=False))
        return train_loader(train, cfg, params), valid

    def trainer_options(self, params: Params) -> dict[str, Any]:
        return {"max_epochs": self.phase_settings.epochs, "log_every_n_steps": 10}

    def evaluate(self, module: TripletModule, params: Params, folder: Path, prefix: str) -> dict:
        """Validation and test pair metrics; "before" keeps the headline numbers only."""
        metrics = evaluate_encoder(module.model, self.data, params, folder, prefix)
        return metrics if not prefix else {k: v for k, v in metrics.items() if k.removeprefix(prefix) in FACE_HEADLINE}

    def describe(self, history) -> dict[str, Any]:
        return {"phase": self.phase, "miner": self.phase_settings.miner}

    @property
    def reported_split(self) -> Path:
        """The evaluation folder the reports show: the test pairs', else the validation pairs'."""
        eval_dir = self.out_dir / EVAL
        return eval_dir / "test" if (eval_dir / "test" / ROC_CSV).is_file() else eval_dir / "valid"

    def curves(self) -> dict[str, tuple[Path, str]]:
        """The test ROC, else the validation one."""
        return {"roc": (self.reported_split / ROC_CSV, ROC_HEADER)}

    def pictures(self) -> dict[str, Path]:
        """The test pairs' ROC, score histograms and ROC per impostor kind, else the validation pairs'."""
        return {Path(name).stem: self.reported_split / name for name in ("roc.png", SCORES_PNG, ROC_BY_KIND_PNG)}

    def history_parent(self) -> HistoryParent | None:
        """The phase whose checkpoint this one starts from (fine-tuning: the pre-training's): the epochs go on
        from its last (dvc.yaml draws both phases' CSVs in one chart, the fine-tuning after the pre-training)."""
        return self.continued_run(self.init_checkpoint)


def plan_phase(params: Params, phase: str, overrides: dict | None = None) -> TripletRequest:
    """Phase ``phase`` of params.yaml's triplet section, with command-line ``overrides`` applied."""
    if phase not in PHASES:
        raise ValueError(f"triplet: phase {phase!r} is not one of {list(PHASES)}")
    settings = params.triplet_phases[phase]
    # init_from: "" (MLproject's default) keeps params.yaml's; "none" starts from triplet.pretrained.
    values = {k: v for k, v in (overrides or {}).items() if v is not None and not (k == "init_from" and v == "")}
    settings = TripletPhase(**{**dataclasses.asdict(settings), **values})
    parent = None if settings.init_from in (None, "", "none") else settings.init_from
    if parent == phase:
        raise ValueError(f"triplet_phases.{phase}.init_from: a phase cannot start from itself")
    init = None
    if parent:
        init = Path(parent) if parent.endswith(".ckpt") else last_checkpoint(Path("models/triplet") / parent)
        if not init.is_file():
            raise FileNotFoundError(f"{init}: checkpoint of triplet_phases.{phase}.init_from={parent!r} not found "
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


def evaluate_encoder(model: torch.nn.Module, data: FaceData, params: Params, out_dir: Path, prefix: str = "") -> dict:
    """Validation and test pair metrics (``valid_*``, ``test_*``), ROC curves under ``out_dir``."""
    common = dict(runtime=params.runtime, on_bad_image=params.data.on_bad_image)
    metrics = score_pairs(model, data.valid_pairs, [p.same for p in data.valid_pairs],
                          [p.kind for p in data.valid_pairs], root=data.root, out_dir=out_dir / "valid",
                          prefix=f"{prefix}valid_", **common)
    if data.test_pairs:  # read_test_pairs gives full paths
        metrics.update(score_pairs(model, data.test_pairs, [t[3] for t in data.test_pairs], data.test_kinds,
                                   root=None, out_dir=out_dir / "test", prefix=f"{prefix}test_", **common))
    return metrics


def _load_encoder(module: TripletModule, checkpoint: Path) -> None:
    """The parent phase's encoder weights (same architecture, else a clear error)."""
    state = {k: v for k, v in read_checkpoint(checkpoint)["state_dict"].items() if k.startswith("model.")}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{checkpoint}: not an encoder of this configuration ({exc})") from exc


def train_loader(train: FaceImages, cfg: TripletConfig, params: Params) -> DataLoader:
    """P×K batches: ``p`` labels (persons or deepfake classes), ``k`` images each; under DDP each rank takes
    whole batches of one shared draw, ``iters`` per rank."""
    rank, ranks = training_shard(params.runtime)
    sampler = PKSampler(train.labels, cfg.p, cfg.k, seed=params.seed, length=cfg.iters, num_replicas=ranks, rank=rank)
    return DataLoader(train, batch_size=cfg.p * cfg.k, sampler=sampler, collate_fn=collate_skipping_bad,
                      drop_last=True, **runtime_loader_options(params.runtime))


def run_triplet(params: Params, request: TripletRequest, callbacks: Sequence[pl.Callback] = ()) -> dict:
    """Train one phase, evaluate it, log everything; returns the phase's metrics."""
    return run_stage(request, params, callbacks)
