"""The triplet stage end to end on the demo face set: face-data → pretrain → finetune → submission."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import PROJECT, logged_image_keys, run, tiny_params
from embedlab.cli import main
from embedlab.config import load_params
from embedlab.models.checkpoints import load_descriptor_model
from embedlab.stages.triplet import plan_phase, run_triplet


@pytest.fixture
def face_project(tiny_project: Path, tiny_faces: Path) -> Path:
    shutil.copytree(tiny_faces, tiny_project / "data" / "raw" / "faces")
    assert main(["face-data"]) == 0
    return tiny_project


def test_face_data_writes_the_csvs_with_fakes_as_classes(face_project: Path):
    info = json.loads(Path("data/faces/labels_info.json").read_text())
    assert info["fake_classes"] == "per_person"
    with open("data/faces/train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    fake_labels = {r["label"] for r in rows if r["is_fake"] == "1"}
    real_labels = {r["label"] for r in rows if r["is_fake"] == "0"}
    assert fake_labels and not fake_labels & real_labels  # deepfakes are classes of their own
    with open("data/faces/valid_pairs.csv", newline="") as f:
        kinds = {r["kind"] for r in csv.DictReader(f)}
    assert kinds == {"genuine", "fake_same_person", "other_person"}


def test_pretrain_then_finetune_logs_eer_and_exports_the_encoder(face_project: Path):
    params = load_params()
    pre = run_triplet(params, plan_phase(params, "pretrain"))
    assert 0.0 <= pre["valid_eer"] <= 1.0 and 0.0 <= pre["test_eer"] <= 1.0
    assert {"valid_eer_fake_same_person", "valid_eer_other_person", "before_valid_eer"} <= set(pre)

    fine = run_triplet(params, plan_phase(params, "finetune", {"epochs": 1}))
    # The fine-tune starts from the pre-trained encoder: its "before" is pretrain's result.
    assert fine["before_valid_eer"] == pytest.approx(pre["valid_eer"], abs=1e-6)
    assert fine["miner"] == "hard"

    client = MlflowClient()
    runs = {r.data.tags["embedlab.triplet_phase"]: r
            for r in client.search_runs([client.get_experiment_by_name("embedlab").experiment_id])}
    assert set(runs) == {"pretrain", "finetune"}
    assert runs["finetune"].data.params["triplet.miner"] == "hard"
    assert runs["finetune"].data.params["triplet.init_checkpoint"].endswith("pretrain/checkpoints/last.ckpt")
    assert runs["pretrain"].data.metrics["test_eer"] == pytest.approx(pre["test_eer"])
    history = client.get_metric_history(runs["pretrain"].info.run_id, "val_eer")
    assert len(history) == params.triplet_phases["pretrain"].epochs
    artifacts = {a.path for a in client.list_artifacts(runs["finetune"].info.run_id, "model")}
    assert "model/encoder.safetensors" in artifacts
    assert json.loads(Path("reports/triplet/finetune/metrics.json").read_text())["test_eer"] == fine["test_eer"]
    # Embedding speed: an MLflow metric of its own group, not a DVC metric.
    assert runs["finetune"].data.metrics["speed/test_embed_images_per_s"] > 0
    assert not [k for k in json.loads(Path("reports/triplet/finetune/metrics.json").read_text()) if "_per_s" in k]
    # The test pairs' pictures beside the metrics, and as MLflow images the UI compares across runs.
    for picture in ("roc.png", "scores.png", "roc_by_kind.png"):
        assert Path("reports/triplet/finetune", picture).read_bytes()[:4] == b"\x89PNG", picture
    assert {"roc", "scores", "roc_by_kind"} <= logged_image_keys(client, runs["finetune"].info.run_id)
    assert Path("reports/plots/roc/triplet_finetune.csv").read_text().startswith("fpr,tpr,threshold")
    # The fine-tuning's epochs follow the pre-training's on the charts' axis (chained_epoch).
    epochs = params.triplet_phases["pretrain"].epochs
    finetune = Path("reports/plots/triplet_history/triplet_finetune.csv").read_text().splitlines()
    assert finetune[0] == "epoch,train_loss,val_eer,chained_epoch,run"
    assert [row.split(",")[3:] for row in finetune[1:]] == [[str(epochs), "triplet_finetune"]]

    # The exported encoder scores pairs like the stage did: the submission holds every test pair.
    encoder = load_descriptor_model("models/triplet/finetune/encoder.safetensors")
    assert encoder.spec.kind == "face_encoder"
    assert main(["face-submission", "--checkpoint", "models/triplet/finetune/encoder.safetensors",
                 "--pairs", "data/raw/faces/test_public", "--out", "submission.csv"]) == 0
    with open("submission.csv", newline="") as f:
        submission = list(csv.DictReader(f))
    assert len(submission) == len(list(Path("data/raw/faces/test_public").glob("*/0.jpg")))
    assert all(-1.0 <= float(r["similarity"]) <= 1.0 for r in submission)


def test_a_batch_without_triplets_is_refused_before_training(face_project: Path, capsys):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["triplet"]["k"] = 1
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert main(["triplet", "--phase", "pretrain"]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_finetune_without_its_pretrained_checkpoint_names_it(face_project: Path, capsys):
    assert main(["triplet", "--phase", "finetune"]) == 2
    err = capsys.readouterr().err
    assert "models/triplet/pretrain/checkpoints/last.ckpt" in err and "--phase pretrain" in err


@pytest.mark.slow
def test_mlflow_run_triplet_stage(tmp_path: Path, tiny_demo: Path, tiny_faces: Path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(PROJECT / "MLproject", project)
    shutil.copytree(tiny_demo, project / "data" / "raw")
    shutil.copytree(tiny_faces, project / "data" / "raw" / "faces")
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run(["embedlab", "face-data"], project)
    run(["mlflow", "run", str(project), "-e", "triplet_stage", "--env-manager", "local", "--experiment-name", "faces",
         "-P", "phase=pretrain", "-P", "miner=hard", "-P", "epochs=2", "-P", "lr=0.0003"],
        tmp_path, MLFLOW_TRACKING_URI=uri)
    client = MlflowClient(tracking_uri=uri)
    (logged,) = client.search_runs([client.get_experiment_by_name("faces").experiment_id])
    assert logged.info.status == "FINISHED"
    assert logged.data.params["miner"] == "hard" and logged.data.params["triplet.miner"] == "hard"
    assert logged.data.params["triplet.lr"] == "0.0003"
    assert 0.0 <= logged.data.metrics["test_eer"] <= 1.0
    assert len(client.get_metric_history(logged.info.run_id, "val_eer")) == 2
    assert "checkpoints/last.ckpt" in {a.path for a in client.list_artifacts(logged.info.run_id, "checkpoints")}
