"""Pictures of a retrieval evaluation: what the model finds for a query, and where it fails.

``retrieval.png``: queries drawn with the seed among those with a match, each
row the query and its top-ranked references with their scores, the true
match framed green, the wrong ones red. ``worst_queries.png``: the queries
whose true match ranks lowest (not found in the top k first), ties broken by
how sure the model was of its wrong first answer. Both read the
``predictions.csv`` the evaluation wrote, so they show the scored ranking.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from embedlab.atomic import atomic_path
from embedlab.images import BadImageError, load_rgb

RETRIEVAL_PNG = "retrieval.png"
WORST_PNG = "worst_queries.png"
TOP = 5  # references shown per query
THUMB_PX = 96
MATCH, WRONG = "#1a9850", "#d73027"

Ranking = list[tuple[str, float]]  # (reference id, score), best first


def read_rankings(predictions_csv: Path) -> dict[str, Ranking]:
    """Each query's predicted references, best first (``query_id,reference_id,score``)."""
    rankings: dict[str, Ranking] = defaultdict(list)
    with open(predictions_csv, newline="") as f:
        for row in csv.DictReader(f):
            rankings[row["query_id"]].append((row["reference_id"], float(row["score"])))
    for ranking in rankings.values():
        ranking.sort(key=lambda pair: -pair[1])
    return dict(rankings)


def match_rank(ranking: Ranking, matches: set[str]) -> int | None:
    """0-based rank of the first true match, None when none is among the predictions."""
    return next((i for i, (ref, _) in enumerate(ranking) if ref in matches), None)


def worst_queries(rankings: Mapping[str, Ranking], truth: Mapping[str, set[str]], n: int) -> list[str]:
    """The ``n`` queries with a match whose match ranks lowest (missing first), then by the score of the
    wrong answer ranked first (a confident mistake is worse)."""
    def badness(query: str) -> tuple[float, float]:
        ranking = rankings.get(query, [])
        rank = match_rank(ranking, truth[query])
        top_wrong = next((s for ref, s in ranking if ref not in truth[query]), float("-inf"))
        return (float("inf") if rank is None else rank, top_wrong)

    return sorted(sorted(truth), key=badness, reverse=True)[:n]


def drawn_queries(truth: Mapping[str, set[str]], n: int, seed: int) -> list[str]:
    """``n`` queries with a match, drawn with ``seed`` (the same ones for every model of a run)."""
    queries = sorted(truth)
    chosen = np.random.default_rng([seed, 5]).choice(len(queries), size=min(n, len(queries)), replace=False)
    return [queries[i] for i in sorted(chosen)]


def _thumbnail(path: Path | None) -> np.ndarray:
    if path is None:
        return np.full((THUMB_PX, THUMB_PX, 3), 235, np.uint8)
    try:
        img = load_rgb(path)
    except BadImageError:
        return np.full((THUMB_PX, THUMB_PX, 3), 235, np.uint8)
    img.thumbnail((THUMB_PX, THUMB_PX))
    return np.asarray(img)


def draw_rankings(queries: Sequence[str], rankings: Mapping[str, Ranking], truth: Mapping[str, set[str]],
                  query_paths: Mapping[str, Path], reference_paths: Mapping[str, Path], title: str, out: Path) -> Path:
    """One row per query: the query, then its top references framed green (a true match) or red, and, when
    the true match is not among them, that match in a last column with its rank."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, works headless

    cols = 1 + TOP + 1
    fig = Figure(figsize=(1.45 * cols, 1.55 * len(queries) + 0.5), dpi=100)
    axes = fig.subplots(len(queries), cols, squeeze=False)
    for row, query in zip(axes, queries):
        ranking = rankings.get(query, [])[:TOP]
        row[0].imshow(_thumbnail(query_paths.get(query)))
        row[0].set_title(f"query {query}", fontsize=7)
        for ax, (ref, score) in zip(row[1:], ranking):
            ax.imshow(_thumbnail(reference_paths.get(ref)))
            hit = ref in truth.get(query, ())
            ax.set_title(f"{ref} {score:.2f}", fontsize=7, color=MATCH if hit else WRONG)
            for spine in ax.spines.values():
                spine.set(color=MATCH if hit else WRONG, linewidth=3)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[1 + len(ranking):]:
            ax.axis("off")
        matches = truth.get(query, set())
        if matches and not any(ref in matches for ref, _ in ranking):
            rank = match_rank(rankings.get(query, []), matches)
            ax = row[-1]
            ax.axis("on")
            ax.imshow(_thumbnail(reference_paths.get(min(matches))))
            ax.set_title(f"match: rank {rank + 1}" if rank is not None else "match: not found", fontsize=7,
                         color=MATCH)
            for spine in ax.spines.values():
                spine.set(color=MATCH, linewidth=3, linestyle="--")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def write_retrieval_pictures(eval_dir: Path, ground_truth: Sequence[tuple[str, str]], query_paths: Sequence[Path],
                             reference_paths: Sequence[Path], title: str, seed: int, n: int = 6) -> list[Path]:
    """``retrieval.png`` and ``worst_queries.png`` of the evaluation in ``eval_dir`` (its predictions.csv)."""
    rankings = read_rankings(eval_dir / "predictions.csv")
    truth: dict[str, set[str]] = defaultdict(set)
    for query, reference in ground_truth:
        truth[query].add(reference)
    if not truth:
        return []
    queries = {p.stem: p for p in query_paths}
    references = {p.stem: p for p in reference_paths}
    truth = {q: refs for q, refs in truth.items() if q in queries}
    return [draw_rankings(drawn_queries(truth, n, seed), rankings, truth, queries, references,
                          f"{title}: queries and their top {TOP} (green: the true match)", eval_dir / RETRIEVAL_PNG),
            draw_rankings(worst_queries(rankings, truth, n), rankings, truth, queries, references,
                          f"{title}: the worst queries (true match ranked lowest)", eval_dir / WORST_PNG)]
