"""`embedlab index build` + `embedlab search`: a trained model's references, searched with new images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from embedlab.descriptors import read_descriptors
from embedlab.evaluation.embed import embed_folder
from embedlab.models.backbone import DescriptorModel, DescriptorSpec
from embedlab.models.checkpoints import export_descriptor_model
from embedlab.retrieval import knn_search
from embedlab.search_index import SearchIndexError, build_index, search_images

from conftest import PROJECT, run

SPEC = DescriptorSpec(backbone="test_resnet", embedding_dim=32, gem_p=3.0, img_size=48)


def _model(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return export_descriptor_model(DescriptorModel(SPEC), path)


def test_search_returns_the_evaluation_knn_above_the_p90_threshold(tmp_path: Path, tiny_demo: Path):
    model = _model(tmp_path / "model.safetensors", seed=0)
    references, queries = tiny_demo / "disc" / "reference", tiny_demo / "disc" / "query"
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"uAP": 0.5, "threshold_at_p90": 0.9}))  # as an evaluation writes it
    run(["embedlab", "index", "build", "--model", str(model), "--images", str(references), "--out",
         str(tmp_path / "index"), "--threshold-from", str(metrics), "--params", str(PROJECT / "params.yaml")], tmp_path)
    done = run(["embedlab", "search", "--index", str(tmp_path / "index"), "--images", str(queries), "--out",
                str(tmp_path / "matches.csv"), "--k", "5", "--params", str(PROJECT / "params.yaml")], tmp_path)
    summary = json.loads(done.stdout)

    # What the evaluation's kNN finds for the same model: the same neighbours and scores.
    embed_folder(model, queries, tmp_path / "q.h5", progress=False)
    query_names, q = read_descriptors(tmp_path / "q.h5")
    reference_names, r = read_descriptors(tmp_path / "index" / "references.h5")
    scores, found = knn_search(q, r, 5, device="cpu")
    expected = {(name, reference_names[j]): s for name, row_s, row_j in zip(query_names, scores, found)
                for s, j in zip(row_s, row_j) if s >= 0.9}
    with open(tmp_path / "matches.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(row["query_id"], row["reference_id"]) for row in rows} == set(expected) and rows
    assert all(float(row["score"]) == pytest.approx(expected[row["query_id"], row["reference_id"]], abs=1e-5)
               for row in rows)
    assert summary["threshold"] == 0.9 and summary["matches"] == len(rows)


def test_a_compressed_index_reports_its_recall_and_another_model_is_refused(tmp_path: Path, tiny_demo: Path):
    model = _model(tmp_path / "model.safetensors", seed=0)
    info = build_index(model, tiny_demo / "disc" / "reference", tmp_path / "ivf", kind="ivfpq", threshold=0.5,
                       nlist=4, m=8)
    assert info["kind"] == "ivfpq" and info["m"] == 8 and 0.0 < info["recall_at_10"] <= 1.0
    assert json.loads((tmp_path / "ivf" / "index.json").read_text())["recall_at_10"] == info["recall_at_10"]

    other = _model(tmp_path / "other.safetensors", seed=1)
    with pytest.raises(SearchIndexError, match=r"other\.safetensors: not the model .*index\.json was built with"):
        search_images(tmp_path / "ivf", tiny_demo / "disc" / "query", tmp_path / "m.csv", model=other)
    assert not (tmp_path / "m.csv").exists()
    with pytest.raises(SearchIndexError, match=r"nothing\.json: cannot read the evaluation's metrics"):
        build_index(model, tiny_demo / "disc" / "reference", tmp_path / "x", metrics=tmp_path / "nothing.json")


def test_an_fp16_index_holds_half_the_bytes_and_finds_the_exact_neighbours(tmp_path: Path, tiny_demo: Path):
    model = _model(tmp_path / "model.safetensors", seed=0)
    references = tiny_demo / "disc" / "reference"
    build_index(model, references, tmp_path / "flat", threshold=0.5)
    info = build_index(model, references, tmp_path / "half", kind="flat16", threshold=0.5)
    assert info["recall_at_10"] == 1.0  # fp16 rounding does not reorder this set's neighbours
    sizes = {kind: (tmp_path / kind / "index.faiss").stat().st_size for kind in ("flat", "half")}
    assert sizes["half"] < 0.6 * sizes["flat"], sizes
    for kind in ("flat", "half"):
        search_images(tmp_path / kind, tiny_demo / "disc" / "query", tmp_path / f"{kind}.csv", k=3)
    with open(tmp_path / "flat.csv", newline="") as exact, open(tmp_path / "half.csv", newline="") as half:
        pairs = [{(r["query_id"], r["reference_id"]): float(r["score"]) for r in csv.DictReader(f)}
                 for f in (exact, half)]
    assert pairs[0].keys() == pairs[1].keys() and pairs[0]
    assert all(abs(pairs[0][key] - pairs[1][key]) < 2e-3 for key in pairs[0])
