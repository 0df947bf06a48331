"""The team setup for real: a 2-worker `embedlab sweep` sharing one Optuna study in PostgreSQL,
logging to `make mlflow-server` whose backend is PostgreSQL too. No trial lost, none numbered twice."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from embedlab.sweep.study import WORKER

import servers
from conftest import run, tiny_params

pytestmark = pytest.mark.slow

N_TRIALS = 4


@pytest.fixture
def optuna_db():
    with servers.fresh_database("embedlab_optuna") as url:
        yield url


@pytest.fixture
def mlflow_db():
    with servers.fresh_database("embedlab_mlflow") as url:
        yield url


@pytest.fixture
def tracking_server(mlflow_db: str, tmp_path: Path):
    with servers.mlflow_server(mlflow_db, tmp_path / "server") as server:
        yield server


@pytest.fixture
def sweep_project(tiny_project: Path, tracking_server, monkeypatch) -> Path:
    """The tiny project with a cheap drip sweep (one epoch per trial), logging to the server."""
    from embedlab.config import load_params
    from embedlab.stages.init_weights import write_initial_weights

    url, _, _ = tracking_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    params = tiny_params()
    params["drip"].update(w_matrix_augmentations=1)
    params["evaluate"].update(train_descriptors=0)
    params["sweep"] = {"pruner": "none", "drip_stage": {
        "step": "s1", "epochs": 1, "space": {"qry_augs_intensity": {"low": 0.3, "high": 0.9}}}}
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params))
    write_initial_weights(load_params("params.yaml"))  # the step's starting weights
    return tiny_project


def test_two_workers_share_a_postgres_study_and_log_every_trial_to_the_server(sweep_project: Path, tracking_server,
                                                                               optuna_db: str):
    url, _, log = tracking_server
    out = run(["embedlab", "sweep", "drip_stage", "--n-trials", str(N_TRIALS), "--study", "team",
               "--storage", optuna_db, "--workers", "2"], sweep_project, timeout=600, MLFLOW_TRACKING_URI=url).stdout

    study = optuna.load_study(study_name="team", storage=optuna_db)
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(N_TRIALS)), f"trial numbers {numbers}"  # none lost, none twice
    assert all(t.state == TrialState.COMPLETE for t in study.trials), [t.state for t in study.trials]
    assert all(t.value is not None and 0.0 <= t.value <= 1.0 for t in study.trials)
    workers = {t.user_attrs.get(WORKER) for t in study.trials}
    assert len(workers) == 2, f"both workers should have run trials: {workers}"
    assert f"{N_TRIALS} complete" in out

    client = MlflowClient(tracking_uri=url)
    parent_id = study.user_attrs["mlflow.parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED", servers.tail(log)
    nested = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    by_number = sorted(int(r.data.tags["optuna.trial_number"]) for r in nested)
    assert by_number == list(range(N_TRIALS)), f"nested runs per trial: {by_number}"
    values = {t.number: t.value for t in study.trials}
    for r in nested:
        assert r.info.status == "FINISHED"
        assert r.data.metrics["uAP"] == pytest.approx(values[int(r.data.tags["optuna.trial_number"])])
    # Everything went to the server: the project's local store was never created.
    assert not (sweep_project / "mlflow.db").exists()
