"""Score normalisation (ISC 2021), carried inside the descriptors.

The normalised score of query ``q`` and reference ``r`` is::

    s'(q, r) = q . r - factor * m_q,   m_q = mean of the n largest q . t over training descriptors t

(ISC 3rd place: factor 2, n 10; SSCD reports +11 μAP on DISC21 with it). A
query whose neighbourhood is crowded ("hub": near many unrelated images)
gets all its scores lowered, so its confident-looking false matches fall
below the global threshold that μAP sweeps.

A descriptor file cannot hold a per-query offset, but one extra dimension
can::

    q' = [q, -factor * m_q]     r' = [r, 1]     =>     q' . r' = s'(q, r)

so the ordinary inner-product search (:func:`embedlab.retrieval.knn_search`,
used by ``evaluate_disc``: faiss ``IndexFlatIP`` on the vectors exactly as
stored, nothing re-normalised) returns the normalised scores. The augmented
vectors are therefore *not* unit-length and are meant for inner-product
search only: do not L2-normalise, whiten or L2-search them afterwards.
"""

from __future__ import annotations

import numpy as np

from embedlab.postprocess.neighbours import check_finite, mean_top_similarity

DEFAULT_FACTOR = 2.0
DEFAULT_N = 10


def score_offsets(query: np.ndarray, train: np.ndarray, factor: float = DEFAULT_FACTOR, n: int = DEFAULT_N,
                  device: str = "auto") -> np.ndarray:
    """Per-query offsets ``factor * m_q`` (float64, one per query row)."""
    if not factor >= 0:
        raise ValueError(f"score normalisation factor must be >= 0 (0 = off), got {factor}")
    return factor * mean_top_similarity(query, train, n, device=device, what="query")


def augment_queries(query: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``[q, -offset_q]`` for each query row (float32)."""
    query = check_finite(query, "query")
    offsets = np.asarray(offsets, np.float64).reshape(-1)
    if offsets.shape[0] != query.shape[0]:
        raise ValueError(f"{offsets.shape[0]} offsets for {query.shape[0]} queries")
    return np.hstack([query, -offsets[:, None].astype(np.float32)])


def augment_references(reference: np.ndarray) -> np.ndarray:
    """``[r, 1]`` for each reference row (float32)."""
    reference = check_finite(reference, "reference")
    return np.hstack([reference, np.ones((reference.shape[0], 1), np.float32)])


def normalize_scores(query: np.ndarray, reference: np.ndarray, train: np.ndarray, factor: float = DEFAULT_FACTOR,
                     n: int = DEFAULT_N, device: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augmented ``(query', reference', offsets)`` whose inner products are the normalised scores."""
    query = check_finite(query, "query")
    reference = check_finite(reference, "reference")
    if query.shape[1] != reference.shape[1]:
        raise ValueError(f"query dimension {query.shape[1]} differs from reference dimension {reference.shape[1]}")
    offsets = score_offsets(query, train, factor, n, device)
    return augment_queries(query, offsets), augment_references(reference), offsets
