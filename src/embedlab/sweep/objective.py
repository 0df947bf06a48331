"""One trial: sample the space, train the stage into the trial's own folders and nested MLflow run.

The trial's value is the stage's own final metric (μAP, EER, mean cosine).
A pruned trial re-raises :class:`optuna.TrialPruned` (Optuna marks it
PRUNED); a trial that fails (a NaN loss, any error) records why, ends its
MLflow run FAILED and re-raises, so the study marks it FAIL and goes on.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import mlflow
import optuna

from embedlab import tracking
from embedlab.config import Params
from embedlab.sweep.pruning import FiniteLoss, PruningCallback
from embedlab.sweep.runs import end_trial_run, start_trial_run
from embedlab.sweep.space import Dimension, Knob, ParamPath, with_values
from embedlab.sweep.stages import SweepStage, TrialFolders
from embedlab.sweep.study import FAIL_REASON, MLFLOW_RUN, SKIPPED, WORKER, admitted, this_worker

MODELS_ROOT = Path("models/sweeps")  # <study>/trial_<n>/...: never the pipeline's own outputs
REPORTS_ROOT = Path("reports/sweeps")


class BudgetReached(Exception):
    """Other workers started the study's last trials first: this one never runs."""


@dataclasses.dataclass
class SweepPlan:
    """Everything a sweep needs, checked before its first trial."""

    stage: SweepStage
    params: Params
    knobs: dict[str, Knob]
    dimensions: list[Dimension]
    fixed: dict[ParamPath, Any]
    n_trials: int
    study_name: str
    storage_url: str

    def folders(self, trial_number: int) -> TrialFolders:
        name = f"trial_{trial_number:04d}"
        return TrialFolders(MODELS_ROOT / self.study_name / name, REPORTS_ROOT / self.study_name / name)


def make_objective(plan: SweepPlan, parent_run_id: str) -> tuple[Callable[[optuna.Trial], float], dict]:
    """The objective and its ``state`` (``state["skipped"]``: the budget was gone when it started)."""
    stage = plan.stage
    # The pruner compares in the study's direction: a metric going the other way is reported negated.
    sign = 1.0 if stage.epoch_direction == stage.direction else -1.0
    state = {"skipped": False}

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER, this_worker())
        if not admitted(trial.study, trial.number, plan.n_trials):
            trial.set_user_attr(SKIPPED, "the study's n_trials were started by other workers")
            state["skipped"] = True
            raise BudgetReached(f"trial {trial.number}: the study's {plan.n_trials} trials are all started")
        run = None
        try:  # everything that can fail is inside: a failure is recorded and counts against the budget
            values = {dim.key: dim.suggest(trial) for dim in plan.dimensions}
            run = start_trial_run(parent_run_id, plan.study_name, trial.number,
                                  tags={"embedlab.sweep_stage": stage.name, "optuna.objective": stage.metric})
            trial.set_user_attr(MLFLOW_RUN, run.info.run_id)
            tracking.log_params({**values, "optuna.trial_number": trial.number,
                                 "optuna.study_name": plan.study_name})
            settings = {**plan.fixed, **{dim.knob.path: values[dim.key] for dim in plan.dimensions}}
            params = with_values(plan.params, settings, f"sweep trial {trial.number}")
            epoch_report = PruningCallback(trial, stage.epoch_metric, sign)
            summary = stage.run(params, plan.folders(trial.number), [epoch_report, FiniteLoss()])
            value = summary.get(stage.metric)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise FloatingPointError(f"the stage's {stage.metric} is {value!r}")
        except optuna.TrialPruned:
            end_trial_run("PRUNED")
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr(FAIL_REASON, reason[:1000])
            if run is not None:
                end_trial_run("FAIL", reason)
            raise
        except BaseException:  # Ctrl-C: the trial is killed, and retried when the sweep restarts
            if run is not None:
                end_trial_run("KILLED")
            raise
        mlflow.log_metric("optuna.value", float(value))
        end_trial_run("COMPLETE")
        return float(value)

    return objective, state
