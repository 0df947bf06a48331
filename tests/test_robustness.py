"""The robustness query set (a held-out edit family, distractors) and the per-edit-kind evaluation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from embedlab.config import load_params
from embedlab.data.robust_edits import ROBUST_EDITS
from embedlab.data.robustness import build_robustness_set, read_edit_kinds
from embedlab.images import list_images, load_rgb
from embedlab.models.backbone import DescriptorModel, DescriptorSpec, create_backbone
from embedlab.models.checkpoints import export_descriptor_model
from embedlab.report import results_report
from embedlab.evaluation.robustness import run_robustness


def _small_set(**robustness) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["robustness"].update(per_kind=2, distractors=3, **robustness)
    Path("params.yaml").write_text(yaml.safe_dump(params))


def test_every_edit_changes_the_picture_and_keeps_it_rgb(tiny_demo: Path):
    img = np.asarray(load_rgb(list_images(tiny_demo / "disc" / "reference")[0]))
    for name, edit in ROBUST_EDITS.items():
        out = edit(img, np.random.default_rng(0))
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3, name
        same_size = out.shape == img.shape
        assert not same_size or np.abs(out.astype(int) - img).mean() > 3, f"{name} barely changed the image"


def test_the_set_counts_add_up_and_is_byte_identical_for_a_seed(tiny_project: Path):
    _small_set()
    manifest = build_robustness_set(load_params(), progress=False)
    kinds = read_edit_kinds("data/robustness")
    assert manifest["counts"] == {**{k: 2 for k in ROBUST_EDITS}, "distractor": 3}
    assert sum(manifest["counts"].values()) == manifest["queries"] == len(kinds) == len(
        list_images("data/robustness/query"))
    with open("data/robustness/ground_truth.csv", newline="") as f:
        truth = list(csv.DictReader(f))
    assert len(truth) == 2 * len(ROBUST_EDITS) and all(kinds[r["query_id"]] != "distractor" for r in truth)
    first = {p.name: p.read_bytes() for p in Path("data/robustness").rglob("*") if p.is_file()}

    _small_set(out="data/robustness_again")
    build_robustness_set(load_params(), progress=False)
    again = {p.name: p.read_bytes() for p in Path("data/robustness_again").rglob("*") if p.is_file()}
    assert again.keys() == first.keys()
    assert all(again[name] == first[name] for name in first if name != "manifest.json")
    _small_set(out="data/robustness", seed=5)
    build_robustness_set(load_params(), progress=False)
    assert (Path("data/robustness/query/RQ00000.jpg").read_bytes() != first["RQ00000.jpg"]
            or Path("data/robustness/edits.csv").read_bytes() != first["edits.csv"])


def test_members_are_scored_per_edit_kind_reported_and_plotted(tiny_project: Path):
    _small_set(members=["baseline/phash", "toy/start", "toy/model"])
    build_robustness_set(load_params(), progress=False)
    # A model's exported descriptor, and a bare backbone's features (as drip_init writes them).
    torch.manual_seed(0)
    export_descriptor_model(DescriptorModel(DescriptorSpec("test_resnet", 16, img_size=48)).eval(),
                            Path("models/toy/model/descriptor_model.safetensors"))
    body = create_backbone("test_resnet", num_classes=0, global_pool="")
    Path("models/toy/start").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in body.state_dict().items()}, "models/toy/start/backbone.safetensors")
    Path("models/toy/start/backbone.json").write_text(json.dumps({"backbone": "test_resnet"}))

    scores = run_robustness(load_params())
    assert list(scores) == ["baseline/phash", "toy/start", "toy/model"]
    assert all(list(per) == ["all", *ROBUST_EDITS] for per in scores.values())
    assert all(0.0 <= v <= 1.0 for per in scores.values() for v in per.values())
    assert json.loads(Path("reports/robustness/metrics.json").read_text()) == scores
    assert Path("reports/robustness/per_edit.png").stat().st_size > 10_000
    with open("reports/plots/robustness/per_edit.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3 * (1 + len(ROBUST_EDITS))
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("embedlab").experiment_id])
    assert run.data.metrics["robustness/baseline/phash/all/uAP"] == pytest.approx(scores["baseline/phash"]["all"])
    assert "robustness/per_edit.png" in {a.path for a in client.list_artifacts(run.info.run_id, "robustness")}
    table = results_report(load_params())
    assert "Robustness set" in table and "heavy crop" in table and f"{scores['toy/model']['all']:.4f}" in table
