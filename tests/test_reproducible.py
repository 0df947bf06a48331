"""Same seed, same machine, same numbers: the GeM, triplet and decoder stages run twice from the command line
(separate processes, different Python hash seeds) write the same metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import run, tiny_params

pytestmark = pytest.mark.slow

COMMANDS = (["augment", "--recipe", "big"], ["gem", "--recipe", "big"], ["face-data"],
            ["triplet", "--phase", "pretrain"], ["templates"], ["decoder"])
REPORTS = ("gem/imagenet/big", "triplet/pretrain", "decoder")


def _run_all(project: Path, data: Path, hash_seed: str) -> dict[str, dict]:
    shutil.copytree(data, project / "data" / "raw")
    params = tiny_params()
    params["pipeline"]["gem_starts"] = ["imagenet"]
    params["runtime"]["num_workers"] = 2  # worker processes draw augmentations too
    params["templates"]["model"] = "models/triplet/pretrain/encoder.safetensors"  # no fine-tuning needed here
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    for command in COMMANDS:
        run(["embedlab", *command], project, PYTHONHASHSEED=hash_seed,
            MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    return {name: json.loads((project / "reports" / name / "metrics.json").read_text()) for name in REPORTS}


def _results(metrics: dict) -> dict:
    """Everything but the speed figures, which no seed fixes."""
    return {k: v for k, v in metrics.items() if not k.endswith("_per_s")}


def test_two_runs_of_the_same_seed_write_the_same_metrics(tmp_path: Path, tiny_demo: Path, tiny_faces: Path):
    data = tmp_path / "data"
    shutil.copytree(tiny_demo, data)
    shutil.copytree(tiny_faces, data / "faces")
    first = _run_all(tmp_path / "first", data, "1")
    second = _run_all(tmp_path / "second", data, "2")
    for name in REPORTS:
        assert _results(first[name]) == _results(second[name]), name
    assert first["decoder"]["cosine_mean"] and first["triplet/pretrain"]["valid_eer"] is not None
