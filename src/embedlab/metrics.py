"""Copy-detection metrics as defined by the ISC 2021 reference evaluation.

All predictions of all queries are ranked together by score (highest first).
Among equal scores, non-matches are ranked before matches ("pessimistic"
ties), so a system cannot gain by giving every prediction the same score.
Recall is always taken over *all* ground-truth pairs, including those that no
prediction found. Everything here is vectorised numpy (no Python loops over
predictions), so 500k predictions take well under a second.

Not ``sklearn.metrics.precision_recall_curve`` / ``average_precision_score``:
they take recall over the predictions only (not over ground-truth pairs never
predicted) and merge tied scores into one point instead of ranking them
pessimistically, so they give another number than the ISC μAP.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def _ranked(scores: np.ndarray | Sequence[float], is_match: np.ndarray | Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Scores and match flags sorted by score descending, pessimistic ties."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    m = np.asarray(is_match, dtype=bool).ravel()
    if s.shape != m.shape:
        raise ValueError(f"scores ({s.size}) and is_match ({m.size}) must have the same length")
    if not np.isfinite(s).all():
        raise ValueError(f"{np.count_nonzero(~np.isfinite(s))} scores are NaN or infinite")
    # lexsort: last key is primary. -s ascending = score descending; then
    # False (non-match) before True (match) among equal scores.
    order = np.lexsort((m, -s))
    return s[order], m[order]


def _check_n_ground_truth(n_ground_truth: int, n_matches: int) -> None:
    if n_ground_truth <= 0:
        raise ValueError(
            "n_ground_truth must be > 0: recall is undefined without ground-truth pairs "
            "(is the ground-truth file empty?)"
        )
    if n_matches > n_ground_truth:
        # Only possible with duplicate predictions or a wrong n_ground_truth.
        raise ValueError(
            f"{n_matches} predictions are matches but there are only {n_ground_truth} "
            "ground-truth pairs: duplicate (query, reference) predictions?"
        )


def precision_recall_curve(
    scores: np.ndarray | Sequence[float],
    is_match: np.ndarray | Sequence[bool],
    n_ground_truth: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and score threshold after each ranked prediction.

    Point ``i`` describes keeping the ``i + 1`` best-ranked predictions, so the
    arrays are ordered by non-decreasing recall and non-increasing threshold.
    """
    s, m = _ranked(scores, is_match)
    ntp = np.cumsum(m)
    _check_n_ground_truth(n_ground_truth, int(ntp[-1]) if ntp.size else 0)
    precision = ntp / np.arange(1, s.size + 1)
    recall = ntp / float(n_ground_truth)
    return precision, recall, s


def micro_average_precision(
    scores: np.ndarray | Sequence[float],
    is_match: np.ndarray | Sequence[bool],
    n_ground_truth: int,
) -> float:
    """μAP: sum over ranked predictions of precision × recall increment.

    Ground-truth pairs never predicted simply never add recall, which lowers
    μAP. No predictions gives 0.0; ``n_ground_truth <= 0`` raises ValueError.
    """
    precision, recall, _ = precision_recall_curve(scores, is_match, n_ground_truth)
    if precision.size == 0:
        return 0.0
    delta = np.diff(recall, prepend=0.0)
    return float(np.sum(delta * precision))


def recall_at_precision(
    scores: np.ndarray | Sequence[float],
    is_match: np.ndarray | Sequence[bool],
    n_ground_truth: int,
    precision: float = 0.9,
) -> tuple[float, float | None]:
    """Highest recall reached with precision >= ``precision``, and its threshold.

    The threshold is the score of the last prediction kept: predictions with
    score >= threshold form the operating point. Returns ``(0.0, None)`` when
    the precision is never reached (None so that it serialises to JSON null).
    """
    p, r, t = precision_recall_curve(scores, is_match, n_ground_truth)
    valid = np.flatnonzero(p >= precision)
    if valid.size == 0:
        return 0.0, None
    # argmax picks the first (highest-threshold) point with the best recall.
    best = valid[np.argmax(r[valid])]
    return float(r[best]), float(t[best])


def _pair_keys(
    query_ids: np.ndarray, reference_ids: np.ndarray, gt_q: np.ndarray, gt_r: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Integer keys for (query, reference) pairs of predictions and of ground truth."""
    q_vocab, q_codes = np.unique(np.concatenate([query_ids, gt_q]), return_inverse=True)
    r_vocab, r_codes = np.unique(np.concatenate([reference_ids, gt_r]), return_inverse=True)
    keys = q_codes.astype(np.int64) * max(len(r_vocab), 1) + r_codes
    n = len(query_ids)
    return keys[:n], keys[n:]


def _as_str_array(values: Iterable[str]) -> np.ndarray:
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values)
    return arr.astype(str) if arr.size else np.zeros(0, dtype=str)


def _gt_arrays(ground_truth_pairs: Iterable[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    pairs = list(dict.fromkeys((str(q), str(r)) for q, r in ground_truth_pairs))
    if not pairs:
        return np.zeros(0, dtype=str), np.zeros(0, dtype=str)
    gt = np.asarray(pairs, dtype=str)
    return gt[:, 0], gt[:, 1]


def label_predictions(
    query_ids: Sequence[str] | np.ndarray,
    reference_ids: Sequence[str] | np.ndarray,
    ground_truth_pairs: Iterable[tuple[str, str]],
) -> np.ndarray:
    """Boolean array: is each predicted (query, reference) pair a ground-truth pair.

    Raises ValueError on duplicate predictions (as the ISC evaluation does):
    they would count one match twice.
    """
    q, r = _as_str_array(query_ids), _as_str_array(reference_ids)
    if q.shape != r.shape:
        raise ValueError(f"query_ids ({q.size}) and reference_ids ({r.size}) must have the same length")
    gt_q, gt_r = _gt_arrays(ground_truth_pairs)
    pred_keys, gt_keys = _pair_keys(q, r, gt_q, gt_r)
    if np.unique(pred_keys).size != pred_keys.size:
        raise ValueError("predictions contain duplicate (query_id, reference_id) pairs")
    return np.isin(pred_keys, gt_keys)


def recall_at_rank(
    query_ids: Sequence[str] | np.ndarray,
    reference_ids: Sequence[str] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    ground_truth_pairs: Iterable[tuple[str, str]],
    rank: int,
) -> float:
    """Share of ground-truth pairs whose reference is among the query's top ``rank``.

    As in the ISC reference, the denominator is the number of ground-truth
    pairs (one per matching query in DISC21) and ties are pessimistic: the
    correct reference's rank counts every prediction of that query with a
    score >= its own. Pairs never predicted count as misses.
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    q, r = _as_str_array(query_ids), _as_str_array(reference_ids)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not (q.size == r.size == s.size):
        raise ValueError(
            f"query_ids ({q.size}), reference_ids ({r.size}) and scores ({s.size}) must have the same length"
        )
    gt_q, gt_r = _gt_arrays(ground_truth_pairs)
    if gt_q.size == 0:
        raise ValueError("recall_at_rank needs at least one ground-truth pair")
    if s.size == 0:
        return 0.0
    pred_keys, gt_keys = _pair_keys(q, r, gt_q, gt_r)
    q_codes = np.unique(np.concatenate([q, gt_q]), return_inverse=True)[1][: q.size]

    # Group predictions by query, best score first within each query.
    order = np.lexsort((-s, q_codes))
    qs, ss = q_codes[order], s[order]
    n = qs.size
    new_group = np.r_[True, qs[1:] != qs[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    # Last index of each run of equal (query, score): a pessimistic rank
    # counts all predictions tied with the correct one.
    run_end_mask = np.r_[(qs[1:] != qs[:-1]) | (ss[1:] != ss[:-1]), True]
    run_end = np.minimum.accumulate(np.where(run_end_mask, np.arange(n), n)[::-1])[::-1]
    ranks_sorted = run_end - group_start  # 0-based
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = ranks_sorted

    # Rank of each ground-truth pair's prediction; missing pairs never count.
    key_order = np.argsort(pred_keys, kind="stable")
    pos = np.searchsorted(pred_keys[key_order], gt_keys)
    pos = np.minimum(pos, n - 1)
    found = pred_keys[key_order][pos] == gt_keys
    hit = found & (ranks[key_order][pos] < rank)
    return float(np.count_nonzero(hit) / gt_keys.size)
