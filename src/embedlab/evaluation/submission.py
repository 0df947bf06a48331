"""A DISC21 submission: the descriptor track's h5 and the matching track's predictions CSV.

    embedlab submission disc --query q.h5 --reference r.h5 --out submission/

``descriptors.h5`` is the phase-1 layout: datasets ``query`` [N, D] and
``reference`` [M, D] (float32) with ``query_ids`` and ``reference_ids``
(ASCII), read back by :class:`embedlab.descriptors.DescriptorReader` with
``subset="query"`` / ``"reference"``. ``predictions.csv`` is
``query_id,reference_id,score`` from each query's ``k`` nearest references.
The rules cap it at 500,000 rows: beyond that the highest-scoring rows are
kept (μAP ranks rows by score, so what goes is the bottom of the ranking),
and the summary says how many went.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from embedlab.atomic import atomic_path, files_replaced_together
from embedlab.descriptors import DescriptorReader, encode_names, read_descriptors
from embedlab.evaluation.disc_search import write_predictions_csv
from embedlab.retrieval import Predictions, knn_search, predictions_from_knn

MAX_PREDICTIONS = 500_000  # the ISC 2021 rules' cap on a predictions file
DESCRIPTORS, PREDICTIONS = "descriptors.h5", "predictions.csv"


def highest_scoring(preds: Predictions, limit: int) -> Predictions:
    """At most ``limit`` rows: the highest scores, in the input order (query by query, best first)."""
    if len(preds.scores) <= limit:
        return preds
    kept = np.sort(np.argsort(-preds.scores, kind="stable")[:limit])
    return Predictions(preds.query_ids[kept], preds.reference_ids[kept], preds.scores[kept])


def _write_phase1_h5(path: Path, q_names, q_vecs: np.ndarray, reference: DescriptorReader) -> None:
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("query", data=q_vecs)
        f.create_dataset("query_ids", data=encode_names(path, q_names))
        vectors = f.create_dataset("reference", shape=(len(reference), reference.dim), dtype=np.float32)
        for start, part in reference.slices():  # one slice in memory at a time: 1M references are 1 GB
            vectors[start:start + len(part)] = part
        f.create_dataset("reference_ids", data=encode_names(path, reference.names))


def write_disc_submission(query_h5: str | os.PathLike, reference_h5: str | os.PathLike, out: str | os.PathLike,
                          k: int = 10, limit: int = MAX_PREDICTIONS, device: str = "auto") -> dict:
    """Write ``descriptors.h5`` and ``predictions.csv`` into ``out`` (together, or neither); returns a summary."""
    if limit < 1:
        raise ValueError(f"the predictions cap must be at least 1 row, got {limit}")
    q_names, q_vecs = read_descriptors(query_h5)
    reference = DescriptorReader(reference_h5)
    if q_vecs.shape[1] != reference.dim:
        raise ValueError(f"{query_h5}: descriptor dimension {q_vecs.shape[1]} differs from {reference.dim} in "
                         f"{reference_h5}")
    scores, indices = knn_search(q_vecs, reference, k, device=device, progress=len(q_names) > 50_000)
    every = predictions_from_knn(q_names, reference.names, scores, indices)
    kept = highest_scoring(every, limit)
    with files_replaced_together(out) as staging:
        _write_phase1_h5(staging / DESCRIPTORS, q_names, q_vecs, reference)
        write_predictions_csv(staging / PREDICTIONS, kept)
    return {"out": str(out), "queries": len(q_names), "references": len(reference), "dim": reference.dim, "k": k,
            "predictions": len(kept.scores), "dropped_below_cap": len(every.scores) - len(kept.scores),
            "lowest_kept_score": float(kept.scores.min()) if len(kept.scores) else None}
