"""Evaluate stage: descriptors + DISC ground truth -> predictions, metrics, PR curve."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from embedlab.atomic import atomic_path, files_replaced_together, write_json_atomic, write_text_atomic
from embedlab.data.disc import GroundTruthError, read_ground_truth
from embedlab.descriptors import DescriptorFileError, DescriptorReader, read_descriptors, zero_rows
from embedlab.metrics import (
    label_predictions,
    micro_average_precision,
    precision_recall_curve,
    recall_at_precision,
    recall_at_rank,
)
from embedlab.retrieval import Predictions, knn_search, predictions_from_knn

PR_CURVE_MAX_POINTS = 500

log = logging.getLogger(__name__)


def _json_float(x: float | None) -> float | None:
    """Plain float, or None for missing / non-finite values (JSON has no NaN)."""
    return None if x is None or not math.isfinite(x) else float(x)


def write_predictions_csv(path: str | os.PathLike, preds: Predictions) -> None:
    """``query_id,reference_id,score``; 9 significant digits round-trip float32 exactly."""
    lines = ["query_id,reference_id,score"]
    lines += [f"{q},{r},{s:.9g}" for q, r, s in zip(preds.query_ids, preds.reference_ids, preds.scores.tolist())]
    write_text_atomic(path, "\n".join(lines) + "\n")


def _subsample_curve(n: int, keep: int | None) -> np.ndarray:
    """At most PR_CURVE_MAX_POINTS evenly spaced indices, always with ends and ``keep``."""
    if n <= PR_CURVE_MAX_POINTS:
        return np.arange(n)
    idx = np.linspace(0, n - 1, PR_CURVE_MAX_POINTS - 1).round().astype(np.int64)
    if keep is not None:
        idx = np.append(idx, keep)
    return np.unique(idx)


def write_pr_curve(out_dir: Path, p: np.ndarray, r: np.ndarray, t: np.ndarray, p90_index: int | None,
                   title: str = "Precision-recall (all queries)") -> None:
    """``pr_curve.csv`` (for ``dvc plots``) and ``pr_curve.png``."""
    idx = _subsample_curve(p.size, p90_index)
    rows = ["precision,recall,threshold"] + [f"{p[i]:.6g},{r[i]:.6g},{t[i]:.9g}" for i in idx]
    write_text_atomic(out_dir / "pr_curve.csv", "\n".join(rows) + "\n")

    # Figure without pyplot: no global backend state, works headless (Agg canvas).
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), dpi=100)
    ax = fig.add_subplot()
    ax.plot(r[idx], p[idx], lw=1.5)
    if p90_index is not None:
        ax.plot([r[p90_index]], [p[p90_index]], "o", label=f"P90: recall {r[p90_index]:.3f}")
        ax.legend(loc="lower left")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    with atomic_path(out_dir / "pr_curve.png") as tmp:
        fig.savefig(tmp, format="png")


def _check_zero_vectors(path, kind: str, count: int, total: int) -> None:
    """All-zero vectors score 0 against everything: a file of them only is refused, some are a counted warning."""
    if count and count == total:
        raise DescriptorFileError(path, f"all {total} {kind} vectors are zeros: nothing to score")
    if count:
        log.warning("%s: %d of %d %s vectors are zeros (they score 0 against everything)", path, count, total, kind)


def evaluate_disc(
    query_h5: str | os.PathLike,
    reference_h5: str | os.PathLike,
    ground_truth_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    k: int = 10,
    query_subset: str | None = None,
    reference_subset: str | None = None,
    device: str = "auto",
    all_query_ids: Sequence[str] | None = None,
    all_reference_ids: Sequence[str] | None = None,
    scored_query_ids: Sequence[str] | None = None,
    title: str = "",
) -> dict[str, Any]:
    """Search every query among the references, score against the ground truth.

    Writes ``predictions.csv``, ``metrics.json``, ``pr_curve.csv`` and
    ``pr_curve.png`` into ``out_dir`` (each atomically) and returns the
    metrics. ``recall_at_rank10`` can only reach its true value when k >= 10.
    ``all_query_ids`` / ``all_reference_ids``: the ids of the whole image sets
    when the h5 files lack images skipped as unreadable (default: the h5
    names); ground-truth pairs of skipped images then count as misses. ``scored_query_ids``: score on
    these queries only (a fixed subset; the ground truth is still checked against all ids). ``title``: what
    the PR curve's title names (e.g. the run), followed by the μAP.
    """
    out = Path(out_dir)
    q_names, q_vecs = read_descriptors(query_h5, query_subset)
    # The references go into the search index slice by slice: no second full copy in memory.
    references = DescriptorReader(reference_h5, reference_subset)
    r_names = references.names
    if q_vecs.shape[1] != references.dim:
        raise DescriptorFileError(
            query_h5,
            f"descriptor dimension {q_vecs.shape[1]} differs from {references.dim} in {reference_h5}",
        )
    _check_zero_vectors(query_h5, "query", zero_rows(q_vecs), len(q_names))
    gt = read_ground_truth(ground_truth_csv, query_ids=all_query_ids or q_names,
                           reference_ids=all_reference_ids or r_names)
    if scored_query_ids is not None:
        scored = set(scored_query_ids)
        gt = [(q, r) for q, r in gt if q in scored]
    if not gt:
        raise GroundTruthError(f"{ground_truth_csv}: no ground-truth pairs, metrics would be undefined")

    scores, indices = knn_search(q_vecs, references, k, device=device, progress=len(q_names) > 50_000)
    # Counted while the search read the references: no second pass over a file of up to tens of GB.
    _check_zero_vectors(reference_h5, "reference", references.zero_vectors, len(r_names))
    preds = predictions_from_knn(q_names, r_names, scores, indices)
    is_match = label_predictions(preds.query_ids, preds.reference_ids, gt)

    n_gt = len(gt)
    p, r, t = precision_recall_curve(preds.scores, is_match, n_gt)
    rec90, thr90 = recall_at_precision(preds.scores, is_match, n_gt, 0.9)
    p90_index = None
    if thr90 is not None:
        p90_index = int(np.flatnonzero((p >= 0.9) & (r == rec90))[0])

    metrics: dict[str, Any] = {
        "uAP": float(micro_average_precision(preds.scores, is_match, n_gt)),
        "recall_at_p90": float(rec90),
        "threshold_at_p90": _json_float(thr90),
        "recall_at_rank1": recall_at_rank(preds.query_ids, preds.reference_ids, preds.scores, gt, 1),
        "recall_at_rank10": recall_at_rank(preds.query_ids, preds.reference_ids, preds.scores, gt, 10),
        "n_queries": len(q_names),
        "n_references": len(r_names),
        "n_ground_truth": n_gt,
        "n_predictions": int(preds.scores.size),
    }

    # The four files replace the last evaluation's together, or (a full disk, a kill) not at all.
    with files_replaced_together(out) as staging:
        write_predictions_csv(staging / "predictions.csv", preds)
        write_pr_curve(staging, p, r, t, p90_index, f"{title + ': ' if title else ''}μAP {metrics['uAP']:.3f}")
        write_json_atomic(staging / "metrics.json", metrics)
    return metrics


def format_metrics(metrics: dict[str, Any]) -> str:
    """A short human-readable summary of :func:`evaluate_disc`'s metrics."""
    thr = metrics.get("threshold_at_p90")
    p90 = (
        f"{metrics['recall_at_p90']:.4f} (threshold {thr:.4f})" if thr is not None else "precision 0.90 never reached"
    )
    return "\n".join(
        [
            "DISC evaluation",
            f"  queries {metrics['n_queries']:,}  references {metrics['n_references']:,}  "
            f"ground-truth pairs {metrics['n_ground_truth']:,}  predictions {metrics['n_predictions']:,}",
            f"  uAP              {metrics['uAP']:.4f}",
            f"  recall@P90       {p90}",
            f"  recall@rank1     {metrics['recall_at_rank1']:.4f}",
            f"  recall@rank10    {metrics['recall_at_rank10']:.4f}",
        ]
    )
