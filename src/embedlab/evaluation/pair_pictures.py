"""Pictures of a face verification: the score distributions and the ROC of each impostor kind.

``scores.png``: histograms of the genuine pairs' cosines and of each
impostor kind's (real vs fake of one person, two persons), with the EER
threshold; overlap left of or right of it is what the EER counts.
``roc_by_kind.png``: genuine pairs against each impostor kind on a log
false-positive axis, where a deepfake-resistant encoder must hold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedlab.atomic import atomic_path
from embedlab.verification import KIND_FAKE_SAME_PERSON, KIND_GENUINE, KIND_OTHER_PERSON, eer, roc_curve

SCORES_PNG = "scores.png"
ROC_BY_KIND_PNG = "roc_by_kind.png"
LABELS = {KIND_GENUINE: "genuine", KIND_FAKE_SAME_PERSON: "impostor: fake of the same person",
          KIND_OTHER_PERSON: "impostor: other person", "impostor": "impostor"}
COLOURS = {KIND_GENUINE: "C0", KIND_FAKE_SAME_PERSON: "C1", KIND_OTHER_PERSON: "C2", "impostor": "C1"}  # both plots


def _groups(scores: np.ndarray, same: np.ndarray, kinds: np.ndarray | None) -> dict[str, np.ndarray]:
    if kinds is None:
        return {KIND_GENUINE: scores[same == 1], "impostor": scores[same == 0]}
    return {kind: scores[kinds == kind] for kind in LABELS if (kinds == kind).any()}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def write_pair_pictures(scores: np.ndarray, same: np.ndarray, kinds: np.ndarray | None, out_dir: Path,
                        title: str) -> list[Path]:
    """``scores.png`` and ``roc_by_kind.png`` in ``out_dir``; ``kinds``: each pair's kind, or None."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, works headless

    scores, same = np.asarray(scores, np.float64), np.asarray(same).astype(int)
    groups = _groups(scores, same, None if kinds is None else np.asarray(kinds))
    rate, threshold = eer(scores, same)

    fig = Figure(figsize=(6, 3.6), dpi=100)
    ax = fig.add_subplot()
    bins = np.linspace(min(scores.min(), threshold), max(scores.max(), threshold), 41)
    for kind, values in groups.items():
        ax.hist(values, bins=bins, alpha=0.5, color=COLOURS[kind], label=f"{LABELS[kind]} ({len(values)})")
    ax.axvline(threshold, color="black", ls="--", lw=1, label=f"EER threshold {threshold:.3f} (EER {rate:.3f})")
    ax.set(xlabel="cosine similarity of the pair", ylabel="pairs", title=f"{title}: pair scores")
    ax.legend(fontsize=7, loc="upper left")
    written = [_save(fig, out_dir / SCORES_PNG)]

    fig = Figure(figsize=(5, 4), dpi=100)
    ax = fig.add_subplot()
    genuine = groups[KIND_GENUINE]
    for kind, values in groups.items():
        if kind == KIND_GENUINE or not len(genuine):
            continue
        pair_scores = np.concatenate([genuine, values])
        labels = np.r_[np.ones(len(genuine), int), np.zeros(len(values), int)]
        fpr, tpr, _ = roc_curve(pair_scores, labels)
        shown = fpr > 0  # a log axis: the first false positive onwards
        ax.plot(fpr[shown], tpr[shown], lw=1.5, color=COLOURS[kind], label=f"{LABELS[kind]} (EER {eer(pair_scores, labels)[0]:.3f})")
    ax.set_xscale("log")
    ax.set(xlabel="false positive rate (log)", ylabel="true positive rate", ylim=(0, 1.02),
           title=f"{title}: ROC per impostor kind")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    written.append(_save(fig, out_dir / ROC_BY_KIND_PNG))
    return written
