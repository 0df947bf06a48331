"""``embedlab sweep``: check everything, open the study and its MLflow parent run, run the trials
(in this process and ``workers - 1`` more), then write the best parameters and the plots.

    embedlab sweep drip_stage --n-trials 20 [--study NAME] [--storage URL] [--workers N]

Bad input (unknown stage, a bad search space, missing parents or data, an
unreachable storage) is an error before the first trial.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
import uuid

import mlflow
import optuna
from mlflow.tracking import MlflowClient

from embedlab import tracking
from embedlab.atomic import write_json_atomic
from embedlab.config import ConfigError, Params
from embedlab.sweep import study as studies
from embedlab.sweep.best import set_param_command, write_best_params, write_plots
from embedlab.sweep.gpus import visible_gpus, worker_gpus
from embedlab.sweep.objective import REPORTS_ROOT, SweepPlan, make_objective
from embedlab.sweep.runs import finish_parent, mark_killed, open_parent_run, parent_of
from embedlab.sweep.space import check_values, parse_space, with_values
from embedlab.sweep.stages import get_stage

log = logging.getLogger(__name__)

STORAGE_ENV = "EMBEDLAB_SWEEP_STORAGE"  # hands the storage URL to worker processes (not on their command line)
LAUNCH_ENV = "EMBEDLAB_SWEEP_LAUNCH"  # the launch a worker process belongs to: it reports ready under this id
READY_TIMEOUT = 600.0  # seconds the launcher waits for its workers to start before it runs trials anyway


@dataclasses.dataclass
class SweepRequest:
    stage: str
    n_trials: int | None = None  # None: sweep.n_trials
    study: str | None = None  # None: <stage>-<step/recipe/phase>
    storage: str | None = None  # None: sweep.storage, else sqlite:///<repo>/optuna.db
    workers: int = 1
    params_file: str = "params.yaml"
    worker_index: int = 0  # > 0: a worker process a launcher started


def plan_sweep(params: Params, request: SweepRequest) -> SweepPlan:
    """Everything checked before any trial: stage, space, values, parents, data, budget."""
    stage = get_stage(request.stage)
    where = f"sweep.{stage.name}"
    knobs = stage.knobs(params)
    dimensions = parse_space(stage.section(params).space, knobs, f"{where}.space")
    fixed = stage.fixed(params)
    base = with_values(params, fixed, where)
    check_values(base, dimensions, f"{where}.space", stage.validate)
    stage.check(base)
    n_trials = request.n_trials if request.n_trials is not None else params.sweep.n_trials
    if n_trials < 1:
        raise ConfigError(f"sweep: --n-trials must be at least 1, got {n_trials}")
    if request.workers < 1:
        raise ConfigError(f"sweep: --workers must be at least 1, got {request.workers}")
    name = studies.check_study_name(request.study or f"{stage.name}-{stage.target(params)}")
    url = request.storage or params.sweep.storage or studies.default_storage()
    return SweepPlan(stage, params, knobs, dimensions, fixed, n_trials, name, url)


def run_sweep(params: Params, request: SweepRequest) -> dict:
    """Run (or resume, or join) the sweep; returns its summary (see :func:`format_summary`)."""
    plan = plan_sweep(params, request)
    storage = studies.open_storage(plan.storage_url)
    mlflow.set_tracking_uri(tracking.tracking_uri(params.tracking.uri))
    study = studies.open_study(storage, plan.study_name, plan.stage.name, plan.stage.direction, params.sweep,
                               request.worker_index)
    if request.worker_index > 0:  # started by a launcher: trials only, the launcher finishes the sweep
        parent = parent_of(study)
        if os.environ.get(LAUNCH_ENV):
            study.set_user_attr(f"ready.{os.environ[LAUNCH_ENV]}.{request.worker_index}", time.time())
        _work(plan, study, parent)
        return studies.tally(study)
    _recover_killed(study)
    parent, owned = open_parent_run(study, params.tracking.experiment, tags={
        "embedlab.sweep_stage": plan.stage.name, "optuna.storage": studies.masked(plan.storage_url),
        "optuna.direction": plan.stage.direction, "optuna.objective": plan.stage.metric,
        "sweep.n_trials": plan.n_trials, "sweep.space": json.dumps(dict(plan.stage.section(params).space)),
    })
    status = "FAILED"
    try:
        launch = uuid.uuid4().hex
        workers = _spawn_workers(plan, request, launch)
        try:
            _wait_until_ready(study, workers, launch)
            _work(plan, study, parent)
        finally:
            codes = [w.wait() for w in workers]
        _wait_for_other_machines(study)
        result = _finish(plan, study, parent)
        result["failed_workers"] = sum(code != 0 for code in codes)
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        finish_parent(parent, owned, status)


def _work(plan: SweepPlan, study: optuna.Study, parent: str) -> None:
    """Run trials one at a time until the study's budget is used (by this and any other worker)."""
    objective, state = make_objective(plan, parent)
    while studies.budget_left(study, plan.n_trials) > 0 and not state["skipped"]:
        # optimize() keeps the trial's heartbeat and fails stale trials; catch: a failed trial ends, the study goes on.
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)


def _recover_killed(study: optuna.Study) -> None:
    """Trials whose worker died: FAIL in Optuna, KILLED in MLflow, parameters queued again."""
    killed = studies.recover_killed(study)
    if killed:
        log.warning("sweep: trials %s were killed with their worker: marked FAIL, their parameters queued again",
                    [t.number for t in killed])
        mark_killed([t.user_attrs.get(studies.MLFLOW_RUN) for t in killed])


def _wait_for_other_machines(study: optuna.Study, poll: float = 5.0) -> None:
    """Trials still running belong to processes started on other machines: the plots, the best
    parameters and the parent run's end wait for them (a dead one fails by its missing heartbeat)."""
    logged = False
    while True:
        _recover_killed(study)  # a worker that died elsewhere: its trial fails, its parameters are queued
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not running:
            return
        if not logged:
            log.info("sweep: waiting for trials %s of other workers", [t.number for t in running])
            logged = True
        time.sleep(poll)


def _spawn_workers(plan: SweepPlan, request: SweepRequest, launch: str) -> list[subprocess.Popen]:
    """``workers - 1`` more processes on this machine, sharing the study through its storage, each on its own
    GPUs (sweep/gpus.py); this process keeps the first share."""
    env = {**os.environ, STORAGE_ENV: plan.storage_url, LAUNCH_ENV: launch}
    cmd = [sys.executable, "-m", "embedlab", "sweep", plan.stage.name, "--params", request.params_file,
           "--n-trials", str(plan.n_trials), "--study", plan.study_name]
    gpus = visible_gpus()
    shares = {i: worker_gpus(i, request.workers, gpus) for i in range(request.workers)}
    if gpus:
        log.info("sweep: GPUs per worker %s", shares)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(shares[0])  # before this process touches CUDA
    return [subprocess.Popen([*cmd, "--worker-index", str(i)],
                             env={**env, **({"CUDA_VISIBLE_DEVICES": ",".join(shares[i])} if gpus else {})})
            for i in range(1, request.workers)]


def _wait_until_ready(study: optuna.Study, workers: list[subprocess.Popen], launch: str,
                      timeout: float = READY_TIMEOUT) -> None:
    """Start trials together with the spawned workers: while they import torch and check the plan, this
    process would otherwise take the study's first trials alone (all of them, in a short sweep)."""
    if not workers:
        return
    wanted = {f"ready.{launch}.{i}" for i in range(1, len(workers) + 1)}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wanted <= set(study.user_attrs) or any(w.poll() is not None for w in workers):
            return
        time.sleep(0.5)
    log.warning("sweep: workers not ready after %.0f s; running trials without them", timeout)


def _finish(plan: SweepPlan, study: optuna.Study, parent: str) -> dict:
    """Plots, best parameters and outcome counts: files under reports/sweeps/<study>, and the parent run's."""
    client = MlflowClient()
    folder = REPORTS_ROOT / plan.study_name
    counts = studies.tally(study)
    result = {"study": plan.study_name, "storage": studies.masked(plan.storage_url), "stage": plan.stage.name,
              "metric": plan.stage.metric, "direction": plan.stage.direction, "n_trials": plan.n_trials,
              **counts, "parent_run_id": parent}
    client.log_batch(parent, metrics=[mlflow.entities.Metric(f"trials_{k}", v, _now(), 0) for k, v in counts.items()])
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        best_file = folder / "best_params.yaml"
        write_best_params(best_file, best, plan.knobs, plan.study_name, plan.stage.metric)
        result.update(best_trial=best.number, best_value=best.value, best_params=best.params,
                      best_params_file=str(best_file), command=set_param_command(best_file))
        client.log_artifact(parent, str(best_file))
        client.log_metric(parent, f"best_{plan.stage.metric}", best.value)
        client.set_tag(parent, "best.trial_number", str(best.number))
        for key, value in best.params.items():  # tags: a resumed study may find another best
            client.set_tag(parent, f"best.{key}", str(value))
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                client.log_metric(parent, f"best.{key}", float(value))
    for path in write_plots(study, folder / "plots"):
        client.log_artifact(parent, str(path), "plots")
    write_json_atomic(folder / "summary.json", result)
    return result


def _now() -> int:
    return int(time.time() * 1000)


def format_summary(result: dict) -> str:
    lines = [f"study {result['study']} ({result['storage']}): {result['stage']}, "
             f"{result['direction']} {result['metric']} over {result['n_trials']} trials",
             f"trials: {result['complete']} complete, {result['pruned']} pruned, {result['failed']} failed"
             + (f", {result['killed']} killed (retried)" if result.get("killed") else "")
             + (f", {result['running']} still running" if result.get("running") else "")]
    if "best_trial" in result:
        lines.append(f"best: trial {result['best_trial']}, {result['metric']} {result['best_value']:.6g}")
        lines += [f"  {k}: {v}" for k, v in result["best_params"].items()]
        lines.append(f"best parameters: {result['best_params_file']}")
        lines.append(f"apply them:  {result['command']}")
    else:
        lines.append("no trial completed: no best parameters")
    if result.get("failed_workers"):
        lines.append(f"warning: {result['failed_workers']} worker process(es) ended with an error")
    lines.append(f"MLflow parent run: {result['parent_run_id']} (its nested runs are the trials)")
    return "\n".join(lines)
