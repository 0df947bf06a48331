"""Training-set normalisation: each descriptor pushed away from its nearest training descriptors.

The drip original's last post-processing step (docs/originals/drip.md; it
took its ensemble from 0.687 to 0.727 μAP on the phase-1 ground truth)::

    x' = x + factor · sqrt(mean of the top-k cosines) · d,    then L2-normalised

with ``d`` the mean of the unit directions from the ``n`` nearest training
descriptors to ``x``, itself normalised. A descriptor in a crowded region
of the training images (a generic image: text, a logo, a plain texture)
moves the most, away from the crowd, so its near-duplicates among generic
images stop scoring high against it. The same map goes to queries and
references alike (a copy and its original move together); the training
descriptors stay as they are.
"""

from __future__ import annotations

import numpy as np

from embedlab.postprocess.neighbours import nearest_training
from embedlab.postprocess.whitening import l2_normalize

DEFAULT_FACTOR = 1.8  # the original's
DEFAULT_N = 100
DEFAULT_TOP = 3
ROWS_PER_BLOCK = 2048  # rows × n × dim floats of directions in memory at a time (2048 × 100 × 256: 200 MB)


def push_from_training_set(x: np.ndarray, train: np.ndarray, factor: float = DEFAULT_FACTOR, n: int = DEFAULT_N,
                           top: int = DEFAULT_TOP, device: str = "auto", what: str = "query") -> np.ndarray:
    """``x`` (N x D) moved away from its ``n`` nearest ``train`` rows as above; float32, unit rows."""
    if not (factor >= 0 and 1 <= top <= n):
        raise ValueError(f"training-set normalisation needs factor >= 0 and 1 <= top <= n, got factor {factor}, "
                         f"top {top}, n {n}")
    x, train, scores, nearest = nearest_training(x, train, n, device, what)
    strength = factor * np.sqrt(np.clip(scores[:, :top].mean(axis=1), 0.0, None))
    out = np.empty_like(x)
    for start in range(0, len(x), ROWS_PER_BLOCK):
        rows = slice(start, start + ROWS_PER_BLOCK)
        away = l2_normalize(x[rows, None, :] - train[nearest[rows]]).mean(axis=1)
        out[rows] = l2_normalize(x[rows] + strength[rows, None] * l2_normalize(away))
    return out
