"""μAP, PR curve, recall@P90 and recall@rank against hand-computed cases."""

from __future__ import annotations

import time

import numpy as np
import pytest

from embedlab.metrics import (
    label_predictions,
    micro_average_precision,
    precision_recall_curve,
    recall_at_precision,
    recall_at_rank,
)


def test_perfect_ranking_is_one():
    assert micro_average_precision([0.9, 0.8, 0.1], [True, True, False], 2) == pytest.approx(1.0)


def test_hand_computed_uap():
    # Ranked: match, non-match, match. Recall steps 1/2 at precision 1 and
    # 1/2 at precision 2/3 -> 0.5 * 1 + 0.5 * 2/3.
    uap = micro_average_precision([0.9, 0.8, 0.7], [True, False, True], 2)
    assert uap == pytest.approx(0.5 + 1 / 3)


def test_ties_are_pessimistic():
    # Two predictions with the same score, one match: the non-match must be
    # ranked first, so the match comes at precision 1/2 (optimistic: 1.0).
    assert micro_average_precision([0.5, 0.5], [True, False], 1) == pytest.approx(0.5)
    assert micro_average_precision([0.5, 0.5], [False, True], 1) == pytest.approx(0.5)
    # A constant score for everything cannot beat an honest ranking.
    honest = micro_average_precision([0.9, 0.8, 0.7, 0.6], [True, True, False, False], 2)
    constant = micro_average_precision([0.5] * 4, [True, True, False, False], 2)
    assert honest == pytest.approx(1.0)
    assert constant == pytest.approx(0.5 * (1 / 3) + 0.5 * (2 / 4))


def test_recall_counts_ground_truth_never_predicted():
    # One perfect prediction, but 4 GT pairs (3 queries got no prediction).
    assert micro_average_precision([0.9], [True], 4) == pytest.approx(0.25)


def test_no_predictions_is_zero_and_empty_gt_is_an_error():
    assert micro_average_precision([], [], 3) == 0.0
    with pytest.raises(ValueError, match="n_ground_truth"):
        micro_average_precision([0.9], [True], 0)


def test_more_matches_than_ground_truth_is_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        micro_average_precision([0.9, 0.8], [True, True], 1)


def _reference_uap(scores, is_match, n_gt):
    """Straight port of the ISC 2021 algorithm (Python sort on (score, not match))."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i], not is_match[i]))[::-1]
    m = np.asarray(is_match)[order]
    ntp = np.cumsum(m)
    p, r = ntp / np.arange(1, len(m) + 1), ntp / n_gt
    return float(((r - np.concatenate([[0], r[:-1]])) * p).sum())


def test_matches_reference_algorithm_on_random_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, 2000) / 20.0  # many ties
    is_match = rng.random(2000) < 0.3
    n_gt = int(is_match.sum()) + 50
    assert micro_average_precision(scores, is_match, n_gt) == pytest.approx(_reference_uap(scores, is_match, n_gt))


def test_pr_curve_shape_and_order():
    p, r, t = precision_recall_curve([0.2, 0.9, 0.5], [False, True, True], 4)
    np.testing.assert_allclose(t, [0.9, 0.5, 0.2])
    np.testing.assert_allclose(p, [1.0, 1.0, 2 / 3])
    np.testing.assert_allclose(r, [0.25, 0.5, 0.5])


def test_recall_at_p90_hand_case():
    # Ranked matches: T T T T T T T T T F T F F  (n_gt = 12)
    flags = [True] * 9 + [False, True, False, False]
    scores = np.linspace(1.0, 0.1, len(flags))
    rec, thr = recall_at_precision(scores, flags, 12)
    # After 11 predictions: 10 TP, precision 10/11 = 0.909 >= 0.9, recall 10/12.
    assert rec == pytest.approx(10 / 12)
    assert thr == pytest.approx(scores[10])


def test_recall_at_p90_never_reached():
    assert recall_at_precision([0.9, 0.8], [False, True], 1) == (0.0, None)


def test_recall_at_rank_hand_case():
    q = ["Q1", "Q1", "Q2", "Q2", "Q3"]
    r = ["R9", "R1", "R2", "R8", "R7"]
    s = [0.9, 0.8, 0.7, 0.6, 0.5]
    gt = [("Q1", "R1"), ("Q2", "R2"), ("Q3", "R3"), ("Q4", "R4")]
    # Q1 correct at rank 2, Q2 at rank 1, Q3 wrong, Q4 never predicted.
    assert recall_at_rank(q, r, s, gt, 1) == pytest.approx(1 / 4)
    assert recall_at_rank(q, r, s, gt, 2) == pytest.approx(2 / 4)
    assert recall_at_rank(q, r, s, gt, 10) == pytest.approx(2 / 4)


def test_recall_at_rank_ties_are_pessimistic():
    # Correct reference tied with a wrong one: rank 2, not rank 1.
    q, r, s = ["Q1", "Q1"], ["R1", "R2"], [0.5, 0.5]
    assert recall_at_rank(q, r, s, [("Q1", "R1")], 1) == 0.0
    assert recall_at_rank(q, r, s, [("Q1", "R1")], 2) == 1.0


def test_recall_at_rank_matches_reference_algorithm():
    # ISC rule per GT pair: rank = #(predictions of that query with score >= the correct one) - 1.
    rng = np.random.default_rng(2)
    q = [f"Q{i}" for i in range(300) for _ in range(5)]
    r = [f"R{(i * 7 + j) % 97}" for i in range(300) for j in range(5)]
    s = rng.integers(0, 4, len(q)) / 4.0  # heavy ties
    gt = [(f"Q{i}", f"R{(i * 7 + int(rng.integers(0, 8))) % 97}") for i in range(0, 300, 2)]
    by_query: dict[str, list[tuple[str, float]]] = {}
    for qi, ri, si in zip(q, r, s):
        by_query.setdefault(qi, []).append((ri, si))
    for rank in (1, 3):
        hits = 0
        for gq, gr in gt:
            own = [si for ri, si in by_query.get(gq, []) if ri == gr]
            hits += bool(own) and sum(si >= own[0] for _, si in by_query[gq]) - 1 < rank
        assert recall_at_rank(q, r, s, gt, rank) == pytest.approx(hits / len(gt))


def test_label_predictions_and_duplicates():
    labels = label_predictions(["Q1", "Q1", "Q2"], ["R1", "R2", "R1"], [("Q1", "R1"), ("Q2", "R2")])
    assert labels.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="duplicate"):
        label_predictions(["Q1", "Q1"], ["R1", "R1"], [("Q1", "R1")])


def test_uap_500k_predictions_is_fast():
    rng = np.random.default_rng(1)
    scores = rng.random(500_000).astype(np.float32)
    is_match = rng.random(500_000) < 0.05
    start = time.perf_counter()
    micro_average_precision(scores, is_match, int(is_match.sum()) + 1000)
    assert time.perf_counter() - start < 1.0
