"""optuna-dashboard on a sweep's storage, as docs/sweeps.md says: the study and its trials are served."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import optuna

from embedlab.config import SweepConfig
from embedlab.sweep.study import open_study

import servers
from conftest import cli_env


def test_the_dashboard_serves_a_studys_trials(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = optuna.storages.RDBStorage(url)
    study = open_study(storage, "lr-search", "drip_stage", "maximize", SweepConfig(sampler="qmc"))
    study.optimize(lambda t: -(t.suggest_float("lr", 1e-4, 1e-2, log=True) - 1e-3) ** 2, n_trials=3)

    port = servers.free_port()
    log = tmp_path / "dashboard.log"
    dashboard = Path(sys.executable).with_name("optuna-dashboard")  # the venv's, installed by `make install`
    cmd = [str(dashboard), url, "--host", "127.0.0.1", "--port", str(port)]
    with servers.process_group(cmd, log, cwd=tmp_path, env=cli_env()) as proc:
        base = f"http://127.0.0.1:{port}"
        servers.wait_http(f"{base}/api/studies", proc, log)
        studies = json.loads(urllib.request.urlopen(f"{base}/api/studies", timeout=30).read())["study_summaries"]
        (served,) = [s for s in studies if s["study_name"] == "lr-search"]
        detail = json.loads(urllib.request.urlopen(f"{base}/api/studies/{served['study_id']}?after=0",
                                                   timeout=30).read())
    assert [t["state"] for t in detail["trials"]] == ["Complete"] * 3
    assert {p["name"] for t in detail["trials"] for p in t["params"]} == {"lr"}
