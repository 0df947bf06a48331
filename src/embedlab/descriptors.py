"""Descriptor files (h5): write the ISC 2021 layout, read it and the seed layout.

ISC layout (one image set per file): ``vectors`` float32 N x D and
``image_names`` ASCII bytes. Seed layout (one submission file): ``query``,
``reference``, ``query_ids``, ``reference_ids``; pick one with ``subset``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from embedlab.atomic import atomic_path

SEED_SUBSETS = ("query", "reference")


class DescriptorFileError(ValueError):
    """A descriptor file is missing, unreadable or inconsistent."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _decode_names(raw: np.ndarray) -> list[str]:
    # h5py returns bytes for fixed-length ASCII and str or bytes for vlen strings.
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw.tolist()]


def _validate(path: str | os.PathLike, names: list[str], vectors: np.ndarray) -> None:
    if vectors.ndim != 2:
        raise DescriptorFileError(path, f"vectors must be 2-D (N x D), got shape {vectors.shape}")
    if not np.issubdtype(vectors.dtype, np.number) or np.issubdtype(vectors.dtype, np.complexfloating):
        raise DescriptorFileError(path, f"vectors must be real numbers, got dtype {vectors.dtype}")
    if len(names) != vectors.shape[0]:
        raise DescriptorFileError(path, f"{len(names)} image names for {vectors.shape[0]} vectors")
    bad_rows = np.count_nonzero(~np.isfinite(vectors).all(axis=1)) if vectors.size else 0
    if bad_rows:
        raise DescriptorFileError(path, f"{bad_rows} of {vectors.shape[0]} vectors contain NaN or infinite values")
    if len(set(names)) != len(names):
        dups = sorted(n for n, c in Counter(names).items() if c > 1)
        raise DescriptorFileError(path, f"{len(dups)} image names appear more than once (first: {', '.join(dups[:5])})")
    blank = sum(1 for n in names if not n.strip())
    if blank:
        raise DescriptorFileError(path, f"{blank} image names are empty")


def write_descriptors(path: str | os.PathLike, names: Sequence[str], vectors: np.ndarray) -> None:
    """Write ``names`` and ``vectors`` (N x D) in the ISC layout, atomically.

    Validated first (same rules as reading), so a bad file is never written.
    Names must be ASCII (the ISC format stores them as ASCII bytes).
    """
    import h5py

    names = [str(n) for n in names]
    vectors = np.ascontiguousarray(np.asarray(vectors), dtype=np.float32)
    _validate(path, names, vectors)
    try:
        encoded = np.array([n.encode("ascii") for n in names], dtype=bytes)
    except UnicodeEncodeError as err:
        bad = next(n for n in names if not n.isascii())
        raise DescriptorFileError(path, f"image name {bad!r} is not ASCII") from err
    if not names:
        encoded = np.zeros(0, dtype="S1")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("vectors", data=vectors)
            f.create_dataset("image_names", data=encoded)


def _dataset(path: Path, f, key: str) -> np.ndarray:
    import h5py

    if key not in f or not isinstance(f[key], h5py.Dataset):
        raise DescriptorFileError(
            path, f"missing dataset {key!r} (found: {', '.join(sorted(f.keys())) or 'nothing'})"
        )
    return f[key][()]


def read_descriptors(path: str | os.PathLike, subset: str | None = None) -> tuple[list[str], np.ndarray]:
    """Read ``(names, vectors)`` from an ISC-layout or seed-layout h5 file.

    ``subset`` must be None for the ISC layout and "query" or "reference" for
    the seed layout. Vectors come back float32, C-contiguous. Raises
    DescriptorFileError (naming the file) on any problem.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DescriptorFileError(path, "file not found")
    if not h5py.is_hdf5(path):
        raise DescriptorFileError(path, "not an HDF5 file")
    try:
        with h5py.File(path, "r") as f:
            if "vectors" in f or "image_names" in f:
                if subset is not None:
                    raise DescriptorFileError(
                        path, f"ISC layout (one image set) but subset={subset!r} was given; pass subset=None"
                    )
                vectors, raw_names = _dataset(path, f, "vectors"), _dataset(path, f, "image_names")
            elif any(k in f for k in (*SEED_SUBSETS, "query_ids", "reference_ids")):
                if subset not in SEED_SUBSETS:
                    raise DescriptorFileError(
                        path, f"seed layout holds two sets: choose subset='query' or 'reference' (got {subset!r})"
                    )
                vectors, raw_names = _dataset(path, f, subset), _dataset(path, f, f"{subset}_ids")
            else:
                found = ", ".join(sorted(f.keys())) or "nothing"
                raise DescriptorFileError(
                    path,
                    "missing datasets: expected 'vectors' + 'image_names' (ISC layout) or "
                    f"'query'/'reference' + '*_ids' (seed layout); found: {found}",
                )
    except OSError as err:  # corrupt or truncated HDF5
        raise DescriptorFileError(path, f"cannot read HDF5 file ({err})") from err

    raw_names = np.asarray(raw_names)
    if raw_names.ndim != 1:
        raise DescriptorFileError(path, f"image names must be 1-D, got shape {raw_names.shape}")
    names = _decode_names(raw_names)
    vectors = np.asarray(vectors)
    _validate(path, names, vectors)
    return names, np.ascontiguousarray(vectors, dtype=np.float32)
