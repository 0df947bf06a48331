"""Face-verification metrics on scored pairs: EER, TPR@FPR, ROC AUC, ROC curve (docs/originals/face_encoder.md).

A pair has a similarity ``score`` (higher = more likely the same person) and
a label ``same`` (1 genuine, 0 impostor). A threshold ``t`` accepts the pairs
with ``score >= t``: FPR is the fraction of impostors accepted, FNR the
fraction of genuine pairs rejected, TPR = 1 − FNR.

The ROC curve is ``sklearn.metrics.roc_curve(same, scores,
drop_intermediate=False)``: one point per distinct score plus the point
"accept nothing" (threshold +inf). Tied scores move FPR and TPR together, so
the straight segment between two points is what a random tie-break gives on
average; ``roc_auc`` (``sklearn.metrics.auc``, the trapezoid rule on that
curve) therefore counts ties as half, like the Mann-Whitney U statistic.

EER definition (interpolated): FNR − FPR decreases strictly along the curve
from 1 to −1; the EER is the rate where it crosses 0 on the piecewise-linear
curve, so FNR = FPR = EER there. When a threshold gives FNR = FPR exactly
(the usual case with many pairs) this is the discrete challenge metric "FNR
at argmin |FNR − FPR|"; otherwise the two differ by less than one step
(1 / number of genuine or impostor pairs). Interpolation makes it symmetric
and tie-consistent: identical genuine and impostor distributions give
exactly 0.5 for any number of pairs, a constant score too. The returned
threshold is the one of the curve point nearest the crossing (argmin
|FNR − FPR|, ties to the higher threshold), a real operating point.
The EER is ours: sklearn has none, and torchmetrics' ``BinaryEER`` averages
FPR and FNR at the point nearest the crossing instead of interpolating (it
differs by up to half a step).

Not the retrieval metrics: those are in ``metrics.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm

from embedlab.atomic import atomic_path, write_text_atomic

#: Per-pair kinds for ``verification_report(kind=...)``.
KIND_GENUINE = "genuine"
KIND_FAKE_SAME_PERSON = "fake_same_person"
KIND_OTHER_PERSON = "other_person"
KINDS = (KIND_GENUINE, KIND_FAKE_SAME_PERSON, KIND_OTHER_PERSON)

ROC_MAX_POINTS = 1000

ArrayLike = np.ndarray | Sequence[float]


def _checked(scores: ArrayLike, same: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Scores as float64 and labels as bool, after the checks every metric needs."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and same must be 1-D (one value per pair), got shapes {s.shape} and {y.shape}")
    if s.size != y.size:
        raise ValueError(f"scores ({s.size} pairs) and same ({y.size} pairs) must have the same length")
    if s.size == 0:
        raise ValueError("no pairs: scores and same are empty (is the pairs file empty?)")
    bad = ~np.isfinite(s)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{int(bad.sum())} scores are NaN or infinite (first at pair {first}): "
                         "check the embeddings for NaN (fp16 overflow?) before scoring")
    if y.dtype != bool:
        values = np.unique(y)
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"same must be 0/1 (1 = genuine pair), found values {values[:10].tolist()}")
        y = y.astype(bool)
    n_genuine = int(y.sum())
    if n_genuine == 0 or n_genuine == y.size:
        missing = "impostor (same=0)" if n_genuine else "genuine (same=1)"
        raise ValueError(f"all {y.size} pairs are of one class: no {missing} pairs, "
                         "verification metrics need both genuine and impostor pairs")
    return s, y


def _roc(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of checked inputs: every distinct score is a point (EER and TPR@FPR need them all)."""
    return skm.roc_curve(y, s, drop_intermediate=False)


def roc_curve(scores: ArrayLike, same: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds descending from +inf (accept nothing) to the lowest score."""
    return _roc(*_checked(scores, same))


def _eer_from_roc(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    n_genuine, n_impostor = int(y.sum()), int((~y).sum())
    # Back to integer counts (rint undoes the division's < 1 ulp error) so that
    # (FNR − FPR)·n_genuine·n_impostor is exact: equalities and ties are not float accidents.
    fps, tps = np.rint(fpr * n_impostor).astype(np.int64), np.rint(tpr * n_genuine).astype(np.int64)
    fnr = 1.0 - tpr
    d = (n_genuine - tps) * n_impostor - fps * n_genuine  # strictly decreasing, > 0 first, < 0 last
    i = int(np.argmax(d <= 0))  # first point at or past the crossing, i >= 1
    if d[i] == 0:
        rate = fnr[i]
    else:  # crossing strictly between points i-1 (d > 0) and i (d < 0)
        w = d[i - 1] / (d[i - 1] - d[i])
        rate = fnr[i - 1] + w * (fnr[i] - fnr[i - 1])
    nearest = int(np.argmin(np.abs(d)))  # first = highest threshold among ties
    return float(rate), float(thresholds[nearest])


def eer(scores: ArrayLike, same: ArrayLike) -> tuple[float, float]:
    """(equal error rate, threshold): the rate where FNR = FPR on the interpolated ROC curve.

    0 for perfect separation, 0.5 for identical genuine/impostor score
    distributions, 1 when every impostor scores above every genuine pair.
    See the module docstring for the exact definition and the threshold.
    """
    s, y = _checked(scores, same)
    return _eer_from_roc(*_roc(s, y), y)


def _tpr_at_fpr_from_roc(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray,
                         target: float) -> tuple[float, float]:
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target FPR must be in [0, 1], got {target}")
    # fpr is non-decreasing and tpr too: the last point with fpr <= target has the highest TPR.
    i = int(np.searchsorted(fpr, target, side="right")) - 1
    return float(tpr[i]), float(thresholds[i])


def tpr_at_fpr(scores: ArrayLike, same: ArrayLike, fpr: float) -> tuple[float, float]:
    """(highest TPR with FPR <= ``fpr``, its threshold). Threshold +inf when only "accept nothing" qualifies."""
    return _tpr_at_fpr_from_roc(*roc_curve(scores, same), fpr)


def roc_auc(scores: ArrayLike, same: ArrayLike) -> float:
    """Area under the ROC curve; a tied genuine/impostor pair counts half."""
    # auc on the full curve rather than roc_auc_score: the same area, and the report reuses its one sort.
    fpr, tpr, _ = roc_curve(scores, same)
    return skm.auc(fpr, tpr)


def _kinds(kind: Sequence[str] | np.ndarray, y: np.ndarray) -> np.ndarray:
    k = np.asarray(kind).astype(str)
    if k.shape != y.shape:
        raise ValueError(f"kind ({k.size} pairs) and scores ({y.size} pairs) must have the same length")
    unknown = sorted(set(np.unique(k).tolist()) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown pair kinds {unknown[:5]}: expected one of {list(KINDS)}")
    wrong = (k == KIND_GENUINE) != y
    if wrong.any():
        first = int(np.flatnonzero(wrong)[0])
        raise ValueError(f"{int(wrong.sum())} pairs have kind and same in disagreement (first at pair {first}: "
                         f"kind {k[first]!r}, same {int(y[first])}): genuine pairs must be exactly those with same=1")
    return k


def verification_report(scores: ArrayLike, same: ArrayLike,
                        kind: Sequence[str] | np.ndarray | None = None) -> dict[str, Any]:
    """All verification metrics in one dict (one sort for the overall ones).

    Keys: ``eer``, ``eer_threshold``, ``tpr_at_fpr_1e-2``, ``tpr_at_fpr_1e-3``,
    ``roc_auc``, ``n_genuine``, ``n_impostor``. With ``kind`` (per pair:
    genuine | fake_same_person | other_person) also ``eer_fake_same_person``
    (genuine pairs against real-vs-fake impostors of the same person only:
    does the encoder resist deepfakes?), ``eer_other_person`` (genuine against
    different-person impostors), and the counts ``n_fake_same_person``,
    ``n_other_person``. A per-kind EER is None when there is no impostor pair
    of that kind (skip None values when logging).
    """
    s, y = _checked(scores, same)
    fpr, tpr, thresholds = _roc(s, y)
    rate, threshold = _eer_from_roc(fpr, tpr, thresholds, y)
    report: dict[str, Any] = {
        "eer": rate,
        "eer_threshold": threshold,
        "tpr_at_fpr_1e-2": _tpr_at_fpr_from_roc(fpr, tpr, thresholds, 1e-2)[0],
        "tpr_at_fpr_1e-3": _tpr_at_fpr_from_roc(fpr, tpr, thresholds, 1e-3)[0],
        "roc_auc": skm.auc(fpr, tpr),
        "n_genuine": int(y.sum()),
        "n_impostor": int((~y).sum()),
    }
    if kind is not None:
        k = _kinds(kind, y)
        for impostor in (KIND_FAKE_SAME_PERSON, KIND_OTHER_PERSON):
            keep = (k == KIND_GENUINE) | (k == impostor)
            n = int((k == impostor).sum())
            report[f"n_{impostor}"] = n
            report[f"eer_{impostor}"] = eer(s[keep], y[keep])[0] if n else None
    return report


def _curve_indices(fpr: np.ndarray, max_points: int) -> np.ndarray:
    """At most ``max_points`` indices: half evenly spaced along the curve, half on a log-FPR grid; ends kept."""
    n = fpr.size
    if n <= max_points:
        return np.arange(n)
    half = max(max_points // 2, 2)
    even = np.linspace(0, n - 1, half).round().astype(np.int64)
    smallest = fpr[fpr > 0][0]
    grid = np.geomspace(smallest, 1.0, max_points - half)
    # The last point at or below each grid FPR: the low-FPR region a log-x plot shows.
    logs = np.searchsorted(fpr, grid, side="right") - 1
    return np.unique(np.concatenate((even, logs)))  # even has both ends; <= max_points in all


def write_roc(scores: ArrayLike, same: ArrayLike, out_dir: str | os.PathLike, log_x: bool = False,
              max_points: int = ROC_MAX_POINTS) -> tuple[Path, Path]:
    """Write ``roc.csv`` (fpr,tpr,threshold; at most ``max_points`` rows, for ``dvc plots``) and ``roc.png``.

    Both atomically. The first row is the "accept nothing" point, threshold
    ``inf``. ``log_x`` draws FPR on a log axis (the TPR@FPR 1e-3 region).
    Returns the two paths.
    """
    if max_points < 4:
        raise ValueError(f"max_points must be >= 4, got {max_points}")
    s, y = _checked(scores, same)
    fpr, tpr, thresholds = _roc(s, y)
    rate, _ = _eer_from_roc(fpr, tpr, thresholds, y)
    idx = _curve_indices(fpr, max_points)
    out = Path(out_dir)
    csv_path, png_path = out / "roc.csv", out / "roc.png"
    rows = ["fpr,tpr,threshold"] + [f"{fpr[i]:.6g},{tpr[i]:.6g},{thresholds[i]:.9g}" for i in idx]
    write_text_atomic(csv_path, "\n".join(rows) + "\n")

    # Figure without pyplot: no global backend state, works headless (Agg canvas).
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), dpi=100)
    ax = fig.add_subplot()
    x, t = fpr[idx], tpr[idx]
    if log_x:
        x, t = x[x > 0], t[x > 0]
        ax.set_xscale("log")
        ax.set_xlim(x[0], 1.0)
    else:
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        ax.set_xlim(0, 1)
    ax.plot(x, t, lw=1.5)
    ax.plot([rate], [1 - rate], "o", label=f"EER {rate:.4f}")
    ax.legend(loc="lower right")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", ylim=(0, 1.02),
           title=f"ROC ({int(y.sum())} genuine, {int((~y).sum())} impostor pairs)")
    ax.grid(alpha=0.3)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    return csv_path, png_path
