"""One lifecycle for every training stage: start, resume or re-evaluate, train, score, report.

A stage declares only its own parts by subclassing :class:`TrainingStage`
(its settings, module, loaders, evaluation, export name, reports);
:func:`run_stage` does the rest, the same way for all of them:

1. fingerprint the run (seed, data version, the stage's model-shaping
   settings, its input files, the code) and open its output folder
   (:mod:`embedlab.stages.run_state`): the same fingerprint resumes an
   unfinished run or re-evaluates a finished one, any other starts afresh;
2. open the stage's MLflow run (the resumed one, ``mlflow run``'s, or a new
   one) and log its params, its data sets (:mod:`embedlab.run_inputs`) and,
   while it runs, system metrics (:mod:`embedlab.system_metrics`); runtime
   settings are tags, never params;
3. score the starting model once ("before"), train with Lightning (from
   ``last.ckpt`` when resuming), or load the finished weights;
4. export the model, score it, log metrics, write the DVC reports, log the
   artifacts, and mark the run complete.

A DDP worker started by Lightning (rank > 0) only trains: rank 0 logs.
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Any, Sequence

import mlflow
import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from embedlab import tracking
from embedlab.run_inputs import EVALUATION, TRAINING, DataInput, log_data_inputs
from embedlab.system_metrics import system_metrics
from embedlab.const import BEFORE, CHECKPOINTS, EVAL, RUN_STATE, SPEED, last_checkpoint
from embedlab.config import Params, flatten
from embedlab.devices import check_devices, launched_rank, lightning_precision, speed_tags, torch_device
from embedlab.models.checkpoints import (
    AtomicCheckpointIO,
    checkpoint_epoch,
    export_descriptor_model,
    read_checkpoint,
)
from embedlab.models.compiled import compiled_trunk
from embedlab.mlflow_model import log_descriptor_model
from embedlab.evaluation.retrieval_grid import RETRIEVAL_PNG, WORST_PNG
from embedlab.stages.reports import HistoryParent, log_pictures, write_stage_reports
from embedlab.stages.throughput import TrainThroughput
from embedlab.code_deps import stage_code
from embedlab.digests import fingerprint
from embedlab.atomic import remove_stale_temporaries
from embedlab.stages.output_lock import output_lock
from embedlab.stages.progress_bar import titled_progress_bar
from embedlab.stages.run_state import (
    OutputFolders,
    RunState,
    drop_previous,
    open_run_dir,
    restore_previous,
    scores_before,
)



@dataclasses.dataclass
class Monitor:
    """The validation metric of a stage: ``best.ckpt`` and the history's third column."""

    metric: str
    mode: str = "min"  # min | max


class TrainingStage(OutputFolders, abc.ABC):
    """The parts of one training stage; see the module docstring for what the lifecycle does with them.

    Subclasses are dataclasses holding what one run trains (the step, recipe or
    phase) and where it writes (``models_root``, ``reports_root``, ``plots_root``).
    """

    command: str  # the CLI command and MLflow tag embedlab.stage: drip, gem, triplet, decoder
    section: str  # its params.yaml section: its settings are logged as <section>.<key>
    export_name: str  # the exported model's file name in the run's folder
    logs_model: bool = True  # log the export as MLflow's logged model (a pyfunc: images in, descriptors out)
    monitor: Monitor | None = None  # None: no validation; ``last.ckpt`` only
    history_plot: str = "history"  # folder of the per-epoch plot CSVs under plots_root
    plots_root: Path

    # --- what the run is ---------------------------------------------------------------------
    @property
    def mlflow_run_name(self) -> str:
        return f"{self.command}/{self.run_name}"

    @property
    def plot_name(self) -> str:
        """The run's file name in the plot folders (shared with other stages' runs)."""
        return self.plot_name_of(self.run_name)

    def plot_name_of(self, run_name: str) -> str:
        return f"{self.command}_{run_name}"

    def tags(self) -> dict[str, str]:
        return {}

    @abc.abstractmethod
    def settings(self, params: Params) -> Any:
        """The model-shaping settings (JSON-able): their change starts a new run."""

    def inputs(self, params: Params) -> list[Path | None]:
        """Files whose bytes shape the model (a parent checkpoint, a data manifest)."""
        return []

    @abc.abstractmethod
    def config(self, params: Params) -> Any:
        """The stage's section as this run uses it (logged as ``<section>.<key>`` params)."""

    def extra_params(self, params: Params) -> dict[str, Any]:
        """Params beside the section's: counts, the step's name, the parent checkpoint."""
        return {}

    def training_data(self, params: Params) -> list[DataInput]:
        """The data sets the run trains (and validates) on: the run's MLflow datasets of context "training"."""
        return []

    def evaluation_data(self, params: Params) -> list[DataInput]:
        """The data sets the trained model is scored on (context "evaluation")."""
        return []

    # --- its parts -----------------------------------------------------------------------------
    def setup(self, params: Params) -> None:
        """Check that the run can start and read its inputs; writes nothing (the folder may be cleared next)."""

    @abc.abstractmethod
    def build(self, params: Params, fresh: bool) -> pl.LightningModule:
        """The module; ``fresh``: a new run (load pretrained weights), else a checkpoint follows."""

    def prepare(self, module: pl.LightningModule, params: Params) -> None:
        """A fresh run's starting point beyond ``build`` (parent weights, W matrix)."""

    @abc.abstractmethod
    def loaders(self, params: Params) -> tuple[DataLoader, DataLoader | None]:
        """Training and validation loaders (None: no validation)."""

    def callbacks(self, params: Params, run_id: str | None) -> list[pl.Callback]:
        return []

    @abc.abstractmethod
    def trainer_options(self, params: Params) -> dict[str, Any]:
        """pl.Trainer arguments of this stage (max_epochs at least)."""

    def evaluates(self, params: Params) -> tuple[bool, bool]:
        """(score the trained model, score the starting model too)."""
        return True, True

    @abc.abstractmethod
    def evaluate(self, module: pl.LightningModule, params: Params, folder: Path, prefix: str) -> dict:
        """Scores of ``module`` (keys prefixed by ``prefix``); files under ``folder``."""

    def describe(self, history: list[tuple[int, float, float]]) -> dict[str, Any]:
        """The summary's first fields (the step, class count ...)."""
        return {}

    def finish(self, module: pl.LightningModule, params: Params, summary: dict) -> dict[str, Path]:
        """Work after scoring (pictures); returns extra artifacts {artifact path: file or folder}."""
        return {}

    def curves(self) -> dict[str, tuple[Path, str]]:
        """Plot CSVs to publish: {plot kind: (the evaluation's CSV, its header when absent)}."""
        return {}

    def history_parent(self) -> HistoryParent | None:
        """The run this one continues (its history CSV and checkpoint), if any: the history's ``chained_epoch``
        goes on from that run's last epoch (:func:`embedlab.stages.reports.chained_history`)."""
        return None

    def continued_run(self, checkpoint: str | Path | None, repeat_rows: bool = False) -> HistoryParent | None:
        """:meth:`history_parent` for a run that starts from ``checkpoint``
        (``<models_root>/<run>/checkpoints/<file>``): that run's history CSV beside this one's."""
        if checkpoint is None:
            return None
        checkpoint = Path(checkpoint)
        run_name = checkpoint.parent.parent.name
        return HistoryParent(self.plots_root / self.history_plot / f"{self.plot_name_of(run_name)}.csv", checkpoint,
                             repeat_rows)

    def pictures(self) -> dict[str, Path]:
        """The evaluation's pictures by name (those that exist are copied beside metrics.json as
        ``<name>.png`` and logged as MLflow images of that key): a retrieval model's PR curve and grids."""
        return {Path(name).stem: self.out_dir / EVAL / name for name in ("pr_curve.png", RETRIEVAL_PNG, WORST_PNG)}


def run_stage(stage: TrainingStage, params: Params, callbacks: Sequence[pl.Callback] = ()) -> dict:
    """Train, score and log one run of ``stage``; returns its summary ({} on DDP ranks > 0).

    ``callbacks`` join the Trainer's own (a sweep's pruning callback).
    """
    check_devices(params.runtime)
    stage.setup(params)
    if launched_rank(params.runtime.devices) > 0:  # a DDP worker: rank 0 holds the folder's lock
        return _run_stage(stage, params, callbacks)
    with output_lock(stage.out_dir):  # one writer per output folder
        try:
            return _run_stage(stage, params, callbacks)
        except BaseException:
            restore_previous(stage.out_dir)  # failed before a checkpoint: the finished run it replaced returns
            raise


def _run_stage(stage: TrainingStage, params: Params, callbacks: Sequence[pl.Callback]) -> dict:
    out_dir = stage.out_dir
    key = stage_fingerprint(stage, params)
    state, mode = open_run_dir(out_dir, key)
    last_ckpt = last_checkpoint(out_dir)
    resume_from = last_ckpt if mode == "resume" else None
    pl.seed_everything(params.seed, workers=True)
    module = stage.build(params, fresh=mode == "start")
    if launched_rank(params.runtime.devices) > 0:  # a DDP worker Lightning started: it trains, rank 0 logs
        if mode != "evaluate":
            _fit(stage, module, params, None, resume_from, callbacks)
        return {}
    remove_stale_temporaries(out_dir)  # a killed write's temporary file: never taken for output or uploaded
    evaluate_after, evaluate_before = stage.evaluates(params)
    with tracking.stage_run(stage.command, stage.mlflow_run_name, params.tracking.experiment, params.tracking.uri,
                            resume_run_id=state.mlflow_run_id if state.fingerprint == key else None,
                            tags={**stage.tags(), **speed_tags(params.runtime)}) as run, \
            system_metrics(run.info.run_id, params.tracking):
        run_id = run.info.run_id
        RunState(key, run_id, complete=False).save(out_dir / RUN_STATE)
        tracking.log_params({**{f"{stage.section}.{k}": v for k, v in flatten(stage.config(params)).items()},
                             **stage.extra_params(params), "seed": params.seed})
        log_data_inputs({TRAINING: stage.training_data(params), EVALUATION: stage.evaluation_data(params)})
        if mode == "start":
            stage.prepare(module, params)
        before = scores_before(out_dir, mode == "start" and evaluate_before,
                               lambda folder: stage.evaluate(module, params, folder, BEFORE))
        if mode == "evaluate":  # a finished run of the same settings and code: its weights stand
            checkpoint = read_checkpoint(last_ckpt)
            module.on_load_checkpoint(checkpoint)  # e.g. a whole sharded classifier -> this module's shards
            module.load_state_dict(checkpoint["state_dict"])
        else:
            _fit(stage, module, params, run_id, resume_from, callbacks)
        history_metric = stage.monitor.metric if stage.monitor else "val_loss"
        history = tracking.epoch_history(run_id, history_metric)
        # Epochs trained: the checkpoint's count. Lightning writes the checkpoint before it logs the epoch's
        # metrics, so a kill between the two leaves the logged history one epoch short.
        epochs = checkpoint_epoch(last_ckpt) + 1 if last_ckpt.is_file() else len(history)
        summary = {**stage.describe(history), "epochs": epochs,
                   "train_loss": history[-1][1] if history else None, **(before or {})}
        model_path = export_descriptor_model(module.model, out_dir / stage.export_name)
        if evaluate_after:
            summary.update(stage.evaluate(module, params, out_dir / EVAL, ""))
        extra_artifacts = stage.finish(module, params, summary)
        # The UI's "Logged models"; a re-evaluated run's model of the same weights is not logged twice.
        model_id = log_descriptor_model(module.model, model_path) if stage.logs_model else None
        # Speed figures are the machine's, not the model's: a group of their own in MLflow, kept out of the
        # scores (and of DVC's metrics files, whose diffs would flag every run).
        speed = {f"{SPEED}/{k}": summary.pop(k) for k in [k for k in summary if k.endswith("_per_s")]}
        # The monitored metric has its per-epoch history already: a final copy would read as one more epoch.
        # The final scores are the logged model's too (model_id).
        mlflow.log_metrics({k: v for k, v in summary.items()
                            if isinstance(v, (int, float)) and v is not None and k != history_metric},
                           model_id=model_id)
        mlflow.log_metrics(speed)
        pictures = stage.pictures()
        write_stage_reports(stage.report_dir, summary, stage.plots_root, stage.plot_name,
                            (stage.history_plot, history_metric, history), stage.curves(),
                            pictures=pictures, parent=stage.history_parent())
        log_pictures(pictures)
        tracking.log_artifacts_if_present({CHECKPOINTS: out_dir / CHECKPOINTS, EVAL: out_dir / EVAL,
                                           "reports": stage.report_dir, **extra_artifacts})
        for path in (model_path, model_path.with_suffix(".json")):
            mlflow.log_artifact(str(path), "model")
        RunState(key, run_id, complete=True).save(out_dir / RUN_STATE)
    drop_previous(out_dir)  # the finished run this one replaced, kept until now
    return summary


def stage_fingerprint(stage: TrainingStage, params: Params) -> str:
    """What must match for a re-run to resume or re-evaluate: seed, data version, the stage's
    model-shaping settings and input files, the code it runs (code_deps: the files DVC depends on
    too). The runtime section is not part of it."""
    module = next(c.__module__ for c in type(stage).__mro__ if c.__module__.startswith("embedlab.stages."))
    return fingerprint([params.seed, tracking.dvc_data_hash(), stage.settings(params)], stage.inputs(params),
                       code=stage_code(module))


def _fit(stage: TrainingStage, module: pl.LightningModule, params: Params, run_id: str | None,
         resume_from: Path | None, callbacks: Sequence[pl.Callback]) -> None:
    # Checkpoints hold no RNG state: a resumed run reseeds by the epochs done, or its
    # remaining epochs would replay the first epochs' random draws (dropout, sampling).
    done = checkpoint_epoch(resume_from) + 1 if resume_from else 0
    pl.seed_everything(params.seed + done, workers=True)
    module.train()  # Lightning 2.x keeps the mode it finds: train, whatever happened to the module before
    runtime = params.runtime
    devices = runtime.devices
    train, val = stage.loaders(params)
    checkpoints = stage.out_dir / CHECKPOINTS
    monitor = stage.monitor
    options = stage.trainer_options(params)
    # The bar names the run and counts epochs from 1 ("drip/s1: epoch 2/2"), unless the stage turns bars off.
    bar = [titled_progress_bar(stage.mlflow_run_name)] if options.get("enable_progress_bar", True) else []
    trainer = pl.Trainer(
        accelerator="cpu" if runtime.device == "cpu" else "auto", devices=devices, num_nodes=runtime.num_nodes,
        strategy="ddp" if devices * runtime.num_nodes > 1 else "auto",
        # Each stage's training sampler takes its rank's share itself (devices.training_shard): P×K batches
        # stay whole, and validation runs whole on every rank. On GPUs BatchNorm statistics span the ranks'
        # batches (torch's SyncBatchNorm has no CPU kernel: gloo ranks keep their own).
        use_distributed_sampler=False,
        sync_batchnorm=devices * runtime.num_nodes > 1 and torch_device(runtime.device).type == "cuda",
        precision=lightning_precision(runtime.precision, torch_device(runtime.device)),
        default_root_dir=str(stage.out_dir), plugins=[AtomicCheckpointIO()], logger=tracking.epoch_logger(run_id),
        callbacks=[
            # Two callbacks: Lightning 2.6 writes save_last only when the monitored
            # checkpoint improved, but the next step and a resume need the latest weights.
            # No version counter: best.ckpt / last.ckpt are replaced, never joined by a "-v1" a resume would miss.
            *([ModelCheckpoint(dirpath=checkpoints, filename="best", monitor=monitor.metric, mode=monitor.mode,
                               enable_version_counter=False)] if monitor else []),
            ModelCheckpoint(dirpath=checkpoints, filename="last", enable_version_counter=False),
            TrainThroughput(), *bar, *stage.callbacks(params, run_id), *callbacks,
        ],
        enable_model_summary=False, num_sanity_val_steps=0, **options,
    )
    with compiled_trunk(module.model, runtime.compile):
        trainer.fit(module, train_dataloaders=train, val_dataloaders=val,
                    ckpt_path=str(resume_from) if resume_from else None)
