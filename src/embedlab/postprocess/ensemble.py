"""Ensembles: several models' descriptors of the same images, concatenated.

Each model's block is L2-normalised and multiplied by its weight (default
1), the blocks are concatenated in the order given, and the concatenation is
L2-normalised again. With unit blocks that last step divides every row by
the same constant ``sqrt(sum w_i^2)`` (so it changes no ranking), and it
makes the ensemble a unit descriptor even when no whitening follows. The
pipeline then whitens the concatenation, with a whitening trained on the
training descriptors concatenated the same way (ISC 2nd place: 8 models ->
whitening to 256).

Files of one image set must list the same image names in the same order;
otherwise the error names both files and the first difference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from embedlab.descriptors import DescriptorFileError, read_descriptors
from embedlab.postprocess.neighbours import check_finite
from embedlab.postprocess.whitening import l2_normalize


def check_weights(weights: Sequence[float] | None, n_blocks: int) -> np.ndarray:
    """Weights as a float64 array of length ``n_blocks`` (all ones when None)."""
    if weights is None:
        return np.ones(n_blocks)
    w = np.asarray(weights, np.float64).reshape(-1)
    if w.size != n_blocks:
        raise ValueError(f"{w.size} ensemble weights for {n_blocks} models")
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise ValueError(f"ensemble weights must be finite and > 0, got {w.tolist()}")
    return w


def concat_blocks(blocks: Sequence[np.ndarray], weights: Sequence[float] | None = None,
                  what: str = "descriptors") -> np.ndarray:
    """``normalise([w_1 * normalise(b_1), ..., w_k * normalise(b_k)])`` row by row (float32)."""
    if len(blocks) == 0:
        raise ValueError(f"{what}: no descriptor blocks to concatenate")
    blocks = [check_finite(b, f"{what} (model {i + 1})") for i, b in enumerate(blocks)]
    rows = {b.shape[0] for b in blocks}
    if len(rows) > 1:
        raise ValueError(f"{what}: the models hold different numbers of descriptors {[b.shape[0] for b in blocks]}")
    w = check_weights(weights, len(blocks))
    out = np.hstack([l2_normalize(b) * np.float32(wi) for b, wi in zip(blocks, w)])
    return l2_normalize(out)


def read_descriptor_set(path: str | os.PathLike, role: str) -> tuple[list[str], np.ndarray]:
    """Read an ISC-layout file; for a seed-layout file take its ``role`` ("query"/"reference") part."""
    import h5py

    subset = None
    if role in ("query", "reference") and Path(path).is_file() and h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            if "vectors" not in f and role in f:
                subset = role
    return read_descriptors(path, subset)


def read_blocks(paths: Sequence[str | os.PathLike], role: str) -> tuple[list[str], list[np.ndarray]]:
    """Image names and one descriptor block per file; the files must list the same names in order."""
    if not paths:
        raise ValueError(f"no {role} descriptor files given")
    first_names, first_vecs = read_descriptor_set(paths[0], role)
    blocks = [first_vecs]
    for path in paths[1:]:
        names, vecs = read_descriptor_set(path, role)
        if names != first_names:
            if len(names) != len(first_names):
                problem = f"{len(names)} images, but {paths[0]} has {len(first_names)}"
            else:
                i = next(i for i, (a, b) in enumerate(zip(names, first_names)) if a != b)
                problem = f"image {i} is {names[i]!r} but {first_names[i]!r} in {paths[0]}"
            raise DescriptorFileError(path, f"image_names differ from {paths[0]} (ensembles need the same "
                                            f"images in the same order): {problem}")
        blocks.append(vecs)
    return first_names, blocks
