"""Decoder stage: learn to turn face templates back into faces (docs/originals/decoder.md).

    embedlab templates                              # the training pairs (photo, template)
    embedlab decoder [--perceptual-weight 11 --laplace-weight 0 --use-discriminator false ...]
    embedlab validate-decoder --set test            # COSINE MIN / MEAN / MEDIAN / MAX, share above threshold
    mlflow run . -e decoder_stage -P perceptual_weight=11 -P laplace_weight=0 --env-manager local

One MLflow run per training: params, per-epoch losses and validation
cosine, the control grid (originals beside reconstructions) every
``decoder.visualize_every`` steps and at the end, the checkpoints, the
exported decoder, and the final cosine statistics. Start, resume and
re-evaluation follow :mod:`embedlab.stages.lifecycle`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Sequence

import mlflow
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler

from embedlab.const import CHECKPOINTS, DECODER, last_checkpoint
from embedlab.config import DecoderConfig, Params
from embedlab.data.collate import collate_skipping_bad
from embedlab.data.templates import TemplatePairs, TemplateSet, read_template_set
from embedlab.devices import runtime_loader_options, torch_device, training_shard
from embedlab.models.checkpoints import StepCheckpoints, load_descriptor_model
from embedlab.models.decoder import DECODER_KIND, DecoderSpec
from embedlab.models.decoder_module import DecoderModule, photo_similarity
from embedlab.models.eval_mode import eval_mode
from embedlab.models.face_models import FaceModel, load_face_model
from embedlab.evaluation.decoder_cosine import (
    cosine_stats,
    decoded_cosines,
    format_stats,
    impostor_threshold,
    write_control_grid,
)
from embedlab.run_inputs import DataInput
from embedlab.stages.lifecycle import Monitor, TrainingStage, run_stage
from embedlab.digests import file_digest


@dataclasses.dataclass
class DecoderRequest(TrainingStage):
    """The decoder's one run: its settings (default: params.yaml's decoder section) and folders."""

    cfg: DecoderConfig | None = None
    models_root: Path = Path("models")
    reports_root: Path = Path("reports")
    plots_root: Path = Path("reports/plots")
    run_name: str = "decoder"

    command: ClassVar[str] = "decoder"
    section: ClassVar[str] = "decoder"
    export_name: ClassVar[str] = DECODER
    logs_model: ClassVar[bool] = False  # templates in, images out: no pyfunc of images to descriptors
    monitor: ClassVar[Monitor] = Monitor("val_cosine_mean", "max")
    history_plot: ClassVar[str] = "decoder_history"

    @property
    def mlflow_run_name(self) -> str:
        return self.run_name

    @property
    def plot_name(self) -> str:
        return self.run_name

    def setup(self, params: Params) -> None:
        self.cfg = self.cfg or params.decoder
        self.sources = DecoderInputs.load(params, self.cfg)
        self.test_pairs = TemplatePairs(self.sources.test, self.sources.root, self.cfg.output_size,
                                        params.data.on_bad_image)
        self.control = _control_samples(self.test_pairs, self.cfg.control_samples)

    def settings(self, params: Params) -> Any:
        return [self.cfg, params.data.on_bad_image]

    def inputs(self, params: Params) -> list[Path | None]:
        folder = Path(params.templates.out)
        return [folder / "train.h5", folder / "test.h5", self.sources.template_model_path, Path(self.cfg.perceptor)]

    def config(self, params: Params) -> DecoderConfig:
        return self.cfg

    def extra_params(self, params: Params) -> dict[str, Any]:
        inputs = self.sources
        return {"decoder.template_model": str(inputs.template_model_path), "decoder.template_dim": inputs.train.dim,
                "decoder.n_train_pairs": len(inputs.train), "decoder.n_test_pairs": len(inputs.test)}

    def training_data(self, params: Params) -> list[DataInput]:
        return [_template_data(params, "train", self.sources.train)]

    def evaluation_data(self, params: Params) -> list[DataInput]:
        """The test pairs: validated every epoch and scored at the end."""
        return [_template_data(params, "test", self.sources.test)]

    def build(self, params: Params, fresh: bool) -> DecoderModule:
        module = build_module(self.sources, self.cfg)
        if params.runtime.channels_last and torch.cuda.is_available():
            module.to(memory_format=torch.channels_last)
        return module

    def loaders(self, params: Params) -> tuple[DataLoader, DataLoader]:
        train = TemplatePairs(self.sources.train, self.sources.root, self.cfg.output_size, params.data.on_bad_image)
        batch = self.cfg.batch_size
        rank, ranks = training_shard(params.runtime)
        # Under DDP each rank draws its share of one shuffled order per epoch (Lightning calls set_epoch).
        order = DistributedSampler(train, num_replicas=ranks, rank=rank, shuffle=True, seed=params.seed)
        loader = DataLoader(train, batch_size=batch, sampler=order, drop_last=len(order) > batch,
                            collate_fn=collate_skipping_bad, **runtime_loader_options(params.runtime))
        val = DataLoader(self.test_pairs, batch_size=params.runtime.inference_batch_size,
                         collate_fn=collate_skipping_bad, **runtime_loader_options(params.runtime, keep_workers=False))
        return loader, val

    def callbacks(self, params: Params, run_id: str | None) -> list[pl.Callback]:
        return [ControlGrid(self.control, self.out_dir / "control", self.cfg.visualize_every, run_id),
                StepCheckpoints(self.out_dir / CHECKPOINTS, self.cfg.save_at_steps)]

    def trainer_options(self, params: Params) -> dict[str, Any]:
        return {"max_epochs": self.cfg.epochs, "log_every_n_steps": 10}

    def evaluates(self, params: Params) -> tuple[bool, bool]:
        return self.cfg.evaluate, self.cfg.evaluate and self.cfg.evaluate_before

    def evaluate(self, module: DecoderModule, params: Params, folder: Path, prefix: str) -> dict:
        return {**score_decoder(module, self.sources, self.cfg, params, prefix=prefix),
                **photo_scores(module, self.test_pairs, params, prefix)}

    def pictures(self) -> dict[str, Path]:
        """The final control grid: photo | decoded face, each pair captioned with its cosine and SSIM."""
        return {"control_grid": self.final_grid}

    @property
    def final_grid(self) -> Path:
        return self.out_dir / "control" / "final.png"

    def finish(self, module: DecoderModule, params: Params, summary: dict) -> dict[str, Path]:
        grid = write_control_grid(module, *self.control, self.final_grid)
        return {"control": grid.parent}


@dataclasses.dataclass
class DecoderInputs:
    """What the decoder trains on, read back and checked: pairs, template model, perceptor."""

    root: Path  # the face root the template CSVs are relative to
    train: TemplateSet
    test: TemplateSet
    template_model_path: Path
    template_model: FaceModel
    perceptor: FaceModel
    _thresholds: dict = dataclasses.field(default_factory=dict, repr=False)

    def threshold(self, cfg: DecoderConfig) -> float:
        """decoder.threshold, else the template model's impostor score at decoder.fmr (computed once)."""
        if cfg.threshold is not None:
            return cfg.threshold
        if cfg.fmr not in self._thresholds:
            self._thresholds[cfg.fmr] = impostor_threshold(self.train, cfg.fmr)[0]
        return self._thresholds[cfg.fmr]

    @classmethod
    def load(cls, params: Params, cfg: DecoderConfig) -> "DecoderInputs":
        folder = Path(params.templates.out)
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: no templates; run `embedlab templates` first")
        manifest = json.loads(manifest_path.read_text())
        model_path = Path(manifest["template_model"])
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path}: the template model of {manifest_path} is gone")
        if file_digest(model_path) != manifest["template_model_sha256"]:
            raise ValueError(f"{model_path}: changed since {manifest_path} was written; rerun `embedlab templates`")
        train = read_template_set(folder, "train")
        test = read_template_set(folder, "test", dim=train.dim)
        template_model = load_face_model(model_path, "template")
        perceptor = load_face_model(cfg.perceptor, "perceptor", cfg.perceptor_layers, cfg.perceptor_nodes)
        if perceptor.input_size != cfg.output_size and not cfg.resize_to_perceptor:
            raise ValueError(f"decoder: the perceptor {cfg.perceptor} takes {perceptor.input_size} px images, the "
                             f"decoder makes {cfg.output_size} px; set decoder.output_size to "
                             f"{perceptor.input_size} or decoder.resize_to_perceptor: true")
        return cls(Path(manifest["faces_root"]), train, test, model_path, template_model, perceptor)


def _template_data(params: Params, split: str, pairs: TemplateSet) -> DataInput:
    """A split's pairs: its templates (made from its photos: they change with them) and the photo list."""
    folder = Path(params.templates.out)
    return DataInput(f"templates/{split}", folder / f"{split}.h5", {"pairs": len(pairs), "persons": len(pairs.persons)},
                     also=(folder / f"{split}.csv",))


def decoder_spec(inputs: DecoderInputs, cfg: DecoderConfig) -> dict:
    return dataclasses.asdict(DecoderSpec(template_dim=inputs.train.dim, output_size=cfg.output_size,
                                          variant=cfg.variant, width=cfg.width))


def build_module(inputs: DecoderInputs, cfg: DecoderConfig) -> DecoderModule:
    module = DecoderModule(
        decoder_spec(inputs, cfg), cfg.mse_weight, cfg.laplace_weight, cfg.perceptual_weight,
        cfg.use_discriminator, cfg.discr_weight, cfg.lr, cfg.min_lr, cfg.restart_epochs, cfg.max_grad_norm)
    return module.attach(inputs.perceptor, inputs.template_model)


def score_decoder(module: DecoderModule, inputs: DecoderInputs, cfg: DecoderConfig, params: Params,
                  split: str = "test", prefix: str = "") -> dict:
    """Cosine statistics of ``split`` and the share above the template model's threshold."""
    device = torch_device(params.runtime.device)
    for model in (module, inputs.template_model, inputs.perceptor):
        model.to(device)
    cosines = decoded_cosines(module, getattr(inputs, split), params.runtime.inference_batch_size)
    return {f"{prefix}{k}": v for k, v in cosine_stats(cosines, inputs.threshold(cfg)).items()}


@torch.no_grad()
def photo_scores(module: DecoderModule, pairs: TemplatePairs, params: Params, prefix: str = "") -> dict:
    """Mean PSNR and SSIM of the decoded test faces to their photos: would a person see the same face?"""
    device = next(module.model.parameters()).device
    loader = DataLoader(pairs, batch_size=params.runtime.inference_batch_size, collate_fn=collate_skipping_bad)
    scores = []
    with eval_mode(module):
        for batch in loader:
            if batch is not None:
                templates, photos = batch
                scores.append(torch.stack(photo_similarity(module.model(templates.to(device)), photos.to(device)),
                                          dim=1).cpu())
    mean = torch.cat(scores).mean(dim=0) if scores else torch.full((2,), float("nan"))
    return {f"{prefix}psnr_mean": float(mean[0]), f"{prefix}ssim_mean": float(mean[1])}


def run_decoder(params: Params, request: DecoderRequest | None = None,
                callbacks: Sequence[pl.Callback] = ()) -> dict:
    """Train the decoder, score it, log everything; returns its metrics."""
    return run_stage(request or DecoderRequest(), params, callbacks)


def _control_samples(pairs: TemplatePairs, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` readable test pairs: the same faces in every grid of every run."""
    picked = [item for item in (pairs[i] for i in range(min(len(pairs), 4 * n))) if item is not None][:n]
    if not picked:
        raise ValueError(f"decoder: no readable test photo for the control samples ({pairs.root})")
    templates, photos = zip(*picked)
    return torch.stack(templates), torch.stack(photos)


class ControlGrid(pl.Callback):
    """Writes and logs the control grid every ``every`` training steps."""

    def __init__(self, samples: tuple[torch.Tensor, torch.Tensor], folder: Path, every: int, run_id: str) -> None:
        self.samples, self.folder, self.every, self.run_id = samples, folder, max(1, every), run_id

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        # Batches, not trainer.global_step: with a discriminator each batch steps two optimisers.
        step = trainer.fit_loop.epoch_loop.total_batch_idx
        if step % self.every == 0 and trainer.is_global_zero:  # one grid per run: the other DDP ranks log nothing
            path = write_control_grid(module, *self.samples, self.folder / f"step_{step:07d}.png")
            mlflow.MlflowClient().log_artifact(self.run_id, str(path), "control")


def validate_decoder(params: Params, split: str = "test", checkpoint: str | Path | None = None) -> str:
    """The original validate.py's report for a trained decoder: a .ckpt or the exported
    decoder.safetensors (default: the stage's last checkpoint)."""
    if split not in ("train", "test"):
        raise ValueError(f"validate-decoder: --set must be train or test, got {split!r}")
    cfg = params.decoder
    inputs = DecoderInputs.load(params, cfg)
    path = Path(checkpoint) if checkpoint else last_checkpoint(DecoderRequest().out_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no decoder checkpoint; run `embedlab decoder` first")
    decoder = load_descriptor_model(path)  # builds by the spec's kind, from a .ckpt or .safetensors
    kind = getattr(decoder.spec, "kind", None)
    if kind != DECODER_KIND:
        raise ValueError(f"{path}: not a decoder (its spec has kind {kind!r}, not {DECODER_KIND!r})")
    if decoder.spec.template_dim != inputs.train.dim:
        raise ValueError(f"{path}: decodes {decoder.spec.template_dim}-d templates, "
                         f"the templates in {params.templates.out} are {inputs.train.dim}-d")
    module = DecoderModule(dataclasses.asdict(decoder.spec)).attach(inputs.perceptor, inputs.template_model)
    module.model = decoder
    stats = score_decoder(module, inputs, cfg, params, split)
    return format_stats(stats, split, None if cfg.threshold is not None else cfg.fmr)
