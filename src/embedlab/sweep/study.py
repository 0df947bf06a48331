"""The Optuna study behind a sweep: its RDB storage, sampler, pruner, trial budget and recovery.

One study name + storage is one sweep, shared by every worker (``--workers``
or processes started by hand on several machines) and every restart
(``load_if_exists``). The budget ``n_trials`` counts trials that ran to an
end: complete, pruned, or failed by their own error (e.g. a NaN loss). A
trial killed with its worker is marked FAIL when the sweep restarts (its
process gone on this machine, or no heartbeat for ``GRACE_PERIOD`` seconds
from another one), is not counted, and its parameters are queued again once.
"""

from __future__ import annotations

import os
import re
import socket
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

from embedlab import tracking
from embedlab.config import ConfigError, SweepConfig
from embedlab.credentials import hide_passwords

HEARTBEAT_INTERVAL = 30  # seconds between a running trial's heartbeats
GRACE_PERIOD = 120  # a running trial without a heartbeat this long is stale (its worker died)

# Trial user attributes.
WORKER = "embedlab.worker"  # host:pid running the trial
FAIL_REASON = "embedlab.fail_reason"  # the trial's own error: it counts as finished
SKIPPED = "embedlab.skipped"  # started after other workers had used up the budget: never ran
RETRY_OF = "embedlab.retry_of"  # the killed trial whose parameters this one runs again
MLFLOW_RUN = "mlflow.run_id"  # the trial's nested MLflow run
# Study user attributes.
STAGE = "embedlab.stage"
PARENT_RUN = "mlflow.parent_run_id"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def default_storage() -> str:
    """SQLite beside mlflow.db at the repo root: the single-machine default."""
    return f"sqlite:///{tracking.repo_root() / 'optuna.db'}"


def masked(url: str) -> str:
    """``url`` with its password hidden, for messages and MLflow tags."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse
        return hide_passwords(url)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Connect (creating Optuna's tables when new); an unusable URL is a ConfigError naming it."""
    engine: dict = {}
    if url.startswith("sqlite"):
        engine = {"connect_args": {"timeout": 60}}  # workers of one machine wait for the file lock
    elif url.startswith("postgresql"):
        engine = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_INTERVAL,
                                              grace_period=GRACE_PERIOD)
    except Exception as exc:  # SQLAlchemy / driver errors, a bad URL, a missing driver
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"sweep storage {masked(url)}: cannot open it ({type(exc).__name__}: {detail})") from None


def check_study_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"sweep: study name {name!r} must be letters, digits, '_', '-' or '.' "
                          "(it names the trials' output folders)")
    return name


def make_pruner(cfg: SweepConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def open_study(storage: optuna.storages.RDBStorage, name: str, stage_name: str, direction: str, cfg: SweepConfig,
               worker_index: int = 0) -> optuna.Study:
    """Create or load the study; a study made for another stage or direction is an error.

    Each worker (and each restart) seeds its sampler differently, so they do
    not replay one another's random start-up trials.
    """
    study = optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True,
                                pruner=make_pruner(cfg))
    held = study.user_attrs.get(STAGE)
    if held is None:
        study.set_user_attr(STAGE, stage_name)
    elif held != stage_name:
        raise ConfigError(f"sweep: study {name!r} sweeps {held}, not {stage_name}; choose another --study")
    if study.direction.name.lower() != direction:
        raise ConfigError(f"sweep: study {name!r} {study.direction.name.lower()}s, {stage_name} needs {direction}")
    seed = cfg.sampler_seed + 10_007 * worker_index + len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(cfg.sampler, seed)
    return study


SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "qmc": optuna.samplers.QMCSampler, "gp": optuna.samplers.GPSampler}


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """sweep.sampler as an Optuna sampler seeded with ``seed``."""
    return SAMPLERS[name](seed=seed)


# Our budget, not optuna.study.MaxTrialsCallback: that one only stops a worker after a trial ends (N workers
# overshoot n_trials) and counts by state alone (a killed FAIL would count like a trial's own error).
def counts(trial: FrozenTrial) -> bool:
    """Whether the trial used up one of the study's ``n_trials``."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and FAIL_REASON in trial.user_attrs


def _in_budget(trial: FrozenTrial) -> bool:
    return counts(trial) or trial.state == TrialState.RUNNING


def budget_left(study: optuna.Study, n_trials: int) -> int:
    """Trials still to start: running ones (of any worker) are already spoken for."""
    return n_trials - sum(_in_budget(t) for t in study.get_trials(deepcopy=False))


def admitted(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Trial numbers are handed out atomically by the storage: the trial may run only when fewer
    than ``n_trials`` trials before it ran or run. So N workers together run exactly ``n_trials``."""
    return sum(_in_budget(t) for t in study.get_trials(deepcopy=False) if t.number < number) < n_trials


def this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Our recovery, not optuna.storages.RetryHeartbeatStaleTrialCallback (ex-RetryFailedTrialCallback): it only sees
# trials failed by a stale heartbeat (GRACE_PERIOD later, not a dead local pid at once), and its retry copies the
# dead trial's user attrs (worker, MLflow run id) and is added with its params set, not enqueued as fixed_params.
def recover_killed(study: optuna.Study) -> list[FrozenTrial]:
    """Fail the trials whose worker died and queue their parameters again once; returns them.

    Stale heartbeats catch dead workers of any machine after ``GRACE_PERIOD``;
    a trial of this machine whose process is gone is failed at once, so a
    sweep restarted right after a kill loses no time.
    """
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get(WORKER, "")).rpartition(":")
        if worker_host == host and pid.isdigit() and not _alive(int(pid)):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.number in running and t.state == TrialState.FAIL]
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    for trial in trials:
        killed = trial.state == TrialState.FAIL and not counts(trial) and SKIPPED not in trial.user_attrs
        if killed and RETRY_OF not in trial.user_attrs and trial.number not in retried and trial.params:
            study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
    return failed


def tally(study: optuna.Study) -> dict[str, int]:
    """Trials per outcome: complete, pruned, failed (own error), killed, skipped, running."""
    out = {"complete": 0, "pruned": 0, "failed": 0, "killed": 0, "running": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            out["complete"] += 1
        elif t.state == TrialState.PRUNED:
            out["pruned"] += 1
        elif t.state == TrialState.RUNNING:
            out["running"] += 1
        elif t.state == TrialState.FAIL and FAIL_REASON in t.user_attrs:
            out["failed"] += 1
        elif t.state == TrialState.FAIL and SKIPPED not in t.user_attrs:
            out["killed"] += 1
    return out
