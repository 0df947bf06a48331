"""Register the best run of a stage: its logged model becomes a model version with an alias.

    embedlab register --stage drip                      # best μAP -> embedlab-drip, alias champion
    embedlab register --stage triplet --alias candidate  # lowest valid_eer

Candidates are the stage's finished runs (tag ``embedlab.stage``) that logged
a model (:mod:`embedlab.mlflow_model`) and hold the metric. By default the
metric and its direction are the stage's headline, as its sweep optimises it
(``sweep/stages.py``: μAP for drip and GeM, the validation EER for the face
encoder). A sweep's trials are left out: they score on subsets after
shortened training, not comparable with the pipeline's runs. Registering the
model a version already holds moves the alias only: no second version.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from embedlab import tracking
from embedlab.config import ConfigError
from embedlab.const import LOGGED_MODEL, MODEL_STAGES

DEFAULT_ALIAS = "champion"
MODES = {"max": "maximize", "min": "minimize"}


def headline(stage: str) -> tuple[str, str]:
    """(metric, max | min) a stage is judged by: the one its sweep optimises."""
    from embedlab.sweep.stages import get_stage

    sweep = get_stage(f"{stage}_stage")
    return sweep.metric, next(mode for mode, direction in MODES.items() if direction == sweep.direction)


def _all(search: Callable, *args, **kwargs) -> Iterator:
    """Every result of one of MlflowClient's paged searches."""
    token = None
    while True:
        page = search(*args, page_token=token, **kwargs)
        yield from page
        token = page.token
        if not token:
            return


def best_run(client: MlflowClient, experiment_id: str, stage: str, metric: str, mode: str,
             where: str | None = None) -> tuple[Run, str]:
    """The best finished run of ``stage`` by ``metric`` that logged a model, and that model's id."""
    models = {}  # run id -> its latest logged model
    for model in _all(client.search_logged_models, [experiment_id], filter_string=f"name = '{LOGGED_MODEL}'",
                      order_by=[{"field_name": "creation_time", "ascending": True}]):
        if model.status == "READY" and model.source_run_id:
            models[model.source_run_id] = model.model_id
    filter_string = f"tags.`embedlab.stage` = '{stage}' AND attributes.status = 'FINISHED'"
    if where:
        filter_string = f"{filter_string} AND {where}"
    candidates = [run for run in _all(client.search_runs, [experiment_id], filter_string)
                  if math.isfinite(run.data.metrics.get(metric, math.nan)) and run.info.run_id in models
                  and "mlflow.parentRunId" not in run.data.tags]  # a sweep's trial
    if not candidates:
        raise ConfigError(f"no finished {stage} run with metric {metric!r} and a logged model"
                          f"{f' matching {where!r}' if where else ''} in experiment {experiment_id}; train one "
                          f"first (`embedlab {stage}`)")
    pick = max if mode == "max" else min
    run = pick(candidates, key=lambda r: r.data.metrics[metric])
    return run, models[run.info.run_id]


def register_best(stage: str, experiment: str, metric: str | None = None, mode: str | None = None,
                  alias: str | None = None, name: str | None = None, where: str | None = None,
                  uri: str | None = None) -> dict[str, Any]:
    """Register the logged model of ``stage``'s best run as a version of ``name`` (default: embedlab-<stage>)
    and point ``alias`` (default: champion) at it; returns what was registered."""
    if stage not in MODEL_STAGES:
        raise ConfigError(f"embedlab register: stage {stage!r} logs no descriptor model; one of {list(MODEL_STAGES)}")
    default_metric, default_mode = headline(stage)
    metric = metric or default_metric
    if mode is None:
        if metric != default_metric:
            raise ConfigError(f"embedlab register: give --mode max or min for metric {metric!r} "
                              f"(only {default_metric!r} has a known direction)")
        mode = default_mode
    if mode not in MODES:
        raise ConfigError(f"embedlab register: --mode must be max or min, got {mode!r}")
    name, alias = name or f"embedlab-{stage}", alias or DEFAULT_ALIAS
    mlflow.set_tracking_uri(tracking.tracking_uri(uri))
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ConfigError(f"MLflow experiment {experiment!r} not found at {mlflow.get_tracking_uri()} "
                          "(tracking.experiment in params.yaml)")
    run, model_id = best_run(client, found.experiment_id, stage, metric, mode, where)
    version = _version_of(client, name, model_id)
    new = version is None
    if new:
        tags = {"embedlab.stage": stage, "embedlab.run_name": run.info.run_name or "",
                metric: str(run.data.metrics[metric])}
        version = mlflow.register_model(f"models:/{model_id}", name, tags=tags)
    client.set_registered_model_alias(name, alias, version.version)
    return {"name": name, "version": int(version.version), "alias": alias, "uri": f"models:/{name}@{alias}",
            "new_version": new, "run_id": run.info.run_id, "run_name": run.info.run_name, "model_id": model_id,
            metric: run.data.metrics[metric]}


def _version_of(client: MlflowClient, name: str, model_id: str):
    """The version of registered model ``name`` that holds logged model ``model_id``, if any."""
    for version in _all(client.search_model_versions, f"name = '{name}'"):
        if version.model_id == model_id or version.source == f"models:/{model_id}":
            return version
    return None
