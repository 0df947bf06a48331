"""`embedlab sweep`: search-space checks, MLflow parent/nested runs, pruning, failures, resume,
workers, and the best parameters applied by `dvc exp run` (real Optuna SQLite storage, real
MLflow sqlite store, real tiny drip training)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import mlflow
import optuna
import pytest
import sqlalchemy
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from embedlab.cli import main
from embedlab.config import ConfigError, load_params
from embedlab.sweep.best import set_param_command, write_best_params, yaml_scalar
from embedlab.sweep.runner import SweepRequest, plan_sweep, run_sweep
from embedlab.sweep.stages import get_stage
from embedlab.sweep.runs import mark_killed
from embedlab.sweep.study import MLFLOW_RUN, RETRY_OF, WORKER, counts, make_sampler, recover_killed

from conftest import PROJECT, cli_env, run, tiny_params

SPACE = {"qry_augs_intensity": {"low": 0.3, "high": 0.9}, "lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}}


def _sweep_params(**sweep) -> dict:
    """The tiny params with a small drip sweep; trials made cheap (one W-matrix view, no post-processing)."""
    params = tiny_params()
    params["drip"].update(w_matrix_augmentations=1)
    params["evaluate"].update(train_descriptors=0)
    section = {"pruner": "none", "drip_stage": {"step": "s1", "epochs": 2, "space": SPACE}}
    for key, value in sweep.items():
        if isinstance(value, dict) and isinstance(section.get(key), dict):
            section[key] = {**section[key], **value}
        else:
            section[key] = value
    params["sweep"] = section
    return params


def _write(folder: Path, params: dict) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _fake_start_weights(folder: Path) -> None:
    """plan_sweep only checks that the step's starting weights exist."""
    path = folder / "models" / "drip" / "pretrained" / "backbone.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def _storage(folder: Path) -> str:
    return f"sqlite:///{folder / 'optuna.db'}"


def _client(folder: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")


def _trial_runs(client: MlflowClient, parent_id: str) -> list:
    experiment = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_id}'")


# --- bad input: clear errors before any trial -------------------------------------------------------

@pytest.mark.parametrize("space, message", [
    ({"nope": {"low": 0.1, "high": 0.2}}, "sweep.drip_stage.space.nope: unknown parameter 'nope'"),
    ({"lr": {"low": 0.1, "high": 0.01}}, "sweep.drip_stage.space.lr: low 0.1 > high 0.01"),
    ({"lr": {"low": 0.0, "high": 0.01, "log": True}}, "sweep.drip_stage.space.lr: a log range must lie above 0"),
    ({"batch_size": {"choices": []}}, "sweep.drip_stage.space.batch_size: choices must be a non-empty list"),
    ({"batch_size": {"low": 4, "high": 8.5}}, "sweep.drip_stage.space.batch_size: batch_size is an int setting"),
    ({"w_init": {"low": 0, "high": 1}}, "sweep.drip_stage.space.w_init: a str setting takes {choices"),
    ({"qry_augs_intensity": {"low": 0.5, "high": 1.5}}, "sweep.drip_stage.space.qry_augs_intensity: 1.5 is not a usable"),
    ({"w_init": {"choices": ["centroids", "bogus"]}}, "sweep.drip_stage.space.w_init: 'bogus' is not a usable"),
    ({}, "sweep.drip_stage.space: declare at least one setting"),
])
def test_bad_search_space_is_an_error_naming_the_setting(tmp_path, monkeypatch, space, message):
    monkeypatch.chdir(tmp_path)
    params = load_params(_write(tmp_path, _sweep_params(drip_stage={"space": space})))
    with pytest.raises(ConfigError) as err:
        plan_sweep(params, SweepRequest("drip_stage", n_trials=2))
    assert message in str(err.value)


def test_space_maps_each_setting_to_its_place_in_params_yaml(tmp_path, monkeypatch):
    """A setting the step sets itself is swept there; ints stay ints; epochs and scoring are fixed."""
    monkeypatch.chdir(tmp_path)
    raw = _sweep_params(drip_stage={"space": {**SPACE, "batch_size": {"low": 4, "high": 16, "step": 4}}})
    raw["drip_schedule"]["s1"]["qry_augs_intensity"] = 0.5
    _fake_start_weights(tmp_path)
    plan = plan_sweep(load_params(_write(tmp_path, raw)), SweepRequest("drip_stage", n_trials=2))
    paths = {d.key: d.knob.path for d in plan.dimensions}
    assert paths == {"qry_augs_intensity": ("drip_schedule", "s1", "qry_augs_intensity"), "lr": ("drip", "lr"),
                     "batch_size": ("drip", "batch_size")}
    assert plan.fixed[("drip_schedule", "s1", "epochs")] == 2 and plan.fixed[("drip", "evaluate_before")] is False
    assert plan.study_name == "drip_stage-s1" and plan.storage_url.endswith("/optuna.db")
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    assert isinstance(next(d for d in plan.dimensions if d.key == "batch_size").suggest(trial), int)


def test_unknown_stage_missing_parent_and_unreachable_storage_fail_before_any_trial(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    path = _write(tmp_path, _sweep_params())
    params = load_params(path)
    with pytest.raises(ConfigError, match=r"unknown stage 'drip'; known: \[.*'drip_stage'.*'gem_stage'"):
        plan_sweep(params, SweepRequest("drip"))
    with pytest.raises(FileNotFoundError, match="embedlab init-weights"):
        plan_sweep(params, SweepRequest("drip_stage"))
    _fake_start_weights(tmp_path)
    url = "postgresql://nobody:secret@127.0.0.1:1/x"
    assert main(["sweep", "drip_stage", "--params", str(path), "--n-trials", "2", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "embedlab sweep: error: sweep storage postgresql://nobody:***@127.0.0.1:1/x: cannot open it" in err
    assert "secret" not in err
    assert main(["sweep", "drip_stage", "--params", str(path), "--n-trials", "0"]) == 2
    assert "--n-trials must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "models" / "sweeps").exists() and not (tmp_path / "optuna.db").exists()
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run was opened


def test_best_params_file_and_command_keep_types(tmp_path):
    knobs = get_stage("drip_stage").knobs(load_params(_write(tmp_path, _sweep_params())))
    trial = optuna.trial.create_trial(
        params={"lr": 1e-05, "batch_size": 16, "w_init": "random"}, value=0.25,
        distributions={"lr": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True),
                       "batch_size": optuna.distributions.IntDistribution(8, 32),
                       "w_init": optuna.distributions.CategoricalDistribution(["centroids", "random"])})
    path = tmp_path / "best.yaml"
    write_best_params(path, trial, knobs, "s", "uAP")
    assert yaml.safe_load(path.read_text()) == {"drip": {"lr": 1e-05, "batch_size": 16, "w_init": "random"}}
    assert set_param_command(path) == ("dvc exp run --set-param drip.batch_size=16 --set-param drip.lr=1.0e-05 "
                                       "--set-param drip.w_init=random")
    assert yaml_scalar(0.5) == "0.5" and yaml_scalar(True) == "true" and yaml.safe_load(yaml_scalar(3e-4)) == 3e-4


@pytest.mark.slow
def test_best_params_apply_with_dvc_exp_run(tmp_path):
    """The printed command, run in a git + DVC project, sets exactly those values in params.yaml."""
    repo = tmp_path / "repo"
    repo.mkdir()
    raw = _sweep_params()
    raw["drip_schedule"]["s1"]["qry_augs_intensity"] = 0.5  # swept where the step sets it
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))
    # A cheap stage that reads its settings the way the pipeline's stages do.
    show = ("python -c \"import json; from embedlab.config import load_params; p = load_params(); "
            "json.dump([p.drip.lr, p.drip_schedule['s1'].qry_augs_intensity], open('applied.json', 'w'))\"")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"show": {
        "cmd": show, "params": ["drip.lr", "drip_schedule"], "outs": ["applied.json"]}}}))
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "--local", "core.site_cache_dir", str(tmp_path / "site_cache")], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo)

    knobs = get_stage("drip_stage").knobs(load_params(repo / "params.yaml"))
    trial = optuna.trial.create_trial(
        params={"lr": 1e-05, "qry_augs_intensity": 0.6123456789}, value=0.3,
        distributions={"lr": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True),
                       "qry_augs_intensity": optuna.distributions.FloatDistribution(0.3, 0.9)})
    best = tmp_path / "best_params.yaml"
    write_best_params(best, trial, knobs, "s", "uAP")
    command = set_param_command(best)
    assert "drip_schedule.s1.qry_augs_intensity=0.6123456789" in command
    run(shlex.split(command), repo, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t")
    applied = load_params(repo / "params.yaml")
    assert applied.drip.lr == 1e-05 and applied.drip_schedule["s1"].qry_augs_intensity == 0.6123456789
    assert json.loads((repo / "applied.json").read_text()) == [1e-05, 0.6123456789]
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    assert "1e-05" in json.dumps(shown) and "0.6123456789" in json.dumps(shown)


# --- real sweeps of the tiny drip step ---------------------------------------------------------------

@pytest.fixture
def sweep_project(tiny_project: Path) -> Path:
    from embedlab.stages.init_weights import write_initial_weights

    _write(tiny_project, _sweep_params())
    write_initial_weights(load_params("params.yaml"))
    return tiny_project


def _set_sweep(project: Path, **sweep) -> None:
    _write(project, _sweep_params(**sweep))


@pytest.mark.slow
def test_three_trial_sweep_logs_a_parent_run_with_nested_trials(sweep_project: Path, capsys):
    assert main(["sweep", "drip_stage", "--n-trials", "3", "--study", "s3"]) == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="s3", storage=_storage(sweep_project))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    best = study.best_trial
    assert best.value == max(t.value for t in study.trials)

    client = _client(sweep_project)
    parent_id = study.user_attrs["mlflow.parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "sweep/s3"
    assert parent.data.metrics["best_uAP"] == pytest.approx(best.value)
    assert {a.path for a in client.list_artifacts(parent_id, "plots")} == {
        "plots/optimization_history.png", "plots/param_importances.png", "plots/parallel_coordinate.png"}
    trials = _trial_runs(client, parent_id)
    assert len(trials) == 3
    by_number = {int(r.data.params["optuna.trial_number"]): r for r in trials}
    for number, trial in enumerate(study.trials):
        nested = by_number[number]
        assert nested.info.status == "FINISHED" and nested.data.tags["optuna.trial_state"] == "COMPLETE"
        assert float(nested.data.params["lr"]) == trial.params["lr"]
        assert float(nested.data.params["qry_augs_intensity"]) == trial.params["qry_augs_intensity"]
        assert nested.data.params["optuna.study_name"] == "s3"
        assert nested.data.metrics["uAP"] == pytest.approx(trial.value)
        assert len(client.get_metric_history(nested.info.run_id, "val_loss")) == 2  # per epoch
        assert Path(f"models/sweeps/s3/trial_{number:04d}/s1/checkpoints/last.ckpt").is_file()
    assert not Path("models/drip/s1").exists()  # the pipeline's own output is untouched

    best_file = Path("reports/sweeps/s3/best_params.yaml")
    assert yaml.safe_load(best_file.read_text()) == {"drip": best.params}
    command = set_param_command(best_file)
    assert command in out and f"best: trial {best.number}" in out
    assert f"--set-param drip.lr={yaml_scalar(best.params['lr'])}" in command


@pytest.mark.slow
def test_a_bad_trial_is_pruned_and_a_diverging_one_fails_while_the_study_goes_on(sweep_project: Path):
    _set_sweep(sweep_project, pruner="median", n_startup_trials=2, n_warmup_steps=0,
               drip_stage={"space": {"lr": {"low": 1.0e-9, "high": 1.0e+30, "log": True}}})
    study = optuna.create_study(study_name="bad", storage=_storage(sweep_project), direction="maximize")
    for lr in (1e-3, 3e-3, 0.3, 1e30):  # two good ones, one far too high, one that diverges to NaN
        study.enqueue_trial({"lr": lr})
    result = run_sweep(load_params("params.yaml"), SweepRequest("drip_stage", n_trials=4, study="bad"))
    states = [t.state for t in optuna.load_study(study_name="bad", storage=_storage(sweep_project)).trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert (result["complete"], result["pruned"], result["failed"]) == (2, 1, 1)

    client = _client(sweep_project)
    runs = {int(r.data.params["optuna.trial_number"]): r for r in _trial_runs(client, result["parent_run_id"])}
    pruned, failed = runs[2], runs[3]
    assert pruned.info.status == "KILLED" and pruned.data.tags["optuna.trial_state"] == "PRUNED"
    assert len(client.get_metric_history(pruned.info.run_id, "val_loss")) == 1  # stopped after its first epoch
    assert failed.info.status == "FAILED" and failed.data.tags["optuna.trial_state"] == "FAIL"
    assert "FloatingPointError" in failed.data.tags["optuna.fail_reason"]


def _kill_when(predicate, proc: subprocess.Popen, log: Path, timeout: float = 300):
    """SIGKILL the sweep at a moment ``predicate`` holds, and return what it found.

    The predicate is checked while the sweep is stopped (SIGSTOP), so the trials
    it sees are the trials the sweep dies with: a trial cannot end between the
    check and the kill.
    """
    start = time.time()
    try:
        while time.time() - start < timeout:
            if proc.poll() is not None:
                raise AssertionError(f"sweep ended early ({proc.returncode}): {log.read_text()[-3000:]}")
            proc.send_signal(signal.SIGSTOP)
            try:
                found = predicate()
            except (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError,
                    mlflow.exceptions.MlflowException):
                found = None  # stopped while it held a database lock: look again later
            if found:
                return found
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.5)
        raise AssertionError("timed out")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_a_killed_sweep_resumes_keeping_its_finished_trials(sweep_project: Path):
    storage = _storage(sweep_project)
    log = sweep_project / "killed_sweep.log"  # a file, not a pipe: a full pipe would block the sweep
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "embedlab", "sweep", "drip_stage", "--n-trials", "3",
                                 "--study", "kill"], cwd=sweep_project, env=cli_env(), stdout=subprocess.DEVNULL,
                                stderr=err)

    def one_done_one_running():
        try:
            trials = optuna.load_study(study_name="kill", storage=storage).trials
        except KeyError:  # the study does not exist yet
            return None
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [t for t in trials if t.state == TrialState.RUNNING and t.params and _training(t)]
        return (done, running[0]) if done and running else None

    def _training(trial) -> bool:
        """Past its setup: the nested run holds the trial's params (a kill before that is another test)."""
        run_id = trial.user_attrs.get(MLFLOW_RUN)
        return bool(run_id) and "optuna.trial_number" in _client(sweep_project).get_run(run_id).data.params

    done, running = _kill_when(one_done_one_running, proc, log)
    result = run_sweep(load_params("params.yaml"), SweepRequest("drip_stage", n_trials=3, study="kill"))

    study = optuna.load_study(study_name="kill", storage=storage)
    for before in done:  # the finished trials are kept as they were
        after = study.trials[before.number]
        assert after.state == TrialState.COMPLETE and after.value == before.value and after.params == before.params
    killed = study.trials[running.number]
    assert killed.state == TrialState.FAIL and not counts(killed)
    retry = next(t for t in study.trials if t.user_attrs.get(RETRY_OF) == running.number)
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert sum(counts(t) for t in study.trials) == 3 and result["complete"] == 3 and result["killed"] == 1

    client = _client(sweep_project)
    parent_id = study.user_attrs["mlflow.parent_run_id"]
    assert result["parent_run_id"] == parent_id  # the same parent run, re-opened
    runs = {int(r.data.params["optuna.trial_number"]): r for r in _trial_runs(client, parent_id)}
    assert runs[running.number].info.status == "KILLED"
    assert runs[running.number].data.tags["optuna.trial_state"] == "FAIL"
    assert sum(r.info.status == "FINISHED" for r in runs.values()) == 3


def test_a_trial_killed_after_its_run_ended_is_killed_in_mlflow_and_retried(tmp_path: Path):
    """The worker died between ending the trial's MLflow run and Optuna's tell: the run looked
    FINISHED, but the study does not count the trial and runs its parameters again."""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("sweep")).info.run_id
    client.set_tag(run_id, "optuna.trial_state", "COMPLETE")
    client.set_terminated(run_id, "FINISHED")
    study = optuna.create_study(study_name="race", storage=_storage(tmp_path))
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    trial.set_user_attr(WORKER, f"{socket.gethostname()}:{dead}")
    trial.set_user_attr(MLFLOW_RUN, run_id)

    mlflow.set_tracking_uri(client.tracking_uri)  # as the sweep runner does
    killed = recover_killed(study)
    mark_killed([t.user_attrs.get(MLFLOW_RUN) for t in killed])

    assert [t.number for t in killed] == [trial.number]
    assert study.trials[trial.number].state == TrialState.FAIL
    queued = study.trials[-1]
    assert queued.state == TrialState.WAITING and queued.user_attrs[RETRY_OF] == trial.number
    assert queued.system_attrs["fixed_params"] == trial.params  # how Optuna keeps a queued trial's parameters
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["optuna.trial_state"] == "FAIL"


@pytest.mark.slow
def test_workers_share_the_study_and_run_exactly_n_trials(sweep_project: Path):
    out = run(["embedlab", "sweep", "drip_stage", "--n-trials", "4", "--study", "par", "--workers", "2"],
              sweep_project, timeout=600).stdout
    study = optuna.load_study(study_name="par", storage=_storage(sweep_project))
    ran = [t for t in study.trials if counts(t)]
    assert len(ran) == 4 and all(t.state == TrialState.COMPLETE for t in ran)
    assert len({t.user_attrs[WORKER] for t in ran}) == 2  # both processes ran trials
    assert "trials: 4 complete" in out
    client = _client(sweep_project)
    assert len(_trial_runs(client, study.user_attrs["mlflow.parent_run_id"])) == 4
    assert os.path.isfile(sweep_project / "reports/sweeps/par/best_params.yaml")


def test_each_sweep_worker_gets_its_own_gpus(monkeypatch):
    """Not every trial on cuda:0: the launcher splits the visible GPUs among its workers."""
    import embedlab.sweep.runner as runner
    from embedlab.sweep.gpus import visible_gpus, worker_gpus

    assert [worker_gpus(i, 4, list("01234567")) for i in range(4)] == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    assert [worker_gpus(i, 4, ["0", "1"]) for i in range(4)] == [["0"], ["1"], ["0"], ["1"]]  # fewer GPUs: shared
    assert worker_gpus(1, 2, []) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,6,7")
    assert visible_gpus() == ["2", "5", "6", "7"]  # the launcher's own GPUs are the pool

    started = []
    monkeypatch.setattr(runner.subprocess, "Popen", lambda cmd, env: started.append((cmd, env)))
    plan = types.SimpleNamespace(storage_url="sqlite:///x.db", stage=types.SimpleNamespace(name="drip_stage"),
                                 n_trials=4, study_name="s")
    runner._spawn_workers(plan, runner.SweepRequest("drip_stage", workers=2), "launch")
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in started] == ["6,7"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,5"  # the launcher runs trials on the first share


def test_a_sweep_can_score_every_trial_on_one_fixed_subset():
    import dataclasses

    from embedlab.sweep.space import with_values
    from embedlab.sweep.stages import get_stage

    params = load_params(str(PROJECT / "params.yaml"))
    drip = dataclasses.replace(params.sweep.drip_stage, score_queries=50, score_references=1000)
    params = dataclasses.replace(params, sweep=dataclasses.replace(params.sweep, drip_stage=drip))
    fixed = get_stage("drip_stage").fixed(params)
    assert fixed[("evaluate", "queries")] == 50 and fixed[("evaluate", "references")] == 1000
    trial = with_values(params, fixed, "sweep.drip_stage")
    assert (trial.evaluate.queries, trial.evaluate.references) == (50, 1000)
    assert ("evaluate", "queries") not in get_stage("gem_stage").fixed(params)  # gem's own section sets none


@pytest.mark.parametrize("name", ["tpe", "random", "qmc", "gp"])
def test_each_sampler_replays_its_trials_for_a_seed(name):
    def sampled(seed: int) -> list[float]:
        study = optuna.create_study(sampler=make_sampler(name, seed))
        study.optimize(lambda t: (t.suggest_float("x", -1.0, 1.0) - 0.3) ** 2, n_trials=4)
        return [t.params["x"] for t in study.trials]

    assert sampled(3) == sampled(3) and sampled(3) != sampled(4)


def test_an_unknown_sampler_is_named_with_the_choices(tmp_path):
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["sweep"]["sampler"] = "cmaes"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"sweep.sampler: 'cmaes' is not one of \['tpe', 'random', 'qmc', 'gp'\]"):
        load_params(tmp_path / "params.yaml")
