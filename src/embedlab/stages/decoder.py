"""Decoder stage: learn to turn face templates back into faces (REFERENCE.md §3).

    embedlab templates                              # the training pairs (photo, template)
    embedlab decoder [--perceptual-weight 11 --laplace-weight 0 --use-discriminator false ...]
    embedlab validate-decoder --set test            # COSINE MIN / MEAN / MEDIAN / MAX, share above threshold
    mlflow run . -e decoder_stage -P perceptual_weight=11 -P laplace_weight=0 --env-manager local

One MLflow run per training: params, per-epoch losses and validation
cosine, the control grid (originals beside reconstructions) every
``decoder.visualize_every`` steps and at the end, the checkpoints, the
exported decoder, and the final cosine statistics. Re-runs follow
:mod:`embedlab.stages.run_state`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import mlflow
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from embedlab import tracking
from embedlab.atomic import write_json_atomic, write_text_atomic
from embedlab.config import DECODER_RUNTIME_FIELDS, DecoderConfig, Params, flatten
from embedlab.data.drip import collate_skipping_bad
from embedlab.data.templates import TemplatePairs, TemplateSet, read_template_set
from embedlab.devices import lightning_precision, speed_tags, torch_device, training_loader_options
from embedlab.models.checkpoints import (
    AtomicCheckpointIO,
    checkpoint_epoch,
    export_descriptor_model,
    load_descriptor_model,
    read_checkpoint,
)
from embedlab.models.compiled import compiled_trunk
from embedlab.models.decoder import DECODER_KIND, DecoderSpec
from embedlab.models.decoder_module import DecoderModule
from embedlab.models.face_models import FaceModel, load_face_model
from embedlab.stages.decoder_eval import (
    cosine_stats,
    decoded_cosines,
    format_stats,
    impostor_scores,
    threshold_at_fmr,
    write_control_grid,
)
from embedlab.stages.run_state import (
    OutputFolders,
    RunState,
    file_digest,
    fingerprint,
    open_run_dir,
    scores_before,
)

@dataclasses.dataclass
class DecoderRequest(OutputFolders):
    models_root: Path = Path("models")
    reports_root: Path = Path("reports")
    plots_root: Path = Path("reports/plots")
    run_name: str = "decoder"


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
            self._thresholds[cfg.fmr] = threshold_at_fmr(impostor_scores(self.train), cfg.fmr)
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
        perceptor = load_face_model(cfg.perceptor, "perceptor", cfg.perceptor_layers)
        if perceptor.input_size != cfg.output_size and not cfg.resize_to_perceptor:
            raise ValueError(f"decoder: the perceptor {cfg.perceptor} takes {perceptor.input_size} px images, the "
                             f"decoder makes {cfg.output_size} px; set decoder.output_size to "
                             f"{perceptor.input_size} or decoder.resize_to_perceptor: true")
        return cls(Path(manifest["faces_root"]), train, test, model_path, template_model, perceptor)


def decoder_spec(inputs: DecoderInputs, cfg: DecoderConfig) -> dict:
    return dataclasses.asdict(DecoderSpec(template_dim=inputs.train.dim, output_size=cfg.output_size,
                                          variant=cfg.variant, width=cfg.width))


def decoder_fingerprint(params: Params, cfg: DecoderConfig, inputs: DecoderInputs) -> str:
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in DECODER_RUNTIME_FIELDS}
    folder = Path(params.templates.out)
    return fingerprint([params.seed, settings, params.data.on_bad_image],
                       [folder / "train.h5", folder / "test.h5", inputs.template_model_path, Path(cfg.perceptor)])


def build_module(inputs: DecoderInputs, cfg: DecoderConfig) -> DecoderModule:
    module = DecoderModule(
        decoder_spec(inputs, cfg), cfg.mse_weight, cfg.laplace_weight, cfg.perceptual_weight,
        cfg.use_discriminator, cfg.discr_weight, cfg.lr, cfg.min_lr, cfg.restart_epochs, cfg.max_grad_norm)
    return module.attach(inputs.perceptor, inputs.template_model)


def score_decoder(module: DecoderModule, inputs: DecoderInputs, cfg: DecoderConfig, split: str = "test",
                  prefix: str = "") -> dict:
    """Cosine statistics of ``split`` and the share above the template model's threshold."""
    module.to(torch_device("auto"))
    for model in (inputs.template_model, inputs.perceptor):
        model.to(torch_device("auto"))
    cosines = decoded_cosines(module, getattr(inputs, split), cfg.eval_batch_size)
    return {f"{prefix}{k}": v for k, v in cosine_stats(cosines, inputs.threshold(cfg)).items()}


def run_decoder(params: Params, request: DecoderRequest | None = None, cfg: DecoderConfig | None = None,
                callbacks: Sequence[pl.Callback] = ()) -> dict:
    """Train the decoder, score it, log everything; returns its metrics.

    ``callbacks`` join the Trainer's own (a sweep's pruning callback).
    """
    request, cfg = request or DecoderRequest(), cfg or params.decoder
    inputs = DecoderInputs.load(params, cfg)
    out_dir = request.out_dir
    key = decoder_fingerprint(params, cfg, inputs)
    state, mode = open_run_dir(out_dir, key)
    same = state.fingerprint == key
    last_ckpt = out_dir / "checkpoints" / "last.ckpt"

    pl.seed_everything(params.seed, workers=True)
    module = build_module(inputs, cfg)
    test_pairs = TemplatePairs(inputs.test, inputs.root, cfg.output_size, params.data.on_bad_image)
    control = _control_samples(test_pairs, cfg.control_samples)

    with tracking.stage_run("decoder", request.run_name, params.tracking.experiment, params.tracking.uri,
                            resume_run_id=state.mlflow_run_id if same else None, tags=speed_tags(cfg)) as run:
        run_id = run.info.run_id
        RunState(key, run_id, complete=False).save(out_dir / "run.json")
        tracking.log_params({
            # Runtime settings stay out: changing them must not clash with a resumed run's params.
            **{f"decoder.{k}": v for k, v in flatten(cfg).items() if k not in DECODER_RUNTIME_FIELDS},
            "decoder.template_model": str(inputs.template_model_path), "decoder.template_dim": inputs.train.dim,
            "decoder.n_train_pairs": len(inputs.train), "decoder.n_test_pairs": len(inputs.test),
            "seed": params.seed,
        })
        before = scores_before(out_dir, mode == "start" and cfg.evaluate and cfg.evaluate_before,
                               lambda _folder: score_decoder(module, inputs, cfg, prefix="before_"))
        if mode == "evaluate":  # a finished run of the same settings and code: its weights stand
            module.load_state_dict(read_checkpoint(last_ckpt)["state_dict"])
        else:
            train_pairs = TemplatePairs(inputs.train, inputs.root, cfg.output_size, params.data.on_bad_image)
            grids = ControlGrid(control, out_dir / "control", cfg.visualize_every, run_id)
            _fit(module, train_pairs, test_pairs, cfg, params, out_dir, run_id,
                 last_ckpt if mode == "resume" else None, [grids, *callbacks])
        history = tracking.epoch_history(run_id, "val_cosine_mean")
        summary = {"epochs": len(history), "train_loss": history[-1][1] if history else None, **(before or {})}
        decoder_path = export_descriptor_model(module.model, out_dir / "decoder.safetensors")
        if cfg.evaluate:
            summary.update(score_decoder(module, inputs, cfg))
        final_grid = write_control_grid(module, *control, out_dir / "control" / "final.png")
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})
        _write_reports(request, summary, history)
        tracking.log_artifacts_if_present({"checkpoints": out_dir / "checkpoints", "control": final_grid.parent,
                                           "reports": request.report_dir})
        for path in (decoder_path, decoder_path.with_suffix(".json")):
            mlflow.log_artifact(str(path), "model")
        RunState(key, run_id, complete=True).save(out_dir / "run.json")
    return summary


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
        if step % self.every == 0:
            path = write_control_grid(module, *self.samples, self.folder / f"step_{step:07d}.png")
            mlflow.MlflowClient().log_artifact(self.run_id, str(path), "control")


def _fit(module: DecoderModule, train: TemplatePairs, test: TemplatePairs, cfg: DecoderConfig, params: Params,
         out_dir: Path, run_id: str, resume_from: Path | None, callbacks: Sequence[pl.Callback]) -> None:
    # Checkpoints hold no RNG state: a resumed run reseeds by the epochs done (see the drip stage).
    done = checkpoint_epoch(resume_from) + 1 if resume_from else 0
    pl.seed_everything(params.seed + done, workers=True)
    cuda = torch.cuda.is_available()
    module.train()  # Lightning 2.x keeps the mode it finds: train, whatever happened to the module before
    if cfg.channels_last and cuda:
        module.to(memory_format=torch.channels_last)
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train) > cfg.batch_size,
                        collate_fn=collate_skipping_bad, **training_loader_options(cfg))
    val_loader = DataLoader(test, batch_size=cfg.eval_batch_size, collate_fn=collate_skipping_bad,
                            **training_loader_options(cfg, keep_workers=False))
    trainer = pl.Trainer(
        max_epochs=cfg.epochs, accelerator="auto", devices=1, precision=lightning_precision(cfg.precision),
        default_root_dir=str(out_dir), plugins=[AtomicCheckpointIO()],
        logger=tracking.epoch_logger(run_id),
        callbacks=[ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best", monitor="val_cosine_mean",
                                   mode="max"),
                   ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="last"), *callbacks],
        log_every_n_steps=10, enable_model_summary=False, num_sanity_val_steps=0,
    )
    with compiled_trunk(module.model, cfg.compile):
        trainer.fit(module, train_dataloaders=loader, val_dataloaders=val_loader,
                    ckpt_path=str(resume_from) if resume_from else None)


def _write_reports(request: DecoderRequest, summary: dict, history: list) -> None:
    write_json_atomic(request.report_dir / "metrics.json", summary)
    rows = "".join(f"{e},{t},{v}\n" for e, t, v in history)
    write_text_atomic(request.plots_root / "decoder_history" / f"{request.run_name}.csv",
                      "epoch,train_loss,val_cosine_mean\n" + rows)


def validate_decoder(params: Params, split: str = "test", checkpoint: str | Path | None = None) -> str:
    """The original validate.py's report for a trained decoder: a .ckpt or the exported
    decoder.safetensors (default: the stage's last checkpoint)."""
    if split not in ("train", "test"):
        raise ValueError(f"validate-decoder: --set must be train or test, got {split!r}")
    cfg = params.decoder
    inputs = DecoderInputs.load(params, cfg)
    path = Path(checkpoint) if checkpoint else DecoderRequest().out_dir / "checkpoints" / "last.ckpt"
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
    stats = score_decoder(module, inputs, cfg, split)
    return format_stats(stats, split, None if cfg.threshold is not None else cfg.fmr)
