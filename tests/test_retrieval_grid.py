"""The retrieval pictures: which queries they show, in which order, and that the true match is framed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from embedlab.evaluation.retrieval_grid import (
    MATCH,
    RETRIEVAL_PNG,
    WORST_PNG,
    drawn_queries,
    read_rankings,
    worst_queries,
    write_retrieval_pictures,
)


def _project(tmp_path: Path):
    """Three queries: Q0 finds its match first, Q1 third, Q2 not at all (and is sure of a wrong one)."""
    rows = ["query_id,reference_id,score",
            "Q0,R0,0.9", "Q0,R1,0.5",
            "Q1,R2,0.7", "Q1,R3,0.8", "Q1,R1,0.6",  # out of score order on purpose
            "Q2,R0,0.95", "Q2,R1,0.4"]
    (tmp_path / "predictions.csv").write_text("\n".join(rows) + "\n")
    truth = [("Q0", "R0"), ("Q1", "R1"), ("Q2", "R2")]
    colours = np.random.default_rng(0).integers(0, 255, (7, 3))
    paths = {}
    for i, name in enumerate(["Q0", "Q1", "Q2", "R0", "R1", "R2", "R3"]):
        paths[name] = tmp_path / f"{name}.jpg"
        Image.new("RGB", (40, 30), tuple(int(c) for c in colours[i])).save(paths[name])
    return truth, [paths[q] for q in ("Q0", "Q1", "Q2")], [paths[r] for r in ("R0", "R1", "R2", "R3")]


def test_rankings_are_best_first_and_the_worst_query_is_the_one_that_missed(tmp_path: Path):
    truth, _, _ = _project(tmp_path)
    rankings = read_rankings(tmp_path / "predictions.csv")
    assert [ref for ref, _ in rankings["Q1"]] == ["R3", "R2", "R1"]
    by_query = {q: {r} for q, r in truth}
    assert worst_queries(rankings, by_query, 3) == ["Q2", "Q1", "Q0"]
    assert worst_queries(rankings, by_query, 1) == ["Q2"]
    assert drawn_queries(by_query, 2, seed=0) == drawn_queries(by_query, 2, seed=0)
    assert set(drawn_queries(by_query, 5, seed=0)) == {"Q0", "Q1", "Q2"}


def test_the_pictures_frame_the_true_match_in_green(tmp_path: Path):
    truth, queries, references = _project(tmp_path)
    written = write_retrieval_pictures(tmp_path, truth, queries, references, "drip/s1", seed=0, n=3)
    assert [p.name for p in written] == [RETRIEVAL_PNG, WORST_PNG]
    picture = np.asarray(Image.open(tmp_path / WORST_PNG).convert("RGB")).astype(int)
    green = np.array([int(MATCH[i:i + 2], 16) for i in (1, 3, 5)])
    framed = np.abs(picture - green).sum(axis=2) < 40
    height, width = framed.shape
    top, below = framed[:height // 3], framed[height // 3:]
    # Worst first: Q2 (its match not found) on top, its match shown apart in the last column only;
    # below, Q1's and Q0's matches framed among their ranked references.
    assert top.sum() > 100 and np.flatnonzero(top.any(axis=0)).min() > width * 5 / 7
    assert below.sum() > 200 and np.flatnonzero(below.any(axis=0)).min() < width * 4 / 7
