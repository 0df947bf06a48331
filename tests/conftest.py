"""Shared fixtures: a tiny demo data set and a tiny project configuration.

The tiny configuration (timm's ``test_resnet`` at 48 px, a 32-d embedding,
a few dozen classes) runs the real stages end to end in seconds on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from embedlab.config import DemoDataConfig, FaceDemoConfig
from embedlab.data.demo import build_demo_data
from embedlab.data.face_demo import build_demo_faces

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

TINY_DEMO = DemoDataConfig(seed=1, n_training=32, n_reference=24, n_matched_queries=12, n_distractor_queries=6,
                           n_imagenet=8, n_frm_faces=4, image_size=64, jpeg_quality=90)

TINY_FACES = FaceDemoConfig(seed=1, n_persons=16, images_per_person=3, fakes_per_person=2, n_test_persons=4,
                            n_test_pairs=24, image_size=32, store=True)


def tiny_params(data_root: str = "data/raw") -> dict:
    """A small but complete params.yaml: every stage of the real pipeline, at toy size."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["data"].update(raw=data_root, disc=f"{data_root}/disc", imagenet=f"{data_root}/imagenet",
                          frm_faces=f"{data_root}/frm_faces", faces=f"{data_root}/faces")
    params["drip"].update(
        backbone="test_resnet", pretrained=None, img_size=48, aug_size=64, embedding_dim=32, epochs=2,
        batch_size=8, val_classes=8,
    )
    params["drip_schedule"] = {"s1": {"n_facebook_samples": 16, "init_from": "pretrained"},
                               "s2": {"n_facebook_samples": 32, "n_imagenet_samples": 8, "init_from": "s1"}}
    params["runtime"].update(inference_batch_size=32, augment_workers=1)
    params["pipeline"].update(augment=["big"], gem=["big"])
    params["evaluate"].update(train_descriptors=24, ensemble=["drip/s2", "gem/imagenet/big"])
    params["augment"].update(classes=8, per_class=4, size=48)
    params["robustness"].update(per_kind=2, distractors=3,
                                members=["baseline/phash", "drip/pretrained", "drip/s2", "gem/imagenet/big"])
    params["gem"].update(
        backbone="test_resnet", pretrained=None, img_size=48, proj_hidden=32, proj_dim=64, descriptor_dim=16, p=4,
        k=2, epochs=2,
        iters=3, warmup_epochs=1, flat_epochs=0,
    )
    params["triplet"].update(
        backbone="vit_tiny_patch16_224", pretrained=None, img_size=32, patch_size=8, depth=2, p=4, k=2,
        valid_fraction=0.25,
    )
    params["triplet_phases"] = {"pretrain": {"miner": "all", "lr": 3e-4, "epochs": 2, "init_from": None},
                                "finetune": {"miner": "hard", "lr": 1e-4, "epochs": 1, "init_from": "pretrain"}}
    params["decoder"].update(output_size=32, width=0.125, perceptor_layers=1, batch_size=8, epochs=2,
                             control_samples=4, visualize_every=4, fmr=0.01)
    return params


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A tiny DISC-layout data set built from the packaged photos (read-only: copy before changing)."""
    root = tmp_path_factory.mktemp("tiny_demo")
    build_demo_data(root, TINY_DEMO, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_faces(tmp_path_factory) -> Path:
    """A tiny demo face set in the Kryptonite layout (read-only: copy before changing)."""
    root = tmp_path_factory.mktemp("tiny_faces") / "faces"
    build_demo_faces(root, TINY_FACES, progress=False)
    return root


@pytest.fixture
def tiny_project(tmp_path: Path, tiny_demo: Path, monkeypatch) -> Path:
    """A working directory with the tiny params.yaml, the demo data under data/raw and its own MLflow store."""
    shutil.copytree(tiny_demo, tmp_path / "data" / "raw")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return tmp_path


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: this venv's tools first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_RUN")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def kill_after_first_checkpoint(cmd: list[str], cwd: Path, checkpoint: Path, **extra_env: str) -> None:
    """Start ``cmd`` (DDP ranks and all, in a process group of its own) and SIGKILL the group as soon as
    ``checkpoint`` is written: a training run killed mid-way."""
    import signal
    import time

    proc = subprocess.Popen(cmd, cwd=cwd, env=cli_env(**extra_env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not checkpoint.is_file() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert checkpoint.is_file() and proc.poll() is None, "no checkpoint, or the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def run(cmd: list[str], cwd: Path, timeout: float = 600, **extra_env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=cli_env(**extra_env), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def logged_image_keys(client, run_id: str) -> set[str]:
    """The keys of a run's MLflow images (``mlflow.log_image(key=...)``: images/<key>+step+<n>+...)."""
    return {a.path.split("/", 1)[1].split("+step+")[0] for a in client.list_artifacts(run_id, "images")}
