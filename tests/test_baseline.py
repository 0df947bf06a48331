"""The perceptual-hash baseline: hashed by imagehash, scored by the models' own evaluation, reported beside them."""

from __future__ import annotations

import json
from pathlib import Path

import imagehash
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from embedlab.config import load_params
from embedlab.descriptors import read_descriptors
from embedlab.evaluation.disc_model import ScoringSets
from embedlab.images import list_images, load_rgb
from embedlab.report import results_report
from embedlab.stages.baseline import run_baseline


def test_the_baseline_is_scored_by_the_models_evaluation_and_reported(tiny_project: Path):
    params = load_params()
    summary = run_baseline(params)

    # Descriptors: inner products are 1 - 2·hamming/64 of imagehash's own hashes.
    names, vectors = read_descriptors("models/baseline/phash/eval/descriptors/query.h5")
    queries = list_images("data/raw/disc/query")
    assert names == [p.stem for p in queries] and vectors.shape == (len(queries), 64)
    first, second = (imagehash.phash(load_rgb(p)) for p in queries[:2])
    assert float(vectors[0] @ vectors[1]) == pytest.approx(1 - 2 * (first - second) / 64, abs=1e-6)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)

    # The same scoring as a model's evaluation gives the same numbers from the same files.
    rescored = ScoringSets.of(params).score(Path("models/baseline/phash/eval/descriptors/query.h5"),
                                            Path("models/baseline/phash/eval/descriptors/reference.h5"),
                                            Path("rescored"), params)
    assert rescored == {k: summary[k] for k in rescored}
    assert 0.0 < summary["uAP"] <= 1.0  # the demo's queries include near copies a hash finds

    assert json.loads(Path("reports/baseline/phash/metrics.json").read_text())["uAP"] == summary["uAP"]
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("embedlab").experiment_id])
    assert run.info.run_name == "baseline/phash" and run.data.metrics["uAP"] == pytest.approx(summary["uAP"])
    table = results_report(params)
    assert "perceptual hash" in table and f"{summary['uAP']:.4f}" in table


def test_the_baseline_command_prints_its_scores_without_faiss_loader_lines(tiny_project: Path):
    from conftest import run

    result = run(["embedlab", "baseline"], tiny_project)
    # One summary line; the whole summary is in the DVC metrics file it names.
    report = json.loads(Path("reports/baseline/phash/metrics.json").read_text())
    assert result.stdout == (f"baseline/phash: μAP {report['uAP']:.4f}, recall at P90 {report['recall_at_p90']:.4f}; "
                             "all: reports/baseline/phash/metrics.json\n"), result.stdout
    assert "faiss.loader" not in result.stderr and "Loading faiss" not in result.stderr
