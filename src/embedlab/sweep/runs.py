"""The sweep's MLflow runs: one parent run per study, one nested run per trial.

The parent is MLflow's own run under ``mlflow run . -e sweep`` (``MLFLOW_RUN_ID``),
else the run recorded in the study (a restart re-opens it), else a new one.
Trial runs are created with ``mlflow.parentRunId`` set, so the UI lists them
under the parent and compares them side by side; a pruned trial's run ends
KILLED with tag ``optuna.trial_state=PRUNED``, a failed one FAILED.
"""

from __future__ import annotations

import os

import mlflow
import optuna
from mlflow.tracking import MlflowClient

from embedlab import tracking
from embedlab.sweep.study import PARENT_RUN


def open_parent_run(study: optuna.Study, experiment: str, tags: dict[str, str]) -> tuple[str, bool]:
    """The parent run's id, and whether this process owns it (ends it when the sweep ends)."""
    client = MlflowClient()
    outer = os.environ.get("MLFLOW_RUN_ID")
    held = study.user_attrs.get(PARENT_RUN)
    if outer:
        run_id, owned = outer, False
    elif tracking.run_is_usable(held):
        run_id, owned = held, True
        client.update_run(run_id, status="RUNNING")
    else:
        run = client.create_run(tracking.ensure_experiment(experiment), run_name=f"sweep/{study.study_name}")
        run_id, owned = run.info.run_id, True
    if held != run_id:
        study.set_user_attr(PARENT_RUN, run_id)
    root = tracking.repo_root()
    standard = {"embedlab.stage": "sweep", "optuna.study_name": study.study_name,
                "mlflow.source.git.commit": tracking.git_commit(root), "dvc.data_hash": tracking.dvc_data_hash(root)}
    for key, value in {**standard, **tags}.items():
        if value is not None:
            client.set_tag(run_id, key, str(value))
    return run_id, owned


def parent_of(study: optuna.Study) -> str:
    """A worker process's parent run: the one its launcher recorded in the study."""
    run_id = study.user_attrs.get(PARENT_RUN)
    if not tracking.run_is_usable(run_id):
        raise ValueError(f"sweep: study {study.study_name!r} records no usable MLflow parent run; "
                         "start the sweep without --worker-index on one machine first")
    return run_id


def start_trial_run(parent_id: str, study_name: str, trial_number: int, tags: dict[str, str]) -> mlflow.ActiveRun:
    """Create the trial's nested run and make it this process's active run (the stage logs into it)."""
    client = MlflowClient()
    parent = client.get_run(parent_id)
    run = client.create_run(parent.info.experiment_id, run_name=f"{study_name}/trial_{trial_number}",
                            tags={"mlflow.parentRunId": parent_id, "optuna.study_name": study_name,
                                  "optuna.trial_number": str(trial_number), **tags})
    return mlflow.start_run(run_id=run.info.run_id)


def end_trial_run(state: str, reason: str | None = None) -> None:
    """End the active trial run: COMPLETE -> FINISHED, PRUNED -> KILLED, FAIL -> FAILED."""
    mlflow.set_tag("optuna.trial_state", state)
    if reason:
        mlflow.set_tag("optuna.fail_reason", reason[:5000])
    mlflow.end_run({"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}.get(state, "KILLED"))


def finish_parent(run_id: str, owned: bool, status: str = "FINISHED") -> None:
    if owned:
        MlflowClient().set_terminated(run_id, status)


def mark_killed(run_ids: list[str | None]) -> None:
    """Mark the MLflow runs of trials killed with their worker KILLED, with state FAIL.

    Whatever status the run reached: a worker killed after it ended the run but
    before Optuna recorded the result leaves a FINISHED (or pruned) run that the
    study does not count and runs again, and MLflow must not show it as done.
    """
    client = MlflowClient()
    for run_id in run_ids:
        if tracking.run_is_usable(run_id):
            client.set_tag(run_id, "optuna.trial_state", "FAIL")
            client.set_tag(run_id, "optuna.fail_reason", "killed with its worker; retried when the sweep resumed")
            client.set_terminated(run_id, "KILLED")
