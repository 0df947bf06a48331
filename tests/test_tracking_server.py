"""`make mlflow-server` on a real PostgreSQL database, and a real stage logging to it over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import servers
from conftest import run

pytestmark = pytest.mark.slow


@pytest.fixture
def postgres_db():
    with servers.fresh_database() as url:
        yield url


@pytest.fixture
def tracking_server(postgres_db: str, tmp_path: Path):
    """`make mlflow-server` with the PostgreSQL backend on a free loopback port: its URL, artifact root, log."""
    with servers.mlflow_server(postgres_db, tmp_path) as server:
        yield server


def test_stage_logs_params_metrics_and_artifacts_to_the_postgres_backed_server(tiny_project: Path, tracking_server,
                                                                                postgres_db: str):
    url, artifacts, log = tracking_server
    run(["embedlab", "drip", "--n-facebook-samples", "8", "--epochs", "1", "--name", "srv",
         "--qry-augs-intensity", "0.7"], tiny_project, MLFLOW_TRACKING_URI=url)

    # Nothing went to the project's local store: the stage used the server.
    assert not (tiny_project / "mlflow.db").exists()

    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("embedlab")
    assert experiment is not None, f"no experiment on the server:\n{servers.tail(log)}"
    # Artifacts go through the server (proxied), not to a path only this machine sees.
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    logged = runs[0]
    assert logged.info.status == "FINISHED"
    assert logged.data.tags["embedlab.stage"] == "drip"
    assert logged.data.params["drip.qry_augs_intensity"] == "0.7"
    assert logged.data.params["drip.n_classes"] == "8"
    summary = json.loads((tiny_project / "reports/drip/srv/metrics.json").read_text())
    assert logged.data.metrics["uAP"] == pytest.approx(summary["uAP"])
    assert len(client.get_metric_history(logged.info.run_id, "val_loss")) == 1

    # The checkpoint comes back through the server's artifact proxy, byte for byte.
    listed = {a.path for a in client.list_artifacts(logged.info.run_id, "checkpoints")}
    assert "checkpoints/last.ckpt" in listed
    fetched = Path(client.download_artifacts(logged.info.run_id, "checkpoints/last.ckpt",
                                             str(tiny_project / "fetched")))
    local = tiny_project / "models/drip/srv/checkpoints/last.ckpt"
    assert fetched.read_bytes() == local.read_bytes()
    # ... and it is stored under the server's --artifacts-destination.
    assert list(artifacts.rglob("last.ckpt")), "the server did not store the artifact in its destination"

    # The run lives in PostgreSQL (the server's backend), not in a file store.
    import psycopg2

    with psycopg2.connect(servers.libpq_url(postgres_db)) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT value FROM metrics WHERE run_uuid = %s AND key = 'uAP'", (logged.info.run_id,))
            assert cur.fetchone()[0] == pytest.approx(summary["uAP"])
