"""A training run's MLflow datasets (name, context, digest, size) and system metrics."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import threading
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import BIN, run
from embedlab.cli import main
from embedlab.config import DripStep, load_params
from embedlab.data.augmented import AugmentedSet
from embedlab.data.faces import read_face_pairs, read_face_rows
from embedlab.data_version import content_digest, data_version
from embedlab.digests import settings_digest
from embedlab.images import list_images
from embedlab.stages.drip import DripRequest, run_drip
from embedlab.stages.gem import plan_gem, run_gem
from embedlab.stages.triplet import plan_phase, run_triplet


def _inputs(run_id: str) -> dict[str, tuple[str, str, dict]]:
    """{name: (context, digest, profile)} of a run's datasets."""
    inputs = MlflowClient().get_run(run_id).inputs.dataset_inputs
    found = {i.dataset.name: ({t.key: t.value for t in i.tags}["mlflow.data.context"], i.dataset.digest,
                              json.loads(i.dataset.profile)) for i in inputs}
    assert len(found) == len(inputs)  # one input per name
    return found


def _system_metrics(run_id: str) -> set[str]:
    return {k for k in MlflowClient().get_run(run_id).data.metrics if k.startswith("system/")}


def _only_run() -> str:
    (run,) = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("embedlab").experiment_id])
    return run.info.run_id


def test_a_gem_run_logs_its_data_sets_once_and_system_metrics(tiny_project: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", raising=False)
    assert main(["augment", "--recipe", "big"]) == 0
    params = load_params()
    params = dataclasses.replace(params, tracking=dataclasses.replace(params.tracking, system_metrics_interval=0.2),
                                 gem=dataclasses.replace(params.gem, epochs=1, evaluate_before=False))
    run_gem(params, plan_gem(params, "big"))
    run_id = _only_run()
    experiment = MlflowClient().get_experiment_by_name("embedlab")  # created by the run as a training experiment
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    disc = Path(params.data.disc)
    augmented = AugmentedSet("data/augmented/big", params.gem.img_size)
    train = params.evaluate.train_descriptors
    expected = {  # no DVC in this project: every digest is the data's own
        "augmented/big": ("training", content_digest(Path("data/augmented/big")),
                          {"images": len(augmented), "classes": augmented.n_classes}),
        "disc21/query": ("evaluation", content_digest(disc / "query"), {"images": len(list_images(disc / "query"))}),
        "disc21/reference": ("evaluation", content_digest(disc / "reference"),
                             {"images": len(list_images(disc / "reference"))}),
        "disc21/ground_truth": ("evaluation", content_digest(disc / "ground_truth.csv"), {"matches": 12}),
        "disc21/postprocess": ("evaluation", settings_digest([data_version(disc / "training"), [], {"first": train}]),
                               {"images": train, "part": {"first": train},
                                "source_version": content_digest(disc / "training")}),
    }
    assert _inputs(run_id) == expected
    assert augmented.n_classes == 8 and len(augmented) == 32  # the tiny recipe: 8 classes × 4

    system = _system_metrics(run_id)
    assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system
    assert not [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]  # stopped with the run

    # A second run of the same settings re-evaluates into the same run: no second copy of any dataset.
    run_gem(params, plan_gem(params, "big"))
    assert _only_run() == run_id and _inputs(run_id) == expected
    assert len(MlflowClient().get_run(run_id).inputs.dataset_inputs) == len(expected)


def test_a_drip_step_logs_the_part_of_each_source_it_trains_on_and_no_system_metrics_when_off(
        tiny_project: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", raising=False)
    params = load_params()
    # Sampling every 50 ms would log within the run, were it on.
    params = dataclasses.replace(
        params, tracking=dataclasses.replace(params.tracking, system_metrics=False, system_metrics_interval=0.05),
        drip=dataclasses.replace(params.drip, epochs=1, evaluate=False))
    run_drip(params, DripRequest(name="mix", step=DripStep(n_facebook_samples=8, n_imagenet_samples=4)))
    run_id = _only_run()

    cache = Path(params.data.drip_cache) / f"{params.drip.aug_size}px"
    found = _inputs(run_id)
    assert set(found) == {"disc21/training", "imagenet"}  # scored on nothing: no evaluation data
    for name, folder, count in (("disc21/training", cache / "facebook", 8), ("imagenet", cache / "imagenet", 4)):
        context, digest, profile = found[name]
        version = content_digest(folder)
        assert context == "training" and digest == settings_digest([version, [], {"first": count}])
        assert profile == {"classes": count, "part": {"first": count}, "source_version": version}
    assert _system_metrics(run_id) == set()


def test_a_triplet_phase_logs_its_face_lists_with_the_images_they_name(tiny_project: Path, tiny_faces: Path):
    shutil.copytree(tiny_faces, "data/raw/faces")
    assert main(["face-data"]) == 0
    params = load_params()
    params = dataclasses.replace(params, triplet=dataclasses.replace(params.triplet, iters=2))
    run_triplet(params, plan_phase(params, "pretrain", {"epochs": 1}))

    faces, lists = Path("data/raw/faces"), Path(params.triplet.data_out)
    train = read_face_rows(lists / "train.csv")
    images = content_digest(faces / "train")  # the face images the lists name

    def made_of(listing: Path) -> tuple[str, dict]:
        version = content_digest(listing)
        return settings_digest([version, [images], None]), {"source_version": version}

    (train_digest, train_version), (pairs_digest, pairs_version) = made_of(lists / "train.csv"), made_of(
        lists / "valid_pairs.csv")
    assert _inputs(_only_run()) == {
        "faces/train": ("training", train_digest, {"images": len(train), "classes": len({r.label for r in train}),
                                                   **train_version}),
        "faces/valid_pairs": ("evaluation", pairs_digest,
                              {"pairs": len(read_face_pairs(lists / "valid_pairs.csv")), **pairs_version}),
        "faces/test_public": ("evaluation", content_digest(faces / "test_public"), {"pairs": 24}),
    }


def test_data_versions_are_dvc_hashes_unless_stale(tiny_project: Path, tmp_path_factory):
    """A DVC-tracked folder's version is DVC's md5; a folder inside one gets the md5 DVC gives that folder on its
    own; a set whose index files changed since DVC saw it gets its content digest instead."""
    assert main(["augment", "--recipe", "big"]) == 0  # an image store, with its index and manifest
    single = tmp_path_factory.mktemp("single")
    shutil.copytree("data/raw/disc/query", single / "query")
    dvc = str(BIN / "dvc")
    for folder, targets in ((tiny_project, ["data/raw", "data/augmented/big"]), (single, ["query"])):
        run([dvc, "init", "--no-scm", "-q"], folder)
        run([dvc, "add", "-q", *targets], folder)

    def recorded(dvc_file: Path) -> str:
        return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]

    big, query, truth = Path("data/augmented/big"), Path("data/raw/disc/query"), Path("data/raw/disc/ground_truth.csv")
    assert data_version("data/raw") == recorded(Path("data/raw.dvc"))
    assert data_version(big) == recorded(Path("data/augmented/big.dvc")) != content_digest(big)
    assert data_version(query) == recorded(single / "query.dvc") != content_digest(query)
    assert data_version(truth) == hashlib.md5(truth.read_bytes()).hexdigest()

    manifest = json.loads((big / "manifest.json").read_text())
    (big / "manifest.json").write_text(json.dumps({**manifest, "seed": 99}))  # regenerated without DVC
    assert data_version(big) == content_digest(big) != recorded(Path("data/augmented/big.dvc"))
    truth.write_text("query_id,reference_id\n")
    assert data_version(truth) == content_digest(truth)
    with pytest.raises(FileNotFoundError, match="missing"):
        data_version("data/raw/missing")
