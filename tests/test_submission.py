"""`embedlab submission disc`: the phase-1 descriptor h5 read back as the seed layout, predictions capped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from embedlab.descriptors import DescriptorReader, write_descriptors
from embedlab.evaluation.submission import write_disc_submission
from embedlab.retrieval import knn_search

from conftest import PROJECT, run


def _sets(folder: Path, n_queries: int, n_references: int, dim: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    q, r = (rng.standard_normal((n, dim)).astype(np.float32) for n in (n_queries, n_references))
    write_descriptors(folder / "q.h5", [f"Q{i:05d}" for i in range(n_queries)], q)
    write_descriptors(folder / "r.h5", [f"R{i:06d}" for i in range(n_references)], r)
    return folder / "q.h5", folder / "r.h5"


def test_the_submission_h5_reads_back_as_the_seed_layout(tmp_path: Path):
    q, r = _sets(tmp_path, 30, 50, 8)
    done = run(["embedlab", "submission", "disc", "--query", str(q), "--reference", str(r), "--out",
                str(tmp_path / "sub"), "--k", "5", "--params", str(PROJECT / "params.yaml")], tmp_path)
    summary = json.loads(done.stdout)
    for subset, source in (("query", q), ("reference", r)):
        back, original = DescriptorReader(tmp_path / "sub" / "descriptors.h5", subset), DescriptorReader(source)
        assert back.names == original.names and np.array_equal(back.read(), original.read())
    with open(tmp_path / "sub" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["predictions"] == 30 * 5 and summary["dropped_below_cap"] == 0


def test_a_prediction_set_beyond_the_cap_keeps_its_highest_scores(tmp_path: Path):
    """60,000 queries × 10 neighbours are 600,000 rows: the 500,000 highest-scoring stay (documented rule)."""
    q, r = _sets(tmp_path, 60_000, 1_000, 4)
    summary = write_disc_submission(q, r, tmp_path / "sub", k=10, device="cpu")
    assert summary["predictions"] == 500_000 and summary["dropped_below_cap"] == 100_000
    scores, _ = knn_search(DescriptorReader(q).read(), DescriptorReader(r).read(), 10, device="cpu")
    cut = np.sort(scores.ravel())[::-1][499_999]  # the 500,000th highest score
    with open(tmp_path / "sub" / "predictions.csv", newline="") as f:
        kept = np.array([float(row["score"]) for row in csv.DictReader(f)])
    assert len(kept) == 500_000 and kept.min() >= cut - 1e-6
