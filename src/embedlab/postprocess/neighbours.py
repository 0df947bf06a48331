"""Similarity of descriptors to their nearest training descriptors.

Score normalisation and descriptor stretching both measure how crowded a
query's neighbourhood is in a *training* image set (images that are neither
queries nor references): ``m_q`` = mean of the ``n`` largest inner products
``q . t`` over training descriptors ``t``. The search is an exact faiss flat
inner-product search (:func:`embedlab.retrieval.knn_search`: GPU when
``device`` resolves to "cuda", else CPU).
"""

from __future__ import annotations

import numpy as np

from embedlab.retrieval import knn_search


def check_finite(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` as a float32 C-contiguous N x D matrix; ValueError naming ``what`` if not finite."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{what}: descriptors must be a 2-D array (N x D), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{what}: descriptors must be real numbers, got dtype {x.dtype}")
    bad = int(np.count_nonzero(~np.isfinite(x).all(axis=1))) if x.size else 0
    if bad:
        raise ValueError(f"{what}: {bad} of {x.shape[0]} descriptors contain NaN or infinite values")
    return np.ascontiguousarray(x, dtype=np.float32)


def nearest_training(
    x: np.ndarray, train: np.ndarray, n: int, device: str = "auto", what: str = "query"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, train, scores, indices)``: both checked (float32), and each ``x`` row's ``n`` nearest training rows
    by inner product, best first.

    Raises ValueError when ``n`` < 1, when there are fewer than ``n``
    training descriptors, or when the dimensions differ.
    """
    x = check_finite(x, what)
    train = check_finite(train, "training descriptors")
    if n < 1:
        raise ValueError(f"the number of training neighbours must be >= 1, got {n}")
    if train.shape[0] < n:
        raise ValueError(f"{n} training neighbours requested but there are only {train.shape[0]} training descriptors")
    if x.shape[1] != train.shape[1]:
        raise ValueError(f"{what} dimension {x.shape[1]} differs from training dimension {train.shape[1]}")
    if x.shape[0] == 0:
        return x, train, np.zeros((0, n), np.float32), np.zeros((0, n), np.int64)
    scores, indices = knn_search(x, train, n, device=device, progress=x.shape[0] > 50_000)
    return x, train, scores, indices


def mean_top_similarity(
    x: np.ndarray, train: np.ndarray, n: int, device: str = "auto", what: str = "query"
) -> np.ndarray:
    """``m[i]`` = mean of the ``n`` largest ``x[i] . t`` over training rows ``t`` (float64, shape N); the
    checks of :func:`nearest_training`."""
    _, _, scores, _ = nearest_training(x, train, n, device, what)
    return scores.astype(np.float64).mean(axis=1)
