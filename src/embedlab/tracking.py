"""MLflow helpers: where to log, which run to log into, and standard tags.

A stage started by ``mlflow run`` logs into the run MLflow opened
(``MLFLOW_RUN_ID``), never a second one; a resumed stage re-opens its own
earlier run; a stage called inside an active run (a sweep's trial) logs into
that one; otherwise a new run is created. The default store is
``sqlite:///<repo>/mlflow.db`` with artifacts in ``<repo>/mlruns``, resolved
absolutely so that ``dvc exp run`` and ``mlflow run`` land in the same place.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow
import yaml
from mlflow.tracking import MlflowClient


def repo_root(start: Path | None = None) -> Path:
    """The project's root. `dvc exp run --temp/--queue` runs in a git copy under
    <repo>/.dvc/tmp/exps/, deleted afterwards: results must land in <repo>."""
    start = (start or Path.cwd()).resolve()
    parts = start.parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=start, capture_output=True, text=True, check=True
        )
        return Path(out.stdout.strip())
    except (subprocess.CalledProcessError, FileNotFoundError):
        return start


def tracking_uri(configured: str | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else params.yaml's tracking.uri, else the repo's sqlite file."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    return uri or f"sqlite:///{repo_root() / 'mlflow.db'}"


def git_commit(root: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root or repo_root(), capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


def dvc_data_hash(root: Path | None = None) -> str | None:
    """The md5 that data.dvc records for data/raw (None without DVC tracking)."""
    dvc_file = (root or repo_root()) / "data.dvc"
    if not dvc_file.is_file():
        return None
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


# The UI opens an experiment of this kind on its training runs (not on the GenAI traces view).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(name: str) -> str:
    """The id of experiment ``name``, created as a model-training experiment when it does not exist."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    uri = mlflow.get_tracking_uri()
    artifacts = None
    if uri.startswith("sqlite:///"):  # artifacts beside the database, not in the cwd
        artifacts = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlruns").as_uri()
    return client.create_experiment(name, artifact_location=artifacts, tags=EXPERIMENT_KIND)


def run_is_usable(run_id: str | None) -> bool:
    if not run_id:
        return False
    try:
        return MlflowClient().get_run(run_id).info.lifecycle_stage == "active"
    except mlflow.exceptions.MlflowException:
        return False


@contextlib.contextmanager
def stage_run(
    stage: str,
    run_name: str,
    experiment: str,
    uri: str | None = None,
    resume_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Open the MLflow run this stage logs into (see module docstring).

    A run already active in this process (a sweep's nested trial run) takes
    precedence: the stage logs into it and leaves ending it to its owner.
    """
    active = mlflow.active_run()
    if active is None:
        mlflow.set_tracking_uri(tracking_uri(uri))
        outer = os.environ.get("MLFLOW_RUN_ID")
        if outer:
            run = mlflow.start_run(run_id=outer)
        elif run_is_usable(resume_run_id):
            run = mlflow.start_run(run_id=resume_run_id)
        else:
            run = mlflow.start_run(experiment_id=ensure_experiment(experiment), run_name=run_name)
    root = repo_root()
    standard = {
        "embedlab.stage": stage,
        "mlflow.source.git.commit": git_commit(root),
        "dvc.data_hash": dvc_data_hash(root),
    }
    mlflow.set_tags({k: v for k, v in {**standard, **(tags or {})}.items() if v is not None})
    if active is not None:
        yield active
        return
    with run:
        yield run


def log_params(params: Mapping[str, Any]) -> None:
    """Log params; those MLflow already holds (a resumed run) must keep their value."""
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    values = {k: ("" if v is None else str(v)) for k, v in params.items()}
    clashes = {k: (existing[k], v) for k, v in values.items() if k in existing and existing[k] != v}
    if clashes:
        raise ValueError(f"MLflow run {mlflow.active_run().info.run_id} already holds other values for "
                         f"{sorted(clashes)} (held, new): {clashes}; log this stage into its own run")
    fresh = {k: v for k, v in values.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)


def log_artifacts_if_present(paths: Mapping[str, Path]) -> None:
    """Log each existing file or folder under the given artifact path."""
    for artifact_path, path in paths.items():
        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path)
        elif path.is_file():
            mlflow.log_artifact(str(path), artifact_path)


def epoch_logger(run_id: str | None):
    """Lightning's MLflow logger for a stage's run: metrics only.

    The stage logs its params itself (``drip.lr``, ``decoder.perceptual_weight``);
    Lightning would add the module's hyper-parameters under bare names, which
    clash with `mlflow run`'s own params of the same name in another spelling
    (``-P perceptual_weight=11`` vs ``11.0``) and fail the run.
    """
    from pytorch_lightning.loggers import MLFlowLogger

    class _MetricsOnly(MLFlowLogger):
        def log_hyperparams(self, params) -> None:
            pass

    return _MetricsOnly(tracking_uri=mlflow.get_tracking_uri(), run_id=run_id)


def metric_values(run_id: str, name: str) -> list[float]:
    """A metric's values in step order, from MLflow: complete across a resumed run.

    One value per step, the last logged: an epoch whose metrics were logged but whose checkpoint a kill
    prevented runs again on resume and logs the same steps a second time."""
    latest: dict[int, tuple[int, float]] = {}
    for m in MlflowClient().get_metric_history(run_id, name):
        if m.step not in latest or m.timestamp >= latest[m.step][0]:
            latest[m.step] = (m.timestamp, m.value)
    return [latest[step][1] for step in sorted(latest)]


def epoch_history(run_id: str, val_metric: str) -> list[tuple[int, float, float]]:
    """(epoch, train loss, ``val_metric``): one row per logged training epoch, NaN where validation is missing."""
    train, val = metric_values(run_id, "train_loss_epoch"), metric_values(run_id, val_metric)
    return [(e, t, v) for e, (t, v) in enumerate(zip(train, val + [float("nan")] * (len(train) - len(val))))]


def picture_title(prefix: str = "") -> str:
    """A picture's title: the active MLflow run's name and the scores' prefix (``before``, ``post``)."""
    run = mlflow.active_run()
    return " ".join(filter(None, [run.info.run_name if run else "", prefix.rstrip("_")]))
